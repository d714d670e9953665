"""How far tracked beats agree with the meter map of the MIDI file they were tracked from.

A MIDI file written from notation carries the score's tempo and time-signature events, so its
beats are known; the tracker never reads them (it hears the notes only). Where the two differ
it is mostly in metrical level: a slow notated beat over running notes is often tracked at the
notes (docs/beat.md, "Scores as a user exports them"), and which of the two is "the beat" is
partly a convention of the notation. `jaxmir transcribe beat` says so per file, so a user sees
at once whether the beats it wrote follow the file's own beat, a half or a double of it.

A file whose map is a recorder's placeholder (a performance: `placeholder_meter`) or that has
no time signature has no beats of its own to compare, and gets no line.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import mir_eval
import numpy as np

from jaxmir.data.datasets.midi import (
    DEFAULT_QPM,
    MIN_ON_GRID,
    MIN_ONSETS,
    MidiError,
    high_ticks,
    load_midi,
    on_grid_share,
    read_midi_piece,
)
from jaxmir.data.symbolic import SymbolicPiece
from jaxmir.tasks.beat.decode import bounds_around
from jaxmir.tasks.beat.task import BOUNDS_RANGE, f_measures, median_interval, metrical_level

#: How `metrical_level`'s names read in a sentence about the tracked beats ("other": the ratio
#: of the tempi is given instead).
LEVEL_WORDS = {
    "beat": "follow its beat",
    "1/2": "run twice as fast as its beat",
    "1/3": "run three times as fast as its beat",
    "1/4": "run four times as fast as its beat",
    "2": "mark every 2nd of its beats",
    "3": "mark every 3rd of its beats",
    "3/2": "mark every third of its half-beats (dotted)",
    "2/3": "run at triplets of its beat",
    "none": "are too few to compare",
}


@dataclass(frozen=True)
class MeterAgreement:
    """Tracked beats against a file's own: mir_eval's beat and downbeat F (70 ms), the
    `metrical_level` the tracked beats follow, both median beat intervals (s), and a shift of
    the file's grid that agrees far better (`GridShift`), if any."""

    beat_f_measure: float
    downbeat_f_measure: float
    level: str
    file_beat_s: float | None
    tracked_beat_s: float | None
    shift: GridShift | None = None
    steady: bool = True  # the file's beat keeps its length within HINT_FACTOR (`steady_tempo`)

    def line(self, name: str, peaks: bool = False, hint: bool = True) -> str:
        """One sentence for the user about the file `name`; `peaks`: decoded by peak picking,
        whose beats no tempo bounds steer (the hint then names a tracker); `hint=False`: no
        tempo bounds suggested (the user gave some)."""
        its = "its own meter map"
        if self.file_beat_s is not None:
            per_minute = 60.0 / self.file_beat_s
            its += f" (a beat every {self.file_beat_s:.2f} s, {per_minute:.0f} per minute)"
        every = "" if self.tracked_beat_s is None else f", every {self.tracked_beat_s:.2f} s,"
        if self.level not in LEVEL_WORDS and self.file_beat_s and self.tracked_beat_s:
            how = f"run at {self.file_beat_s / self.tracked_beat_s:.2f} times its tempo"
        else:
            how = LEVEL_WORDS[self.level]
        text = (
            f"{name}: against {its} the tracked beats{every} {how}: "
            f"beat F {self.beat_f_measure:.2f}, downbeat F {self.downbeat_f_measure:.2f}"
        )
        if self.level not in ("beat", "none") and self.file_beat_s and not self.steady:
            text += " (its beat changes length: no one pair of tempo bounds follows it)"
        elif self.level not in ("beat", "none") and self.file_beat_s and hint:
            # whole numbers around the factor's bounds, within what decoding accepts
            lo, hi = bounds_of_beat(self.file_beat_s, whole=True)
            if lo < hi:
                track = "--set decode.method=track " if peaks else ""
                text += (
                    f" (to follow its beat: {track}--set decode.min_bpm={lo:g} "
                    f"--set decode.max_bpm={hi:g})"
                )
        if self.shift is not None:
            s = self.shift
            text += (
                f"; moved {s.beats} beat{'' if s.beats <= 1 else 's'} later, its grid agrees "
                f"better (a pickup the file does not mark, or the tracker off its phase): beat F "
                f"{s.beat_f_measure:.2f}, downbeat F {s.downbeat_f_measure:.2f}"
            )
        return text


@dataclass(frozen=True)
class GridShift:
    """The file's beats and downbeats moved `beats` of its beats later, and their scores."""

    beats: Fraction
    beat_f_measure: float
    downbeat_f_measure: float


#: The hint for another level bounds the tempo to the file's within this factor either way
#: (`decode.min_bpm`, `decode.max_bpm`; `python -m benchmarks.beat_works --told-tempo 1.25`).
HINT_FACTOR = 1.25


def bounds_of_beat(beat_s: float, whole: bool = False) -> tuple[float, float]:
    """Tempo bounds (bpm) within `HINT_FACTOR` either way of a beat every `beat_s` seconds,
    within `BOUNDS_RANGE` (`whole`: widened to whole numbers, as a user types them); not a
    range (low >= high) where the beat lies outside what decoding accepts."""
    bpm = 60.0 / beat_s
    if not BOUNDS_RANGE[0] <= bpm <= BOUNDS_RANGE[1]:  # bounds around it would exclude it
        return BOUNDS_RANGE[0], BOUNDS_RANGE[0]
    lo, hi = bounds_around(bpm, HINT_FACTOR)
    if whole:
        lo, hi = math.floor(lo), math.ceil(hi)
    return max(lo, BOUNDS_RANGE[0]), min(hi, BOUNDS_RANGE[1])


#: Shifts tried: steps of 1/24 beat (a score's onset grid: eighths, sixteenths, triplets) up to
#: one bar; one is named only where it raises beat F + downbeat F by `SHIFT_GAIN`.
SHIFT_STEPS = 24
SHIFT_GAIN = 0.3
SHIFT_TIE = 0.05  # shifts this close to the best count as tied
MIN_TRACKED = 8  # fewer tracked beats than this: no shift is looked for


def grid_shift(
    beats: np.ndarray, downbeats: np.ndarray, file_beats: np.ndarray, file_downbeats: np.ndarray
) -> GridShift | None:
    """The shift of the file's grid (its beats and downbeats moved later by a whole number of
    1/24 beats, less than a bar, along its own tempo map) whose beat F + downbeat F against the
    tracked `beats` and `downbeats` is highest, where it beats the unshifted grid's by
    `SHIFT_GAIN`; else None. MIDI has no pickup: a score's short first bar written from t=0
    (as music21 writes one) puts every later beat and bar line of the file early."""
    n = len(file_beats)
    if n < 2 or len(beats) < MIN_TRACKED:
        return None
    at = np.searchsorted(file_beats, file_downbeats)  # the downbeats are some of the beats
    # the longest bar, in beats (one downbeat only: no bar to measure, shifts within a beat)
    bar = int(np.max(np.diff(at))) if len(at) >= 2 else 1

    def scores(k: int) -> tuple[float, float]:
        step = k / SHIFT_STEPS
        moved = np.interp(np.arange(n) + step, np.arange(n), file_beats, right=np.nan)
        moved_down = moved[at]
        return (
            mir_eval.beat.f_measure(moved[np.isfinite(moved)], beats),
            mir_eval.beat.f_measure(moved_down[np.isfinite(moved_down)], downbeats),
        )

    base = sum(scores(0))
    tried = {k: scores(k) for k in range(1, bar * SHIFT_STEPS)}
    top = max(sum(f) for f in tried.values())
    if top < base + SHIFT_GAIN:
        return None
    # neighbouring shifts score alike within the 70 ms window: the plainest fraction of a beat
    least = max(top - SHIFT_TIE, base + SHIFT_GAIN)
    near = [k for k, f in tried.items() if sum(f) >= least]
    k = min(near, key=lambda k: (Fraction(k, SHIFT_STEPS).denominator, -sum(tried[k]), k))
    return GridShift(Fraction(k, SHIFT_STEPS), float(tried[k][0]), float(tried[k][1]))


def steady_tempo(file_beats: np.ndarray) -> bool:
    """Whether the file's beat intervals stay within `HINT_FACTOR` of each other (5th to 95th
    percentile: a beat snapped onto a time-signature change is shorter), so that one pair of
    tempo bounds around their median holds the whole file. A tempo change moves them, and so
    does a change of beat unit at one tempo (2/4 to 6/8: a quarter, then a dotted quarter)."""
    intervals = np.diff(np.asarray(file_beats, np.float64))
    if len(intervals) < 2:
        return True
    lo, hi = np.percentile(intervals, [5, 95])
    return bool(lo > 0 and hi / lo <= HINT_FACTOR)


def default_map_of_few_onsets(pm, notes: np.ndarray) -> bool:
    """Whether the map of the file read as `pm` is MIDI's default alone (one 120 qpm tempo)
    over too few onsets to tell a score from a file whose writer knew no tempo
    (`placeholder_meter` needs `MIN_ONSETS`): a transcription's short MIDI file, say, which has
    no beat of its own to agree with."""
    with high_ticks():
        _, tempi = pm.get_tempo_changes()
    few = len(np.unique(np.asarray(notes)[:, 0])) < MIN_ONSETS
    return few and len(tempi) == 1 and abs(float(tempi[0]) - DEFAULT_QPM) < 1e-6


@dataclass(frozen=True)
class FileMeter:
    """What a MIDI file says of its own meter: its notes and its map's beats and downbeats
    (`read_midi_piece`), the share of its onsets on that map's grid (`on_grid_share`), and
    whether the map is MIDI's default over too few onsets to be a score's
    (`default_map_of_few_onsets`)."""

    piece: SymbolicPiece
    on_grid: float
    default_map: bool

    @property
    def is_score(self) -> bool:
        """Whether the file reads as a score: a map of its own and at least `MIN_ON_GRID` of
        its onsets on that map's grid (a score has nearly all, a performance at some tempo a
        quarter to a third)."""
        return not self.default_map and self.on_grid >= MIN_ON_GRID

    @property
    def score_beat_s(self) -> float | None:
        """The median beat (s) of a score whose beat one pair of tempo bounds holds
        (`steady_tempo`); else None."""
        if not self.is_score or not steady_tempo(self.piece.beats):
            return None
        return median_interval(self.piece.beats)

    @property
    def bar_beats(self) -> int | None:
        """Beats per bar of a score whose every bar has as many (but a first bar of its own,
        a pickup); else None."""
        if not self.is_score:
            return None
        at = np.searchsorted(self.piece.beats, self.piece.downbeats)
        bars = np.diff(at).tolist()
        if len(bars) >= 3:  # a pickup written as a short bar of its own meter (1/4, then 3/4)
            bars = bars[1:]
        lengths = set(bars)
        return int(lengths.pop()) if len(lengths) == 1 else None


def file_meter(path: Path) -> FileMeter | None:
    """`FileMeter` of the MIDI file `path`; None where it has no map of its own (no time
    signature, a performance's placeholder map: `read_midi_piece`) or cannot be read. Kept for
    the last few files (by path, size and time of change): transcription asks twice per file,
    to decode it and to compare the beats it wrote."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return _file_meter(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _file_meter(path: str, _size: int, _mtime_ns: int) -> FileMeter | None:
    try:
        piece = read_midi_piece(Path(path), rhythm=True)  # the notes transcription read
        pm = load_midi(Path(path))
    except MidiError:
        return None
    return FileMeter(
        piece, on_grid_share(pm, piece.notes[:, 0]), default_map_of_few_onsets(pm, piece.notes)
    )


def meter_agreement(path: Path, beats: np.ndarray, downbeats: np.ndarray) -> MeterAgreement | None:
    """`beats` and `downbeats` tracked from the MIDI file `path` against the beats of its own
    meter map (`file_meter`); None when the file has no map of its own to compare."""
    meter = file_meter(path)
    if meter is None or meter.default_map:
        return None
    piece = meter.piece
    beats, downbeats = np.asarray(beats, np.float64), np.asarray(downbeats, np.float64)
    with warnings.catch_warnings():  # mir_eval warns of empty beat lists: scored 0
        warnings.simplefilter("ignore", UserWarning)
        scores = f_measures(
            (beats, downbeats), {"beats": piece.beats, "downbeats": piece.downbeats}
        )
        shift = grid_shift(beats, downbeats, piece.beats, piece.downbeats)
    return MeterAgreement(
        beat_f_measure=float(scores["beat_f_measure"]),
        downbeat_f_measure=float(scores["downbeat_f_measure"]),
        level=metrical_level(beats, piece.beats),
        file_beat_s=median_interval(piece.beats),
        tracked_beat_s=median_interval(beats),
        shift=shift,
        steady=steady_tempo(piece.beats),
    )
