"""The beat task's downbeat tagger: beat-synchronous features, targets, network, training,
calibration, export."""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import mir_eval
import numpy as np
import pytest

from jaxmir.cli import main
from jaxmir.tasks.beat.bars import (
    N_BAR_FEATURES,
    PITCH_CLASS_BLOCKS,
    WINDOW,
    BarTagger,
    TaggerEnsemble,
    bar_features,
    downbeat_targets,
    notes_from_features,
    transpose,
    windows,
)
from jaxmir.tasks.beat.labels import beat_features
from jaxmir.tasks.beat.tagger import (
    TAGGER_SIZE_FILE,
    TAGGER_VARIABLES,
    TaggerSize,
    load_tagger,
    marked_downbeats,
    piece_examples,
    save_tagger,
    tagger_loss,
    tagger_probs,
    train_tagger,
)


def test_notes_come_back_from_the_features_at_frame_resolution():
    notes = np.array(
        [
            [0.004, 0.5, 60],  # onset rounds to frame 0
            [0.25, 0.30, 60],  # re-struck while the first still sounds: the first ends here
            [1.0, 1.002, 72],  # shorter than a frame: sounds one frame
            [0.5, 2.0, 21],  # lowest key
            [0.7, 0.9, 20],  # below the roll: dropped by the features
        ]
    )
    x = beat_features(notes, 220)
    got = notes_from_features(x)
    # the duration roll is the union of a key's notes: the re-struck note lasts to 0.5 s
    expected = np.array([[0.0, 0.25, 60], [0.25, 0.5, 60], [0.5, 2.0, 21], [1.0, 1.01, 72]])
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert notes_from_features(np.zeros((10, 178), np.float32)).shape == (0, 3)


def _piece():
    """Three beats at 1 s: a C major chord with a C2 bass held 2 beats, then G over C held,
    then silence."""
    notes = [[0.0, 2.0, 36], [0.0, 0.9, 60], [0.0, 0.9, 64], [0.0, 0.9, 67], [1.02, 1.5, 67]]
    return np.array(notes, np.float64), np.array([0.0, 1.0, 2.0])


def test_bar_features_describe_each_beat():
    notes, beats = _piece()
    f = bar_features(notes, beats)
    assert f.shape == (3, N_BAR_FEATURES) and f.dtype == np.float32
    # beat 0: C, E, G and the bass start; the bass (2 beats) weighs most
    assert f[0, 0] == 1.0 and 0 < f[0, 4] < 1 and f[0, 4] == f[0, 7]
    np.testing.assert_array_equal(np.flatnonzero(f[0, 12:24]), [0, 4, 7])
    np.testing.assert_array_equal(np.flatnonzero(f[0, 24:36]), [0])  # C bass
    np.testing.assert_allclose(f[0, 36:39], np.log1p([4, 4, 0]))
    np.testing.assert_allclose(f[0, 39], np.log1p(2.0), rtol=1e-6)
    # beat 1: a G starts 20 ms late (inside the tolerance) over the held bass
    np.testing.assert_array_equal(np.flatnonzero(f[1, 0:12]), [7])
    np.testing.assert_array_equal(np.flatnonzero(f[1, 12:24]), [0, 7])
    np.testing.assert_allclose(f[1, 36:39], np.log1p([1, 1, 1]))
    assert f[1, 44] == 0.0 and 0 < f[1, 45] < 1  # harmony moved, not wholly
    # beat 2: nothing starts or sounds
    assert f[2, 44] == 1.0 and not f[2, :36].any() and f[2, 45] == 1.0
    np.testing.assert_allclose(f[:, 43], 0.0, atol=1e-6)  # even intervals
    assert bar_features(np.zeros((0, 3)), beats)[:, 44].tolist() == [1.0, 1.0, 1.0]
    assert bar_features(notes, np.zeros(0)).shape == (0, N_BAR_FEATURES)


def test_transposing_the_notes_rotates_the_pitch_class_columns():
    notes, beats = _piece()
    moved = notes.copy()
    moved[:, 2] += 5
    a, b = transpose(bar_features(notes, beats), 5), bar_features(moved, beats)
    register = [41, 42]
    keep = [c for c in range(N_BAR_FEATURES) if c not in register]
    np.testing.assert_allclose(a[:, keep], b[:, keep], atol=1e-6)
    assert not np.allclose(a[:, register], b[:, register])
    assert sum(s.stop - s.start for s in PITCH_CLASS_BLOCKS) == 36


def test_downbeat_targets_mark_the_nearest_beat_within_the_tolerance():
    beats = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    downbeats = np.array([0.03, 1.46, 2.3])  # 2.3 s: no beat within 70 ms
    np.testing.assert_array_equal(downbeat_targets(beats, downbeats), [1, 0, 0, 1, 0, 0])
    assert downbeat_targets(beats, []).sum() == 0 and len(downbeat_targets([], downbeats)) == 0


def test_windows_cover_every_beat_and_pad_the_last():
    f = np.random.default_rng(0).normal(size=(100, N_BAR_FEATURES)).astype(np.float32)
    y = (np.arange(100) % 3 == 0).astype(np.float32)
    ws = windows(f, y, window=WINDOW)
    assert len(ws) == 3 and all(w["x"].shape == (WINDOW, N_BAR_FEATURES) for w in ws)
    np.testing.assert_array_equal(ws[1]["x"][:WINDOW], f[32:96])
    np.testing.assert_array_equal(ws[2]["mask"], np.r_[np.ones(36), np.zeros(28)])
    assert ws[2]["y"][:36].tolist() == y[64:].tolist()
    assert len(windows(f[:5], y[:5])) == 1


def test_tagger_shape_and_parameter_count():
    model = BarTagger(hidden=32, num_layers=2)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, WINDOW, N_BAR_FEATURES)))
    )
    count = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))
    lstm = lambda n_in, h: 2 * 4 * (h * (n_in + h) + h)  # noqa: E731 (Keras' count, both ways)
    expected = 2 * N_BAR_FEATURES + (N_BAR_FEATURES * 32 + 32) + lstm(32, 32) + lstm(64, 32) + 65
    assert count == expected == 43_133
    out = jax.eval_shape(model.apply, shapes, jnp.zeros((2, WINDOW, N_BAR_FEATURES)))
    assert out.shape == (2, WINDOW)
    assert TaggerSize(32, 2).param_count() == 43_133


def test_an_ensemble_is_its_members_side_by_side_and_tags_with_their_mean(tmp_path):
    """Each member is a BarTagger with weights of its own; the stored ensemble tags a beat
    with the mean of the members' probabilities, and its loss is the mean of theirs."""
    size = TaggerSize(8, 1, members=3)
    x = np.random.default_rng(0).normal(size=(WINDOW, N_BAR_FEATURES)).astype(np.float32)
    variables = size.module().init(jax.random.PRNGKey(0), jnp.asarray(x[None]))
    assert isinstance(size.module(), TaggerEnsemble)
    assert size.param_count() == 3 * TaggerSize(8, 1).param_count()
    members = [{"params": variables["params"][f"member_{k}"]} for k in range(3)]
    logits = [np.asarray(BarTagger(8, 1).apply(v, x[None]))[0] for v in members]
    assert not np.allclose(logits[0], logits[1])  # initialised apart
    save_tagger(tmp_path, variables, size)
    assert json.loads((tmp_path / TAGGER_SIZE_FILE).read_text())["members"] == 3
    expected = np.mean([1 / (1 + np.exp(-z)) for z in logits], axis=0)
    np.testing.assert_allclose(load_tagger(str(tmp_path))(x), expected, rtol=1e-5, atol=1e-6)

    y = (np.arange(WINDOW) % 3 == 0).astype(np.float32)[None]
    batch = {"x": jnp.asarray(x[None]), "y": jnp.asarray(y), "mask": jnp.ones_like(y)}
    one = lambda v: tagger_loss(BarTagger(8, 1).apply, v, batch, None, False)[0]  # noqa: E731
    loss, _ = tagger_loss(size.module().apply, variables, batch, None, False)
    np.testing.assert_allclose(loss, np.mean([one(v) for v in members]), rtol=1e-5)


def test_a_tagger_stored_before_ensembles_loads_as_one_tagger(tmp_path):
    """tagger.json without `members` (the format before ensembles) is a single tagger."""
    size = TaggerSize(8, 1)
    x = np.zeros((WINDOW, N_BAR_FEATURES), np.float32)
    save_tagger(tmp_path, size.module().init(jax.random.PRNGKey(0), jnp.asarray(x[None])), size)
    (tmp_path / TAGGER_SIZE_FILE).write_text(json.dumps({"hidden": 8, "num_layers": 1}) + "\n")
    assert load_tagger(str(tmp_path))(x).shape == (WINDOW,)


def test_info_counts_the_quality_presets_taggers(capsys):
    assert main(["info", "beat", "--preset", "quality"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["downbeat_tagger_params"] == 4 * 168_093  # 4 taggers of 2 x 64 units
    assert info["level_tagger_params"] == 4 * 43_133  # and 4 level taggers of 2 x 32
    assert main(["info", "beat", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "downbeat_tagger_params" not in out and "level_tagger_params" not in out


def _waltz(rng: np.random.Generator, bars: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 3/4 piece at a random tempo: a long low note on each bar's first beat, short high
    chords on the others (the tagger has to find the bar starts from that alone)."""
    period = rng.uniform(0.35, 0.8)
    beats = np.arange(bars * 3) * period
    notes = []
    for i, t in enumerate(beats):
        if i % 3 == 0:
            notes.append([t, t + 2.5 * period, rng.integers(36, 48)])
        else:
            notes += [[t, t + 0.4 * period, p] for p in rng.integers(60, 80, size=2)]
    return np.array(notes, np.float64), beats, beats[::3]


def test_a_stop_signal_while_a_tagger_trains_stores_no_tagger(tmp_path):
    """The tagger trains in an engine run with its own stop handler: a signal there was caught,
    the half-trained tagger stored, and the calibration around it went on to exit 0. Now it
    raises `Interrupted`, naming the signal, and stores no weights."""
    import signal

    from jaxmir.engine.loop import Interrupted

    rng = np.random.default_rng(0)
    pieces = [_waltz(rng, 12) for _ in range(8)]
    train = [w for n, b, d in pieces[:6] for w in piece_examples(n, [b], d)]
    val = [w for n, b, d in pieces[6:] for w in piece_examples(n, [b], d)]

    def log(message: str) -> None:  # the first validation: inside the run's stop handler
        if message.startswith("Validate"):
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(Interrupted, match="SIGTERM"):
        train_tagger(train, val, tmp_path / "tagger", TaggerSize(8, 1), steps=160, log=log)
    assert not (tmp_path / "tagger" / TAGGER_VARIABLES).exists()


def test_a_trained_tagger_finds_the_bars_of_a_simple_meter(tmp_path):
    rng = np.random.default_rng(0)
    pieces = [_waltz(rng, 12) for _ in range(24)]
    train = [w for n, b, d in pieces[:20] for w in piece_examples(n, [b], d)]
    val = [w for n, b, d in pieces[20:] for w in piece_examples(n, [b], d)]
    folder = train_tagger(train, val, tmp_path / "tagger", TaggerSize(8, 1), steps=160)
    assert (folder / TAGGER_VARIABLES).is_file() and (folder / TAGGER_SIZE_FILE).is_file()
    assert (folder / "run" / "metrics.jsonl").is_file()  # trained through the engine
    scores = []
    for notes, beats, downbeats in pieces[20:]:
        found = marked_downbeats(beats, tagger_probs(str(folder), notes, beats), 0.5)
        scores.append(mir_eval.beat.f_measure(downbeats, found))
    assert np.mean(scores) > 0.9, scores


def _bar_pattern(folder, notes, beats) -> np.ndarray:
    """Downbeat probabilities of bars of 4 beats: 0.9 on each bar's first beat, 0.05 on the
    others, but in every three bars the third's first beat doubtful (0.4) and the first two's
    third beats over the threshold (0.65)."""
    n = len(beats)
    p = np.where(np.arange(n) % 4 == 0, 0.9, 0.05)
    p[8::12], p[2::12], p[6::12] = 0.4, 0.65, 0.65
    return p.astype(np.float32)


def test_decoding_reads_the_taggers_downbeats_as_whole_bars_unless_told_not_to(
    tmp_path, monkeypatch
):
    """The tagger's probabilities (`_bar_pattern`) read as whole bars (the default) give every
    fourth beat; each beat at the threshold (`bar_change` 0) drops the doubtful downbeats and
    adds the beats over it. A tagger that hears no bar (0.01 everywhere): no downbeats."""
    import jaxmir.tasks.beat.task as beat_task
    from jaxmir.tasks.beat.task import TASK, BeatPosteriors

    monkeypatch.setattr(beat_task, "tagger_probs", _bar_pattern)
    frames = np.zeros((2500, 2), np.float32)
    frames[50::50, 0] = 0.9  # a beat every 0.5 s from 0.5 s
    onsets = np.arange(50, 2500, 50) / 100
    notes = np.stack([onsets, onsets + 0.3, np.full(len(onsets), 60.0)], axis=1)
    cfg = TASK.presets()["tiny"]
    d = dataclasses.replace(
        cfg.decode, method="peaks", downbeats="tagger", tagger=str(tmp_path), tagger_threshold=0.5
    )
    cfg = dataclasses.replace(cfg, decode=d)
    assert cfg.decode.bar_change > 0
    posteriors = BeatPosteriors(frames, notes)
    beats, downbeats = TASK.decode(posteriors, cfg)
    assert len(beats) == len(onsets)
    assert np.array_equal(downbeats, beats[::4])
    each = dataclasses.replace(cfg, decode=dataclasses.replace(d, bar_change=0.0))
    marked = beats[_bar_pattern(None, None, beats) >= 0.5]
    assert np.array_equal(TASK.decode(posteriors, each)[1], marked)
    assert not np.array_equal(marked, beats[::4])
    monkeypatch.setattr(beat_task, "tagger_probs", lambda f, n, b: np.full(len(b), 0.01))
    assert len(TASK.decode(posteriors, cfg)[1]) == 0


def test_a_tagger_folder_that_is_missing_is_named(tmp_path):

    with pytest.raises(FileNotFoundError, match="no downbeat tagger"):
        load_tagger(str(tmp_path / "nowhere"))


def test_a_tagger_re_written_in_its_folder_is_read_again(tmp_path):
    """`jaxmir calibrate beat` re-trains the tagger in the run's folder: a process that has
    loaded it before must tag with the new weights, not its cached copy."""

    size = TaggerSize(8, 1)
    x = np.random.default_rng(0).normal(size=(WINDOW, N_BAR_FEATURES)).astype(np.float32)
    outputs = []
    for seed in (0, 1):
        save_tagger(
            tmp_path, size.module().init(jax.random.PRNGKey(seed), jnp.asarray(x[None])), size
        )
        outputs.append(load_tagger(str(tmp_path))(x))
        np.testing.assert_array_equal(load_tagger(str(tmp_path))(x), outputs[-1])
    assert not np.allclose(outputs[0], outputs[1])


def test_training_with_a_tagger_calibrates_it_and_export_carries_it(
    beat_cache, tmp_path, monkeypatch, capsys
):
    """A beat run asked for a tagger trains it after the frame model, calibration scores it
    against the frame model's downbeat peaks, eval decodes with it when asked (the folder in
    decode.json is relative to the run), the exported model carries it, and calibrating that
    model folder keeps the tagger inside it."""
    from jaxmir.shipped import load_model
    from jaxmir.tasks.beat.task import TASK

    wd = tmp_path / "beat"
    argv = ["train", "beat", "--preset", "tiny", "--workdir", str(wd), "--data", str(beat_cache)]
    argv += ["--no-progress", "--set", "model.tagger_hidden=4", "--set", "model.tagger_steps=8"]
    argv += ["--set", "model.tagger_members=2"]  # an ensemble, through to the shipped model
    assert main(argv) == 0
    assert (wd / "tagger" / TAGGER_VARIABLES).is_file()
    saved = json.loads((wd / "decode.json").read_text())
    assert set(saved["val_downbeat_f_by_source"]) == {"peaks", "tagger"}
    assert saved["decode"]["downbeats"] in ("peaks", "tagger")
    # decode with the tagger whatever calibration chose: relative to the run folder
    saved["decode"].update(
        downbeats="tagger", tagger="tagger", tagger_threshold=0.0, bar_change=0.0
    )
    (wd / "decode.json").write_text(json.dumps(saved))
    capsys.readouterr()
    evaluate = ["eval", "beat", "--workdir", str(wd), "--data", str(beat_cache), "--split", "val"]
    assert main(evaluate) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["decode"]["tagger"] == "tagger"  # the eval record names it inside the run
    # the tagger's downbeats are tracked beats: all of them at threshold 0, fewer at 0.5 (each
    # beat at the threshold, `bar_change` 0)
    from jaxmir.data.cache import FeatureCache
    from jaxmir.engine.run import make_predict, restore_for_inference

    cfg, mesh, state, _ = restore_for_inference(TASK, wd)
    posteriors, _ = next(
        TASK.split_posteriors(make_predict(mesh, state), cfg, FeatureCache(beat_cache), "val")
    )
    beats, downbeats = TASK.decode(posteriors, cfg)
    assert len(beats) >= 2 and np.array_equal(beats, downbeats)
    half = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, tagger_threshold=0.5))
    assert set(TASK.decode(posteriors, half)[1]) <= set(beats)
    with pytest.raises(ValueError, match="needs BeatPosteriors"):
        TASK.decode(posteriors.frames, cfg)
    out = tmp_path / "shipped"
    assert main(["export", "beat", "--workdir", str(wd), "--out", str(out)]) == 0
    shipped_cfg = json.loads((out / "config.json").read_text())
    assert shipped_cfg["decode"]["tagger"] == "tagger"
    assert (out / "tagger" / TAGGER_VARIABLES).is_file()
    cfg, _, _ = load_model(TASK, out)
    assert cfg.decode.tagger == str(out / "tagger")
    assert json.loads((out / "tagger" / TAGGER_SIZE_FILE).read_text())["members"] == 2

    # `jaxmir calibrate beat --workdir MODEL_FOLDER` trains the tagger again inside the folder,
    # scores every test split with the tagger that calibration names relative to the folder
    # (here always the tagger, whatever the tiny model's scores prefer), and leaves no tagger
    # training run behind in the folder
    calibrate = TASK.calibrate

    def with_the_tagger(*args, **kwargs):
        chosen = calibrate(*args, **kwargs)
        chosen["decode"].update(downbeats="tagger", tagger="tagger", tagger_threshold=0.0)
        return chosen

    monkeypatch.setattr(TASK, "calibrate", with_the_tagger)
    calibrate_it = ["calibrate", "beat", "--workdir", str(out), "--data", str(beat_cache)]
    assert main([*calibrate_it, "--no-progress"]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert meta["calibration"]["decode"]["tagger"] == "tagger"
    assert meta["eval_test"]["decode"]["downbeats"] == "tagger"
    assert json.loads((out / "config.json").read_text())["decode"]["tagger"] == "tagger"
    assert (out / "tagger" / TAGGER_VARIABLES).is_file()
    assert not (out / "tagger" / "run").exists()


def _constant_tagger(folder, logit: float, key: int = 0) -> bytes:
    """Store a tagger (4 units, 1 layer) that gives every beat the downbeat logit `logit`
    whatever its other weights (drawn from `key`); returns its weights."""
    size = TaggerSize(4, 1)
    init = jax.random.PRNGKey(key)
    variables = size.module().init(init, jnp.zeros((1, WINDOW, N_BAR_FEATURES)))
    head = variables["params"]["head"]
    head = {"kernel": jnp.zeros_like(head["kernel"]), "bias": jnp.full_like(head["bias"], logit)}
    variables = {"params": {**variables["params"], "head": head}}
    save_tagger(folder, variables, size)
    return (folder / TAGGER_VARIABLES).read_bytes()


def test_calibrating_again_keeps_the_tagger_already_there_unless_the_new_one_beats_it(
    beat_cache, tmp_path, monkeypatch
):
    """Where the run or model folder holds a tagger, calibration re-trains one beside it and
    keeps whichever scores the higher validation downbeat F: a tagger that marks every
    tracked beat (downbeat F > 0) against one that marks none (F = 0), each way round; a
    tie keeps the old. What a crash left beside the folder is put right first, and a tagger
    that cannot be read, or of another size than the config's, is simply replaced."""
    from jaxmir.data.cache import FeatureCache
    from jaxmir.engine.run import make_predict, restore_for_inference
    from jaxmir.tasks.beat.task import TASK

    wd = tmp_path / "beat"
    argv = ["train", "beat", "--preset", "tiny", "--workdir", str(wd), "--data", str(beat_cache)]
    assert main([*argv, "--no-progress"]) == 0
    cfg, mesh, state, _ = restore_for_inference(TASK, wd)
    tagger = {"tagger_hidden": 4, "tagger_layers": 1, "tagger_members": 1}  # `_constant_tagger`
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **tagger))
    # each beat at the threshold (`bar_change` 0): a constant tagger marks every beat or none
    cfg = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, bar_change=0.0))
    predict, cache = make_predict(mesh, state), FeatureCache(beat_cache)
    home = wd / "tagger"
    new = {}  # what the next re-trained tagger is, then its weights and where it was trained

    def fit_tagger(cfg, train, val, workdir, progress, log, candidate):
        folder = workdir / ("tagger.new" if candidate else "tagger")
        new.update(candidate=candidate, weights=_constant_tagger(folder, *new["draw"]))
        return folder

    def calibrate(new_draw):
        new["draw"] = new_draw
        chosen = TASK.calibrate(predict, cfg, cache, workdir=wd, log=lambda *_: None)
        assert sorted(p.name for p in wd.iterdir() if p.name.startswith("tagger")) == ["tagger"]
        if chosen["decode"]["downbeats"] == "tagger":  # decoded with the folder kept
            assert chosen["decode"]["tagger"] == "tagger"
            scores = chosen["val_downbeat_f_by_source"]
            assert chosen["after"]["downbeat_f_measure"] == pytest.approx(scores["tagger"])
        return chosen["val_downbeat_f_by_source"]

    monkeypatch.setattr(TASK, "fit_tagger", fit_tagger)
    for old_logit, new_logit in ((50.0, -50.0), (-50.0, 50.0)):
        old = _constant_tagger(home, old_logit)
        scores = calibrate((new_logit, 0))
        assert new["candidate"]  # trained beside the tagger already there
        assert scores["tagger"] == max(scores["tagger_before"], scores["tagger_retrained"]) > 0
        assert min(scores["tagger_before"], scores["tagger_retrained"]) == 0.0
        winner = old if old_logit > new_logit else new["weights"]
        assert (home / TAGGER_VARIABLES).read_bytes() == winner

    old = _constant_tagger(home, 50.0, key=1)  # the same scores, other weights: a tie
    scores = calibrate((50.0, 2))
    assert scores["tagger_before"] == scores["tagger_retrained"] > 0
    assert (home / TAGGER_VARIABLES).read_bytes() == old != new["weights"]

    # a crash inside the swap: the old tagger set aside, a candidate half written
    old = _constant_tagger(wd / "tagger.old", 50.0)
    shutil.rmtree(home)
    (wd / "tagger.new").mkdir()
    calibrate((-50.0, 0))
    assert new["candidate"] and (home / TAGGER_VARIABLES).read_bytes() == old

    for spoil in ("unreadable", "another size"):
        if spoil == "unreadable":
            (home / TAGGER_SIZE_FILE).unlink()
        else:
            save_tagger(
                home,
                TaggerSize(4, 2)
                .module()
                .init(jax.random.PRNGKey(0), jnp.zeros((1, WINDOW, N_BAR_FEATURES))),
                TaggerSize(4, 2),
            )
        scores = calibrate((-50.0, 0))
        assert not new["candidate"] and "tagger_before" not in scores
        assert (home / TAGGER_VARIABLES).read_bytes() == new["weights"]

    # a model folder decodes with its tagger: what a crash left is put right before the
    # folder's decoding is scored, and a tagger that cannot be read is scored as the peaks
    as_model = dataclasses.replace(
        cfg, decode=dataclasses.replace(cfg.decode, downbeats="tagger", tagger=str(home))
    )
    logged = []
    new["draw"] = (-50.0, 0)
    old = _constant_tagger(wd / "tagger.old", 50.0)
    shutil.rmtree(home)
    chosen = TASK.calibrate(predict, as_model, cache, workdir=wd, log=logged.append)
    assert (home / TAGGER_VARIABLES).read_bytes() == old and new["candidate"]
    assert chosen["before"]["downbeat_f_measure"] == pytest.approx(
        chosen["val_downbeat_f_by_source"]["tagger_before"]
    )
    (home / TAGGER_SIZE_FILE).unlink()
    chosen = TASK.calibrate(predict, as_model, cache, workdir=wd, log=logged.append)
    assert any("scored before with the peaks" in str(m) for m in logged)
    assert (home / TAGGER_VARIABLES).read_bytes() == new["weights"]

    # a run that decodes without a tagger, exported over a model folder that held one
    from jaxmir.shipped import VARIABLES

    out = tmp_path / "model"
    _constant_tagger(out / "tagger", 50.0)
    (out / VARIABLES).write_bytes(b"an earlier export's weights")
    assert main(["export", "beat", "--workdir", str(wd), "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["decode"]["downbeats"] == "peaks"
    assert not (out / "tagger").exists()


def test_calibration_scores_the_tagger_as_decoding_reads_it(tmp_path, monkeypatch):
    """Read as whole bars, calibration still chooses `tagger_threshold` with each beat marked
    (decoding falls back on it where no bar stands out), and scores the tagger, against the
    frame model's peaks, as decoding reads it. Two validation pieces with a clear beat every
    0.5 s and a bar every 4 beats; the tagger's probabilities are `_bar_pattern`'s."""
    import jaxmir.tasks.beat.task as beat_task
    from jaxmir.tasks.beat.task import TASK, BeatPosteriors

    frames = np.zeros((2500, 2), np.float32)
    frames[50::50, 0] = 0.9
    beats = np.arange(50, 2500, 50) / 100
    notes = np.stack([beats, beats + 0.3, np.full(len(beats), 60.0)], axis=1)
    labels = {"beats": beats, "downbeats": beats[::4]}
    pieces = [(BeatPosteriors(frames, notes), labels)] * 2

    class Cache:
        def names(self, split):
            return ["a", "b"]

    def fit_tagger(cfg, train, val, workdir, progress, log, candidate):
        folder = workdir / ("tagger.new" if candidate else "tagger")
        _constant_tagger(folder, 0.0)
        return folder

    monkeypatch.setattr(TASK, "split_posteriors", lambda *a, **k: iter(pieces))
    monkeypatch.setattr(TASK, "fit_tagger", fit_tagger)
    monkeypatch.setattr(beat_task, "tagger_probs", _bar_pattern)
    cfg = TASK.presets()["tiny"]
    size = {"tagger_hidden": 4, "tagger_layers": 1, "tagger_members": 1}
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **size))
    chosen = {}
    for bar_change in (0.0, 0.1, 0.1):  # the last: the folder's tagger against a re-trained one
        c = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, bar_change=bar_change))
        chosen = TASK.calibrate(None, c, Cache(), workdir=tmp_path, log=lambda *_: None)
        assert chosen["decode"]["downbeats"] == "tagger"
        # each beat marked, 0.7 finds 9 of 13 downbeats and no other beat (F 0.82); 0.4 or
        # under all 13 and 8 other beats (F 0.76): the threshold whatever reads the bars
        assert chosen["decode"]["tagger_threshold"] == 0.7
        scores = chosen["val_downbeat_f_by_source"]
        assert chosen["after"]["downbeat_f_measure"] == pytest.approx(scores["tagger"])
        if bar_change:
            assert scores["tagger"] == pytest.approx(1.0)  # every bar found
        else:
            assert scores["tagger"] == pytest.approx(2 * 9 / (13 + 9))
            shutil.rmtree(tmp_path / "tagger")
    assert scores["tagger_before"] == scores["tagger_retrained"] == pytest.approx(1.0)
