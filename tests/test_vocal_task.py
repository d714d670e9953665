"""The vocal task: SDT labels, note decoding, VAT, and the whole chain (a tiny model overfits
two short pieces; train, eval and transcribe through the command line)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmir.cli import main
from jaxmir.config import apply_overrides
from jaxmir.data.cache import FeatureCache
from jaxmir.engine.run import init_state, make_callbacks, make_predict
from jaxmir.engine.sharding import make_mesh, put_batch
from jaxmir.engine.step import make_train_step
from jaxmir.inference import sigmoid
from jaxmir.tasks.vocal.decode import decode_notes, find_peaks, note_hz, note_intervals
from jaxmir.tasks.vocal.labels import notes_from_f0, sdt_labels
from jaxmir.tasks.vocal.task import TASK, sdt_loss
from jaxmir.tasks.vocal.vat import adversarial_perturbation, bernoulli_kl

ONE = jax.devices()[:1]


def test_sdt_labels_mark_six_frame_events():
    y = sdt_labels(np.array([[1.0, 1.5, 60.0]]), 100)
    assert y.shape == (100, 6)
    assert np.flatnonzero(y[:, 0]).tolist() == list(range(50, 75))
    assert np.flatnonzero(y[:, 2]).tolist() == list(range(48, 54))  # [t - 2, t + 4)
    assert np.flatnonzero(y[:, 4]).tolist() == list(range(73, 79))
    np.testing.assert_array_equal(y[:, 1], 1 - y[:, 0])
    np.testing.assert_array_equal(y[:, 3], 1 - y[:, 2])
    np.testing.assert_array_equal(y[:, 5], 1 - y[:, 4])
    # a note at the very start clips its onset window; one shorter than a frame is left out
    y = sdt_labels(np.array([[0.0, 0.2, 60.0], [1.0, 1.005, 62.0]]), 60)
    assert np.flatnonzero(y[:, 2]).tolist() == [0, 1, 2, 3]
    assert y[49:52, 0].sum() == 0


def test_notes_from_a_semitone_contour():
    t = np.arange(100) * 0.01
    hz = np.zeros(100)
    hz[10:40] = 440.0  # 300 ms of A4
    hz[40:43] = 466.16  # 30 ms of A#4: shorter than 50 ms, dropped
    hz[50:80] = 220.0 * 2 ** (0.2 / 12)  # A3, 20 cents sharp: rounds to 57
    notes = notes_from_f0(np.stack([t, hz], axis=1))
    np.testing.assert_allclose(notes, [[0.1, 0.4, 69], [0.5, 0.8, 57]], atol=1e-9)


def _sdt_posteriors(notes_frames, n):
    """Posteriors that are the labels themselves, smoothed into peaks."""
    probs = np.zeros((n, 6))
    for on, off in notes_frames:
        probs[on:off, 0] = 0.9
        probs[on - 1 : on + 2, 2] = [0.6, 0.95, 0.6]
        probs[off - 1 : off + 2, 4] = [0.6, 0.95, 0.6]
    probs[:, 1] = 1 - probs[:, 0]
    return probs


def test_decoding_finds_the_notes_and_their_pitch():
    probs = _sdt_posteriors([(10, 40), (50, 60), (70, 72)], 100)
    assert find_peaks(probs[:, 2]).tolist() == [10, 50, 70]
    # the 2-frame note is shorter than 0.1 s
    assert note_intervals(probs).tolist() == [[10, 40], [50, 60]]
    f0 = np.zeros(100)
    f0[10:40] = 440.0
    f0[25] = 880.0  # an octave glitch in the middle weighs most: the mean moves up
    f0[50:60] = 261.63
    notes = decode_notes(probs, f0)
    np.testing.assert_allclose(notes[:, :2], [[0.2, 0.8], [1.0, 1.2]])
    assert notes[1, 2] == 60 and notes[0, 2] > 69
    assert note_hz(np.array([0, 0, 440.0, 0]), 0, 4) == 0.0  # too few voiced frames


def test_no_shortest_note_still_pairs_an_onset_with_a_later_offset():
    # the first note's offset peak falls on the second note's onset frame: with
    # min_seconds=0 the second note was [40, 40], no note at all once pitched
    probs = _sdt_posteriors([(10, 40), (40, 60), (70, 90)], 100)
    for min_seconds in (0.0, 0.01, 0.05):
        got = note_intervals(probs, min_seconds=min_seconds).tolist()
        assert got == [[10, 40], [40, 60], [70, 90]], min_seconds


def test_a_note_held_to_the_end_of_the_file_ends_there():
    # the voice never falls below the threshold after the last onset: omnizart's decoding
    # ended each such note at its own onset and dropped it (here all three)
    probs = np.zeros((100, 6))
    probs[:, 1] = 1.0
    probs[10:, 0], probs[10:, 1] = 0.9, 0.1
    probs[[10, 40, 70], 2] = 0.9
    assert note_intervals(probs).tolist() == [[10, 40], [40, 70], [70, 100]]
    notes = decode_notes(probs, np.full(100, 440.0))
    np.testing.assert_allclose(notes[:, :2], [[0.2, 0.8], [0.8, 1.4], [1.4, 2.0]])


def _tiny_model_logits(seed=0):
    cfg = TASK.preset("tiny")
    model = TASK.model(cfg)
    x = jax.random.normal(jax.random.PRNGKey(seed), (3, 19, 174, 9))
    init = jax.jit(lambda key, v: model.init(key, v, train=False))
    variables = init(jax.random.key(1, impl="rbg"), x)
    return jax.jit(lambda v: model.apply(variables, v, train=False)), x


def test_vat_perturbation_has_norm_epsilon_and_beats_random_directions():
    logits_fn, x = _tiny_model_logits()
    eps = 2.0
    r = adversarial_perturbation(
        logits_fn, x, jax.random.PRNGKey(2), epsilon=eps, xi=1e-6, iterations=2
    )
    norms = jnp.sqrt(jnp.sum(r * r, axis=(1, 2, 3)))
    np.testing.assert_allclose(norms, eps, rtol=1e-4)
    clean = logits_fn(x)
    adversarial = float(bernoulli_kl(clean, logits_fn(x + r)))
    randoms = []
    for k in range(8):
        d = jax.random.normal(jax.random.PRNGKey(10 + k), x.shape)
        d = eps * d / jnp.sqrt(jnp.sum(d * d, axis=(1, 2, 3), keepdims=True))
        randoms.append(float(bernoulli_kl(clean, logits_fn(x + d))))
    assert adversarial > 0 and adversarial > max(randoms), (adversarial, randoms)


def test_the_unlabelled_window_rides_with_every_training_example(vocal_cache):
    cfg = TASK.preset("tiny")
    cache = FeatureCache(vocal_cache)
    ds = TASK.dataset(cfg, cache, "train", True)
    ex = ds[0]
    assert ex["x"].shape == ex["ux"].shape == (19, 174, 9) and ex["y"].shape == (19, 6)
    assert np.array_equal(ds[0]["ux"], ex["ux"])  # the same pairing when read again (resume)
    no_vat = apply_overrides(cfg, ["data.vat=false"])
    assert "ux" not in TASK.dataset(no_vat, cache, "train", True)[0]
    assert "ux" not in TASK.dataset(cfg, cache, "val", False)[0]


def test_unlabelled_windows_come_from_the_data_unlabelled_folder(vocal_cache, tmp_path):
    """`data.unlabelled=DIR`: any folder of audio, featurised once, gives VAT its windows."""
    import soundfile as sf

    from jaxmir.config import ConfigError
    from jaxmir.data.audio import InputWarning

    folder = tmp_path / "songs"
    (folder / "disc").mkdir(parents=True)
    t = np.arange(3 * 16000) / 16000
    sf.write(folder / "disc" / "hum.wav", 0.3 * np.sin(2 * np.pi * 220 * t), 16000)
    (folder / "notes.txt").write_text("not audio")
    (folder / "broken.wav").write_bytes(b"RIFF0000WAVEfmt ")
    cfg = apply_overrides(TASK.preset("tiny"), [f"data.unlabelled={folder}"])
    cache = FeatureCache(vocal_cache)
    # an unreadable file is one line naming it (`jaxmir` prints an InputWarning so); it was a
    # raw Python warning with its source line
    with pytest.warns(InputWarning, match=f"^skipped {folder / 'broken.wav'}: ") as caught:
        source = TASK.unlabelled_cache(cfg, cache)
    assert len(caught) == 1
    assert source.names("train") == ["disc/hum.wav"]
    with pytest.warns(InputWarning, match="broken.wav"):  # tried again, the rest kept
        assert TASK.unlabelled_cache(cfg, cache).root == source.root  # featurised once
    x = source.features("disc/hum.wav")
    with pytest.warns(InputWarning, match="broken.wav"):
        ux = TASK.dataset(cfg, cache, "train", True)[0]["ux"]
    n = len(ux)
    assert any(np.array_equal(ux, x[s : s + n]) for s in range(len(x) - n + 1))
    (tmp_path / "empty").mkdir()
    empty = apply_overrides(cfg, [f"data.unlabelled={tmp_path / 'empty'}"])
    with pytest.raises(ConfigError, match="no audio files"):
        TASK.unlabelled_cache(empty, cache)
    missing = apply_overrides(cfg, [f"data.unlabelled={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match="not a folder"):
        TASK.bind_loss(missing)  # training checks it before building any data


def test_unlabelled_folder_without_audio_stops_training_before_anything_is_written(
    tmp_path, capsys
):
    (tmp_path / "empty").mkdir()
    wd = tmp_path / "run"
    argv = ["train", "vocal", "--preset", "tiny", "--workdir", str(wd), "--no-progress"]
    assert main([*argv, "--set", f"data.unlabelled={tmp_path / 'empty'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.unlabelled" in err[0] and "no audio files" in err[0]
    assert not wd.exists()


def test_unreadable_unlabelled_folder_leaves_no_run_json(vocal_cache, tmp_path, capsys):
    """Audio files that all fail to decode are found only when VAT's data is built: the run
    refuses to start before run.json records a cache."""
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "x.wav").write_bytes(b"not audio at all")
    wd = tmp_path / "run"
    argv = ["train", "vocal", "--preset", "tiny", "--workdir", str(wd), "--no-progress"]
    argv += ["--data", str(vocal_cache), "--set", f"data.unlabelled={folder}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # each file one line naming it (it was a raw Python warning with its source line)
    assert len(err) == 2 and err[0].startswith(
        f"jaxmir train: warning: skipped {folder / 'x.wav'}: "
    )
    assert "none of its audio files could be read" in err[1]
    assert not (wd / "run.json").exists() and not (wd / "config.json").exists()


@pytest.mark.parametrize(
    "override, needle",
    [
        ("decode.threshold=5", "decode.threshold"),
        ("decode.threshold=-0.1", "decode.threshold"),
        ("decode.min_seconds=-1", "decode.min_seconds"),
        ("decode.context=-1", "decode.context"),
        ("decode.contour_workdir=/nonexistent/run", "decode.contour_workdir"),
    ],
)
def test_unusable_decode_values_exit_2_naming_the_key(override, needle, tmp_path, capsys):
    from jaxmir.config import ConfigError

    cfg = apply_overrides(TASK.preset("tiny"), [override])
    with pytest.raises(ConfigError, match=needle):
        TASK.check_decode(cfg)
    with pytest.raises(ConfigError, match=needle):  # decoding checks them too
        TASK.decode((np.zeros((10, 6)), np.zeros(10)), cfg)
    wd = tmp_path / "run"  # the command line says so before anything is written
    argv = ["train", "vocal", "--preset", "tiny", "--workdir", str(wd), "--set", override]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not wd.exists()


def test_a_contour_run_that_does_not_restore_is_a_config_error(tmp_path):
    """`decode.contour_workdir` naming a folder with a config but no checkpoint: one error
    naming the key (the command line's one line, exit 2), not RestoreError's traceback."""
    from jaxmir.config import ConfigError
    from jaxmir.tasks.vocal.task import contour_f0
    from jaxmir.tasks.vocal_contour.task import TASK as CONTOUR

    run = tmp_path / "contour"
    run.mkdir()
    (run / "config.json").write_text(CONTOUR.preset("tiny").to_json())
    with pytest.raises(ConfigError, match="decode.contour_workdir: .*no checkpoint"):
        contour_f0(str(run), tmp_path / "song.wav", 10)


def test_a_contour_run_of_another_task_is_named_before_any_model_runs(tmp_path):
    """Another task's run as `decode.contour_workdir` failed once evaluation had begun, with
    "config.json: a config of task 'music', not 'vocal_contour'" and no word of the key."""
    from jaxmir.config import ConfigError, apply_overrides
    from jaxmir.tasks.music.task import TASK as MUSIC
    from jaxmir.tasks.vocal.task import TASK

    run = tmp_path / "music-run"
    run.mkdir()
    (run / "config.json").write_text(MUSIC.preset("tiny").to_json())
    cfg = apply_overrides(TASK.preset("tiny"), [f"decode.contour_workdir={run}"])
    with pytest.raises(ConfigError, match=r"decode.contour_workdir: .*music-run: a music run"):
        TASK.check_decode(cfg)


def test_tiny_model_overfits_two_pieces(vocal_cache):
    """Features -> SDT labels -> loss (with VAT) -> posteriors -> notes -> mir_eval. The notes'
    pitch comes from the reference here: the chain under test is the segmentation (the
    pitch source is an input of the decoder, built in or a vocal_contour run; the stitching of
    overlapping windows is the shared code every task uses)."""
    cache = FeatureCache(vocal_cache)
    names = cache.names("train")[:2]
    cfg = apply_overrides(
        TASK.preset("tiny"),
        ["model.alpha=12", "model.stem_channels=8", "model.bn_momentum=0.9"]
        + ["optim.learning_rate=1e-2"],
    )
    reader = TASK.window_reader(cfg, cache, names)
    windows = [(i, s) for i in range(2) for s in range(0, cache.entry(names[i])["shape"][0], 19)]
    examples = [reader.random_map(np.array(w), None) for w in windows]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    assert batch["y"][..., 2].sum() > 10  # onsets of the sung line are in these windows
    mesh = make_mesh(ONE)
    state = init_state(TASK, cfg, mesh, make_callbacks(cfg))
    step = make_train_step(TASK.bind_loss(cfg), mesh)
    placed = put_batch(batch, mesh)
    for _ in range(200):
        state, metrics = step(state, placed)
    assert np.isfinite(float(metrics["vat"]))
    # the windows tile each piece: their posteriors, end to end, are the piece's
    probs = sigmoid(make_predict(mesh, state)(batch["x"]))
    scores = []
    for i, name in enumerate(names):
        x, labels = cache.features(name), cache.labels(name)
        piece = np.concatenate([p for (j, _), p in zip(windows, probs, strict=True) if j == i])
        reference = np.zeros(len(x))
        for onset, offset, pitch, *_ in labels["notes"]:
            reference[round(onset / 0.02) : round(offset / 0.02)] = 440 * 2 ** ((pitch - 69) / 12)
        events = TASK.decode((piece[: len(x)], reference), cfg)
        scores.append(TASK.score(events, labels, cfg))
    assert np.mean([s["note_f1"] for s in scores]) >= 0.6, scores  # measured: 0.71


def test_info_paper_size(capsys):
    assert main(["info", "vocal", "--preset", "paper"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["params"] == 28_529_666
    assert info["input_shape"] == [19, 174, 9] and info["output_shape"] == [19, 6]


@pytest.mark.parametrize("vat", ["true", "false"])
def test_train_eval_transcribe(
    vat, mixed_corpus, vocal_cache, contour_cache, tmp_path, capsys, monkeypatch
):
    wd = tmp_path / "run"
    argv = ["train", "vocal", "--preset", "tiny", "--workdir", str(wd)]
    argv += ["--data", str(vocal_cache), "--no-progress", "--set", f"data.vat={vat}"]
    assert main(argv) == 0
    records = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    assert any("val_note_f1" in r for r in records)
    assert any("vat" in r for r in records) == (vat == "true")
    assert main(["eval", "vocal", "--workdir", str(wd), "--split", "test"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"note_f1", "note_with_offset_f1", "note_precision", "note_recall"} <= set(result)
    if vat == "true":  # the notes' pitch from a trained vocal_contour run, chosen at eval time
        contour = tmp_path / "contour"
        argv = ["train", "vocal_contour", "--preset", "tiny", "--workdir", str(contour)]
        assert main([*argv, "--data", str(contour_cache), "--no-progress"]) == 0
        capsys.readouterr()
        argv = ["eval", "vocal", "--workdir", str(wd), "--split", "test"]
        assert main([*argv, "--set", f"decode.contour_workdir={contour}"]) == 0
        assert set(result) == set(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
        assert main([*argv, "--set", "model.depth=2"]) == 2  # only decode.* may change
        # given relative to where the command runs, trained with, exported: the exported
        # folder carries the contour model and works from anywhere (it named the path as
        # given, and failed elsewhere; an exported contour folder was refused)
        monkeypatch.chdir(tmp_path)
        with_contour = tmp_path / "run-c"
        argv = ["train", "vocal", "--preset", "tiny", "--workdir", str(with_contour)]
        argv += ["--data", str(vocal_cache), "--no-progress"]
        assert main([*argv, "--set", "decode.contour_workdir=contour"]) == 0
        saved = json.loads((with_contour / "config.json").read_text())["decode"]
        assert saved["contour_workdir"] == str(contour.resolve())
        exported = tmp_path / "exported"
        assert (
            main(["export", "vocal", "--workdir", str(with_contour), "--out", str(exported)]) == 0
        )
        assert (exported / "contour" / "config.json").is_file()
        assert (
            json.loads((exported / "config.json").read_text())["decode"]["contour_workdir"]
            == "contour"
        )
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        stems = (".vocals.wav", ".accompaniment.wav", ".drums.wav")
        song = next(p for p in sorted(mixed_corpus.glob("*.wav")) if not p.name.endswith(stems))
        argv = ["transcribe", "vocal", str(song), "--workdir", str(exported), "-o", "out"]
        assert main([*argv, "--no-progress"]) == 0
        assert (elsewhere / "out" / f"{song.stem}_notes.csv").is_file()
    stems = (".vocals.wav", ".accompaniment.wav", ".drums.wav")
    song = next(p for p in sorted(mixed_corpus.glob("*.wav")) if not p.name.endswith(stems))
    assert main(["transcribe", "vocal", str(song), "--workdir", str(wd), "-o", str(tmp_path)]) == 0
    stem = song.stem
    for suffix in (".mid", "_notes.csv", "_notes.png"):
        assert (tmp_path / f"{stem}{suffix}").is_file()


def test_sdt_loss_weighs_the_onset_offset_and_activity_channels_as_omnizart():
    """0.3 x the mean BCE of all six channels + 0.7 x the BCE of channels 1, 2 and 4 (each a
    mean over the frames inside the pieces): written out here, and checked by how much one
    channel's logits move the loss."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 5, 6)).astype(np.float32)
    y = (rng.uniform(size=(2, 5, 6)) < 0.4).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], np.float32)  # 7 frames
    bce = (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))) * mask[..., None]
    expected = 0.3 * bce.sum() / (7 * 6) + 0.7 * sum(bce[..., c].sum() / 7 for c in (1, 2, 4))
    assert float(sdt_loss(z, y, mask)) == pytest.approx(expected, rel=1e-5)

    def moved(channel: int) -> float:  # the loss's change when one frame's logit drops by 1
        z2 = z.copy()
        z2[0, 0, channel] -= 1.0
        return float(sdt_loss(z2, y, mask)) - float(sdt_loss(z, y, mask))

    def bce_moved(channel: int) -> float:
        a, t = z[0, 0, channel], y[0, 0, channel]
        one = lambda v: max(v, 0) - v * t + np.log1p(np.exp(-abs(v)))  # noqa: E731
        return one(a - 1.0) - one(a)

    for c in (0, 3, 5):  # only in the mean over all channels
        assert moved(c) == pytest.approx(0.3 / 42 * bce_moved(c), rel=1e-3)
    for c in (1, 2, 4):
        assert moved(c) == pytest.approx((0.3 / 42 + 0.7 / 7) * bce_moved(c), rel=1e-3)
