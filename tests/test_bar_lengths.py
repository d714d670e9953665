"""Downbeats read as whole bars (`jaxmir.tasks.beat.bar_lengths`) and their place in decoding."""

import dataclasses

import numpy as np
import pytest

from jaxmir.config import ConfigError
from jaxmir.tasks.beat.bar_lengths import (
    BAR_LENGTHS,
    MIN_CONTRAST,
    bar_downbeats,
    transition_logs,
    whole_bars,
)
from jaxmir.tasks.beat.task import BeatDecodeConfig, tagged_downbeats


def _probs(bar_lengths: list[int], sure: float = 0.95, other: float = 0.05) -> np.ndarray:
    """A tagger's probabilities for bars of the given lengths: `sure` on each bar's first beat."""
    out = []
    for n in bar_lengths:
        out += [sure] + [other] * (n - 1)
    return np.array(out)


def _starts(bar_lengths: list[int]) -> np.ndarray:
    return np.cumsum([0, *bar_lengths[:-1]])


def test_every_row_of_the_transitions_is_a_distribution():
    for change, hold in ((0.0, 0.0), (0.1, 0.1), (0.5, 0.3)):
        t = np.exp(transition_logs(change, hold))
        assert t.shape == (sum(BAR_LENGTHS),) * 2
        assert np.allclose(t.sum(axis=1), 1.0)
    # one length: a bar is always followed by another like it
    assert np.allclose(np.exp(transition_logs(0.1, 0.1, (4,))).sum(axis=1), 1.0)


def test_bars_of_one_beat_and_no_hold_on_a_bars_first_beat():
    """Every beat sure to start a bar: bars of 1 beat (beats tracked a bar apart). Two sure
    downbeats in a row, then two sure other beats: bars of 4 with a doubtful second beat, not
    bars of 3 whose first place repeats (a hold is for mid-bar places only)."""
    assert bar_downbeats(np.full(12, 0.9), 0.1, 0.1).all()
    probs = np.tile([0.95, 0.95, 0.05, 0.05], 8)
    assert np.array_equal(np.flatnonzero(bar_downbeats(probs, 0.1, 0.1)), np.arange(0, 32, 4))


def test_doubtful_beats_are_read_in_the_bars_of_the_rest():
    """Eight bars of 4: one downbeat the tagger doubts (0.4) and one mid-bar beat it half
    believes (0.65). A threshold of 0.5 drops the one and adds the other; whole bars do neither."""
    probs = _probs([4] * 8)
    probs[12], probs[18] = 0.4, 0.65
    marked = np.flatnonzero(probs >= 0.5)
    assert 12 not in marked and 18 in marked
    assert np.array_equal(np.flatnonzero(bar_downbeats(probs, 0.1, 0.1)), _starts([4] * 8))


def test_a_new_meter_a_pickup_and_a_fermatas_extra_beat_are_followed():
    """Six bars of 3 then six of 4 (the tagger sure of each), after a pickup of one beat; and
    bars of 4 where fermatas add tracked beats."""
    lengths = [3] * 6 + [4] * 6
    probs = np.concatenate([[0.05], _probs(lengths)])
    found = np.flatnonzero(bar_downbeats(probs, 0.1, 0.1))
    assert np.array_equal(found, 1 + _starts(lengths))
    # a chorale's bars of 4 with fermatas: 1 or 2 extra tracked beats in every other bar
    lengths = [4, 5, 4, 6, 4, 5, 4]
    found = np.flatnonzero(bar_downbeats(_probs(lengths), 0.1, 0.1))
    assert np.array_equal(found, _starts(lengths))
    # with no beat allowed to repeat a place, so many changes of bar length cost more than
    # two downbeats the tagger is sure of
    assert not np.array_equal(bar_downbeats(_probs(lengths), 0.1, 0.0), found)


def test_no_beats_one_beat_and_bad_probabilities():
    assert bar_downbeats(np.zeros(0), 0.1, 0.1).shape == (0,)
    assert not bar_downbeats(np.zeros(1), 0.1, 0.1).any()
    for change, hold in ((1.0, 0.1), (-0.1, 0.1), (0.1, 1.0)):
        with pytest.raises(ValueError, match="must lie in"):
            bar_downbeats(np.ones(4), change, hold)
    with pytest.raises(ValueError, match="not a number"):
        bar_downbeats(np.array([0.9, np.nan, 0.1]), 0.1, 0.1)


def test_bars_are_read_only_where_their_downbeats_stand_out():
    """Where the tagger hears no bar (every beat about 0.01, as on identical notes), the
    cheapest path still starts a bar every few beats; `whole_bars` does not keep it. A bar the
    tagger hears only faintly (0.2 against 0.01) is kept."""
    flat = np.full(60, 0.01)
    flat[0] = 0.2
    assert bar_downbeats(flat, 0.1, 0.1).sum() > 1
    assert whole_bars(flat, 0.1, 0.1) is None
    faint = _probs([4] * 15, sure=0.2, other=0.01)
    assert np.array_equal(np.flatnonzero(whole_bars(faint, 0.1, 0.1)), _starts([4] * 15))
    assert whole_bars(np.array([0.9]), 0.1, 0.1) is None
    # a few doubtful beats: the cheapest path starts no bar
    for n in range(2, 8):
        assert not bar_downbeats(np.full(n, 0.05), 0.1, 0.1).any()
        assert whole_bars(np.full(n, 0.05), 0.1, 0.1) is None
    # one sure beat among none: that beat alone, not bars every few beats from it
    lone = np.full(64, 0.01)
    lone[10] = 0.9
    assert whole_bars(lone, 0.1, 0.1) is None
    assert MIN_CONTRAST < 0.19


def test_tagged_downbeats_reads_bars_or_marks_each_beat_as_the_config_says():
    beats = np.arange(16) * 0.5
    probs = _probs([4] * 4)
    probs[5] = 0.7  # a mid-bar beat over the threshold
    bars = BeatDecodeConfig(bar_change=0.1, bar_hold=0.1, tagger_threshold=0.5)
    each = dataclasses.replace(bars, bar_change=0.0)
    assert np.array_equal(tagged_downbeats(beats, probs, bars), beats[[0, 4, 8, 12]])
    assert np.array_equal(tagged_downbeats(beats, probs, each), beats[[0, 4, 5, 8, 12]])
    assert np.array_equal(tagged_downbeats(beats, probs, each, 0.8), beats[[0, 4, 8, 12]])
    # no bar stands out: each beat at the threshold, whichever way the config reads them
    flat = np.full(16, 0.01)
    flat[3] = 0.7
    assert np.array_equal(tagged_downbeats(beats, flat, bars), beats[[3]])
    assert len(tagged_downbeats(beats[:5], np.full(5, 0.05), bars)) == 0  # a short piece


def test_decoding_refuses_a_bar_probability_outside_zero_to_one():
    from jaxmir.tasks.beat.task import TASK

    cfg = TASK.presets()["tiny"]
    for key in ("bar_change", "bar_hold"):
        bad = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, **{key: 1.5}))
        with pytest.raises(ConfigError, match=f"decode.{key}"):
            TASK.decode(np.zeros((100, 2), np.float32), bad)
