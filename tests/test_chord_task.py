"""The chord task: labels, transposition, decoding, mir_eval scores, the slope as state, a
Billboard folder written the way the real files are (X segments included), and the whole chain
(a tiny model overfits two short pieces; train, eval and transcribe through the command line)."""

import json

import jax
import numpy as np
import pytest

from jaxmir.cli import main
from jaxmir.config import OptimConfig, apply_overrides
from jaxmir.data.cache import FeatureCache
from jaxmir.data.features.chroma import SEGMENT_WIDTH
from jaxmir.engine.optim import make_optimizer
from jaxmir.engine.run import init_state, make_callbacks, make_predict
from jaxmir.engine.sharding import make_mesh, put_batch
from jaxmir.engine.state import learning_rate
from jaxmir.engine.step import make_train_step
from jaxmir.tasks.chord.decode import decode_chords
from jaxmir.tasks.chord.labels import Transpose, change_flags, class_name, segment_classes
from jaxmir.tasks.chord.task import TASK, AnnealSlope, chord_scores, weight_l2

ONE = jax.devices()[:1]
C_MAJOR = (3, 7, 10)  # C, E, G in the chroma's A-first order


def test_segment_classes_and_changes():
    times = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 9.0])
    intervals = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]])
    classes = segment_classes(times, intervals, ("C:maj", "A:min", "G:sus4"))
    assert classes.tolist() == [0, 0, 21, 21, 25, 25, 24]  # sus4 -> X; past the end -> N
    assert change_flags(classes).tolist() == [1, 0, 1, 0, 1, 0, 1]
    assert [class_name(c) for c in (0, 13, 24, 25)] == ["C:maj", "C#:min", "N", "X"]


def test_transposition_moves_chroma_and_chord_together():
    frame = np.zeros(24, np.float32)
    frame[[12 + k for k in C_MAJOR]] = 1.0  # treble C major
    frame[3] = 1.0  # bass C
    x = np.tile(frame, (4, SEGMENT_WIDTH))  # 4 segments of 21 frames
    element = {"x": x, "chord": np.array([0, 0, 25, 24], np.int32)}

    class Fixed:
        def integers(self, n):
            return 2

    out = Transpose().random_map(element, Fixed())
    moved = out["x"].reshape(4, SEGMENT_WIDTH, 24)[0, 0]
    assert np.flatnonzero(moved[12:]).tolist() == [0, 5, 9]  # A, D, F#: D major
    assert np.flatnonzero(moved[:12]).tolist() == [5]
    assert out["chord"].tolist() == [2, 2, 25, 24]  # D:maj; X and N stay


def test_decode_merges_neighbours_and_short_chords():
    probs = np.full((6, 25), 0.01)
    for s, c in enumerate([0, 0, 7, 7, 9, 24]):
        probs[s, c] = 1.0
    intervals, labels = decode_chords(probs, np.arange(6) * 0.5, 3.0, min_seconds=0.1)
    assert labels == ["C:maj", "G:maj", "A:maj", "N"]
    np.testing.assert_allclose(intervals, [[0, 0.75], [0.75, 1.75], [1.75, 2.25], [2.25, 3.0]])
    # a chord shorter than min_seconds joins the one before it
    intervals, labels = decode_chords(probs, np.arange(6) * 0.5, 3.0, min_seconds=0.6)
    assert labels == ["C:maj", "G:maj", "N"]  # A:maj (0.5 s) joined G:maj
    np.testing.assert_allclose(intervals, [[0, 0.75], [0.75, 2.25], [2.25, 3.0]])


def test_decode_cuts_the_last_chord_at_the_audios_end():
    probs = np.full((6, 25), 0.01)
    for s, c in enumerate([0, 0, 7, 7, 9, 24]):
        probs[s, c] = 1.0
    times = np.arange(6) * 0.5
    intervals, labels = decode_chords(probs, times, 3.0, min_seconds=0.1, end=2.5)
    assert labels == ["C:maj", "G:maj", "A:maj", "N"]  # N's segment cut to [2.25, 2.5]
    np.testing.assert_allclose(intervals, [[0, 0.75], [0.75, 1.75], [1.75, 2.25], [2.25, 2.5]])
    # segments starting at or after the end are dropped; one cut under min_seconds is merged
    intervals, labels = decode_chords(probs, times, 3.0, min_seconds=0.1, end=1.8)
    assert labels == ["C:maj", "G:maj"] and intervals[-1, 1] == pytest.approx(1.8)
    # a fraction of a second: one segment, cut at the audio's end
    intervals, labels = decode_chords(probs[-1:], times[:1], 0.35, end=0.2)
    assert labels == ["N"]
    np.testing.assert_allclose(intervals, [[0.0, 0.2]])


def test_transcription_ends_with_the_audio(tmp_path):
    """A file's posteriors carry its duration (from the file), and no chord runs past it; the
    picture of a one-segment file is drawn without matplotlib's singular-limits warning."""
    import warnings

    import soundfile as sf

    from jaxmir.data.features.chroma import SR

    def predict(windows):  # N everywhere (logits: class 24 high)
        out = np.zeros((*windows.shape[:2], 26), np.float32)
        out[..., 24] = 5.0
        return out

    cfg = TASK.preset("tiny")
    for seconds in (4.0, 0.2):
        path = tmp_path / f"tone{seconds}.wav"
        t = np.arange(int(seconds * SR)) / SR
        sf.write(str(path), (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            written = TASK.transcribe(predict, path, cfg, tmp_path / "out")
        rows = [r.split(",") for r in written[0].read_text().splitlines()[1:]]
        assert rows and float(rows[-1][1]) == pytest.approx(seconds, abs=1e-6), rows
        assert all(float(a) < float(b) <= seconds + 1e-9 for a, b, _ in rows)


def test_duration_without_a_header_is_decoded_once_per_file_version(tmp_path, monkeypatch):
    """A file whose header cannot tell its length (m4a) is decoded for its duration once, not
    on every validation pass; a rewritten file is measured again."""
    import os

    import jaxmir.data.audio as audio_mod
    import jaxmir.data.featurize as featurize_mod
    from jaxmir.tasks.chord.task import audio_duration

    path = tmp_path / "song.m4a"
    path.write_bytes(b"x" * 10)
    calls = []

    def fake_load(p, sr):
        calls.append(p)
        return np.zeros(int(2.5 * sr) if len(calls) == 1 else 3 * sr, np.float32)

    monkeypatch.setattr(featurize_mod, "audio_seconds", lambda p: None)
    monkeypatch.setattr(audio_mod, "load_audio", fake_load)
    assert [audio_duration(path) for _ in range(3)] == [2.5, 2.5, 2.5]
    assert len(calls) == 1
    path.write_bytes(b"y" * 11)
    os.utime(path, ns=(1, 1))
    assert audio_duration(path) == pytest.approx(3.0) and len(calls) == 2


def test_decode_values_are_checked():
    from jaxmir.config import ConfigError

    cfg = apply_overrides(TASK.preset("tiny"), ["decode.min_seconds=-1"])
    with pytest.raises(ConfigError, match="decode.min_seconds"):
        TASK.check_decode(cfg)
    with pytest.raises(ConfigError, match="decode.min_seconds"):
        TASK.decode({"chord": np.zeros((1, 25)), "times": np.zeros(1)}, cfg)


def test_scores_skip_x_in_the_reference():
    ref = np.array([[0.0, 2.0], [2.0, 3.0], [3.0, 4.0]])
    est_intervals = np.array([[0.0, 4.0]])
    scores = chord_scores(ref, ["C:maj", "X", "A:min"], est_intervals, ["C:maj"])
    assert scores["chord_majmin"] == pytest.approx(2.0 / 3.0)  # X's second is not counted
    assert set(scores) == {"chord_majmin", "chord_root", "chord_thirds", "chord_mirex"}


def test_slope_is_state_and_grows_each_epoch(chord_cache):
    cfg = TASK.preset("tiny")
    mesh = make_mesh(ONE)
    callbacks = make_callbacks(cfg, TASK)
    assert isinstance(callbacks[0], AnnealSlope)
    state = init_state(TASK, cfg, mesh, callbacks)
    (slope,) = [
        v for p, v in jax.tree_util.tree_leaves_with_path(state.batch_stats) if p[-1].key == "slope"
    ]
    assert float(slope) == 1.0
    state, _ = callbacks[0](state, {"epoch": 1})
    state, _ = callbacks[0](state, {"epoch": 2})
    (slope,) = jax.tree_util.tree_leaves(state.batch_stats)
    assert float(slope) == pytest.approx(1.21)


def test_l2_skips_biases():
    params = {"Dense_0": {"kernel": np.ones((2, 3)), "bias": np.ones(3)}, "w": np.full(2, 2.0)}
    assert float(weight_l2(params)) == pytest.approx(0.5 * (6 + 8))


def test_training_loss_is_change_ce_x3_plus_smoothed_chord_ce_plus_l2():
    """omnizart's chord loss written out: 3 x the change's sigmoid-CE + the chord's softmax-CE
    with labels smoothed by 0.1 (both means over the segments that are not X) + 2e-4 x the
    weights' l2 (biases skipped)."""
    cfg = TASK.preset("tiny")
    classes = cfg.model.classes
    rng = np.random.default_rng(0)
    out = rng.normal(size=(1, 4, classes + 1)).astype(np.float32)
    chord = np.array([[0, 5, 3, 7]], np.int32)
    change = np.array([[1.0, 0.0, 1.0, 0.0]], np.float32)
    valid = np.array([[1.0, 1.0, 0.0, 1.0]], np.float32)  # segment 2: X or padding
    params = {"Dense_0": {"kernel": np.full((2, 2), 0.5, np.float32), "bias": np.ones(2)}}
    batch = {"x": np.zeros((1, 4, 1), np.float32), "chord": chord, "change": change, "valid": valid}
    value, (metrics, _) = TASK.bind_loss(cfg)(
        lambda variables, x, train: out, {"params": params}, batch, None, False
    )
    logits, z = out[..., :classes], out[..., classes]
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    smoothed = np.eye(classes)[chord] * 0.9 + 0.1 / classes
    chord_ce = (-(smoothed * log_p).sum(-1) * valid).sum() / 3
    change_ce = ((np.maximum(z, 0) - z * change + np.log1p(np.exp(-np.abs(z)))) * valid).sum() / 3
    l2 = 0.5 * 4 * 0.25
    assert float(value) == pytest.approx(chord_ce + 3 * change_ce + 2e-4 * l2, rel=1e-5)
    assert float(metrics["chord_change_loss"]) == pytest.approx(change_ce, rel=1e-5)


def test_transposition_is_on_for_training_only_and_switched_by_data_transpose(chord_cache):
    cfg = TASK.preset("tiny")
    off = apply_overrides(cfg, ["data.transpose=false"])
    cache = FeatureCache(chord_cache)

    def first(c, train):
        ds = TASK.dataset(c, cache, "train", train)
        return [ds[i] for i in range(8)]

    plain = first(off, True)
    moved = first(cfg, True)
    same = [np.array_equal(a["x"], b["x"]) for a, b in zip(plain, moved, strict=True)]
    assert not all(same)  # 8 draws of 0-11 semitones: some move
    for a, b, kept in zip(plain, moved, same, strict=True):
        if not kept:  # moved: the chroma's pitch classes rolled, the labels moved with them
            assert not np.array_equal(a["chord"], b["chord"]) or not (a["valid"] > 0).any()
    assert all(
        np.array_equal(a["x"], b["x"])
        for a, b in zip(first(cfg, False), first(off, False), strict=True)
    )


def test_exponential_steps_is_an_optax_staircase():
    tx = make_optimizer(
        OptimConfig(
            learning_rate=1e-3,
            lr_schedule="exponential_steps",
            decay_rate=0.5,
            decay_steps=2,
            grad_clip_value=1.0,
        )
    )
    params = {"w": jax.numpy.ones(3)}
    opt = tx.init(params)
    seen = []
    for _ in range(5):
        _, opt = tx.update({"w": jax.numpy.ones(3)}, opt, params)

        class S:
            opt_state = opt

        seen.append(learning_rate(S))
    np.testing.assert_allclose(
        seen, [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4], rtol=1e-6
    )  # update k: lr(k - 1)


def test_info_paper_size(capsys):
    assert main(["info", "chord", "--preset", "paper"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["omnizart_params"] == 11_054_610  # omnizart's Keras count
    assert info["params"] == 11_054_610 + 2 * 9 * 12 + 2 * 33 * 64  # + learned relative tables
    assert info["input_shape"] == [100, 504] and info["output_shape"] == [100, 27]


def test_tiny_model_overfits_two_pieces(chord_cache):
    """features -> labels -> loss -> posteriors -> chords -> mir_eval, on 2 short pieces."""
    cache = FeatureCache(chord_cache)
    names = cache.names("train")[:2]
    cfg = apply_overrides(TASK.preset("tiny"), ["model.dropout=0.0", "model.hidden=32"])
    reader = TASK.window_reader(cfg, cache, names)
    t = cfg.model.timesteps
    windows = [(i, 0) for i in range(2)]
    examples = [reader.random_map(np.array(w), None) for w in windows]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    assert batch["valid"].sum() > 20
    mesh = make_mesh(ONE)
    state = init_state(TASK, cfg, mesh, make_callbacks(cfg, TASK))
    step = make_train_step(TASK.bind_loss(cfg), mesh)
    placed = put_batch(batch, mesh)
    for _ in range(150):
        state, metrics = step(state, placed)
    assert float(metrics["accuracy"]) > 0.9
    predict = make_predict(mesh, state)
    scores = []
    for name in names:
        x, labels = cache.features(name), cache.labels(name)
        assert len(x) <= t
        events = TASK.decode(TASK.posteriors(predict, x, cfg), cfg)
        scores.append(TASK.score(events, labels, cfg)["chord_majmin"])
    assert np.mean(scores) >= 0.8, scores


def test_train_eval_transcribe(mixed_corpus, chord_cache, tmp_path, capsys, monkeypatch):
    wd = tmp_path / "run"
    argv = ["train", "chord", "--preset", "tiny", "--workdir", str(wd)]
    assert main([*argv, "--data", str(chord_cache), "--no-progress"]) == 0
    records = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    assert any("val_chord_majmin" in r for r in records)
    # the change slope is model state: the checkpoint holds its annealed value (1.1 per epoch)
    from jaxmir.engine.run import restore_for_inference

    cfg, _, state, _ = restore_for_inference(TASK, wd)
    (slope,) = jax.tree_util.tree_leaves(state.batch_stats)
    epochs = np.log(float(slope)) / np.log(1.1)
    assert 1 <= round(epochs) <= cfg.train.epochs and epochs == pytest.approx(
        round(epochs), abs=1e-3
    )
    assert main(["eval", "chord", "--workdir", str(wd), "--split", "test"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"chord_majmin", "chord_root", "chord_thirds", "chord_mirex"} <= set(result)
    stems = (".vocals.wav", ".accompaniment.wav", ".drums.wav")
    song = next(p for p in sorted(mixed_corpus.glob("*.wav")) if not p.name.endswith(stems))
    out = tmp_path / "out"
    import jaxmir.tasks.chord.task as chord_task

    batches = []  # `--batch-size` reaches a task that batches its own windows

    def predict_piece(*args, batch_size, **kwargs):
        batches.append(batch_size)
        return original(*args, batch_size=batch_size, **kwargs)

    original = chord_task.predict_piece
    monkeypatch.setattr(chord_task, "predict_piece", predict_piece)
    argv = ["transcribe", "chord", str(song), "--workdir", str(wd), "-o", str(out)]
    assert main([*argv, "--batch-size", "3"]) == 0
    assert batches == [3]
    rows = (out / f"{song.stem}_chords.csv").read_text().splitlines()
    assert rows[0] == "start,end,chord" and len(rows) > 1
    assert (out / f"{song.stem}.mid").is_file() and (out / f"{song.stem}_chords.png").is_file()


def test_an_ensemble_of_a_task_without_calibration_keeps_the_run_decoding(chord_cache, tmp_path):
    """`jaxmir export --member` for a task that does not calibrate: the folder averages both
    runs' outputs, keeps the first run's decoding and scores the test split for the ensemble."""
    import numpy as np

    from jaxmir.engine.ensemble import members_of
    from jaxmir.engine.run import make_predict, restore_for_inference
    from jaxmir.shipped import load_model
    from jaxmir.tasks.base import get_task

    runs = [tmp_path / "seed0", tmp_path / "seed1"]
    for seed, wd in enumerate(runs):
        argv = ["train", "chord", "--preset", "tiny", "--workdir", str(wd), "--no-progress"]
        assert main([*argv, "--data", str(chord_cache), "--set", f"train.seed={seed}"]) == 0
    folder = tmp_path / "ensemble"
    argv = ["export", "chord", "--workdir", str(runs[0]), "--member", str(runs[1])]
    assert main([*argv, "--out", str(folder), "--no-progress"]) == 0
    task = get_task("chord")
    cfg, mesh, state = load_model(task, folder)
    first = restore_for_inference(task, runs[0])
    assert members_of(state) == 2 and cfg.decode == first[0].decode
    meta = json.loads((folder / "model.json").read_text())
    assert "calibration" not in meta and 0.0 <= meta["eval_test"]["chord_majmin"] <= 1.0
    x = np.random.default_rng(0).normal(size=(2, *task.input_spec(cfg).shape)).astype(np.float32)
    outs = [make_predict(m, st)(x) for _, m, st, _ in (first, restore_for_inference(task, runs[1]))]
    np.testing.assert_allclose(
        make_predict(mesh, state)(x), (outs[0] + outs[1]) / 2, rtol=1e-5, atol=1e-5
    )


# -- McGill Billboard, as the real files are ------------------------------------------------------
TRIADS = {"C:maj": (3, 7, 10), "A:min": (0, 3, 7), "G:maj": (10, 2, 5), "F:maj": (8, 0, 3)}


def _chroma_csv(path, progression, seconds, rng):
    """bothchroma.csv as sonic-annotator wrote it: the quoted audio path on the first row only
    (an empty field on the others), 9-decimal times every 2048 / 44100 s, 24 values (bass,
    treble) with some in exponent notation."""
    lines = []
    n = int(seconds / (2048 / 44100))
    for i in range(n):
        t = i * 2048 / 44100
        label = next(lab for start, end, lab in progression if start <= t < end)
        values = rng.uniform(0, 0.05, 24)
        if label in TRIADS:
            root = TRIADS[label][0]
            values[root] += 1.5
            for k in TRIADS[label]:
                values[12 + k] += rng.uniform(1.0, 2.5)
        first = '"/tmp/audio.wav"' if i == 0 else ""
        cells = [f"{v:g}" if v > 1e-4 else f"{v:.5e}" for v in values]
        lines.append(",".join([first, f"{t:.9f}", *cells]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _lab(path, progression):
    """majmin.lab: tab-separated, times in exponent notation where small, an empty last line."""

    def number(v):
        return f"{v:.7e}".replace("e-0", "e-") if 0 < v < 0.1 else repr(float(v))

    rows = [f"{number(a)}\t{number(b)}\t{lab}" for a, b, lab in progression]
    path.write_text("\n".join(rows) + "\n\n")


def billboard_folder(root, rng):
    """Two train songs, one val and one test (id > 1000), each with N, X and triads."""
    base = [(0.0, 7.3469387e-2, "N"), (7.3469387e-2, 2.0, "C:maj"), (2.0, 4.0, "A:min"),
            (4.0, 5.5, "X"), (5.5, 7.5, "F:maj"), (7.5, 10.0, "G:maj"), (10.0, 12.0, "X"),
            (12.0, 14.0, "C:maj")]  # fmt: skip
    for pid in ("0003", "0012", "0014", "1200"):  # train, train, val, test
        folder = root / "McGill-Billboard" / pid
        _chroma_csv(folder / "bothchroma.csv", base, 14.0, rng)
        _lab(folder / "majmin.lab", base)


def test_billboard_folder_trains_with_x_masked(tmp_path, capsys):
    root = tmp_path / "billboard"
    billboard_folder(root, np.random.default_rng(0))
    cache_dir = tmp_path / "cache"
    argv = ["features", "chord", "--dataset", "billboard", "--root", str(root)]
    assert main([*argv, "--out", str(cache_dir)]) == 0
    cache = FeatureCache(cache_dir)
    assert cache.names("test") == ["1200"]
    labels = cache.labels("0003")
    x_share = np.mean(labels["chord"] == 25)
    assert 0.2 < x_share < 0.35  # X: 3.5 s of 14 s
    cfg = TASK.preset("tiny")
    reader = TASK.window_reader(cfg, cache, ["0003"])
    example = reader.random_map(np.array([0, 0]), None)
    np.testing.assert_array_equal(
        example["valid"] > 0, example["mask"] * (example["chord"] != 25) > 0
    )
    assert example["valid"].sum() < example["mask"].sum()  # X segments are out of the loss
    wd = tmp_path / "run"
    argv = ["train", "chord", "--preset", "tiny", "--workdir", str(wd), "--data", str(cache_dir)]
    assert main([*argv, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", "chord", "--workdir", str(wd), "--split", "test"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= result["chord_majmin"] <= 1.0


def test_billboard_chroma_at_another_rate_is_refused(tmp_path, capsys):
    root = tmp_path / "billboard"
    billboard_folder(root, np.random.default_rng(0))
    csv = root / "McGill-Billboard" / "0003" / "bothchroma.csv"
    rows = csv.read_text().splitlines()
    rows = [r.replace(r.split(",")[1], f"{i * 0.02:.9f}", 1) for i, r in enumerate(rows)]
    csv.write_text("\n".join(rows) + "\n")
    pieces = TASK.read_pieces("billboard", root)[0]
    with pytest.raises(ValueError, match="bothchroma.csv: frames every 20.0 ms"):
        TASK.piece_features(next(p for p in pieces if p.name == "0003"))
