"""The beat task's level tagger: beats told from sub-beats in a tracked beat sequence
(`subdivided`, `level_examples`, `slower_level`, `checked_level`), its calibration, decoding and
export."""

from __future__ import annotations

import dataclasses
import functools
import json

import mir_eval
import numpy as np
import pytest

from jaxmir.cli import main
from jaxmir.tasks.beat.bars import SUBDIVISIONS, subdivided
from jaxmir.tasks.beat.decode import checked_level, slower_level
from jaxmir.tasks.beat.tagger import (
    TAGGER_SIZE_FILE,
    TAGGER_VARIABLES,
    TaggerSize,
    level_examples,
    tagger_probs,
    train_tagger,
)
from jaxmir.tasks.beat.task import middle_of_best, other_levels


def test_subdivided_inserts_even_steps_that_are_no_beats():
    beats = np.array([1.0, 2.0, 4.0])
    times, is_beat = subdivided(beats, 2)
    np.testing.assert_allclose(times, [1.0, 1.5, 2.0, 3.0, 4.0])
    assert is_beat.tolist() == [1, 0, 1, 0, 1] and is_beat.dtype == np.float32
    times, is_beat = subdivided(beats, 3)
    np.testing.assert_allclose(times, [1.0, 4 / 3, 5 / 3, 2.0, 8 / 3, 10 / 3, 4.0])
    assert is_beat.tolist() == [1, 0, 0, 1, 0, 0, 1]
    assert subdivided(beats[:1], 2)[0].tolist() == [1.0]  # no interval to cut


def test_slower_level_keeps_the_likely_phase_only_where_the_rest_are_no_beats():
    beats = np.arange(12) * 0.5
    on_odd = np.where(np.arange(12) % 2 == 1, 0.9, 0.1)  # every other beat is a sub-beat
    np.testing.assert_array_equal(slower_level(beats, on_odd, 0.3, (2, 3)), beats[1::2])
    # the weak phase is likely enough: a beat level to keep
    np.testing.assert_array_equal(slower_level(beats, on_odd, 0.05, (2, 3)), beats)
    # two sub-beats in each beat: only the check by three finds it
    thirds = np.where(np.arange(12) % 3 == 2, 0.9, 0.1)
    np.testing.assert_array_equal(slower_level(beats, thirds, 0.3, (2, 3)), beats[2::3])
    np.testing.assert_array_equal(slower_level(beats, thirds, 0.3, (2,)), beats)
    # too few beats to judge a phase: left alone
    np.testing.assert_array_equal(slower_level(beats[:6], on_odd[:6], 0.3, (2,)), beats[:6])
    np.testing.assert_array_equal(slower_level(beats, on_odd, 0.0, (2, 3)), beats)


def _on_grid(period: float):
    """`probs_of` of a tagger that calls every multiple of `period` s a beat (0.95), and
    anything else not (0.05)."""

    def probs_of(times: np.ndarray) -> np.ndarray:
        steps = np.asarray(times) / period
        return np.where(np.abs(steps - np.round(steps)) < 1e-6, 0.95, 0.05)

    return probs_of


def test_checked_level_fills_in_missed_beats_where_the_tagger_calls_them_beats():
    truth = np.arange(24) * 0.25
    beat = _on_grid(0.25)
    # every other beat tracked: the midpoints are beats
    np.testing.assert_allclose(checked_level(truth[::2], beat, 0.3, (2, 3), 0.2), truth[:23])
    # every third: the midpoints are not, the two thirds are
    np.testing.assert_allclose(checked_level(truth[::3], beat, 0.3, (2, 3), 0.2), truth[:22])
    np.testing.assert_array_equal(checked_level(truth[::3], beat, 0.3, (2,), 0.2), truth[::3])
    # the right level: the midpoints are sub-beats, nothing is added
    np.testing.assert_array_equal(checked_level(truth, beat, 0.3, (2, 3), 0.2), truth)
    # never closer than the shortest interval, never above the tagger's mirror threshold
    np.testing.assert_array_equal(checked_level(truth[::2], beat, 0.3, (2,), 0.3), truth[::2])
    np.testing.assert_array_equal(checked_level(truth[::2], beat, 0.04, (2,), 0.2), truth[::2])
    np.testing.assert_array_equal(checked_level(truth[:6:2], beat, 0.3, (2,), 0.2), truth[:6:2])


def test_checked_level_goes_slower_or_faster_or_leaves_the_beats():
    truth = np.arange(24) * 0.5
    beat = _on_grid(0.5)
    eighths = subdivided(truth, 2)[0]
    np.testing.assert_allclose(checked_level(eighths, beat, 0.3, (2, 3), 0.2), truth)
    np.testing.assert_allclose(checked_level(truth[::2], beat, 0.3, (2, 3), 0.2), truth[:23])
    np.testing.assert_array_equal(checked_level(truth, beat, 0.3, (2, 3), 0.2), truth)
    np.testing.assert_array_equal(checked_level(eighths, beat, 0.0, (2, 3), 0.2), eighths)
    np.testing.assert_array_equal(checked_level(truth[::2], beat, 0.0, (2, 3), 0.2), truth[::2])
    # decode.fill_level=false: only the slower check
    np.testing.assert_allclose(checked_level(eighths, beat, 0.3, (2, 3), 0.2, False), truth)
    np.testing.assert_array_equal(
        checked_level(truth[::2], beat, 0.3, (2,), 0.2, False), truth[::2]
    )


def test_level_examples_are_the_true_beats_cut_into_steps_and_the_tracked_beats():
    notes = np.array([[0.0, 0.4, 60.0], [1.0, 1.4, 64.0]])
    truth = np.arange(8) * 0.5
    tracked = np.array([0.02, 0.25, 0.5, 1.2, 1.5])  # 0.25 and 1.2 s are not beats
    got = level_examples(notes, truth, tracked)
    assert len(got) == 2 + len(SUBDIVISIONS)  # one window per sequence (under 32 beats)
    targets = [w["y"][w["mask"] > 0].tolist() for w in got]
    assert targets[0] == [1.0] * 8
    assert targets[1] == subdivided(truth, 2)[1].tolist()
    assert targets[2] == subdivided(truth, 3)[1].tolist()
    assert targets[3] == [1, 0, 1, 0, 1]
    assert level_examples(notes, truth[:1], tracked) == []


def _march(rng: np.random.Generator, beats: int, period: float) -> tuple[np.ndarray, np.ndarray]:
    """A piece in beats of `period` s: a bass note and a chord on each beat, and a melody in
    eighth notes (on each beat and halfway between)."""
    times = np.arange(beats) * period
    notes = []
    for t in times:
        notes.append([t, t + 0.9 * period, rng.integers(36, 48)])
        notes += [[t, t + 0.9 * period, p] for p in rng.integers(55, 67, size=2)]
        for half in (0.0, 0.5):
            start = t + half * period
            notes.append([start, start + 0.45 * period, rng.integers(72, 84)])
    return np.array(notes, np.float64), times


def test_a_level_tagger_finds_the_beats_under_sub_beats_at_tempi_it_never_trained_on(tmp_path):
    """Trained on pieces with beats of 0.4-0.8 s, it tells the beats of pieces with beats of
    1.6-2.4 s from the eighth notes a tracker would follow there, and finds the beats a
    tracker at half their tempo missed: it reads the music in beats, not seconds, so a piece
    played 3 times slower gets the same probabilities."""
    rng = np.random.default_rng(0)
    train = [_march(rng, 24, rng.uniform(0.4, 0.8)) for _ in range(24)]
    examples = [w for notes, beats in train for w in level_examples(notes, beats, beats)]
    folder = train_tagger(examples, examples[:8], tmp_path / "level", TaggerSize(8, 1), 160)
    for notes, beats in [_march(rng, 16, rng.uniform(1.6, 2.4)) for _ in range(4)]:
        eighths = subdivided(beats, 2)[0]
        probs = tagger_probs(str(folder), notes, eighths)
        found = slower_level(eighths, probs, 0.5, (2, 3))
        assert mir_eval.beat.f_measure(beats, found) == 1.0
        kept = slower_level(beats, tagger_probs(str(folder), notes, beats), 0.5, (2, 3))
        np.testing.assert_array_equal(kept, beats)
        # tracked at half the tempo: the midpoints are found to be beats
        filled = checked_level(
            beats[::2], functools.partial(tagger_probs, str(folder), notes), 0.5, (2, 3), 0.2
        )
        np.testing.assert_allclose(filled, beats[:-1])
        fast = notes.copy()
        fast[:, :2] /= 3.0
        np.testing.assert_allclose(tagger_probs(str(folder), fast, eighths / 3), probs, atol=1e-5)


def test_the_level_threshold_is_the_middle_of_the_best_and_none_without_a_gain():
    assert middle_of_best({0.0: 0.8, 0.1: 0.8, 0.2: 0.8005}) == 0.0  # within the tie
    score = {0.0: 0.8, 0.1: 0.85, 0.2: 0.9, 0.3: 0.9, 0.4: 0.9, 0.5: 0.7}
    assert middle_of_best(score) == 0.3
    assert middle_of_best({**score, 0.4: 0.85}) == 0.2  # the lower of two middles


def test_training_with_a_level_tagger_calibrates_it_decodes_with_it_and_export_carries_it(
    beat_cache, tmp_path, monkeypatch
):
    """A beat run asked for a level tagger trains it after the frame model (in
    ``level/``), calibration records the validation score of each threshold, decoding with
    it keeps only the likely phase of the tracked beats, and the exported model carries it,
    named relative to the folder."""
    from jaxmir.data.cache import FeatureCache
    from jaxmir.engine.run import make_predict, restore_for_inference
    from jaxmir.shipped import load_model
    from jaxmir.tasks.beat.task import LEVEL_GRID, TASK

    wd = tmp_path / "beat"
    argv = ["train", "beat", "--preset", "tiny", "--workdir", str(wd), "--data", str(beat_cache)]
    argv += ["--no-progress", "--set", "model.level_hidden=4", "--set", "model.level_steps=8"]
    argv += ["--set", "decode.method=track"]
    assert main(argv) == 0
    assert (wd / "level" / TAGGER_VARIABLES).is_file() and not (wd / "level.new").exists()
    saved = json.loads((wd / "decode.json").read_text())
    scores = saved["level"]["val_score_by_threshold"]
    assert [float(t) for t in scores] == [0.0, *LEVEL_GRID]
    assert saved["decode"]["level_threshold"] == saved["level"]["threshold"]
    # decode with it whatever calibration chose: a threshold no phase passes keeps one in two
    saved["decode"].update(method="track", level_tagger="level", level_threshold=1.01)
    (wd / "decode.json").write_text(json.dumps(saved))
    cfg, mesh, state, _ = restore_for_inference(TASK, wd)
    assert cfg.decode.level_tagger == str((wd / "level").resolve())
    # the tiny model's beats lie far outside the tempo band: the level check alone, unstretched
    cfg = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, tempo_stretch=1.0))
    posteriors, _ = next(
        TASK.split_posteriors(make_predict(mesh, state), cfg, FeatureCache(beat_cache), "val")
    )
    without = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, level_threshold=0))
    tracked = TASK.decode(posteriors, without)[0]
    beats = TASK.decode(posteriors, cfg)[0]
    assert len(tracked) >= 8 and set(beats) < set(tracked)
    assert len(beats) == len(tracked[::2]) or len(beats) == len(tracked[1::2])
    # decode.fill_level reaches the level check
    import jaxmir.tasks.beat.task as beat_task

    fills = []
    real = beat_task.checked_level
    monkeypatch.setattr(beat_task, "checked_level", lambda *a: fills.append(a[-2:]) or real(*a))
    no_fill = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, fill_level=False))
    TASK.decode(posteriors, no_fill)
    TASK.decode(posteriors, cfg)
    # (shortest interval, fill): decode.min_distance guards the fill
    assert fills == [(cfg.decode.min_distance, False), (cfg.decode.min_distance, True)]
    with pytest.raises(ValueError, match="level_tagger needs BeatPosteriors"):
        TASK.decode(posteriors.frames, cfg)
    out = tmp_path / "shipped"
    assert main(["export", "beat", "--workdir", str(wd), "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["decode"]["level_tagger"] == "level"
    assert (out / "level" / TAGGER_SIZE_FILE).is_file() and not (out / "tagger").exists()
    cfg, _, _ = load_model(TASK, out)
    assert cfg.decode.level_tagger == str(out / "level")


def test_calibration_scores_the_true_beats_cut_and_thinned_at_each_level():
    beats = np.arange(7) * 0.5
    cut2, thin2, cut3, thin3 = other_levels(beats)
    np.testing.assert_allclose(cut2, np.arange(13) * 0.25)
    np.testing.assert_allclose(thin2, [0.0, 1.0, 2.0, 3.0])
    np.testing.assert_allclose(cut3, np.arange(19) * 0.5 / 3)
    np.testing.assert_allclose(thin3, [0.0, 1.5, 3.0])
