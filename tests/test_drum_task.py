"""The drum task: decoding, mir_eval onset scores, omnizart's loss, ENST-Drums and MDB-Drums
folders written the way the real files are, and the whole chain (a tiny model overfits two
short pieces; train, eval and transcribe through the command line)."""

import json
import re
import warnings

import jax
import numpy as np
import pytest

from jaxmir.cli import main
from jaxmir.config import ConfigError, apply_overrides
from jaxmir.data.cache import FeatureCache
from jaxmir.engine.run import init_state, make_callbacks, make_predict
from jaxmir.engine.sharding import make_mesh, put_batch
from jaxmir.engine.step import make_train_step
from jaxmir.tasks.drum.decode import decode_hits, drum_scores
from jaxmir.tasks.drum.labels import (
    CLASS_PRIORITY,
    activations,
    hinge_l1_loss,
    omnizart_output,
    weighted_bce_loss,
)
from jaxmir.tasks.drum.task import TASK

ONE = jax.devices()[:1]


def test_decode_takes_peaks_above_threshold():
    act = np.zeros((8, 13), np.float32)
    act[1, 0] = 0.9
    act[2, 0] = 0.7  # the same hit spilling onto the next mini-beat: not a second hit
    act[5, 0] = 0.6
    act[3, 4] = 0.4  # under the threshold
    act[6, 1] = act[7, 1] = 0.8  # a plateau counts once, at its start
    hits = decode_hits(act, np.arange(8) * 0.1, threshold=0.5)
    np.testing.assert_allclose(hits, [[0.1, 0], [0.5, 0], [0.6, 1]])


def test_scores_per_class_hihat_merged_and_overall():
    ref = np.array([[0.0, 36], [0.5, 36], [0.25, 38], [0.1, 42], [0.3, 46], [0.6, 44], [0.9, 49]])
    est = np.array([[0.01, 0], [0.26, 1], [0.1, 4], [0.31, 6], [0.62, 4], [0.8, 11]])
    s = drum_scores(ref, est)
    assert s["drum_kick_f1"] == pytest.approx(2 / 3)  # 1 of 2 found, no false alarm
    assert s["drum_snare_f1"] == 1.0
    assert s["drum_hihat_f1"] == 1.0  # closed, open and pedal are one hi-hat (0.62 vs 0.6 ok)
    assert s["drum_class_pedal_hihat_f1"] == 0.0  # ... but a pedal hit called closed is wrong
    assert "drum_class_ride_f1" not in s  # no ride in the reference: no per-class score
    assert s["drum_class_bass_drum_f1"] == s["drum_kick_f1"]  # the kick group is one class
    # overall: matches pooled over the 13 classes: 4 of 6 estimates, 4 of 7 references
    assert s["drum_precision"] == pytest.approx(4 / 6) and s["drum_recall"] == pytest.approx(4 / 7)
    assert drum_scores(np.zeros((0, 2)), np.zeros((0, 2))) == {}  # no drums, none found
    assert drum_scores(np.zeros((0, 2)), est)["drum_f1"] == 0.0  # false alarms still count
    # a flam (two snare hits 30 ms apart) is one hit of the snare group, two of the class: the
    # class's score had overwritten the group's under one key
    flam = np.array([[0.25, 38], [0.28, 38]])
    flammed = drum_scores(flam, np.array([[0.26, 1]]))
    assert flammed["drum_snare_f1"] == 1.0 and flammed["drum_class_snare_f1"] == pytest.approx(
        2 / 3
    )


def test_no_hits_found_scores_zero_without_mir_evals_warning():

    ref = np.array([[0.0, 36], [0.5, 38]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # mir_eval's "Estimated onsets are empty" is silenced
        s = drum_scores(ref, np.zeros((0, 2)))
    assert s["drum_kick_f1"] == s["drum_snare_f1"] == s["drum_f1"] == 0.0


@pytest.mark.parametrize(
    "seconds,signal", [(2.0, "silence"), (0.2, "tone"), (2.0, "tone"), (0.01, "tone")]
)
def test_audio_without_beats_transcribes_to_no_hits(seconds, signal, tmp_path):
    """No beats to hang the mini-beat grid on (silence, a fraction of a second, a steady tone):
    no patches, no hits, an empty CSV (its header) and an empty MIDI; the model is not called."""
    import pretty_midi
    import soundfile as sf

    from jaxmir.data.features.cqt import drum_input

    t = np.arange(int(seconds * SR)) / SR
    y = np.zeros_like(t) if signal == "silence" else 0.3 * np.sin(2 * np.pi * 440 * t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 0.01 s: librosa's "n_fft=2048 is too large" warning
        patches, mini = drum_input(y.astype(np.float32), SR)
    assert patches.shape == (0, 120, 120) and mini.shape == (0,)
    path = tmp_path / f"{signal}.wav"
    sf.write(str(path), y.astype(np.float32), SR)

    def never(windows):
        raise AssertionError("the model runs on no mini-beats")

    out = tmp_path / "out"
    written = TASK.transcribe(never, path, TASK.preset("tiny"), out)
    assert [p.name for p in written] == [
        f"{signal}{end}" for end in (".mid", "_drums.csv", "_drums.png")
    ]
    assert (out / f"{signal}_drums.csv").read_text().splitlines() == ["time,class,gm_note"]
    midi = pretty_midi.PrettyMIDI(str(out / f"{signal}.mid"))
    assert sum(len(inst.notes) for inst in midi.instruments) == 0
    # ...and the user is told why (the command line writes this note; it wrote nothing)
    note = TASK.transcription_note(path, written)
    assert note.startswith(f"{signal}.wav: no drum hits: fewer than 2 beats"), note


def test_audio_under_one_frame_is_refused_as_by_the_other_tasks(tmp_path):
    """A file of a few samples (under one CQT hop) is an input error naming the file, as in
    every other task; drum wrote empty files for it and exited 0."""
    import soundfile as sf

    from jaxmir.data.audio import AudioError

    path = tmp_path / "blip.wav"
    sf.write(str(path), np.full(3, 0.1, np.float32), SR)
    with pytest.raises(AudioError, match=r"blip\.wav.*too short: not one feature frame"):
        TASK.transcribe(None, path, TASK.preset("tiny"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_file_with_hits_gets_no_note_and_one_without_says_the_threshold(tmp_path):
    import soundfile as sf

    from jaxmir.tasks.drum.decode import write_hits_csv

    clicks = np.zeros(4 * SR, np.float32)
    for k in range(8):  # a 120-bpm click track: beats are tracked
        clicks[k * SR // 2 : k * SR // 2 + 200] = 0.8
    sf.write(str(tmp_path / "clicks.wav"), clicks, SR)
    hits = write_hits_csv(tmp_path / "clicks_drums.csv", np.array([[0.5, 0]]))
    assert TASK.transcription_note(tmp_path / "clicks.wav", [hits]) is None
    none = write_hits_csv(tmp_path / "clicks_drums.csv", np.zeros((0, 2)))
    note = TASK.transcription_note(tmp_path / "clicks.wav", [none])
    assert note == "clicks.wav: no drum hits: no activation reached decode.threshold"


def test_a_labelled_piece_without_beats_is_not_cached(tmp_path):
    """For a cache, a piece whose audio gives no beats is an error (`featurize` names and skips
    it), not a piece of no mini-beats whose labelled hits could never be found."""
    import soundfile as sf

    from jaxmir.data.records import AudioPiece

    path = tmp_path / "silence.wav"
    sf.write(str(path), np.zeros(2 * SR, np.float32), SR)
    piece = AudioPiece(name="silence", audio=path, split="train", drum_hits=np.array([[0.5, 36]]))
    with pytest.raises(ValueError, match="no beats"):
        TASK.piece_features(piece)


def test_hinge_loss_is_omnizarts():
    z = np.zeros((1, 4, 13), np.float32)  # output 50 everywhere
    y = np.zeros((1, 4, 13), np.float32)
    y[0, 0, 0] = 1.0  # |100 - 50| - 20 = 30 on one slot of class 0
    mask = np.ones((1, 4), np.float32)
    # every other slot: |0 - 50| - 20 = 30 as well: all slots cost 30
    expected = np.mean(30.0 * CLASS_PRIORITY)
    assert float(hinge_l1_loss(z, y, mask)) == pytest.approx(expected, rel=1e-6)
    z_good = np.where(y > 0, 3.0, -3.0).astype(np.float32)  # outputs ~120 / ~-20: inside 20
    assert float(hinge_l1_loss(z_good, y, mask)) == 0.0
    assert float(omnizart_output(np.float32(0.0))) == 50.0


def _bce(z, y):
    """Sigmoid cross-entropy written out (numerically stable form)."""
    return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


def test_bce_loss_has_the_hinge_losss_class_weights_and_averaging():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 4, 13)).astype(np.float32)
    y = (rng.uniform(size=(2, 4, 13)) < 0.3).astype(np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)  # 5 slots inside the pieces
    per_class = (_bce(z, y) * mask[..., None]).sum(axis=(0, 1)) / 5.0
    expected = np.mean(per_class * CLASS_PRIORITY)
    assert float(weighted_bce_loss(z, y, mask)) == pytest.approx(expected, rel=1e-5)
    z_masked = z.copy()
    z_masked[0, 3] = 50.0  # a padded slot: no effect
    assert float(weighted_bce_loss(z_masked, y, mask)) == pytest.approx(expected, rel=1e-5)


def test_unknown_loss_is_a_config_error():
    cfg = apply_overrides(TASK.preset("tiny"), ["model.loss=l2"])
    with pytest.raises(ConfigError, match="model.loss"):
        TASK.model(cfg)


@pytest.mark.parametrize("value", ["5", "-0.1", "NaN"])
def test_a_threshold_outside_0_1_exits_2_naming_the_key(value, tmp_path, capsys):
    cfg = apply_overrides(TASK.preset("tiny"), [f"decode.threshold={value}"])
    with pytest.raises(ConfigError, match="decode.threshold"):
        TASK.check_decode(cfg)
    with pytest.raises(ConfigError, match="decode.threshold"):
        TASK.decode((np.zeros((4, 13)), np.arange(4) * 0.1), cfg)
    wd = tmp_path / "run"
    argv = ["train", "drum", "--preset", "tiny", "--workdir", str(wd)]
    assert main([*argv, "--set", f"decode.threshold={value}", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decode.threshold" in err[0]
    assert not wd.exists()


def test_info_paper_size(capsys):
    assert main(["info", "drum", "--preset", "paper"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 7_700_000 < info["params"] < 7_800_000
    assert info["input_shape"] == [4, 120, 120] and info["output_shape"] == [4, 13]


def test_tiny_model_overfits_two_pieces(drum_cache):
    """features -> labels -> loss -> activations -> hits -> mir_eval, on 2 short pieces."""
    cache = FeatureCache(drum_cache)
    names = [n for n in cache.names("train") if cache.labels(n)["hits"].sum() > 0][:2]
    assert len(names) == 2
    overrides = ["model.channels=8", "model.dense=64", "model.input_pool=2"]
    cfg = apply_overrides(TASK.preset("tiny"), [*overrides, "optim.learning_rate=3e-3"])
    reader = TASK.window_reader(cfg, cache, names)
    t = cfg.model.timesteps
    windows = [(i, s) for i in range(2) for s in range(0, cache.entry(names[i])["shape"][0], t)]
    examples = [reader.random_map(np.array(w), None) for w in windows]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    mesh = make_mesh(ONE)
    state = init_state(TASK, cfg, mesh, make_callbacks(cfg, TASK))
    step = make_train_step(TASK.bind_loss(cfg), mesh)
    placed = put_batch(batch, mesh)
    for _ in range(200):
        state, metrics = step(state, placed)
    # the windows tile each piece: their outputs, end to end, are the piece's
    z = make_predict(mesh, state)(batch["x"])
    scores = []
    for i, name in enumerate(names):
        x, labels = cache.features(name), cache.labels(name)
        piece = np.concatenate([w for (j, _), w in zip(windows, z, strict=True) if j == i])
        act = activations(piece[: len(x)], cfg.model.loss)
        scores.append(TASK.score(TASK.decode((act, labels["mini_beats"]), cfg), labels, cfg))
    for key in ("drum_kick_f1", "drum_snare_f1", "drum_hihat_f1", "drum_f1"):
        assert np.mean([s[key] for s in scores if key in s]) >= 0.8, (key, scores)


def test_spectral_norm_vectors_are_checkpointed(drum_cache, tmp_path):
    wd = tmp_path / "run"
    argv = ["train", "drum", "--preset", "tiny", "--workdir", str(wd), "--data", str(drum_cache)]
    assert main([*argv, "--no-progress"]) == 0
    from jaxmir.engine.run import restore_for_inference

    _, _, state, _ = restore_for_inference(TASK, wd)
    fresh = init_state(TASK, TASK.preset("tiny"), make_mesh(ONE), [])
    vectors = jax.tree_util.tree_leaves(state.batch_stats)
    assert vectors, "spectral norm keeps its power-iteration vectors in batch_stats"
    moved = [
        not np.allclose(a, b)
        for a, b in zip(vectors, jax.tree_util.tree_leaves(fresh.batch_stats), strict=True)
    ]
    assert any(moved)  # trained vectors were saved and restored, not re-initialised


def test_train_eval_transcribe(mixed_corpus, drum_cache, tmp_path, capsys, monkeypatch):
    wd = tmp_path / "run"
    argv = ["train", "drum", "--preset", "tiny", "--workdir", str(wd)]
    assert main([*argv, "--data", str(drum_cache), "--no-progress"]) == 0
    records = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    assert any("val_drum_f1" in r for r in records)
    assert main(["eval", "drum", "--workdir", str(wd), "--split", "test"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"drum_f1", "drum_kick_f1", "drum_snare_f1", "drum_hihat_f1"} <= set(result)
    stems = (".vocals.wav", ".accompaniment.wav", ".drums.wav")
    song = next(p for p in sorted(mixed_corpus.glob("*.wav")) if not p.name.endswith(stems))
    out = tmp_path / "out"
    import jaxmir.tasks.drum.task as drum_task

    batches = []  # `--batch-size` reaches a task that transcribes each file in one call

    def predict_piece(*args, batch_size, **kwargs):
        batches.append(batch_size)
        return original(*args, batch_size=batch_size, **kwargs)

    original = drum_task.predict_piece
    monkeypatch.setattr(drum_task, "predict_piece", predict_piece)
    capsys.readouterr()
    argv = ["transcribe", "drum", str(song), "--workdir", str(wd), "-o", str(out)]
    assert main([*argv, "--batch-size", "3", "--no-progress"]) == 0
    assert batches == [3]
    # its features, decode and write are timed as one sum, not as zeros
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    unsplit = re.search(r"\(features\+decode\+write ([\d.]+), model [\d.]+\)", summary)
    assert unsplit and float(unsplit.group(1)) > 0, summary
    rows = (out / f"{song.stem}_drums.csv").read_text().splitlines()
    assert rows[0] == "time,class,gm_note"
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(str(out / f"{song.stem}.mid"))
    assert all(inst.is_drum for inst in midi.instruments)  # GM channel 10
    assert (out / f"{song.stem}_drums.png").is_file()


# -- ENST-Drums and MDB-Drums, as the real files are ----------------------------------------------
SR = 44100
BEAT = 0.5  # 120 BPM


def _drum_audio(path, seconds=8.0):
    """A rock beat: kick on 1 and 3, snare on 2 and 4, closed hi-hat on every eighth."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    y = np.zeros(int(seconds * SR), np.float32)
    t = np.arange(int(0.2 * SR)) / SR
    kick = np.sin(2 * np.pi * 60 * t) * np.exp(-t * 25)
    snare = rng.standard_normal(len(t)) * np.exp(-t * 30) * 0.6
    hat = np.diff(rng.standard_normal(len(t) + 1)) * np.exp(-t * 120) * 0.2
    hits = []
    for k in range(int(seconds / BEAT * 2)):
        time = k * BEAT / 2
        hits.append((time, "hat"))
        if k % 4 == 0:
            hits.append((time, "kick"))
        if k % 4 == 2:
            hits.append((time, "snare"))
    for time, kind in hits:
        i = int(time * SR)
        sound = {"kick": kick, "snare": snare, "hat": hat}[kind]
        n = min(len(sound), len(y) - i)
        y[i : i + n] += sound[:n]
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), 0.5 * y / np.abs(y).max(), SR)
    return hits


def enst_folder(root):
    """drummer_<n>/audio/wet_mix/<take>.wav and drummer_<n>/annotation/<take>.txt, whose lines
    are `<time> \\t<label>` (ENST's labels: bd, sd, chh, ...; times with 4 decimals)."""
    names = {"kick": "bd", "snare": "sd", "hat": "chh"}
    for drummer, take in [(1, "001_hits_rock"), (2, "012_phrase_rock"), (2, "045_phrase_disco")]:
        d = root / f"drummer_{drummer}"
        hits = _drum_audio(d / "audio" / "wet_mix" / f"{take}.wav")
        lines = [f"{time:.4f} \t{names[kind]}" for time, kind in sorted(hits)]
        (d / "annotation").mkdir(parents=True, exist_ok=True)
        (d / "annotation" / f"{take}.txt").write_text("\n".join(lines) + "\n")


def mdb_folder(root):
    """audio/full_mix/<track>_MIX.wav, annotations/subclass/<track>_subclass.txt and
    annotations/class/<track>_class.txt (`<time>\\t<label>`, labels KD, SD, CHH / KD, SD, HH)."""
    sub = {"kick": "KD", "snare": "SD", "hat": "CHH"}
    cls = {"kick": "KD", "snare": "SD", "hat": "HH"}
    for track in ("MusicDelta_Disco", "MusicDelta_Rock", "MusicDelta_Zeppelin"):
        hits = _drum_audio(root / "audio" / "full_mix" / f"{track}_MIX.wav")
        for level, names in (("subclass", sub), ("class", cls)):
            folder = root / "annotations" / level
            folder.mkdir(parents=True, exist_ok=True)
            lines = [f"{time:.6f}\t{names[kind]}" for time, kind in sorted(hits)]
            (folder / f"{track}_{level}.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("dataset", ["enst", "mdb_drums"])
def test_drum_dataset_folders_train(dataset, tmp_path, capsys):
    root = tmp_path / dataset
    (enst_folder if dataset == "enst" else mdb_folder)(root)
    cache_dir = tmp_path / "cache"
    argv = ["features", "drum", "--dataset", dataset, "--root", str(root)]
    assert main([*argv, "--out", str(cache_dir)]) == 0
    cache = FeatureCache(cache_dir)
    assert len(cache.manifest["pieces"]) == 3
    name = cache.manifest["pieces"][0]["name"]
    labels = cache.labels(name)
    # librosa's tracker found the 120-BPM beat: mini-beats every 62.5 ms (+-15 %)
    step = np.median(np.diff(labels["mini_beats"]))
    assert 0.053 < step < 0.072, step
    # every kick (36), snare (38) and closed hi-hat (42) hit is on a mini-beat of its class
    assert labels["hits"][:, [0, 1, 4]].sum() == len(labels["drum_hits"])
    assert sorted(p["split"] for p in cache.manifest["pieces"]) == ["test", "train", "val"]
    wd = tmp_path / "run"
    argv = ["train", "drum", "--preset", "tiny", "--workdir", str(wd), "--data", str(cache_dir)]
    assert main([*argv, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", "drum", "--workdir", str(wd), "--split", "test"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"drum_kick_f1", "drum_snare_f1", "drum_hihat_f1"} <= set(result)


def test_conv_impl_reaches_the_network_and_both_paths_agree():
    cfg = TASK.preset("tiny")
    x = np.random.default_rng(0).normal(size=(2, *TASK.input_spec(cfg).shape)).astype(np.float32)
    outputs = []
    for impl in ("native", "matmul"):
        model = TASK.model(apply_overrides(cfg, [f"model.conv_impl={impl}"]))
        assert model.net.conv_impl == impl
        variables = model.init(jax.random.key(0), x)
        outputs.append(np.asarray(model.apply(variables, x)))
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-4, atol=1e-4)
