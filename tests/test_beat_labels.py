"""Beat task: features, fading labels, peak decoding, MIDI/CSV output."""

from __future__ import annotations

import itertools
import math

import mir_eval
import numpy as np
import pytest

from jaxmir.data.symbolic import SymbolicPiece
from jaxmir.tasks.beat.decode import (
    BEAT_PITCH,
    DOWNBEAT_PITCH,
    RELATIVE_FLOOR,
    beats_to_midi,
    dbn_beats,
    decode_beats,
    extended_to_first_onset,
    faster_period,
    from_first_onset,
    period_in_range,
    pick_peaks,
    track_beats,
    tracking_peaks,
    write_beat_csv,
)
from jaxmir.tasks.beat.labels import (
    DURATION_COLS,
    FADE,
    FLUX_COL,
    FPS,
    IOI_COL,
    N_FEATURES,
    ONSET_COLS,
    beat_features,
    beat_labels,
    n_frames_for,
)


def _notes(*rows):
    return np.array(rows, np.float64).reshape(-1, 4)


def _reference_features(notes, n_frames, fps=FPS):
    """Loop-per-note statement of the same definition, to check the vectorised one against."""
    onset = np.zeros((n_frames, 88))
    dura = np.zeros((n_frames, 88))
    ioi = np.zeros(n_frames)
    onset_frames = set()
    for start, end, pitch, _ in notes:
        p = int(round(pitch)) - 21
        on = int(round(start * fps))
        if not 0 <= p < 88 or on >= n_frames:
            continue
        off = min(max(int(round(end * fps)), on + 1), n_frames)
        onset[on, p] = 1
        dura[on:off, p] = 1
        onset_frames.add(on)
    ordered = sorted(onset_frames)
    for prev, cur in itertools.pairwise(ordered):
        ioi[cur] = (cur - prev) / fps
    flux = np.concatenate([[0.0], np.clip(np.diff(onset, axis=0), 0, None).sum(axis=1)])
    return np.concatenate([onset, dura, ioi[:, None], flux[:, None]], axis=1)


# ----------------------------------------------------------------------------- features


def test_three_note_example_exact():
    notes = _notes(
        [0.10, 0.30, 60, 80],  # frames 10..29, column 39
        [0.10, 0.15, 64, 80],  # same onset frame (a chord): frames 10..14, column 43
        [0.25, 0.25, 67, 80],  # zero length: onset at 25 and one duration frame
    )
    n = 40
    feat = beat_features(notes, n)
    assert feat.shape == (n, N_FEATURES) and feat.dtype == np.float32

    expected_onset = np.zeros((n, 88), np.float32)
    expected_onset[10, [39, 43]] = 1
    expected_onset[25, 46] = 1
    np.testing.assert_array_equal(feat[:, ONSET_COLS], expected_onset)

    expected_dura = np.zeros((n, 88), np.float32)
    expected_dura[10:30, 39] = 1
    expected_dura[10:15, 43] = 1
    expected_dura[25, 46] = 1
    np.testing.assert_array_equal(feat[:, DURATION_COLS], expected_dura)

    expected_ioi = np.zeros(n, np.float32)
    expected_ioi[25] = 0.15  # distinct onset frames 10 and 25; the first onset gets 0
    np.testing.assert_allclose(feat[:, IOI_COL], expected_ioi, atol=1e-7)

    expected_flux = np.zeros(n, np.float32)
    expected_flux[10] = 2
    expected_flux[25] = 1
    np.testing.assert_array_equal(feat[:, FLUX_COL], expected_flux)


def test_ioi_and_flux_follow_distinct_onsets():
    notes = _notes(
        [0.00, 0.50, 60, 90],
        [0.05, 0.07, 62, 90],
        [0.06, 0.07, 62, 90],  # same pitch on the next frame: no rise, so flux 0 there
        [0.12, 0.20, 65, 90],
    )
    feat = beat_features(notes, 60)
    ioi = feat[:, IOI_COL]
    assert np.flatnonzero(ioi).tolist() == [5, 6, 12]
    np.testing.assert_allclose(ioi[[5, 6, 12]], [0.05, 0.01, 0.06], atol=1e-7)
    assert ioi[0] == 0
    flux = feat[:, FLUX_COL]
    assert flux[0] == 0  # frame 0 has an onset, but the flux starts at 0 by definition
    assert np.flatnonzero(flux).tolist() == [5, 12]
    # Two notes of pitch 62 back to back form one sounding run (frames 5..6).
    np.testing.assert_array_equal(np.flatnonzero(feat[:, DURATION_COLS][:, 62 - 21]), [5, 6])


def test_pitches_out_of_range_are_dropped():
    notes = _notes(
        [0.10, 0.20, 20, 80],  # below A0
        [0.20, 0.30, 21, 80],  # A0: first column
        [0.30, 0.40, 108, 80],  # C8: last column
        [0.40, 0.50, 109, 80],  # above C8
        [0.45, 0.55, 0, 80],
        [0.50, 0.60, 127, 80],
    )
    feat = beat_features(notes, 70)
    onset = feat[:, ONSET_COLS]
    assert onset.sum() == 2
    assert onset[20, 0] == 1 and onset[30, 87] == 1
    assert feat[:, DURATION_COLS].sum() == 20
    # Dropped notes take no part in the inter-onset interval or the flux either.
    assert np.flatnonzero(feat[:, IOI_COL]).tolist() == [30]
    assert np.flatnonzero(feat[:, FLUX_COL]).tolist() == [20, 30]


def test_a_users_notes_outside_the_roll_are_moved_by_octaves_into_it():
    """Transcription input: pitches below A0 or above C8 move by whole octaves into the
    roll (a file of them used to give no beats); pitches inside it stay; nothing else moves."""
    from jaxmir.tasks.beat.task import octaves_into_range

    notes = _notes([0.1, 0.2, 5, 80], [0.2, 0.3, 20, 70], [0.3, 0.4, 21, 60], [0.4, 0.5, 127, 50])
    moved = octaves_into_range(notes)
    np.testing.assert_array_equal(moved[:, 2], [29, 32, 21, 103])
    np.testing.assert_array_equal(np.delete(moved, 2, axis=1), np.delete(notes, 2, axis=1))
    assert beat_features(moved, 70)[:, ONSET_COLS].sum() == 4


def test_notes_past_the_end_are_clipped():
    notes = _notes([0.05, 1.00, 60, 80], [0.50, 0.60, 62, 80], [0.20, 0.30, 64, 80])
    feat = beat_features(notes, 30)  # the note at 0.50 s starts past frame 29
    assert feat.shape == (30, N_FEATURES)
    assert feat[:, ONSET_COLS].sum() == 2
    assert feat[5:, DURATION_COLS][:, 60 - 21].sum() == 25  # sounds to the last frame
    assert beat_features(_notes(), 10).sum() == 0
    assert beat_features(notes, 0).shape == (0, N_FEATURES)


def test_matches_loop_reference_on_random_notes():
    rng = np.random.default_rng(0)
    n_notes = 500
    onsets = np.sort(rng.uniform(0, 20, n_notes))
    lengths = rng.choice([0.0, 0.004, 0.01, 0.1, 0.5, 2.0], n_notes)
    pitches = rng.integers(15, 115, n_notes)
    notes = np.stack([onsets, onsets + lengths, pitches, np.full(n_notes, 64)], axis=1)
    n = 1900  # shorter than the piece, so clipping is exercised as well
    np.testing.assert_allclose(
        beat_features(notes, n), _reference_features(notes, n), rtol=0, atol=1e-6
    )


def test_n_frames_covers_notes_and_beat_fade():
    piece = SymbolicPiece(
        name="p",
        notes=_notes([0.0, 2.004, 60, 80], [1.0, 1.0, 62, 80]),
        beats=np.array([0.5, 1.0, 1.5, 2.0]),
        downbeats=np.array([0.5]),
    )
    assert n_frames_for(piece) == 200 + FADE
    piece = SymbolicPiece("q", _notes([0.0, 3.004, 60, 80]), np.array([1.0]), np.array([]))
    assert n_frames_for(piece) == 300
    piece = SymbolicPiece("r", _notes([3.0, 3.0, 60, 80]), np.array([]), np.array([]))
    assert n_frames_for(piece) == 301  # a zero-length note still gets a duration frame
    empty = SymbolicPiece("e", _notes(), np.array([]), np.array([]))
    assert n_frames_for(empty) == 1


def test_featurises_100k_notes():
    rng = np.random.default_rng(1)
    n_notes = 100_000
    onsets = np.sort(rng.uniform(0, 1000, n_notes))
    offsets = onsets + rng.uniform(0.02, 2.0, n_notes)
    pitches = rng.integers(21, 109, n_notes)
    notes = np.stack([onsets, offsets, pitches, np.full(n_notes, 64.0)], axis=1)
    piece = SymbolicPiece("big", notes, np.arange(0.5, 1000, 0.5), np.arange(0.5, 1000, 2.0))
    n = n_frames_for(piece)
    feat = beat_features(notes, n)
    assert feat.shape == (n, N_FEATURES)
    assert feat[:, ONSET_COLS].sum() > 0.99 * n_notes  # only same-frame same-pitch repeats merge


# ----------------------------------------------------------------------------- labels


def test_label_fade_and_downbeat_channel():
    fade_values = 1.0 / np.arange(1, FADE + 1)
    labels = beat_labels(np.array([0.2, 0.7, 1.2]), np.array([0.2]), 200)
    assert labels.shape == (200, 2) and labels.dtype == np.float32
    for frame in (20, 70, 120):
        np.testing.assert_allclose(labels[frame : frame + FADE, 0], fade_values, rtol=1e-6)
    assert np.count_nonzero(labels[:, 0]) == 3 * FADE
    np.testing.assert_allclose(labels[20 : 20 + FADE, 1], fade_values, rtol=1e-6)
    assert np.count_nonzero(labels[:, 1]) == FADE


def test_label_overlaps_take_max_and_edges_are_cut():
    labels = beat_labels(np.array([0.10, 0.15, 0.98]), np.array([]), 100)
    beat = labels[:, 0]
    assert beat[10] == 1 and beat[15] == 1  # the second beat's own frame is not lowered
    np.testing.assert_allclose(beat[16], 0.5)  # max(1/7, 1/2)
    np.testing.assert_allclose(beat[14], 0.2)  # max(1/5, nothing yet)
    np.testing.assert_allclose(beat[98:], [1.0, 0.5])  # the fade runs off the end
    assert labels[:, 1].sum() == 0
    assert beat_labels(np.array([-0.05]), np.array([]), 20)[0, 0] == pytest.approx(1 / 6)


def test_downbeats_follow_the_given_meter():
    beats = np.arange(0.5, 6.0, 0.5)
    downbeats = beats[::3]  # 3/4: not every fourth beat
    labels = beat_labels(beats, downbeats, 700)
    assert set(np.flatnonzero(labels[:, 1] == 1)) == {50, 200, 350, 500}


# ----------------------------------------------------------------------------- decode


def test_decode_round_trip_recovers_beats():
    rng = np.random.default_rng(2)
    intervals = rng.uniform(0.35, 0.9, 40)  # a drifting tempo, never under min_distance
    beats = 0.5 + np.concatenate([[0.0], np.cumsum(intervals)]) + rng.uniform(-0.004, 0.004, 41)
    downbeats = beats[1::3]  # a pickup beat, then bars of three
    piece = SymbolicPiece("rt", _notes([0.0, beats[-1], 60, 80]), beats, downbeats)
    labels = beat_labels(beats, downbeats, n_frames_for(piece))
    got_beats, got_downbeats = decode_beats(labels)

    assert len(got_beats) == len(beats) and len(got_downbeats) == len(downbeats)
    np.testing.assert_allclose(got_beats, beats, atol=1.0 / FPS)
    np.testing.assert_allclose(got_downbeats, downbeats, atol=1.0 / FPS)
    np.testing.assert_allclose(got_beats * FPS, np.round(got_beats * FPS))  # frame times
    assert mir_eval.beat.f_measure(beats, got_beats) == 1.0
    assert mir_eval.beat.f_measure(downbeats, got_downbeats) == 1.0


def test_decode_thresholds_and_min_distance():
    probs = np.zeros((200, 2))
    probs[[20, 40, 60, 150], 0] = [0.9, 0.6, 0.49, 0.7]
    probs[[20, 45, 150], 1] = [0.35, 0.8, 0.2]
    beats, downbeats = decode_beats(probs, min_distance=0.3)
    np.testing.assert_allclose(beats, [0.2, 1.5])  # 0.4 s: too near 0.2 s; 0.6 s: too low
    np.testing.assert_allclose(downbeats, [0.45])  # 20 is thinned by the higher peak at 45
    beats, _ = decode_beats(probs, min_distance=0.1)
    np.testing.assert_allclose(beats, [0.2, 0.4, 1.5])
    with pytest.raises(ValueError):
        decode_beats(np.zeros((10, 3)))


def test_tracking_fills_the_beats_whose_peaks_fell_under_the_threshold():
    """Pulses every 0.5 s (120 bpm), one in four too weak for the threshold: peak picking finds
    three quarters of the beats, tracking at the peaks' tempo finds them all."""
    n, period = 3000, 50
    truth = np.arange(period, n - period, period)
    act = np.zeros(n)
    for i, k in enumerate(truth):
        width = np.exp(-0.5 * ((np.arange(n) - k) / 2.0) ** 2)
        act = np.maximum(act, width * (0.2 if i % 4 == 3 else 0.9))
    probs = np.stack([act, np.zeros(n)], axis=1)
    peaks, _ = decode_beats(probs, FPS, 0.5, 0.3, 0.3)
    assert len(peaks) == len(truth) - len(truth[3::4])
    tracked = track_beats(act, peaks, FPS)
    assert mir_eval.beat.f_measure(truth / FPS, peaks) < 0.9
    assert mir_eval.beat.f_measure(truth / FPS, tracked) > 0.97
    np.testing.assert_array_equal(track_beats(act, peaks[:2], FPS), peaks[:2])  # too few peaks


def _pulses(n: int, times, heights) -> np.ndarray:
    """An activation of Gaussian pulses (2 frames wide) at frames `times`."""
    act = np.zeros(n)
    for k, h in zip(times, heights, strict=True):
        act = np.maximum(act, h * np.exp(-0.5 * ((np.arange(n) - k) / 2.0) ** 2))
    return act


def test_tracking_finds_the_faster_level_when_every_other_beat_is_weak():
    """Beats every 0.4 s whose activation hovers around the peak threshold (0.3), as the frame
    model's does at tempi it never trained on: every other one peaks at 0.4, the others at 0.28.
    The peaks' median interval is 0.8 s, and tracking at it finds half the beats. The weak
    beats still recur, so `faster_period` goes back to 0.4 s and tracking finds them all."""
    n, period = 4000, 40
    truth = np.arange(period, n - period, period)
    act = _pulses(n, truth, [0.4 if i % 2 == 0 else 0.28 for i in range(len(truth))])
    peaks = pick_peaks(act, 0.3, 0.2, FPS)
    assert np.median(np.diff(peaks)) == pytest.approx(0.8)
    assert faster_period(act, 0.8, 0.9, FPS) == pytest.approx(0.4)
    slow = track_beats(act, peaks, FPS)
    fast = track_beats(act, peaks, FPS, faster_level=0.9)
    assert mir_eval.beat.f_measure(truth / FPS, slow) < 0.7
    assert mir_eval.beat.f_measure(truth / FPS, fast) > 0.97


def test_decoding_tracks_at_the_configured_faster_level():
    """`BeatTask.decode` hands `decode.faster_level` to the tracker: on the activation above,
    a level of 0.9 finds every beat and 0 (off) every other one. The presets leave it at its
    default, 1.0, as the shipped model's config does."""
    import dataclasses

    from jaxmir.tasks.base import get_task

    task = get_task("beat")
    cfg = task.presets()["quality"]
    assert cfg.decode.faster_level == 1.0
    n, period = 4000, 40
    truth = np.arange(period, n - period, period)
    act = _pulses(n, truth, [0.4 if i % 2 == 0 else 0.28 for i in range(len(truth))])
    probs = np.stack([act, np.zeros(n)], axis=1)

    def f_measure(level: float) -> float:
        decode = dict(method="track", downbeats="peaks", beat_threshold=0.3, min_distance=0.2)
        d = dataclasses.replace(cfg.decode, faster_level=level, **decode)
        beats, _ = task.decode(probs, dataclasses.replace(cfg, decode=d))
        return mir_eval.beat.f_measure(truth / FPS, beats)

    assert f_measure(0.9) > 0.97
    assert f_measure(0.0) < 0.7


def test_faster_level_keeps_the_period_when_nothing_recurs_in_between():
    """Beats every 0.8 s with nothing between them, or with a faint pulse at only some of the
    half-way points: no autocorrelation peak at 0.4 s reaches 0.9 of the one at 0.8 s."""
    n, period = 4000, 80
    beats = np.arange(period, n - period, period)
    assert faster_period(_pulses(n, beats, [0.9] * len(beats)), 0.8, 0.9, FPS) == 0.8
    between = beats[::3] + period // 2
    act = _pulses(n, np.concatenate([beats, between]), [0.9] * len(beats) + [0.2] * len(between))
    assert faster_period(act, 0.8, 0.9, FPS) == 0.8
    assert faster_period(act, 0.8, 0.0001, FPS) == pytest.approx(0.4)  # a low enough level


def test_dbn_follows_a_ritardando_that_one_tempo_cannot():
    """Sixty beats slowing from 0.4 s to 0.7 s apart, every fifth too weak for the threshold.
    Tracking at one tempo (the peaks' period) drifts off the beats where the tempo is far from it;
    the tempo-and-phase model (`decode.method=dbn`, through `BeatTask.decode`) follows the
    slowing and fills the weak beats. Too few peaks: the peaks themselves."""
    import dataclasses

    from jaxmir.tasks.base import get_task

    truth = np.round(50 + np.cumsum(np.geomspace(40, 70, 60))).astype(int)
    n = int(truth[-1]) + 100
    act = _pulses(n, truth, [0.2 if i % 5 == 2 else 0.8 for i in range(len(truth))])
    probs = np.stack([act, np.zeros(n)], axis=1)
    task = get_task("beat")
    cfg = task.presets()["quality"]

    def f_measure(method: str) -> float:
        decode = dict(method=method, downbeats="peaks", beat_threshold=0.5, min_distance=0.2)
        d = dataclasses.replace(cfg.decode, **decode)
        beats, _ = task.decode(probs, dataclasses.replace(cfg, decode=d))
        return mir_eval.beat.f_measure(truth / FPS, beats)

    assert f_measure("track") < 0.9
    assert f_measure("dbn") > 0.97
    peaks = pick_peaks(act, 0.5, 0.2, FPS)
    np.testing.assert_array_equal(dbn_beats(act, peaks[:2], FPS), peaks[:2])


def test_dbn_keeps_the_beat_level_that_tracking_chose():
    """The model's periods lie within 1.5 times the tracking period either way, so it never
    moves a tempo octave: on beats every 0.4 s whose every other one stays under the peak
    threshold it keeps the peaks' 0.8 s (half the beats) unless the faster-level check
    (`faster_period`) goes back to 0.4 s, as tracking does."""
    n, period = 4000, 40
    truth = np.arange(period, n - period, period)
    act = _pulses(n, truth, [0.4 if i % 2 == 0 else 0.28 for i in range(len(truth))])
    peaks = pick_peaks(act, 0.3, 0.2, FPS)
    slow = dbn_beats(act, peaks, FPS)
    assert np.median(np.diff(slow)) == pytest.approx(0.8, abs=0.02)
    assert mir_eval.beat.f_measure(truth / FPS, dbn_beats(act, peaks, FPS, 0.9)) > 0.97


def test_tracking_starts_from_the_pieces_own_peaks_when_too_few_reach_the_threshold():
    """A pulse every 0.3 s that hovers just under the threshold (0.27-0.31, as the shipped
    model's activation on identical notes at 200 bpm): one peak reaches 0.3, so both trackers
    had no tempo and wrote that one beat. Through `BeatTask.decode` they now start from the
    peaks of at least half the piece's maximum and find every beat. Enough peaks at the
    threshold are kept as they are; an activation that never reaches `RELATIVE_FLOOR` (no beat
    in it) and one whose relative peaks are too few to track from keep their few peaks: no
    peak under the threshold becomes a beat untracked."""
    import dataclasses

    from jaxmir.tasks.base import get_task

    n, period = 2000, 30
    truth = np.arange(period, n - period, period)
    heights = [0.31 if i == 10 else 0.27 + 0.01 * (i % 3) for i in range(len(truth))]
    act = _pulses(n, truth, heights)
    peaks = pick_peaks(act, 0.3, 0.2, FPS)
    assert len(peaks) == 1
    found = tracking_peaks(act, peaks, 0.2, FPS)
    assert mir_eval.beat.f_measure(truth / FPS, found) == 1.0
    task = get_task("beat")
    cfg = task.presets()["quality"]
    probs = np.stack([act, np.zeros(n)], axis=1)
    for method in ("track", "dbn"):
        decode = dict(method=method, downbeats="peaks", beat_threshold=0.3, min_distance=0.2)
        d = dataclasses.replace(cfg.decode, level_threshold=0.0, **decode)
        beats, _ = task.decode(probs, dataclasses.replace(cfg, decode=d))
        assert mir_eval.beat.f_measure(truth / FPS, beats) > 0.97, method
    strong = pick_peaks(_pulses(n, truth, [0.8] * len(truth)), 0.3, 0.2, FPS)
    np.testing.assert_array_equal(tracking_peaks(act, strong[:3], 0.2, FPS), strong[:3])
    faint = _pulses(n, truth, [RELATIVE_FLOOR * 0.9] * len(truth))
    assert len(tracking_peaks(faint, pick_peaks(faint, 0.3, 0.2, FPS), 0.2, FPS)) == 0
    two = _pulses(n, truth[:2], [0.25, 0.25])  # two notes: two relative peaks, no tempo
    assert len(tracking_peaks(two, pick_peaks(two, 0.3, 0.2, FPS), 0.2, FPS)) == 0


@pytest.mark.parametrize(
    "first_onset, expected_added",
    [
        (0.0, [0.0, 0.5]),  # a score's first beat at 0 s: both beats before the tracked ones
        (0.3, [0.5]),  # 0.0 lies before the first note (beyond the 70 ms tolerance)
        (0.44, [0.5]),  # within 70 ms after the added beat: kept
        (1.0, []),  # the first tracked beat is the first onset
    ],
)
def test_tracked_beats_are_extended_back_to_the_first_onset(first_onset, expected_added):
    beats = np.array([1.0, 1.5, 2.0, 2.5, 3.0])
    got = extended_to_first_onset(beats, first_onset)
    np.testing.assert_allclose(got, np.concatenate([expected_added, beats]))


def test_extension_uses_the_local_period_and_never_goes_before_zero():
    """The first intervals' median, not the piece's: a piece that slows later extends at its
    opening tempo; a beat up to 70 ms before 0 s (70 ms included) is written at 0 s; too few
    beats, too short a period or beats out of order: unchanged."""
    slowing = np.array([0.9, 1.2, 1.5, 1.8, 2.6, 3.4, 4.2, 5.0])
    np.testing.assert_allclose(extended_to_first_onset(slowing, 0.0)[:4], [0.0, 0.3, 0.6, 0.9])
    early = np.array([0.45, 0.95, 1.45, 1.95])
    np.testing.assert_allclose(extended_to_first_onset(early, 0.0)[:2], [0.0, 0.45])
    few = np.array([1.0, 1.5, 2.0])
    np.testing.assert_array_equal(extended_to_first_onset(few, 0.0), few)
    # a beat exactly 70 ms before the first onset (whole frames): kept, written at 0 s
    on_bound = np.array([0.57, 1.21, 1.85, 2.49])
    np.testing.assert_allclose(extended_to_first_onset(on_bound, 0.0)[:2], [0.0, 0.57])
    # no beat period (under SHORTEST_PERIOD: a duplicate at 0 s, thousands of beats) or beats
    # not ascending: unchanged
    for odd in (np.array([5.0, 5.001, 5.002, 5.003]), np.array([3.0, 1.0, 2.0, 4.0])):
        np.testing.assert_array_equal(extended_to_first_onset(odd, 0.0), odd)


def test_beats_before_the_first_note_keep_the_opening_period():
    """Over a long silence a tracker lays beats at whatever period it likes (0.75 s here,
    before music at 0.5 s): those more than 70 ms before the first onset are laid anew, the
    opening period continued back to 0 s. Beats there that keep the opening period (within
    10 %, a rest of a few beats) stay, as does a first beat within 70 ms of the onset."""
    silence = np.arange(0.5, 19.8, 0.75)
    music = 20.5 + 0.5 * np.arange(8)
    got, anew = from_first_onset(np.concatenate([silence, music]), 20.0)
    np.testing.assert_allclose(got, np.concatenate([0.5 * np.arange(41), music]))
    assert anew
    rest = np.array([18.03, 18.55, 19.02, 19.49])  # within 10 % of 0.5 s, up to the music
    got, anew = from_first_onset(np.concatenate([rest, music]), 20.0)
    np.testing.assert_allclose(got, np.concatenate([rest, music]))  # 20.0 missed, as before
    assert not anew
    got, anew = from_first_onset(music - 0.55, 20.0)
    np.testing.assert_allclose(got, music - 0.55)
    assert not anew


def test_decoding_extends_the_tracked_beats_to_the_first_note():
    """Through `BeatTask.decode`: an activation with no beat at the first two onsets (as the
    frame model gives a piece's opening) is tracked from 0.5 s (`track`, which extrapolates a
    little) or 1.0 s (`dbn`); with the piece's notes known (`BeatPosteriors`) the beats back to
    the first note at 0 s are added; frames alone (no notes) are left as tracked."""
    import dataclasses

    from jaxmir.tasks.base import get_task
    from jaxmir.tasks.beat.task import BeatPosteriors

    n, period = 3000, 50
    truth = np.arange(0, n - period, period)
    act = _pulses(n, truth[2:], [0.9] * (len(truth) - 2))
    probs = np.stack([act, np.zeros(n)], axis=1)
    notes = np.array([[t / FPS, t / FPS + 0.4, 60.0] for t in truth])
    task = get_task("beat")
    cfg = task.presets()["quality"]
    for method in ("track", "dbn"):
        decode = dict(method=method, downbeats="peaks", beat_threshold=0.3, min_distance=0.2)
        c = dataclasses.replace(
            cfg, decode=dataclasses.replace(cfg.decode, level_threshold=0.0, **decode)
        )
        alone, _ = task.decode(probs, c)
        assert alone[0] > 0.4, method  # the first onset's beat is missed (track: 0.5, dbn: 1.0)
        beats, _ = task.decode(BeatPosteriors(probs, notes), c)
        np.testing.assert_allclose(beats[:3], [0.0, 0.5, 1.0], atol=0.03, err_msg=method)
        assert mir_eval.beat.f_measure(truth / FPS, beats) > mir_eval.beat.f_measure(
            truth / FPS, alone
        )


@pytest.mark.parametrize(
    "period, bounds, expected",
    [
        (0.5, (0.0, math.inf), 0.5),  # no bounds
        (0.5, (100.0, 140.0), 0.5),  # already within
        (0.5, (40.0, 80.0), 1.0),  # a reel's quarters at 120 -> its half notes at 60
        (0.5, (0.0, 50.0), 1.5),  # three beats: the nearest level at or under 50
        (1.2, (90.0, 130.0), 0.6),  # 50 bpm -> 100
        (0.5, (300.0, 400.0), 0.5 / 3),  # a third of a beat (360 bpm)
        (0.5, (200.0, 230.0), 60 / 230),  # no level within: the nearest (240), to its bound
        (0.5, (150.0, 170.0), 0.4),  # the nearest is the beat itself (120): up to 150
        (1.0, (55.0, 70.0), 1.0),  # within: unchanged however many levels would fit
    ],
)
def test_period_in_range_moves_to_the_nearest_level_within_the_bounds(period, bounds, expected):
    assert period_in_range(period, bounds) == pytest.approx(expected)


def test_tempo_bounds_choose_the_level_for_tracking_and_dbn(monkeypatch):
    """Peaks every 0.25 s, every other one stronger: unbounded, both trackers follow 0.25 s;
    with at most 150 bpm they follow the stronger every 0.5 s; with at least 200 bpm from peaks
    every 0.5 s they go back to 0.25 s. Through `BeatTask.decode`, bounds skip the level check;
    with a level tagger, a slower level keeps the tracker's own beats in the phase the tagger
    prefers (`bounded_beats`), even the weaker one; bounds are refused where nothing is
    tracked or where they are the wrong way round."""
    import dataclasses

    from jaxmir.config import ConfigError
    from jaxmir.tasks.base import get_task

    n = 3000
    fast = np.arange(50, n - 50, 25)
    act = _pulses(n, fast, [0.9 if i % 2 == 0 else 0.6 for i in range(len(fast))])
    peaks = pick_peaks(act, 0.3, 0.2, FPS)
    strong = fast[::2] / FPS
    for track in (dbn_beats, track_beats):
        assert np.median(np.diff(track(act, peaks, FPS))) == pytest.approx(0.25, abs=0.01)
        slow = track(act, peaks, FPS, bpm_range=(0.0, 150.0))
        assert np.median(np.diff(slow)) == pytest.approx(0.5, abs=0.01)
        assert mir_eval.beat.f_measure(strong, slow) > 0.97
        again = track(act, pick_peaks(act, 0.8, 0.2, FPS), FPS, bpm_range=(200.0, math.inf))
        assert mir_eval.beat.f_measure(fast / FPS, again) > 0.97
    # dbn's periods stay within the bounds, where its usual span would pass them
    within = dbn_beats(act, pick_peaks(act, 0.8, 0.2, FPS), FPS, bpm_range=(100.0, 130.0))
    assert np.all(np.diff(within) >= 60 / 130 - 0.011) and np.all(np.diff(within) <= 0.6 + 0.011)

    import jaxmir.tasks.beat.task as beat_task
    from jaxmir.tasks.beat.task import BeatPosteriors

    task = get_task("beat")
    cfg = task.presets()["quality"]
    probs = np.stack([act, np.zeros(n)], axis=1)

    def decode(posteriors=probs, **kw):
        d = dict(method="dbn", downbeats="peaks", beat_threshold=0.3, min_distance=0.2)
        return task.decode(
            posteriors,
            dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, **{**d, **kw})),
        )[0]

    # no level tagger: tracked at the bounded period, the stronger phase
    beats = decode(max_bpm=150.0, level_tagger="", level_threshold=0.0)
    assert np.median(np.diff(beats)) == pytest.approx(0.5, abs=0.01)
    assert mir_eval.beat.f_measure(strong, beats) > 0.97
    # a level tagger (here one that calls the weaker peaks the beats): its phase, and no check
    asked = []

    def level_probs(folder, notes):
        asked.append(folder)
        return lambda times: np.isin(np.round(times * FPS), fast[1::2]).astype(float)

    monkeypatch.setattr(beat_task, "level_probs", level_probs)
    with_notes = BeatPosteriors(probs, np.zeros((0, 3)))
    beats = decode(with_notes, max_bpm=150.0, level_threshold=0.9, level_tagger="level")
    assert asked == ["level"]  # once, for the phase: a level check would ask again
    assert mir_eval.beat.f_measure(fast[1::2] / FPS, beats) > 0.97
    # bounds at the tracker's own level, or too narrow to hold the slower one (150-160: its
    # 120 moves to 150): tracked at the bounded period, the tagger not asked
    decode(with_notes, min_bpm=200.0, level_threshold=0.9, level_tagger="level")
    beats = decode(
        with_notes, min_bpm=150.0, max_bpm=160.0, level_threshold=0.9, level_tagger="level"
    )
    assert asked == ["level"]
    assert 60 / 160 - 0.011 <= np.median(np.diff(beats)) <= 60 / 150 + 0.011
    for bad, words in [
        (dict(method="peaks", max_bpm=150.0), "not peak picking"),
        (dict(min_bpm=120.0, max_bpm=60.0), "below decode.min_bpm"),
        (dict(min_bpm=-1.0), "finite and >= 0"),
        (dict(max_bpm=math.nan), "finite and >= 0"),
        (dict(min_bpm=math.inf), "finite and >= 0"),
        (dict(min_bpm=0.001, max_bpm=0.002), "decode.min_bpm: 10-1000"),  # ran for minutes
        (dict(min_bpm=5000.0), "decode.min_bpm: 10-1000"),
        (dict(max_bpm=1.0), "decode.max_bpm: 10-1000"),
        (dict(beat_threshold=2.0), "decode.beat_threshold: a probability"),
        (dict(min_distance=-0.1), "decode.min_distance: seconds"),
    ]:
        with pytest.raises(ConfigError, match=words):
            decode(**bad)
        with pytest.raises(ConfigError, match=words):  # before any model runs
            task.check_decode(
                dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, **bad))
            )


def test_calibration_breaks_ties_towards_the_shorter_minimum_distance():
    """Validation scores within 0.001 are a tie, and the shorter minimum distance wins it (the
    longer one hides every other beat above 200 bpm); a clear winner is kept."""
    from jaxmir.tasks.beat.task import best_tracking

    tie = {("track", 0.3, 0.2): 0.886, ("dbn", 0.3, 0.3): 0.92328, ("dbn", 0.3, 0.2): 0.92313}
    assert best_tracking(tie) == ("dbn", 0.3, 0.2)
    clear = {("dbn", 0.3, 0.3): 0.93, ("dbn", 0.3, 0.2): 0.92}
    assert best_tracking(clear) == ("dbn", 0.3, 0.3)
    shorter_but_worse = {("dbn", 0.4, 0.2): 0.9225, ("dbn", 0.3, 0.2): 0.9228}
    assert best_tracking({**shorter_but_worse, ("dbn", 0.3, 0.3): 0.923}) == ("dbn", 0.3, 0.2)


# ----------------------------------------------------------------------------- output


def test_beats_to_midi_tracks():
    beats = np.array([0.5, 0.6, 1.0, 0.6])
    midi = beats_to_midi(beats, np.array([0.5]))
    beat_track, down_track = midi.instruments
    assert (beat_track.name, down_track.name) == ("Beat", "Down Beat")
    assert beat_track.is_drum and down_track.is_drum
    assert {n.pitch for n in beat_track.notes} == {BEAT_PITCH}
    assert [n.pitch for n in down_track.notes] == [DOWNBEAT_PITCH]
    starts = [n.start for n in beat_track.notes]
    ends = [n.end for n in beat_track.notes]
    np.testing.assert_allclose(starts, [0.5, 0.6, 1.0])
    np.testing.assert_allclose(ends, [0.6, 0.7, 1.1])  # cut at the next beat, never overlapping
    assert all(n.velocity == 100 for n in beat_track.notes)


def test_write_beat_csv(tmp_path):
    path = tmp_path / "beats.csv"
    write_beat_csv(path, np.array([0.5, 1.0, 1.2345678]))
    assert path.read_text() == "time\n0.500000\n1.000000\n1.234568\n"
    write_beat_csv(path, np.array([]))
    assert path.read_text() == "time\n"


def test_score_tells_a_tempo_octave_from_a_wrong_tempo():
    from jaxmir.tasks.beat.task import TASK

    cfg = TASK.preset("tiny")
    beats = np.arange(0.0, 60.0, 0.5)
    labels = {"beats": beats, "downbeats": beats[::4]}
    exact = TASK.score((beats, beats[::4]), labels, cfg)
    assert exact["beat_f_measure"] == exact["beat_cmlt"] == exact["beat_amlt"] == 1.0
    # every other beat: half the F-measure's recall, right at the next metrical level
    half = TASK.score((beats[::2], beats[::4]), labels, cfg)
    assert half["beat_f_measure"] == pytest.approx(2 / 3)
    assert half["beat_cmlt"] == 0.0 and half["beat_amlt"] == 1.0
    # a tempo 10 % off drifts through every beat: no metrical level saves it
    drift = TASK.score((np.arange(0.0, 60.0, 0.55), beats[::4]), labels, cfg)
    assert drift["beat_amlt"] < 0.3 and drift["downbeat_f_measure"] == 1.0
    # tracked at the annotated level: only the first
    assert [s["beat_at_level"] for s in (exact, half, drift)] == [1.0, 0.0, 0.0]


def test_metrical_level_names_the_level_a_tracker_followed():
    from jaxmir.tasks.beat.task import metrical_level

    ref = np.arange(0.0, 20.0, 0.5)
    assert metrical_level(ref + 0.01, ref) == "beat"
    assert metrical_level(np.arange(0.0, 20.0, 0.54), ref) == "beat"  # within 10 %
    assert metrical_level(np.arange(0.0, 20.0, 0.25), ref) == "1/2"
    assert metrical_level(np.arange(0.0, 20.0, 0.5 / 3), ref) == "1/3"
    assert metrical_level(np.arange(0.0, 20.0, 0.125), ref) == "1/4"
    assert metrical_level(ref[::2], ref) == "2"
    assert metrical_level(ref[::3], ref) == "3"
    assert metrical_level(np.arange(0.0, 20.0, 0.75), ref) == "3/2"  # dotted
    assert metrical_level(np.arange(0.0, 20.0, 1 / 3), ref) == "2/3"  # triplets
    assert metrical_level(np.arange(0.0, 20.0, 0.58), ref) == "other"  # 1.16: no level
    assert metrical_level(np.arange(0.0, 20.0, 0.56), ref) == "other"  # just past 10 %
    assert metrical_level(ref[:1], ref) == "none"
    assert metrical_level(ref, ref[:1]) == "none"


@pytest.mark.parametrize(
    "bpm, band, expected",
    [
        (240.0, (45.0, 200.0), 1.5),  # faster than training: played 1.5 times slower
        (30.0, (45.0, 200.0), 1 / 1.5),  # slower: played 1.5 times faster
        (120.0, (45.0, 200.0), 1.0),
        (200.0, (45.0, 200.0), 1.0),  # the band's edges are inside it
        (240.0, (0.0, 0.0), 1.0),  # no band: never
    ],
)
def test_stretched_tempo_brings_a_tracked_tempo_into_the_band(bpm, band, expected):
    import dataclasses

    from jaxmir.tasks.beat.task import BeatDecodeConfig, stretched_tempo

    d = dataclasses.replace(BeatDecodeConfig(), tempo_band=band)
    beats = np.arange(12) * 60.0 / bpm
    assert stretched_tempo(beats, d) == pytest.approx(expected)
    assert stretched_tempo(beats[:2], d) == 1.0  # two beats hold no tempo


@pytest.mark.parametrize(
    "band, stretch",
    [
        ((200.0, 45.0), 1.5),
        ((-1.0, 200.0), 1.5),
        ((45.0,), 1.5),
        ((45.0, 200.0, 300.0), 1.5),
        ((45.0, 200.0), 0.5),
        ((45.0, 200.0), math.nan),
    ],
)
def test_an_unusable_tempo_band_is_refused(band, stretch):
    import dataclasses

    from jaxmir.config import ConfigError
    from jaxmir.tasks.beat.task import BeatDecodeConfig, stretched_tempo

    d = dataclasses.replace(BeatDecodeConfig(), tempo_band=band, tempo_stretch=stretch)
    with pytest.raises(ConfigError, match="decode.tempo_"):
        stretched_tempo(np.arange(12) * 0.5, d)


def test_beats_tracked_too_fast_are_tracked_again_on_the_slower_piece():
    """Through `BeatTask.decode`: beats peaked at 240 bpm lie outside the band, so the piece's
    posteriors at 1.5 times slower (`at_tempo`) are decoded and their times scaled back; those
    posteriors put the beat half a period later (as the shipped model does when it hears a
    fast piece at a tempo it knows), and that phase is what comes out. Inside the band, or
    with no band, the posteriors at another tempo are never asked for."""
    import dataclasses

    from jaxmir.tasks.base import get_task
    from jaxmir.tasks.beat.task import BeatPosteriors

    n, period = 2000, 25  # frames: 0.25 s, 240 bpm
    fast = np.arange(50, n - period, period)
    notes = np.array([[t / FPS, t / FPS + 0.1, 60.0] for t in fast])
    asked = []

    def at_tempo(r):
        asked.append(r)
        slow = np.round((fast + period / 2) * r).astype(int)  # the off-beats' phase, r x slower
        m = int(n * r) + 1
        return BeatPosteriors(
            np.stack([_pulses(m, slow, [0.9] * len(slow)), np.zeros(m)], 1), notes * [r, r, 1.0]
        )

    probs = np.stack([_pulses(n, fast, [0.9] * len(fast)), np.zeros(n)], axis=1)
    task = get_task("beat")
    cfg = task.presets()["quality"]
    d = dict(method="peaks", downbeats="peaks", beat_threshold=0.5, min_distance=0.2)
    c = dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, **d))
    beats, _ = task.decode(BeatPosteriors(probs, notes, at_tempo), c)
    assert asked == [1.5]
    np.testing.assert_allclose(beats, (fast + period / 2) / FPS, atol=0.011)
    for off in (dict(tempo_band=(0.0, 0.0)), dict(tempo_stretch=1.0)):
        never = dataclasses.replace(c, decode=dataclasses.replace(c.decode, **off))
        beats, _ = task.decode(BeatPosteriors(probs, notes, at_tempo), never)
        np.testing.assert_allclose(beats, fast / FPS, atol=0.011)
    assert asked == [1.5]  # no band, or no stretch: not asked again


def test_beat_posteriors_give_the_same_piece_at_another_tempo(tmp_path):
    """`posteriors_many` attaches `at_tempo`: the model's posteriors of the piece's notes
    played r times slower, as long as r times the frames, computed once per r."""
    from jaxmir.engine.run import init_state, make_predict
    from jaxmir.engine.sharding import make_mesh
    from jaxmir.tasks.base import get_task

    task = get_task("beat")
    cfg = task.presets()["tiny"]
    notes = np.array([[0.5 * i, 0.5 * i + 0.3, 60.0 + i % 5] for i in range(12)])
    x = beat_features(notes, 700)
    mesh = make_mesh()
    state = init_state(task, cfg, mesh, [])
    model, calls = make_predict(mesh, state), []

    def watched(windows):  # a progress bar's or a stop poll's wrapper, as eval and transcribe
        calls.append(len(windows))
        return model(windows)

    watched.__wrapped__ = model
    ((_, post),) = task.posteriors_many(watched, [(x, None)], cfg)
    n = len(calls)
    slower = post.at_tempo(1.5)
    assert len(calls) == n  # the model itself: decoding may run on another thread
    assert slower is post.at_tempo(1.5)
    assert abs(len(slower.frames) - 1.5 * notes[-1, 1] * FPS) <= 2
    np.testing.assert_allclose(slower.notes[:, 0], post.notes[:, 0] * 1.5, atol=0.011)


def test_an_unusable_tempo_band_exits_2_before_anything_is_written(tmp_path, capsys):
    from jaxmir.cli import main

    wd = tmp_path / "run"
    argv = ["train", "beat", "--preset", "tiny", "--workdir", str(wd), "--no-progress"]
    for band in ("[200,45]", "[45]"):
        assert main([*argv, "--set", f"decode.tempo_band={band}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "decode.tempo_band" in err[0]
        assert not wd.exists()
