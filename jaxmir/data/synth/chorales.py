"""The embedded default corpus for the beat task: music21's bundled Bach chorales.

Every chorale becomes a `SymbolicPiece` whose beats and downbeats come from music21's own
measures (never from exported MIDI, whose meter map knows nothing of pickups), rendered to
seconds through a tempo curve that is applied to notes, beats and downbeats alike, so the labels
stay exact however the tempo is bent.

Only the Bach chorales are used: music21's string quartets, Palestrina and Monteverdi are held
back on purpose. Parsing always passes `forceSource=True`, so music21 neither reads nor writes
its pickle cache.

Meter conventions (music21's own): the beat unit is `TimeSignature.getBeatOffsets()` within the
bar, i.e. `beatDuration.quarterLength` for regular meters (a dotted quarter in 6/8 and 12/8, a
quarter in 4/4 and 3/4, a half in 2/2 and 3/2). A bar fragment that starts mid-bar (a pickup, or
the second half of a bar split by a repeat sign) is right-aligned: its beats sit at
bar_end - k * beat_unit and its start is not a downbeat. Every other measure starts with a
downbeat, including a truncated final bar.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
import zlib

import numpy as np

from jaxmir.data.symbolic import SymbolicPiece

UNAUGMENTED_QPM = 90.0  # quarter notes per minute of the unaugmented rendering
UNAUGMENTED_VELOCITY = 90.0
BASE_BPM_RANGE = (60.0, 160.0)  # augmented base tempo, per beat unit, log-uniform
SMOOTH_TEMPO_MAX = math.log(1.15)  # smooth curve: at most +-15% in tempo
STEP_PROB, STEP_RANGE = 0.3, (0.10, 0.25)
RIT_PROB, RIT_BARS, RIT_END_TEMPO = 0.5, (1.0, 2.0), (0.6, 0.8)
FERMATA_PROB, FERMATA_STRETCH = 0.75, (1.5, 2.5)
ONSET_JITTER_S = 0.010
NOTE_DROP_PROB = 0.02
_MIN_NOTE_S = 0.005
_EPS = 1e-6  # in quarter lengths


# --------------------------------------------------------------------------------------------
# Corpus ids and splits
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _chorale_ids() -> tuple[str, ...]:
    from music21.corpus import chorales

    it = chorales.Iterator(
        numberingSystem="riemenschneider", returnType="filename", iterationType="number"
    )
    # Riemenschneider order; several numbers point at the same harmonisation (371 -> 350).
    return tuple(dict.fromkeys(str(x) for x in it))


def chorale_ids() -> list[str]:
    """Corpus paths of the bundled Bach chorales ('bach/bwv269', ...), Riemenschneider order,
    duplicates removed (music21 maps the 371 Riemenschneider numbers onto 350 files)."""
    return list(_chorale_ids())


def split_of(chorale_id: str, val_fraction: float = 0.1, test_fraction: float = 0.1) -> str:
    """'train' | 'val' | 'test' from a CRC32 of the id alone: stable whatever the corpus size."""
    if not (0.0 <= val_fraction and 0.0 <= test_fraction and val_fraction + test_fraction <= 1):
        raise ValueError(f"bad split fractions: val={val_fraction}, test={test_fraction}")
    u = zlib.crc32(chorale_id.encode("utf-8")) / 2.0**32
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


# --------------------------------------------------------------------------------------------
# Metrical grid from music21 measures
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Grid:
    beats_q: np.ndarray  # beat positions, quarter lengths from the score start
    downbeats_q: np.ndarray
    bar_starts_q: np.ndarray  # every measure start (downbeat or not)
    end_q: float  # end of the last measure
    bar_q: float  # bar length of the first time signature
    beat_q: float  # beat unit of the first time signature


def _beat_offsets(ts) -> tuple[list[float], float]:
    """Beat offsets within one bar and the bar length, in quarter lengths."""
    bar = float(ts.barDuration.quarterLength)
    try:
        offs = [float(o) for o in ts.getBeatOffsets()]
    except Exception:  # fall back to the plain beat unit
        offs = []
    if not offs or offs[0] != 0.0:
        unit = float(ts.beatDuration.quarterLength)
        offs = list(np.arange(0.0, bar - _EPS, unit))
    return offs, bar


def _parts(score) -> list:
    parts = list(getattr(score, "parts", []))
    return parts if parts else [score]


def _metrical_grid(score) -> _Grid:
    from music21 import meter

    part = _parts(score)[0]
    part_off = float(score.elementOffset(part)) if part is not score else 0.0
    measures = list(part.getElementsByClass("Measure"))
    if not measures:
        raise ValueError("first part has no measures")
    first_ts = next(iter(part.recurse().getElementsByClass(meter.TimeSignature)), None)
    if first_ts is None:
        raise ValueError("no time signature")
    # (start, duration, bar length, beat offsets, has its own time signature, paddingLeft)
    ms: list[tuple[float, float, float, list[float], bool, float]] = []
    ts = first_ts
    for m in measures:
        if m.timeSignature is not None:
            ts = m.timeSignature
        offs, bar = _beat_offsets(ts)
        dur = float(m.duration.quarterLength)
        if dur > _EPS:
            start = part_off + float(m.offset)
            pad = float(m.paddingLeft or 0.0)
            ms.append((start, dur, bar, offs, m.timeSignature is not None, pad))
    if not ms:
        raise ValueError("all measures are empty")
    beats: list[float] = []
    downbeats: list[float] = []
    open_phase = 0.0  # > 0: the previous measure was a left-aligned bar fragment ending there
    for i, (start, dur, bar, offs, own_ts, pad) in enumerate(ms):
        same_meter_prev = i > 0 and not own_ts and ms[i - 1][2] == bar
        nxt = ms[i + 1] if i + 1 < len(ms) else None
        if dur >= bar - _EPS:
            phase = 0.0  # a full (or overfull) bar
        elif same_meter_prev and open_phase > _EPS and open_phase + dur <= bar + _EPS:
            phase = open_phase  # second half of a bar split at a repeat sign
        elif i == 0:
            phase = bar - dur  # pickup: right-aligned, whatever the padding annotation says
        elif nxt is not None and not nxt[4] and nxt[2] == bar and abs(dur + nxt[1] - bar) <= _EPS:
            phase = 0.0  # first half of a split bar (the corpus' paddings are not always right)
        elif nxt is not None and pad > _EPS:
            phase = min(pad, bar - dur)  # an annotated right-aligned fragment
        else:
            phase = 0.0  # a short bar, e.g. the final partial bar: beats only inside it
        if phase <= _EPS:
            downbeats.append(start)
        n_bars = math.ceil((phase + dur) / bar + _EPS) + 1
        for j in range(n_bars):
            for o in offs:
                pos = o + j * bar
                if phase - _EPS <= pos < phase + dur - _EPS:
                    beats.append(start + pos - phase)
        end_phase = phase + dur
        open_phase = 0.0 if end_phase >= bar - _EPS else end_phase
    starts = [m[0] for m in ms]
    end_q = max(m[0] + m[1] for m in ms)
    offs0, bar0 = _beat_offsets(first_ts)
    beat0 = offs0[1] - offs0[0] if len(offs0) > 1 else bar0
    return _Grid(
        beats_q=np.unique(np.round(np.asarray(beats, np.float64), 9)),
        downbeats_q=np.unique(np.round(np.asarray(downbeats, np.float64), 9)),
        bar_starts_q=np.unique(np.round(np.asarray(starts, np.float64), 9)),
        end_q=end_q,
        bar_q=bar0,
        beat_q=beat0,
    )


# --------------------------------------------------------------------------------------------
# Notes
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Notes:
    onset_q: np.ndarray
    offset_q: np.ndarray
    pitch: np.ndarray
    part: np.ndarray  # part index, for per-part velocity
    fermata: np.ndarray  # bool: the note carries a fermata


def _collect_notes(score) -> _Notes:
    from music21 import chord, expressions, note

    stripped = score.stripTies(inPlace=False)
    rows: list[tuple[float, float, int, int, bool]] = []
    for p_idx, part in enumerate(_parts(stripped)):
        part_off = float(stripped.elementOffset(part)) if part is not stripped else 0.0
        for n in part.flatten().notes:
            ql = float(n.duration.quarterLength)
            if n.duration.isGrace or ql <= 0.0:
                continue
            if isinstance(n, note.Note):
                pitches = [int(n.pitch.midi)]
            elif isinstance(n, chord.Chord):
                pitches = [int(p.midi) for p in n.pitches]
            else:  # unpitched and percussion
                continue
            on = part_off + float(n.offset)
            ferm = any(isinstance(e, expressions.Fermata) for e in n.expressions)
            rows.extend((on, on + ql, p, p_idx, ferm) for p in pitches)
    if not rows:
        raise ValueError("no notes")
    rows.sort(key=lambda r: (r[0], r[2], r[3]))
    cols = list(zip(*rows, strict=True))
    return _Notes(
        onset_q=np.asarray(cols[0], np.float64),
        offset_q=np.asarray(cols[1], np.float64),
        pitch=np.asarray(cols[2], np.float64),
        part=np.asarray(cols[3], np.int64),
        fermata=np.asarray(cols[4], bool),
    )


# --------------------------------------------------------------------------------------------
# Tempo map: quarter lengths -> seconds
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TempoMap:
    """Piecewise-linear, strictly increasing map from quarter lengths to seconds."""

    knots_q: np.ndarray
    knots_s: np.ndarray
    tail_spq: float  # seconds per quarter past the last knot

    def __call__(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, np.float64)
        s = np.interp(q, self.knots_q, self.knots_s)
        past = q > self.knots_q[-1]
        return np.where(past, self.knots_s[-1] + (q - self.knots_q[-1]) * self.tail_spq, s)


def _merge_intervals(on: np.ndarray, off: np.ndarray) -> list[tuple[float, float]]:
    out: list[list[float]] = []
    for a, b in sorted(zip(on.tolist(), off.tolist(), strict=True)):
        if out and a <= out[-1][1] + _EPS:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _tempo_map(
    grid: _Grid,
    notes: _Notes,
    rng: np.random.Generator | None,
    augment: bool,
    bpm_range: tuple[float, float] = BASE_BPM_RANGE,
):
    end_q = max(grid.end_q, float(notes.offset_q.max()))
    if not augment:
        spq = 60.0 / UNAUGMENTED_QPM
        return _TempoMap(np.array([0.0, end_q]), np.array([0.0, end_q * spq]), spq)
    assert rng is not None
    ferm = _merge_intervals(notes.onset_q[notes.fermata], notes.offset_q[notes.fermata])
    knots = np.concatenate(
        [[0.0, end_q], grid.beats_q, grid.bar_starts_q, np.asarray(ferm).reshape(-1)]
    )
    knots = np.unique(np.round(knots[(knots >= 0.0) & (knots <= end_q)], 9))
    mid = 0.5 * (knots[:-1] + knots[1:])
    x = mid / grid.bar_q  # position in bars of the first meter

    lo, hi = bpm_range
    bpm_beat = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    base_spq = 60.0 / (bpm_beat * grid.beat_q)

    # smooth curve: a few low-frequency sinusoids on the log tempo, |curve| <= ln(1.15)
    k = 3
    periods = rng.uniform(3.0, 24.0, size=k)  # in bars
    phases = rng.uniform(0.0, 2 * math.pi, size=k)
    weights = rng.dirichlet(np.ones(k))
    amp = rng.uniform(0.02, SMOOTH_TEMPO_MAX)
    log_tempo = amp * (weights * np.sin(2 * np.pi * x[:, None] / periods + phases)).sum(axis=1)
    tempo = np.exp(log_tempo)

    # abrupt step change at a random bar line
    if rng.uniform() < STEP_PROB:
        inner = grid.downbeats_q[(grid.downbeats_q > _EPS) & (grid.downbeats_q < end_q - _EPS)]
        if len(inner):
            at = float(inner[rng.integers(len(inner))])
            factor = 1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(*STEP_RANGE)
            tempo = np.where(mid >= at, tempo * factor, tempo)
    # final ritardando over the last 1-2 bars
    if rng.uniform() < RIT_PROB:
        rit_len = rng.uniform(*RIT_BARS) * grid.bar_q
        rit_start = max(0.0, end_q - rit_len)
        target = rng.uniform(*RIT_END_TEMPO)
        frac = np.clip((mid - rit_start) / max(end_q - rit_start, _EPS), 0.0, 1.0)
        tempo = tempo * (1.0 + frac * (target - 1.0))
    spq = base_spq / tempo
    # fermatas hold their notes
    for a, b in ferm:
        stretch = rng.uniform(*FERMATA_STRETCH)
        if rng.uniform() < FERMATA_PROB:
            spq = np.where((mid > a) & (mid < b), spq * stretch, spq)

    secs = np.concatenate([[0.0], np.cumsum(np.diff(knots) * spq)])
    return _TempoMap(knots, secs, float(spq[-1]))


# --------------------------------------------------------------------------------------------
# Score -> SymbolicPiece
# --------------------------------------------------------------------------------------------


def _velocities(notes: _Notes, x_bars: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n_parts = int(notes.part.max()) + 1
    base = rng.uniform(50.0, 110.0, size=n_parts)
    amp = rng.uniform(0.0, 15.0, size=n_parts)
    period = rng.uniform(4.0, 16.0, size=n_parts)
    phase = rng.uniform(0.0, 2 * math.pi, size=n_parts)
    p = notes.part
    curve = amp[p] * np.sin(2 * np.pi * x_bars / period[p] + phase[p])
    vel = base[p] + curve + rng.normal(0.0, 4.0, size=len(p))
    return np.clip(np.round(vel), 1.0, 127.0)


def score_to_piece(
    score,
    name: str,
    rng: np.random.Generator | None,
    augment: bool,
    bpm_range: tuple[float, float] = BASE_BPM_RANGE,
) -> SymbolicPiece:
    """Render a music21 score to a `SymbolicPiece`.

    augment=False: constant 90 quarter-bpm, velocity 90, no jitter; `rng` is not used.
    augment=True: random base tempo (log-uniform 60-160 bpm per beat unit), a smooth +-15% tempo
    curve, a step change (p=0.3), a final ritardando (p=0.5), fermata holds (1.5-2.5x), per-part
    velocity curves, +-10 ms onset jitter on notes (never on beats) and 2% note drop; all drawn
    from `rng`, so the output is a function of (score, rng state).
    Raises ValueError when the score has no measures, no time signature or no notes.
    """
    grid, notes = _metrical_grid(score), _collect_notes(score)
    return _render(grid, notes, name, rng, augment, bpm_range)


def _render(
    grid: _Grid,
    notes: _Notes,
    name: str,
    rng: np.random.Generator | None,
    augment: bool,
    bpm_range: tuple[float, float] = BASE_BPM_RANGE,
    part_subsets: float = 0.0,
) -> SymbolicPiece:
    tmap = _tempo_map(grid, notes, rng, augment, bpm_range)
    onset = tmap(notes.onset_q)
    offset = tmap(notes.offset_q)
    beats = tmap(grid.beats_q)
    downbeats = tmap(grid.downbeats_q)
    pitch = notes.pitch
    if augment:
        assert rng is not None
        vel = _velocities(notes, notes.onset_q / grid.bar_q, rng)
        jit = rng.uniform(-ONSET_JITTER_S, ONSET_JITTER_S, size=len(onset))
        new_on = np.minimum(np.maximum(onset + jit, 0.0), offset - _MIN_NOTE_S)
        onset = np.where(new_on >= 0.0, new_on, onset)
        keep = rng.uniform(size=len(onset)) >= NOTE_DROP_PROB
        if keep.any():
            onset, offset, pitch, vel = onset[keep], offset[keep], pitch[keep], vel[keep]
        if part_subsets > 0.0:  # drawn last: the other draws stay those of a full rendering
            parts = _part_subset(notes.part[keep] if keep.any() else notes.part, rng, part_subsets)
            onset, offset, pitch, vel = onset[parts], offset[parts], pitch[parts], vel[parts]
    else:
        vel = np.full(len(onset), UNAUGMENTED_VELOCITY)
    arr = np.stack([onset, offset, pitch, vel], axis=1).astype(np.float64)
    arr = arr[np.lexsort((arr[:, 2], arr[:, 0]))]
    return SymbolicPiece(name=name, notes=arr, beats=beats, downbeats=downbeats)


def _part_subset(part: np.ndarray, rng: np.random.Generator, probability: float) -> np.ndarray:
    """Which notes to keep: with `probability`, those of a random 1 to n-1 of the n parts
    (a melody alone, a melody and its bass, ...), else all. A score of one part keeps all."""
    n_parts = int(part.max()) + 1 if len(part) else 0
    if n_parts < 2 or rng.uniform() >= probability:
        return np.ones(len(part), bool)
    chosen = rng.choice(n_parts, size=int(rng.integers(1, n_parts)), replace=False)
    return np.isin(part, chosen)


def _piece_rng(seed: int, chorale_id: str, variant: int) -> np.random.Generator:
    ss = np.random.SeedSequence([int(seed) % 2**63, zlib.crc32(chorale_id.encode()), variant])
    return np.random.default_rng(ss)


def _piece_name(chorale_id: str) -> str:
    return chorale_id.replace("/", "__")


def split_ids(
    ids: list[str],
    split: str,
    n: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> list[str]:
    """The first `n` (None: all) of `ids` that `split_of` puts in `split` ('all': any), in order:
    the scores a corpus renders for that split."""
    chosen = [c for c in ids if split == "all" or split_of(c, val_fraction, test_fraction) == split]
    return chosen if n is None else chosen[:n]


def build_chorale_pieces(
    split: str,
    n_pieces: int | None = None,
    seed: int = 0,
    variants: int = 1,
    progress: bool = True,
    augment: bool = True,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    bpm_range: tuple[float, float] = BASE_BPM_RANGE,
    ids: list[str] | None = None,
    part_subsets: float = 0.0,
    suffix: str = "",
) -> tuple[list[SymbolicPiece], list[tuple[str, str]]]:
    """Pieces of one split ('train' | 'val' | 'test' | 'all').

    Takes the first `n_pieces` chorales of that split in `chorale_ids()` order (None = all), and
    renders each `variants` times with an rng seeded from (seed, id, variant): with augment=True
    (the default, for every split: val/test get varied but fixed tempi) or the plain constant
    tempo (base tempo log-uniform in `bpm_range` per beat). `ids`: other music21 works instead
    of the chorales. `part_subsets`: the probability that a rendering keeps only some of the
    score's parts (`_part_subset`). Names are the corpus id with '/' -> '__' ('bach__bwv269'),
    plus '__v<k>' when variants > 1, plus `suffix`. Chorales that fail are skipped with a warning and returned as (id, reason).
    """
    from music21 import corpus
    from tqdm.auto import tqdm

    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"unknown split {split!r}")
    if variants < 1:
        raise ValueError(f"variants must be >= 1, got {variants}")
    ids = split_ids(
        chorale_ids() if ids is None else ids, split, n_pieces, val_fraction, test_fraction
    )
    pieces: list[SymbolicPiece] = []
    failures: list[tuple[str, str]] = []
    for cid in tqdm(ids, desc=f"chorales[{split}]", disable=not progress):
        try:
            score = corpus.parse(cid, forceSource=True)
            grid, notes = _metrical_grid(score), _collect_notes(score)  # once per chorale
            rendered = []
            for k in range(variants):
                name = _piece_name(cid) + (f"__v{k}" if variants > 1 else "") + suffix
                rng = _piece_rng(seed, cid, k) if augment else None
                rendered.append(_render(grid, notes, name, rng, augment, bpm_range, part_subsets))
        except Exception as e:  # one bad chorale must not sink the corpus
            reason = f"{type(e).__name__}: {e}"
            warnings.warn(f"skipping score {cid} (music21 corpus): {reason}", stacklevel=2)
            failures.append((cid, reason))
            continue
        pieces.extend(rendered)
    return pieces, failures
