"""From frame-wise beat/downbeat probabilities to beat times, a MIDI drum track and CSV.

Peak picking is omnizart's beat inference (`scipy.signal.find_peaks` with a height threshold
and a minimum distance per channel); differences are noted in each function's docstring.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import pretty_midi
from scipy.signal import find_peaks

from jaxmir.tasks.beat.bars import subdivided
from jaxmir.tasks.beat.labels import FPS

#: No bounds on the tracked tempo (beats per minute, low and high).
NO_BOUNDS = (0.0, math.inf)

BEAT_PITCH = 42
"""General MIDI closed hi-hat, the "Beat" track's note."""

DOWNBEAT_PITCH = 36
"""General MIDI bass drum 1, the "Down Beat" track's note."""

NOTE_LENGTH = 0.1
"""Seconds each beat note lasts at most (see `beats_to_midi`)."""

VELOCITY = 100


def decode_beats(
    probs: np.ndarray,
    fps: int = FPS,
    beat_threshold: float = 0.5,
    downbeat_threshold: float = 0.3,
    min_distance: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Beat and downbeat times in seconds (float64, ascending) from probabilities (T, 2).

    Channel 0 is beats, channel 1 downbeats. In each channel a frame is picked when it is a local
    maximum (`scipy.signal.find_peaks`) of at least the channel's threshold, and peaks closer than
    ``max(1, round(min_distance * fps))`` frames are thinned to the highest. Frame ``k`` is time
    ``k / fps``. The defaults are omnizart's configured ones (beat 0.5, downbeat 0.3, 0.3 s).

    Differences from omnizart's ``inference``: its ``t_unit`` argument defaults to 0.1 s although
    frames are 10 ms; its app passes the real frame length, which is what this function always
    uses, via ``fps``. (Its downbeat threshold argument also defaults to 0.5 while its
    configuration says 0.3; 0.3 is the default here.) Like omnizart, a peak on the very first or
    last frame is not found, since `find_peaks` needs a neighbour on both sides.
    """
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != 2:
        raise ValueError(f"probs must be (T, 2), got shape {probs.shape}")
    beats = pick_peaks(probs[:, 0], beat_threshold, min_distance, fps)
    return beats, pick_peaks(probs[:, 1], downbeat_threshold, min_distance, fps)


def pick_peaks(
    activation: np.ndarray, threshold: float, min_distance: float, fps: int = FPS
) -> np.ndarray:
    """Times (s) of one channel's peaks, as `decode_beats` picks them."""
    distance = max(1, round(min_distance * fps))
    peaks, _ = find_peaks(np.asarray(activation), height=threshold, distance=distance)
    return peaks.astype(np.float64) / fps


#: `tracking_peaks`: fewer picked peaks than this leave tracking no interval to trust.
MIN_TRACKING_PEAKS = 3
#: `tracking_peaks` then picks the activation's peaks of at least this fraction of its maximum...
RELATIVE_THRESHOLD = 0.5
#: ...where that maximum reaches this: about three times the shipped model's activation
#: between beats (a median of 0.03 on plain inputs), so that faint wiggles in a piece with no
#: beat in it are never tracked.
RELATIVE_FLOOR = 0.1


def tracking_peaks(
    activation: np.ndarray, peaks: np.ndarray, min_distance: float, fps: int = FPS
) -> np.ndarray:
    """The peaks to start tracking from: `peaks` (picked at the beat threshold), or where
    fewer than `MIN_TRACKING_PEAKS` reached it, the activation's peaks of at least
    `RELATIVE_THRESHOLD` of its maximum, when that maximum reaches `RELATIVE_FLOOR` and they
    are enough to track from (otherwise `peaks`: no peak under the threshold becomes a beat
    untracked).

    Why: the threshold is calibrated on the corpus's pieces, where the activation rises well
    above it on beats. On plainer input it can hover just under it: identical notes every 0.3 s
    give the shipped model an activation of 0.27-0.31 on each, one peak reaches its 0.3, and
    without three peaks there is no tempo to track, so one beat was written for a minute of
    music. A threshold relative to the piece's own activation finds the pulse there; a piece
    with enough peaks at the threshold decodes as before."""
    peaks = np.asarray(peaks, np.float64)
    activation = np.asarray(activation)
    if len(peaks) >= MIN_TRACKING_PEAKS or len(activation) == 0:
        return peaks
    top = float(activation.max())
    if top < RELATIVE_FLOOR:
        return peaks
    relative = pick_peaks(activation, RELATIVE_THRESHOLD * top, min_distance, fps)
    return relative if len(relative) >= MIN_TRACKING_PEAKS else peaks


def track_beats(
    activation: np.ndarray,
    peaks: np.ndarray,
    fps: int = FPS,
    tightness: float = 100.0,
    faster_level: float = 0.0,
    bpm_range: tuple[float, float] = NO_BOUNDS,
) -> np.ndarray:
    """Beat times (s) by dynamic programming over the beat activation (T,), at the tempo of the
    picked `peaks`' median interval: `librosa.beat.beat_track` (Ellis 2007) with that tempo
    given, so its 120-bpm prior plays no part. A beat whose peak fell under the threshold is
    filled in where the tempo puts it. Fewer than three peaks (no interval to trust): the
    peaks themselves. With `faster_level` > 0 the period is first checked for a faster beat
    level (`faster_period`); then moved into `bpm_range` (`period_in_range`).

    Not in omnizart. On the wide beat corpus's test pieces (a `demo` model), against peak
    picking at threshold 0.2: beat F 0.83 vs 0.81 on the corpus's own split and 0.78 vs 0.70 on
    meters and tempi never trained on."""
    import librosa

    peaks = np.asarray(peaks, np.float64)
    if len(peaks) < MIN_TRACKING_PEAKS:
        return peaks
    period = tracking_period(activation, peaks, fps, faster_level, bpm_range)
    _, beats = librosa.beat.beat_track(
        onset_envelope=np.asarray(activation, np.float32),
        sr=fps,
        hop_length=1,
        bpm=60.0 / period,
        tightness=tightness,
        trim=False,
        units="time",
    )
    return np.asarray(beats, np.float64)


def tracking_period(
    activation: np.ndarray,
    peaks: np.ndarray,
    fps: int = FPS,
    faster_level: float = 0.0,
    bpm_range: tuple[float, float] = NO_BOUNDS,
) -> float:
    """The beat period (s) that tracking starts from: the median interval of the picked
    `peaks` (at least three), checked for a faster level when `faster_level` > 0, then moved
    into `bpm_range` by whole multiples (`period_in_range`)."""
    period = float(np.median(np.diff(np.asarray(peaks, np.float64))))
    if faster_level > 0:
        period = faster_period(activation, period, faster_level, fps)
    return period_in_range(period, bpm_range)


#: The metrical levels `period_in_range` may move a period to: 2, 3 or 4 of its beats, or a
#: half, third or quarter of one.
LEVEL_FACTORS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0, 4.0, 0.25)


def period_in_range(period: float, bpm_range: tuple[float, float] = NO_BOUNDS) -> float:
    """`period` (s) times the `LEVEL_FACTORS` entry nearest 1 (on a log scale) whose tempo lies
    within `bpm_range` (inclusive); where none does (bounds narrower than the step between two
    levels), the level nearest the range, moved to its nearer bound. A user who knows a
    piece's tempo can so choose its metrical level (a reel's half notes at 60 rather than the
    quarters at 120 a model follows)."""
    lo, hi = bpm_range
    if lo <= 60.0 / period <= hi:
        return period

    def outside(p: float) -> float:  # how far (log) the tempo 60/p lies outside the range
        bpm = 60.0 / p
        below = math.log(lo / bpm) if lo > 0 else 0.0
        above = math.log(bpm / hi) if math.isfinite(hi) else 0.0
        return max(0.0, below, above)

    candidates = [period * f for f in LEVEL_FACTORS]
    chosen = min(candidates, key=lambda p: (outside(p), abs(math.log(p / period))))
    shortest, longest = 60.0 / hi, (60.0 / lo if lo > 0 else math.inf)
    return min(max(chosen, shortest), longest)


def bounds_around(bpm: float, factor: float) -> tuple[float, float]:
    """Tempo bounds (bpm) within `factor` either way of `bpm`."""
    return bpm / factor, bpm * factor


#: `dbn_beats`: the beat period may range from the tracking period divided by this factor to
#: the period times it (never a tempo octave away), in `TEMPO_STATES` log-spaced steps.
TEMPO_SPAN = 1.5
TEMPO_STATES = 40
#: How strongly a change of period between two beats is penalised: the transition from
#: period i to j is proportional to ``exp(-TEMPO_CHANGE * |j / i - 1|)``. On the shipped beat
#: model's validation pieces 30 scored higher than 100 (stiffer) and 10 (looser).
TEMPO_CHANGE = 30.0
#: The first 1/BEAT_FRACTION of each period is the beat: there the activation is the
#: probability of the observation, elsewhere ``(1 - activation) / (BEAT_FRACTION - 1)``.
BEAT_FRACTION = 16


def dbn_beats(
    activation: np.ndarray,
    peaks: np.ndarray,
    fps: int = FPS,
    faster_level: float = 0.0,
    bpm_range: tuple[float, float] = NO_BOUNDS,
) -> np.ndarray:
    """Beat times (s) by a hidden Markov model of beat period and phase, decoded by Viterbi
    over the beat activation (T,): the tempo may drift from beat to beat (rubato, ritardando,
    fermatas), where `track_beats` holds one tempo for the whole piece. The periods on offer
    lie within `TEMPO_SPAN` of `tracking_period` (the picked `peaks`' median interval, after
    the faster-level check and moved into `bpm_range`), so the global beat level is chosen as
    for tracking and the model cannot drift to another tempo octave; nor out of `bpm_range`,
    where that leaves periods on offer. Fewer than three peaks: the peaks themselves.

    Not in omnizart; the state space and transitions follow the bar-pointer model family of
    Whiteley et al. (2006) and Krebs et al. (2015), without bars. On the shipped beat model's
    pieces (beat F against `track_beats`): validation 0.89 -> 0.92 (docs/beat.md)."""
    peaks = np.asarray(peaks, np.float64)
    if len(peaks) < MIN_TRACKING_PEAKS:
        return peaks
    frames = tracking_period(activation, peaks, fps, faster_level, bpm_range) * fps
    shortest = max(2, int(np.floor(frames / TEMPO_SPAN)))
    longest = max(shortest, int(np.ceil(frames * TEMPO_SPAN)))
    lo, hi = bpm_range  # periods in frames: 60 * fps / bpm
    bounded = (
        max(shortest, int(np.ceil(60.0 * fps / hi))),
        min(longest, int(60.0 * fps / lo) if lo > 0 else longest),
    )
    if bounded[0] <= bounded[1]:
        shortest, longest = bounded
    intervals = np.unique(np.round(np.geomspace(shortest, longest, TEMPO_STATES)).astype(int))
    return viterbi_beats(activation, intervals) / fps


def viterbi_beats(activation: np.ndarray, intervals: np.ndarray) -> np.ndarray:
    """Beat frames (float64) of the most likely path through states (period k, phase p < k)
    for `intervals` (periods in frames, ascending): the phase advances one per frame; from
    a period's last phase the path moves to phase 0 of any period, as `TEMPO_CHANGE` says;
    a beat is each frame at phase 0. Only the phase-0 states keep back-pointers (which
    period they came from); every other state has one predecessor."""
    eps = 1e-6
    act = np.clip(np.asarray(activation, np.float64), eps, 1.0 - eps)
    intervals = np.asarray(intervals, np.int64)
    n = len(intervals)
    first = np.concatenate([[0], np.cumsum(intervals)[:-1]])
    last = first + intervals - 1
    phase = np.concatenate([np.arange(k) for k in intervals])
    beat_part = np.repeat(np.maximum(1, intervals // BEAT_FRACTION), intervals)
    is_beat = phase < beat_part
    ratio = intervals[None, :] / intervals[:, None]  # from period i (rows) to j
    log_move = -TEMPO_CHANGE * np.abs(ratio - 1.0)
    log_move -= np.log(np.exp(log_move).sum(axis=1, keepdims=True))
    log_on, log_off = np.log(act), np.log((1.0 - act) / (BEAT_FRACTION - 1))
    score = np.where(is_beat, log_on[0], log_off[0]) - np.log(len(phase))
    came_from = np.zeros((len(act), n), np.int32)
    for t in range(1, len(act)):
        moves = score[last][:, None] + log_move
        best = np.argmax(moves, axis=0)
        came_from[t] = best
        shifted = np.empty_like(score)
        shifted[1:] = score[:-1]
        shifted[first] = moves[best, np.arange(n)]
        score = shifted + np.where(is_beat, log_on[t], log_off[t])
    state = int(np.argmax(score))
    k = int(np.searchsorted(first, state, side="right")) - 1
    p = state - int(first[k])
    beats = []
    for t in range(len(act) - 1, -1, -1):
        if p > 0:
            p -= 1
            continue
        beats.append(t)
        k = int(came_from[t, k])
        p = int(intervals[k]) - 1
    return np.asarray(beats[::-1], np.float64)


#: `extended_to_first_onset`: the period to extend by is the median of the first this many
#: tracked intervals (the local tempo at the start, not the piece's).
START_INTERVALS = 3
#: ...and a beat may lie this far (s) before the first onset: mir_eval's tolerance.
START_TOLERANCE = 0.07


def extended_to_first_onset(beats: np.ndarray, first_onset: float) -> np.ndarray:
    """`beats` with beats added before the first one, a local period apart (the median of
    its first `START_INTERVALS` intervals), back to the piece's first note onset (less
    `START_TOLERANCE`; one there before 0 s is written at 0 s). Fewer than `START_INTERVALS`
    + 1 beats, beats not ascending or a period under `SHORTEST_PERIOD`: unchanged.

    Why: the frame model gives a piece's first onset almost no beat activation (its spectral
    flux is 0 at frame 0, docs/beat.md), so tracking began one beat or more into the music: a
    file written from a score lost its first beat. On the shipped beat model the first true
    beat was found in 69 % of 48 exported music21 works and 36 % of 96 fresh pieces; extended,
    83 % and 59 %, beat F the same or higher (0.716 and 0.812 -> 0.716 and 0.815) and the
    downbeat taggers, given the first bar's beats, downbeat F 0.562 / 0.703 -> 0.563 / 0.727."""
    beats = np.asarray(beats, np.float64)
    if len(beats) < START_INTERVALS + 1:
        return beats
    opening = np.diff(beats[: START_INTERVALS + 1])
    period = float(np.median(opening))
    if opening.min() <= 0 or period < SHORTEST_PERIOD:  # not ascending, or no beat period
        return beats
    # whole periods back to the first onset (less the tolerance); the nudge keeps a beat that
    # lands on that bound exactly (times are whole frames) from rounding away
    n = int(np.floor((beats[0] - (first_onset - START_TOLERANCE)) / period + 1e-9))
    if n < 1:
        return beats
    before = beats[0] - period * np.arange(n, 0, -1)
    return np.concatenate([np.maximum(before, 0.0), beats])


#: `from_first_onset` keeps the beats tracked before the first note where each of their
#: intervals lies within this share of the opening period.
LEAD_IN_TOLERANCE = 0.1


def from_first_onset(beats: np.ndarray, first_onset: float) -> tuple[np.ndarray, bool]:
    """(`beats` extended back to the first note onset (`extended_to_first_onset`), whether the
    beats before it were laid anew). Beats tracked more than `START_TOLERANCE` before the first
    onset stay where each of their intervals lies within `LEAD_IN_TOLERANCE` of the opening
    period (the median of the first `START_INTERVALS` intervals from the first onset on);
    otherwise they are dropped and the opening period is continued back to 0 s.

    Why: before the first note the frame model hears nothing. Over a rest of a few beats the
    tracker keeps the tempo it is about to hear, and its beats there follow the score (a slow
    piece's 10-s lead-in: beat F 0.97 kept, 0.87 laid anew); over a long silence it drifts to
    whatever period its transitions like (20 s before a piece at 120 bpm: 26 beats 0.75 s
    apart, and the downbeat taggers read bars into them). A score's rests keep its tempo."""
    beats = np.asarray(beats, np.float64)
    heard = beats[beats >= first_onset - START_TOLERANCE]
    lead = beats[beats < first_onset - START_TOLERANCE]
    if len(lead) == 0 or len(heard) < START_INTERVALS + 1:
        return extended_to_first_onset(beats, first_onset), False
    period = float(np.median(np.diff(heard[: START_INTERVALS + 1])))
    # the lead's intervals, and the gap to the first heard beat in whole periods (the tracker
    # often misses the first onset's beat)
    steps = np.diff(lead) / period if period > 0 else np.array([np.inf])
    gap = (heard[0] - lead[-1]) / period if period > 0 else np.inf
    whole = max(round(gap), 1) if np.isfinite(gap) else 1
    kept = np.all(np.abs(steps - 1.0) <= LEAD_IN_TOLERANCE)
    if kept and abs(gap - whole) <= LEAD_IN_TOLERANCE:
        return extended_to_first_onset(beats, first_onset), False
    return extended_to_first_onset(heard, 0.0), True


def bars_continued_back(beats: np.ndarray, downbeats: np.ndarray, before: float) -> np.ndarray:
    """`downbeats` (a subset of `beats`) with bars of the opening length continued back over
    the beats before time `before` (the first note, less `START_TOLERANCE`): every k-th beat
    back from the first downbeat, k the median number of beats in its first `START_INTERVALS`
    bars. Unchanged with fewer than two downbeats or downbeats not among `beats`.

    Why: the downbeat taggers are asked only where there are notes (before the first one,
    `from_first_onset` lays the beats of a silent lead-in); a score's bars of rest keep its bar
    length."""
    beats, downbeats = np.asarray(beats, np.float64), np.asarray(downbeats, np.float64)
    at = np.searchsorted(beats, downbeats)
    if len(downbeats) < 2 or at.max() >= len(beats) or not np.allclose(beats[at], downbeats):
        return downbeats
    bar = int(np.median(np.diff(at[: START_INTERVALS + 1])))
    earlier = np.arange(at[0] - bar, -1, -bar)[::-1] if bar > 0 else np.zeros(0, int)
    earlier = earlier[beats[earlier] < before]
    return np.concatenate([beats[earlier], downbeats])


#: `slower_level` judges a phase only where each of the k phases has this many beats;
#: `checked_level` fills in beats only where at least this many points would be inserted.
LEVEL_MIN_BEATS = 4


def slower_level(
    beats: np.ndarray, probs: np.ndarray, threshold: float, factors: tuple[int, ...]
) -> np.ndarray:
    """`beats`, or every k-th of them where the level tagger says the rest are no beats.

    `probs` (len(beats),): the level tagger's probability that each tracked beat is a beat
    (`jaxmir.tasks.beat.bars.subdivided` is what it learned from). For each k of `factors` in
    turn, the beats split into k phases (every k-th beat from the first, from the second,
    ...); where the mean probability of the phases other than the most probable one is under
    `threshold`, the tracker followed a sub-beat, k steps to the beat, and only the most
    probable phase is kept.

    Why: the frame model's beat activation rises on sub-beats too, more so at tempi it never
    trained on, and the tracker then follows the eighth notes under a slow quarter-note beat.
    The period and the activation alone cannot tell the levels apart (docs/beat.md); the notes
    can (what starts on a beat, what the bass and harmony do), and the tagger reads them in
    beats, never in seconds, so a tempo that training never saw looks like one it did."""
    beats = np.asarray(beats, np.float64)
    probs = np.asarray(probs, np.float64)
    for k in factors:
        if len(beats) < LEVEL_MIN_BEATS * k:
            continue
        means = phase_means(probs, k)
        strongest = int(np.argmax(means))
        if np.delete(means, strongest).mean() < threshold:
            return beats[strongest::k]
    return beats


def phase_means(probs: np.ndarray, k: int) -> np.ndarray:
    """The mean of `probs` over each of the k phases (every k-th value from the first, from
    the second, ...)."""
    return np.array([np.asarray(probs, np.float64)[i::k].mean() for i in range(k)])


def strongest_phase(probs: np.ndarray, k: int) -> int:
    """The phase (0 <= i < k) of highest mean level-tagger probability (`phase_means`)."""
    return int(np.argmax(phase_means(probs, k)))


def checked_level(
    beats: np.ndarray,
    probs_of: Callable[[np.ndarray], np.ndarray],
    threshold: float,
    factors: tuple[int, ...],
    shortest: float,
    fill: bool = True,
) -> np.ndarray:
    """The tracked `beats` at the level the level tagger calls the beat: every k-th of them
    (`slower_level`), else (with `fill`) the beats with the ones the tracker skipped filled in,
    else `beats`. A `threshold` of 0 checks nothing.

    `probs_of(times)`: the level tagger's probability that each of `times` is a beat. Where
    `slower_level` keeps every beat, for each k of `factors` in turn k - 1 points are inserted
    into each interval (`subdivided`); where their mean probability is at least 1 - `threshold`
    (the mirror of `slower_level`'s test) and no interval that results is shorter than
    `shortest` seconds (the decoding's `min_distance`: peak picking never picks closer beats
    either), the tracker followed every k-th beat and the filled sequence is returned.
    Thresholds above 0.5 make the fill's test (1 - `threshold`) easier to pass than the slower
    one; calibration tries 0.05-0.5.

    Why the filling: the opposite error to the one `slower_level` mends. At tempi above those
    it trained on the frame model's activation leaves every other beat low, and tracking
    follows half the beats; the tagger, which reads the notes in beats and was trained on true
    beats cut into steps, sees that the midpoints of such a sequence are beats (docs/beat.md:
    "Missed beats")."""
    beats = np.asarray(beats, np.float64)
    if threshold <= 0:
        return beats
    slower = slower_level(beats, probs_of(beats), threshold, factors)
    if not fill or len(slower) < len(beats) or len(beats) <= LEVEL_MIN_BEATS:
        return slower
    for k in factors:
        if k < 2:
            continue
        times, is_beat = subdivided(beats, k)
        if np.diff(times).min() < shortest:
            continue
        if np.asarray(probs_of(times))[is_beat == 0].mean() >= 1.0 - threshold:
            return times
    return beats


#: `faster_period` looks for periods from this fraction of the peaks' median interval (a
#: level up to about twice as fast) to 0.8 of it. From 0.3 (three times as fast) it found
#: sub-beats too: validation beat F 0.865 against 0.886 at 0.45.
FASTEST_FRACTION = 0.45
SHORTEST_PERIOD = 0.15  # seconds: 400 beats per minute


def faster_period(activation: np.ndarray, period: float, level: float, fps: int = FPS) -> float:
    """The beat period (s) to track: `period` (the picked peaks' median interval), or the
    shortest lag between 0.45 and 0.8 of it at which the activation's autocorrelation has a
    local maximum of at least `level` times its maximum around `period` (within 10 %).

    Why: the median interval of the picked peaks is biased to slow levels. When the frame model
    leaves every other beat under the peak threshold, as it does on thin textures and at tempi
    it never trained on, the median interval is two beats (or a mix of one and two: 1.2-1.5
    times the period), and tracking at that tempo finds half the beats. The weak beats still
    recur in the activation, so its autocorrelation peaks at the true period as well. Beats
    with nothing between them have no such peak, and the period stays. On the shipped beat
    model at level 1.0, beat F: validation 0.886 (unchanged), test 0.862 -> 0.856, unseen
    tempi and meters 0.766 -> 0.834, thin textures 0.746 -> 0.815 (docs/beat.md)."""
    x = np.asarray(activation, np.float64)
    x = x - x.mean()
    n = len(x)
    lag = int(round(period * fps))
    if n < 2 * lag or lag < 4:
        return period
    spectrum = np.fft.rfft(x, 2 * n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum))[:n]
    if acf[0] <= 0:
        return period
    acf /= acf[0]
    width = max(2, lag // 10)
    at_period = acf[max(1, lag - width) : lag + width + 1].max()
    lo = max(int(SHORTEST_PERIOD * fps), int(FASTEST_FRACTION * lag))
    hi = int(0.8 * lag)
    for k in range(lo, hi + 1):
        is_peak = acf[k] >= acf[k - 1] and acf[k] > acf[k + 1]
        if is_peak and acf[k] > 0 and acf[k] >= level * at_period:
            return k / fps
    return period


def _drum_track(name: str, pitch: int, times: np.ndarray) -> pretty_midi.Instrument:
    track = pretty_midi.Instrument(program=0, is_drum=True, name=name)
    starts = np.unique(np.asarray(times, np.float64).ravel())
    ends = starts + NOTE_LENGTH
    if len(starts) > 1:
        ends[:-1] = np.minimum(ends[:-1], starts[1:])
    for start, end in zip(starts, ends, strict=True):
        track.notes.append(
            pretty_midi.Note(velocity=VELOCITY, pitch=pitch, start=float(start), end=float(end))
        )
    return track


def beats_to_midi(beats: np.ndarray, downbeats: np.ndarray) -> pretty_midi.PrettyMIDI:
    """A MIDI file with two drum tracks: "Beat" (pitch 42) and "Down Beat" (pitch 36).

    Each time becomes one note of velocity 100 lasting ``NOTE_LENGTH`` = 0.1 s, cut short at the
    next note of its track if that comes sooner; times are sorted and duplicates merged.

    Differs from omnizart, whose notes last 0.5 s: at tempi above 120 bpm that overlaps the next
    beat's note of the same pitch, and overlapping same-pitch notes are ambiguous in MIDI (a
    reader may end the wrong one). 0.1 s is shorter than any gap `decode_beats` produces with its
    default 0.3 s minimum distance, and the cut covers other inputs.
    """
    midi = pretty_midi.PrettyMIDI()
    midi.instruments = [
        _drum_track("Beat", BEAT_PITCH, beats),
        _drum_track("Down Beat", DOWNBEAT_PITCH, downbeats),
    ]
    return midi


def read_beat_csv(path: str | os.PathLike) -> np.ndarray:
    """The times of a `write_beat_csv` file (float64, possibly empty)."""
    with open(path, encoding="utf-8") as f:
        return np.asarray([float(v) for v in f.read().split()[1:]], np.float64)


def write_beat_csv(path: str | os.PathLike, times: np.ndarray) -> None:
    """Write times as CSV: a ``time`` header line, then one time in seconds per line, 6 decimals.

    omnizart writes the same 6-decimal times but without a header; the header names the column
    for CSV readers.
    """
    lines = ["time"] + [f"{t:.6f}" for t in np.asarray(times, np.float64).ravel()]
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
