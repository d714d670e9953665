"""Procedural pieces for the embedded corpus: piano textures and random-note coverage pieces.

The chorales (and other music21 works) are four-part vocal textures in a narrow register.
Real piano music is not: it has arpeggios, Alberti basses, octaves, block chords, a sustain
pedal, the whole A0-C8 keyboard and dynamics from pp to ff. These generators make such pieces
with exact labels, from an explicit `np.random.Generator`:

- `texture_piece`: a random key, meter (2/4 3/4 4/4 5/4 6/8 9/8 12/8 2/2 3/8), tempo (40-220
  beats per minute at the notated beat), and a diatonic progression with cadences every four
  bars; each four-bar phrase picks a texture (block chords, arpeggios, Alberti bass + melody,
  octaves, melody over chords, waltz bass), registers that reach both ends of the keyboard,
  phrase dynamics, rubato, a final ritardando, swing (sometimes), and a sustain pedal that
  changes with the harmony. A pedalled note's label lasts until the pedal lifts (or the same
  key is struck again), which is what a listener - and a transcription - hears.
- `random_piece`: segments of 1-8 independent voices of random pitches over random registers
  (often the full range), durations of 50 ms to 2 s and velocities 10-127: no musical
  structure at all, so that every key, duration and polyphony level is seen.

Both return a `ProceduralPiece` whose times are seconds from 0; beats and downbeats follow the
same tempo map as the notes (random pieces have none). Chords are given as pitch-class sets
over the bass; the corpus reduces them to its chord classes.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

LOWEST, HIGHEST = 21, 108  # A0 .. C8
METERS = ((2, 4), (3, 4), (4, 4), (5, 4), (6, 8), (9, 8), (12, 8), (2, 2), (3, 8), (4, 2))
UNSEEN_METERS = ((3, 2), (6, 4), (7, 4))  # never in training: the beat task's unseen split
TEMPO_RANGE = (40.0, 220.0)  # beats per minute at the notated beat level
UNSEEN_TEMPI = ((28.0, 40.0), (220.0, 260.0))  # outside TEMPO_RANGE: the unseen split
TEXTURES = ("block", "arpeggio", "alberti", "octaves", "melody_chords", "waltz")
_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 11)  # harmonic minor: a major dominant


@dataclasses.dataclass(frozen=True)
class ProceduralPiece:
    notes: np.ndarray  # (N, 5) onset s, offset s, MIDI pitch, velocity, part (0 = left hand)
    beats: np.ndarray
    downbeats: np.ndarray
    chords: list[tuple[float, float, tuple[int, ...], int]]  # start, end, pitch classes, bass
    meta: dict


def meter_beats(num: int, den: int) -> tuple[int, float]:
    """(beats per bar, beat length in quarter notes): compound meters count dotted beats."""
    if den == 8 and num % 3 == 0:
        return num // 3, 1.5
    if den == 4 and num in (6, 9, 12):
        return num // 3, 3.0
    return num, 4.0 / den


# ------------------------------------------------------------------------------------------------
# Time: beats -> seconds
# ------------------------------------------------------------------------------------------------


def _tempo_map(n_beats: float, rng: np.random.Generator, bpm: float):
    """Seconds of beat positions: a smooth rubato curve (+-0..15 %), maybe a final ritardando."""
    grid = np.linspace(0.0, n_beats + 1.0, int((n_beats + 1.0) * 24) + 2)
    amp = rng.uniform(0.0, 0.15)
    period = rng.uniform(4.0, 24.0)
    phase = rng.uniform(0, 2 * math.pi)
    log_t = amp * np.sin(2 * math.pi * grid / period + phase)
    if rng.uniform() < 0.5:  # ritardando over the last 2-4 beats
        span = rng.uniform(2.0, 4.0)
        frac = np.clip((grid - (n_beats - span)) / span, 0.0, 1.0)
        log_t -= frac * rng.uniform(0.1, 0.5)
    spb = 60.0 / bpm / np.exp(log_t)
    secs = np.concatenate([[0.0], np.cumsum(np.diff(grid) * spb[:-1])])
    return lambda b: np.interp(np.asarray(b, np.float64), grid, secs)


# ------------------------------------------------------------------------------------------------
# Harmony
# ------------------------------------------------------------------------------------------------


def _progression(n: int, rng: np.random.Generator) -> list[int]:
    """Scale degrees (0 = tonic) of `n` chords: a random walk with cadences every 4 chords."""
    nxt = {0: [3, 4, 5, 1, 2], 1: [4, 6], 2: [5, 3], 3: [4, 0, 1], 4: [0, 5], 5: [1, 3], 6: [0]}
    out = [0]
    while len(out) < n:
        i = len(out)
        if i % 4 == 3:
            out.append(4 if rng.uniform() < 0.7 else 3)  # half cadence / plagal colour
        elif i % 4 == 0 and out[-1] == 4:
            out.append(0 if rng.uniform() < 0.8 else 5)  # authentic or deceptive
        else:
            out.append(int(rng.choice(nxt[out[-1]])))
    out[-1] = 0
    if n > 1:
        out[-2] = 4
    return out[:n]


def _chord_pcs(degree: int, tonic: int, scale, seventh: bool) -> tuple[int, ...]:
    steps = (0, 2, 4, 6) if seventh else (0, 2, 4)
    return tuple((tonic + scale[(degree + s) % 7]) % 12 for s in steps)


def _tones(pcs, lo: int, hi: int) -> list[int]:
    """Every key in [lo, hi] whose pitch class is in `pcs`."""
    lo, hi = max(lo, LOWEST), min(hi, HIGHEST)
    return [p for p in range(lo, hi + 1) if p % 12 in pcs]


def _nearest(pc: int, centre: float) -> int:
    base = int(round(centre)) - 6
    p = base + (pc - base) % 12
    return int(np.clip(p, LOWEST, HIGHEST))


# ------------------------------------------------------------------------------------------------
# Textures (times in beats; each returns rows (onset, duration, pitch, accent, hand))
# ------------------------------------------------------------------------------------------------


def _texture_notes(kind, b0, b1, pcs, bass_pc, scale_pcs, reg, sub, rng, melody_state):
    rows: list[tuple[float, float, int, float, int]] = []
    lo_c, hi_c = reg
    legato = rng.uniform(0.5, 1.0)
    step = 1.0 / sub

    def melody(t0, t1):
        t = t0
        while t < t1 - 1e-9:
            d = min(float(rng.choice([0.25, 0.5, 0.5, 1.0, 1.0, 1.5, 2.0])), t1 - t)
            on_beat = abs(t - round(t)) < 1e-9
            cands = _tones(pcs if on_beat else scale_pcs, int(hi_c) - 7, int(hi_c) + 7)
            if cands:
                cur = melody_state[0] or cands[len(cands) // 2]
                near = sorted(cands, key=lambda p: abs(p - cur) + rng.uniform(0, 3))
                p = near[0] if near[0] != cur or len(near) == 1 else near[1]
                melody_state[0] = p
                rows.append((t, d * legato, p, 8.0, 1))
            t += d

    if kind == "block":
        span = 1.0 if rng.uniform() < 0.6 else (b1 - b0)
        t = b0
        while t < b1 - 1e-9:
            d = min(span, b1 - t)
            rows.append((t, d * legato, _nearest(bass_pc, lo_c), 4.0, 0))
            for p in _tones(pcs, int(hi_c) - 6, int(hi_c) + 5)[: int(rng.integers(3, 6))]:
                rows.append((t, d * legato, p, 0.0, 1))
            t += span
    elif kind == "arpeggio":
        tones = _tones(pcs, int(lo_c), int(lo_c) + int(rng.integers(12, 37)))
        if not tones:
            tones = [_nearest(bass_pc, lo_c)]
        shape = rng.choice(["up", "down", "updown"])
        seq = tones if shape == "up" else tones[::-1] if shape == "down" else tones + tones[-2:0:-1]
        t, i = b0, 0
        while t < b1 - 1e-9:
            rows.append((t, step * (1.0 + rng.uniform(0, 2)), seq[i % len(seq)], 0.0, i % 2))
            t += step
            i += 1
    elif kind == "alberti":
        closed = _tones(pcs, int(lo_c) + 7, int(lo_c) + 19)[:3]
        while len(closed) < 3:
            closed.append(closed[-1] + 12 if closed else _nearest(bass_pc, lo_c + 12))
        pattern = [closed[0], closed[2], closed[1], closed[2]]
        t, i = b0, 0
        while t < b1 - 1e-9:
            rows.append((t, step * legato, pattern[i % 4], -6.0, 0))
            t += step
            i += 1
        melody(b0, b1)
    elif kind == "octaves":
        t = b0
        while t < b1 - 1e-9:
            root = _nearest(bass_pc, lo_c)
            for p in (root, root + 12 if root + 12 <= HIGHEST else root - 12):
                rows.append((t, legato, p, 6.0, 0))
            t += 1.0
        before = len(rows)
        melody(b0, b1)
        for on, dur, p, acc, hand in rows[before:]:
            if p - 12 >= LOWEST:
                rows.append((on, dur, p - 12, acc - 4.0, hand))
    elif kind == "waltz":
        t, k = b0, 0
        while t < b1 - 1e-9:
            if k % 3 == 0:
                rows.append((t, legato, _nearest(bass_pc, lo_c), 6.0, 0))
            else:
                for p in _tones(pcs, int(lo_c) + 10, int(lo_c) + 20)[:3]:
                    rows.append((t, 0.5 * legato, p, -8.0, 0))
            t += 1.0
            k += 1
        melody(b0, b1)
    else:  # melody_chords
        t = b0
        while t < b1 - 1e-9:
            d = min(float(rng.choice([1.0, 2.0])), b1 - t)
            for p in _tones(pcs, int(lo_c) + 5, int(lo_c) + 17)[:3]:
                rows.append((t, d * legato, p, -4.0, 0))
            t += d
        melody(b0, b1)
    return rows


def _pedal(notes: np.ndarray, changes: np.ndarray) -> np.ndarray:
    """Hold every note until the next pedal change after its offset (or the same key's next
    onset, whichever is first). `changes` are the pedal's lift times (sorted)."""
    out = notes.copy()
    if not len(changes) or not len(notes):
        return out
    idx = np.searchsorted(changes, out[:, 1], side="left")
    lift = np.where(idx < len(changes), changes[np.minimum(idx, len(changes) - 1)], out[:, 1])
    held = np.maximum(out[:, 1], lift)
    order = np.lexsort((out[:, 0], out[:, 2]))
    nxt = np.full(len(out), np.inf)
    same = out[order[1:], 2] == out[order[:-1], 2]
    nxt[order[:-1][same]] = out[order[1:][same], 0]
    out[:, 1] = np.minimum(held, np.maximum(nxt, out[:, 1]))
    return out


def _no_overlaps(notes: np.ndarray) -> np.ndarray:
    """Per hand and key, end each note by the next onset (a key cannot sound twice) and drop
    notes left shorter than 20 ms; sorted by onset, then pitch."""
    out = notes[np.lexsort((notes[:, 0], notes[:, 2], notes[:, 4]))].copy()
    same = (out[1:, 2] == out[:-1, 2]) & (out[1:, 4] == out[:-1, 4])
    out[:-1, 1] = np.where(same, np.minimum(out[:-1, 1], out[1:, 0]), out[:-1, 1])
    out = out[out[:, 1] - out[:, 0] >= 0.02]
    return out[np.lexsort((out[:, 2], out[:, 0]))]


def texture_piece(
    rng: np.random.Generator,
    seconds: float = 30.0,
    meters: tuple[tuple[int, int], ...] = METERS,
    tempi: tuple[tuple[float, float], ...] = (TEMPO_RANGE,),
    meter_change: float = 0.0,
) -> ProceduralPiece:
    """A random piano piece (see the module docstring) of about `seconds`, in one of `meters`
    at a tempo (beats per minute) log-uniform in one of the ranges `tempi`. With `meter_change`
    > 0 each four-bar phrase after the first changes, with that probability, to another of
    `meters` with the same beat (`changing_bars`; the piece then ends with a whole phrase, up to
    a phrase longer); harmonies then change once a bar. With 0
    (the default) the piece is the one earlier versions drew from the same generator."""
    num, den = meters[int(rng.integers(len(meters)))]
    beats_per_bar, beat_q = meter_beats(num, den)
    lo, hi = tempi[int(rng.integers(len(tempi)))]
    bpm = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    spb = 60.0 / bpm
    n_bars = max(2, int(math.ceil(seconds / (beats_per_bar * spb))))
    bar_meters = [(num, den)] * n_bars
    if meter_change > 0:
        bar_meters = changing_bars((num, den), meters, seconds / spb, meter_change, rng)
        n_bars = len(bar_meters)
    bar_beats = [meter_beats(*m)[0] for m in bar_meters]
    compound = beat_q in (1.5, 3.0)
    tonic = int(rng.integers(12))
    minor = bool(rng.uniform() < 0.4)
    scale = _MINOR if minor else _MAJOR
    scale_pcs = {(tonic + s) % 12 for s in scale}
    per_bar = 2 if beats_per_bar >= 4 and rng.uniform() < 0.3 else 1
    if meter_change > 0:
        per_bar = 1  # a bar's length changes: one harmony per bar
    degrees = _progression(n_bars * per_bar, rng)
    pickup = 0.0
    if beats_per_bar > 1 and rng.uniform() < 0.3:
        pickup = float(rng.integers(1, beats_per_bar))
    n_beats = float(sum(bar_beats))
    bar_starts = pickup + np.concatenate([[0.0], np.cumsum(bar_beats[:-1])])
    base_vel = rng.uniform(25.0, 115.0)
    swing = (not compound) and rng.uniform() < 0.25
    swing_ratio = rng.uniform(0.55, 0.67) if swing else 0.5
    rows: list[tuple[float, float, int, float, int]] = []
    chords_b: list[tuple[float, float, tuple[int, ...], int]] = []
    pedal_changes: list[float] = []
    melody_state: list[int | None] = [None]
    phrase_vel: list[float] = []
    for k, deg in enumerate(degrees):
        bar, part = divmod(k, per_bar)
        seg = bar_beats[bar] / per_bar
        b0 = float(bar_starts[bar]) + part * seg
        b1 = b0 + seg
        phrase = k // (4 * per_bar)
        if len(phrase_vel) <= phrase:
            phrase_vel.append(float(np.clip(base_vel + rng.normal(0, 12), 10, 125)))
        if k % (4 * per_bar) == 0:  # a new phrase: texture, registers, subdivision, pedal
            kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
            extreme = rng.uniform() < 0.25
            lo_c = rng.uniform(LOWEST + 2, 40) if extreme else rng.uniform(36, 55)
            hi_c = rng.uniform(84, HIGHEST - 5) if extreme else rng.uniform(62, 84)
            sub = 3 if compound else int(rng.choice([2, 4], p=[0.6, 0.4]))
            pedalled = rng.uniform() < 0.5
        pcs = _chord_pcs(deg, tonic, scale, seventh=bool(rng.uniform() < 0.2))
        bass_pc = pcs[0] if rng.uniform() < 0.8 else pcs[1]
        chords_b.append((b0, b1, pcs, bass_pc))
        if pedalled:
            pedal_changes.append(b1)
        new = _texture_notes(
            kind, b0, b1, set(pcs), bass_pc, scale_pcs, (lo_c, hi_c), sub, rng, melody_state
        )
        for on, dur, p, acc, hand in new:
            rows.append((on, dur, p, phrase_vel[phrase] + acc, hand))
    if pickup > 0:  # a melody note or chord tone in the pickup
        p = _nearest(tonic + scale[4], 72)
        rows.append((pickup - 1.0, 0.9, p, base_vel, 1))
    on_b = np.asarray([r[0] for r in rows])
    if swing:  # off-beat eighths late
        frac = on_b - np.floor(on_b)
        on_b = np.where(np.abs(frac - 0.5) < 1e-9, np.floor(on_b) + swing_ratio, on_b)
    off_b = on_b + np.asarray([r[1] for r in rows])
    tmap = _tempo_map(pickup + n_beats, rng, bpm)
    on_s = tmap(on_b) + np.clip(rng.normal(0, 0.005, len(on_b)), -0.01, 0.01)
    on_s = np.maximum(on_s, 0.0)
    off_s = np.maximum(tmap(off_b), on_s + 0.03)
    vel = np.clip(np.asarray([r[3] for r in rows]) + rng.normal(0, 6, len(rows)), 1, 127)
    notes = np.stack(
        [on_s, off_s, [r[2] for r in rows], np.round(vel), [r[4] for r in rows]], axis=1
    )
    notes = notes[(notes[:, 2] >= LOWEST) & (notes[:, 2] <= HIGHEST)]
    if pedal_changes:
        notes = _pedal(notes, np.sort(tmap(np.asarray(pedal_changes))))
    notes = _no_overlaps(notes)
    beat_b = np.arange(0.0, pickup + n_beats - 1e-9, 1.0)
    down_b = bar_starts
    chords = [(float(tmap(a)), float(tmap(b)), pcs, bass) for a, b, pcs, bass in chords_b]
    meta = {
        "kind": "texture",
        "meter": f"{num}/{den}",
        "bpm": bpm,
        "tonic": tonic,
        "minor": minor,
        "pickup_beats": pickup,
        "swing": swing_ratio if swing else None,
        "pedal_changes": len(pedal_changes),
    }
    if meter_change > 0:
        meta["meters"] = [f"{a}/{b}" for a, b in bar_meters]  # bar by bar
    return ProceduralPiece(notes, tmap(beat_b), tmap(down_b), chords, meta)


def changing_bars(
    first: tuple[int, int],
    meters: tuple[tuple[int, int], ...],
    beats: float,
    change: float,
    rng: np.random.Generator,
) -> list[tuple[int, int]]:
    """The meter of each bar of a piece of about `beats` beats that starts in `first`: four-bar
    phrases, each after the first in another of `meters` with the same beat (a quarter, a dotted
    quarter, ...) with probability `change`, so that a bar's length is not a constant to count.
    Whole phrases: the piece ends with its last one complete, up to a phrase past `beats`."""
    beat_q = meter_beats(*first)[1]
    family = [m for m in meters if meter_beats(*m)[1] == beat_q and m != first]
    bars: list[tuple[int, int]] = []
    meter, total = first, 0.0
    while total < beats or len(bars) < 2:
        if bars and family and rng.uniform() < change:
            others = [m for m in (first, *family) if m != meter]
            meter = others[int(rng.integers(len(others)))]
        bars += [meter] * 4
        total += 4 * meter_beats(*meter)[0]
    return bars


def random_piece(rng: np.random.Generator, seconds: float = 30.0) -> ProceduralPiece:
    """Segments of 1-8 independent random voices (see the module docstring)."""
    rows = []
    t0 = 0.0
    segments = []
    while t0 < seconds - 0.5:
        dur = min(rng.uniform(2.0, 6.0), seconds - t0)
        poly = int(rng.integers(1, 9))
        if rng.uniform() < 0.3:
            lo, hi = LOWEST, HIGHEST
        else:
            c = rng.uniform(30, 100)
            w = rng.uniform(6, 30)
            lo, hi = int(max(LOWEST, c - w)), int(min(HIGHEST, c + w))
        loud = rng.uniform(10, 127, size=2)
        for v in range(poly):
            t = t0 + rng.exponential(0.2)
            while t < t0 + dur:
                d = math.exp(rng.uniform(math.log(0.05), math.log(2.0)))
                p = int(rng.integers(lo, hi + 1))
                vel = float(np.clip(rng.uniform(loud.min(), loud.max()), 1, 127))
                rows.append((t, t + d, p, round(vel), v))
                t += d + rng.exponential(rng.uniform(0.02, 0.4))
        segments.append({"start": t0, "polyphony": poly, "range": [lo, hi]})
        t0 += dur
    notes = np.asarray(rows, np.float64).reshape(-1, 5)
    notes = notes[np.lexsort((notes[:, 2], notes[:, 0]))]
    meta = {"kind": "random", "segments": segments}
    empty = np.zeros(0)
    return ProceduralPiece(notes, empty, empty, [], meta)
