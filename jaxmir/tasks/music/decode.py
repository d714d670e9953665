"""Notes from frame posteriors ``(T, 352, C)`` at 20 ms, and note writers (MIDI, CSV).

Two decoders, chosen with ``decode_notes(..., method=...)``:

``"omnizart"`` (`decode_notes_omnizart`) re-derives omnizart's ``music/inference.py``
(``multi_inst_note_inference`` -> ``note_inference``) for the layouts of
`jaxmir.tasks.music.labels.LABEL_MODES`:

1. The duration channels of all instruments are z-normalised **together** (one mean/std over
   every instrument), and so are the onset channels.
2. Stream modes only: an instrument is dropped when the mean of the std of its normalised
   duration and onset channels is below ``inst_th = 1.1``. Because the normalisation is joint,
   this keeps instruments that are *more active than average*; when every instrument is equally
   active (or the model is confident everywhere) the gate can drop all of them.
3. Note modes (``note``, ``note-stream``, ``pop-note-stream``), per instrument: both channels are
   cubic-spline interpolated to 10 ms (``2T`` frames; the last one extrapolated); onset is set
   to 0 where it is below duration; onset is z-normalised again and becomes
   ``max(norm - th, 0)`` (0 below ``th``); duration becomes ``norm(dura) + onset``, set to 0 below
   ``dura_th = 0.5``; 352 bins -> 88 keys by the mean of each 4; per key
   ``scipy.signal.find_peaks(onset, distance=5, prominence=1, width=5)``; a note runs from its
   peak to the next peak on that key, or ends earlier at the first frame that starts a run of
   12 zero-duration frames; a note ended that way less than 4 frames after its peak is
   dropped. The ``width=5`` (50 ms at half prominence) needs onset peaks wider than the
   labels' 2-frame (40 ms) onsets: the labels themselves, used as posteriors, give no notes;
   a trained model's blurrier onsets do.
4. Frame modes (``frame``, ``frame-stream``, ``true-frame``, ``true-frame-stream``), per
   instrument at 20 ms: ``mix`` = duration (true-frame) or the mean of duration and onset; active
   where ``norm(mix) > frame_th = 0.5``; 352 -> 88 by the mean of each 4 bins; a note is a run of
   keys with mean > 0.5 that lasts at least 2 frames.
5. Velocity ``110 + 17 * (s - lo) / (hi - lo + 1e-4)`` per instrument, ``s`` the note's strength
   (onset value at the peak, or ``mix`` at the first frame), ``lo``/``hi`` the min/max strength of
   the instrument's notes and 0.5.

Default ``th``: 4 for piano modes (``note``, ``frame``, ``true-frame``; omnizart's ``music_piano``
checkpoints), 6 for stream modes (``music_note_stream``, ``music_pop``).

Deviations from omnizart (bugs fixed, undefined cases defined):

* Velocity was inverted (``hi - s``: the strongest onset got 110, the weakest 127); here the
  strongest gets 127.
* Frame path: omnizart read the strength at ``mix[int(onset_frame * 0.02)]`` (seconds used as a
  frame index) and ended a note at the *start* of its last active frame (one frame short); here
  ``mix[onset_frame]`` and the end of the last active frame.
* ``true-frame-stream``: omnizart's check ``mode != "true_frame"`` (typo) after renaming the mode
  to ``"frame"`` averaged all instruments into the first (piano) stream; here each instrument is
  decoded on its own, with the instrument gate, like ``frame-stream``.
* ``pop-note-stream`` programs come from `POP_PROGRAMS` (omnizart's 5-entry list for 6 groups
  mislabelled organ/piano and crashed on the 6th group).
* A z-normalisation of a constant array (std 0) gives zeros instead of NaN; an all-silent
  posterior decodes to no notes.
* omnizart's "align onsets closer than 1 frame" pass is a no-op on integer frames and is omitted;
  its print-based progress output is omitted.

``"simple"`` (`decode_notes_simple`) is an Onsets-and-Frames style decoder that does not
depend on the statistics of the whole piece (omnizart's z-normalisation assumes a sparse, mostly
silent posterior; its instrument gate and ``th`` misbehave on confident or dense outputs).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy.interpolate import CubicSpline
from scipy.signal import find_peaks

from jaxmir.tasks.music.labels import (
    BINS_PER_KEY,
    DRUM_PROGRAM,
    HOP_S,
    LOWEST_PITCH,
    N_BINS,
    N_KEYS,
    STREAM_MODES,
    TRUE_FRAME_MODES,
    check_mode,
    mode_programs,
    n_classes,
)

PIANO_ONSET_TH = 4.0
"""omnizart ``music_piano`` / ``music_piano-v2`` ``OnsetTh``."""

STREAM_ONSET_TH = 6.0
"""omnizart ``music_note_stream`` / ``music_pop`` ``OnsetTh``."""

DURA_TH = 0.5
FRAME_TH = 0.5
INST_TH = 1.1

SHORTEST = 5
"""Peak distance / width and minimum note length basis, in 10 ms frames (0.05 s)."""

OFFSET_INTERVAL = 12
"""Zero-duration frames (10 ms) that end a note (0.12 s)."""

VELOCITY_RANGE = (110, 127)

CSV_HEADER = ("onset", "offset", "pitch", "velocity", "program")


def default_onset_th(mode: str) -> float:
    """omnizart's shipped onset threshold for `mode`: 6 for stream modes, 4 otherwise."""
    return STREAM_ONSET_TH if check_mode(mode) in STREAM_MODES else PIANO_ONSET_TH


def split_channels(posteriors: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Duration/frame ``(T, F, I)`` and onset ``(T, F, I)`` (None for true-frame modes) of
    posteriors ``(T, F, C)``, F = 352 bins or 88 keys (`key_posteriors`)."""
    check_mode(mode)
    post = np.asarray(posteriors, np.float64)
    if post.ndim != 3 or post.shape[1] not in (N_BINS, N_KEYS) or post.shape[2] != n_classes(mode):
        raise ValueError(
            f"posteriors for mode {mode!r} must be (T, {N_BINS} or {N_KEYS}, "
            f"{n_classes(mode)}), got {post.shape}"
        )
    if mode in TRUE_FRAME_MODES:
        return post[:, :, 1:], None
    if mode == "note-offset":
        return post[:, :, 1:2], post[:, :, 2:3]
    return post[:, :, 1::2], post[:, :, 2::2]


def key_posteriors(posteriors: np.ndarray) -> np.ndarray:
    """``float32 (T, 88, C)``: the mean of each key's 4 bins of posteriors ``(T, 352, C)``.

    The simple decoder reads only these key means, so a caller that keeps many pieces'
    posteriors (calibration holds every validation piece's) keeps these instead: a quarter of
    the memory, the same notes (`decode_notes_simple` takes either)."""
    post = np.asarray(posteriors)
    t, bins, c = post.shape
    keys = post.reshape(t, N_KEYS, BINS_PER_KEY, c).mean(axis=2, dtype=np.float64)
    return keys.astype(np.float32)


def offset_channel(posteriors: np.ndarray, mode: str) -> np.ndarray | None:
    """The ``note-offset`` mode's offset probabilities ``(T, F, 1)``; None for other modes."""
    return np.asarray(posteriors)[:, :, 3:4] if mode == "note-offset" else None


def _norm(data: np.ndarray) -> np.ndarray:
    """z-normalise over the whole array; zeros where the std is 0 (omnizart: NaN)."""
    std = float(np.std(data))
    if not np.isfinite(std) or std == 0.0:
        return np.zeros_like(data)
    return (data - np.mean(data)) / std


def _to_keys(roll: np.ndarray) -> np.ndarray:
    """(T, 352) -> (T, 88): mean of each key's 4 bins; a (T, 88) roll is already per key."""
    if roll.shape[1] == N_KEYS:
        return roll
    return roll.reshape(len(roll), N_KEYS, BINS_PER_KEY).mean(axis=2)


def _interpolate(data: np.ndarray) -> np.ndarray:
    """(T, F) at 20 ms -> (2T, F) at 10 ms by a cubic spline (last sample extrapolated)."""
    if len(data) < 2:
        return np.repeat(data, 2, axis=0)
    x = np.arange(len(data), dtype=np.float64)
    return CubicSpline(x, data, axis=0)(np.arange(2 * len(data)) / 2.0)


def _velocities(strength: np.ndarray) -> np.ndarray:
    lo = min(float(np.min(strength, initial=0.5)), 0.5)
    hi = max(float(np.max(strength, initial=0.5)), 0.5)
    v_lo, v_hi = VELOCITY_RANGE
    return np.floor(v_lo + (v_hi - v_lo) * (strength - lo) / (hi - lo + 1e-4))


def _key_notes(on: np.ndarray, dura: np.ndarray) -> list[tuple[int, int, float]]:
    """omnizart ``infer_pitch`` for one key at 10 ms: (start, end, strength) in frames."""
    peaks, _ = find_peaks(on, distance=SHORTEST, prominence=1, width=SHORTEST)
    if len(peaks) == 0:
        return []
    n = len(dura)
    nonzero = np.concatenate([[0], np.cumsum(dura != 0)])
    idx = np.arange(n)
    window_nz = nonzero[np.minimum(idx + OFFSET_INTERVAL, n)] - nonzero[idx]
    silent = np.flatnonzero(window_nz == 0)  # frames that start OFFSET_INTERVAL zero frames
    notes = []
    for k, peak in enumerate(peaks):
        upper = int(peaks[k + 1]) if k + 1 < len(peaks) else n
        j = np.searchsorted(silent, peak)
        end = upper
        if j < len(silent) and silent[j] < upper:
            end = int(silent[j])
            if end - peak < SHORTEST - 1:
                continue
        notes.append((int(peak), end, float(on[peak])))
    return notes


def _note_path(dura: np.ndarray, onset: np.ndarray, th: float, dura_th: float) -> list:
    """Note-mode decoding of one instrument (joint-normalised (T, 352) channels)."""
    d = _interpolate(dura)
    o = _interpolate(onset)
    o = np.where(o < d, 0.0, o)
    n_on = _norm(o)
    o = np.where(n_on < th, 0.0, n_on - th)
    n_du = _norm(d) + o
    d = np.where(n_du < dura_th, 0.0, n_du)
    o88, d88 = _to_keys(o), _to_keys(d)
    rows = []
    for key in range(N_KEYS):
        if o88[:, key].sum() + d88[:, key].sum() <= 0:
            continue
        for start, end, stren in _key_notes(o88[:, key], d88[:, key]):
            rows.append((start * HOP_S / 2, end * HOP_S / 2, key + LOWEST_PITCH, stren))
    return rows


def _frame_path(dura: np.ndarray, onset: np.ndarray | None, frame_th: float) -> list:
    """Frame-mode decoding of one instrument (joint-normalised (T, 352) channels), 20 ms."""
    mix = dura if onset is None else (dura + onset) / 2.0
    active = _to_keys((_norm(mix) > frame_th).astype(np.float64)) > 0.5
    rows = []
    for key in range(N_KEYS):
        col = active[:, key]
        if not col.any():
            continue
        edges = np.diff(np.concatenate([[0], col.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        for s, e in zip(starts, ends, strict=True):
            if e - s >= 2:  # omnizart: last - start >= 0.5 frames, i.e. 2 frames or more
                stren = float(mix[s, key * BINS_PER_KEY])
                rows.append((s * HOP_S, e * HOP_S, key + LOWEST_PITCH, stren))
    return rows


def _assemble(per_inst: list[tuple[int, list]]) -> np.ndarray:
    out = []
    for program, rows in per_inst:
        if not rows:
            continue
        arr = np.asarray(rows, np.float64)
        vel = _velocities(arr[:, 3])
        out.append(np.column_stack([arr[:, :3], vel, np.full(len(arr), program, np.float64)]))
    return _sorted_notes(np.concatenate(out) if out else np.zeros((0, 5)))


def one_note_per_key(notes: np.ndarray) -> np.ndarray:
    """`notes` (N, 5: onset, offset, pitch, velocity, program) with each note ending by the next
    onset of its pitch and program. Decoding may overlap them by up to 40 ms (the onset refined
    to its peak, then the calibrated delay), which mir_eval scores as they are; a MIDI file
    cannot hold two notes of one key at once, and its readers end both at the first note-off,
    so the later note came back a few ms long."""
    notes = _sorted_notes(notes).copy()
    order = np.lexsort((notes[:, 0], notes[:, 4], notes[:, 2]))  # by key, then onset
    ranked = notes[order]
    same_key = (ranked[1:, 2] == ranked[:-1, 2]) & (ranked[1:, 4] == ranked[:-1, 4])
    ends = ranked[:-1, 1]
    ranked[:-1, 1] = np.where(same_key, np.minimum(ends, ranked[1:, 0]), ends)
    notes[order] = ranked
    return notes[notes[:, 1] > notes[:, 0]]  # two onsets at 0 s (an early delay): one note


def _sorted_notes(notes: np.ndarray) -> np.ndarray:
    notes = np.asarray(notes, np.float64).reshape(-1, 5)
    order = np.lexsort((notes[:, 4], notes[:, 2], notes[:, 0]))
    return notes[order]


def decode_notes_omnizart(
    posteriors: np.ndarray,
    mode: str,
    th: float | None = None,
    dura_th: float = DURA_TH,
    frame_th: float = FRAME_TH,
    inst_th: float = INST_TH,
) -> np.ndarray:
    """omnizart's note assembly (module docstring) -> notes ``float64 (N, 5)``.

    `posteriors` are probabilities (after the sigmoid) ``(T, 352, n_classes(mode))`` at 20 ms;
    `th` is the onset threshold in normalised units (default `default_onset_th`); `frame_th`
    applies to the frame modes, `inst_th` to the stream modes' instrument gate.
    """
    dura, onset = split_channels(posteriors, mode)
    if dura.shape[1] != N_BINS:  # its normalisation runs over every bin
        raise ValueError(f"omnizart decoding needs all {N_BINS} bins, got {dura.shape[1]}")
    th = default_onset_th(mode) if th is None else float(th)
    programs = mode_programs(mode)
    if len(dura) == 0:
        return np.zeros((0, 5))
    dura = _norm(dura)
    onset = None if onset is None else _norm(onset)
    n_inst = dura.shape[-1]
    per_inst = []
    for i in range(n_inst):
        d_i = dura[..., i]
        o_i = None if onset is None else onset[..., i]
        if n_inst > 1:
            stds = [np.std(d_i)] + ([] if o_i is None else [np.std(o_i)])
            if np.mean(stds) < inst_th:
                continue
        if "note" in mode:
            rows = _note_path(d_i, o_i, th, dura_th)
        else:
            rows = _frame_path(d_i, o_i, frame_th)
        per_inst.append((programs[i], rows))
    return _assemble(per_inst)


ONSET_TIMES = ("first", "peak")  # where a note starts in its onset run (`decode_notes_simple`)
OFFSET_TIMES = ("first", "peak")  # where a note ends in its offset run (`decode_notes_simple`)
OFFSET_GATE_FRAMES = 3  # frames after an offset frame whose mean frame probability the gate reads


def decode_notes_simple(
    posteriors: np.ndarray,
    mode: str,
    onset_threshold: float = 0.5,
    frame_threshold: float = 0.5,
    offset_threshold: float = 0.5,
    min_gap: int = 0,
    onset_delay: float = 0.0,
    onset_time: str = "first",
    offset_time: str = "first",
    offset_gate: float | None = None,
) -> np.ndarray:
    """Onsets-and-Frames style decoding -> notes ``float64 (N, 5)``.

    Per instrument and key (the mean of its 4 bins, or `key_posteriors`' (T, 88, C) as they
    are), at the 20 ms frame rate: frame probability
    = duration + onset (the label's ``dura`` is ``frame - onset``), or the frame channel for
    true-frame modes. A note starts at the first frame of each run of onset probability
    > `onset_threshold` (true-frame modes: of each run of frame probability > `frame_threshold`)
    and lasts while the frame probability stays > `frame_threshold` or the onset run continues,
    up to the next onset on that key; at least one frame (two onset runs that touch count as
    one). Velocity ``round(127 * max onset
    probability in the run)`` clipped to 1..127 (true-frame modes: the frame probability).
    ``note-offset`` mode also ends a note after the first frame past its onset run whose offset
    probability exceeds `offset_threshold` (the label marks a note's last frame and the next).
    An onset run starting less than `min_gap` frames after the previous note's onset on the
    same key continues that note instead of starting another (a flickering onset is one note).
    No statistics of the whole piece are used, so confident and dense outputs decode fine.
    `onset_delay` (s) is added to every onset, never before 0 s (a note still lasts one frame at least): the
    first frame over the threshold tends to come early, before the onset posterior's peak,
    the more so the sharper the attack (the CFP's 180-ms window sees an attack before it
    happens), and calibration measures by how much.

    `onset_time` says where in its onset run a note starts: ``"first"`` (the first frame over
    the threshold, as above) or ``"peak"`` (the run's most probable frame, refined between
    frames by a parabola through it and its neighbours; `run_peak`). Not in omnizart. How
    early the first frame comes depends on the attack (sharp piano attacks 50-70 ms early,
    slow bowed and blown ones late), so no one delay fits both; the peak moves less. With
    peaks the onset labels' two leading frames put the posterior's maximum about 30 ms after
    the onset, which calibration's delay takes back.

    `offset_time` says where a ``note-offset`` note ends once its offset probability exceeds
    `offset_threshold`: ``"first"`` (after the first frame over it, for labels that mark a
    note's last frame and the next) or ``"peak"`` (at the maximum of that run of frames, refined
    as onsets are, for the soft `offset_triangle` labels whose peak is the end itself).

    `offset_gate` (None: off) lets an offset frame end a note only where the frame probability
    of the next `OFFSET_GATE_FRAMES` frames (60 ms) averages below it: a note ends where the
    model hears it stop, not where a faint offset bump rises inside a note that sounds on. With
    the gate a lower offset threshold finds the ends earlier, as they are, without cutting
    sustained notes (`offset_gated`). Not in omnizart.
    """
    if onset_time not in ONSET_TIMES:
        raise ValueError(f"onset_time must be one of {ONSET_TIMES}, got {onset_time!r}")
    if offset_time not in OFFSET_TIMES:
        raise ValueError(f"offset_time must be one of {OFFSET_TIMES}, got {offset_time!r}")
    post = np.asarray(posteriors)
    if post.ndim == 3 and post.shape[1] == N_BINS:  # each key's mean of its 4 bins, in float64
        # as `_to_keys` takes them (the same notes): a long piece's float64 copy of every bin
        # was 2.3 GB an hour
        post = post.reshape(len(post), N_KEYS, BINS_PER_KEY, post.shape[2])
        post = post.mean(axis=2, dtype=np.float64)
    dura, onset = split_channels(post, mode)
    off_ch = offset_channel(post, mode)
    off_keys = _to_keys(np.asarray(off_ch[..., 0], np.float64)) if off_ch is not None else None
    programs = mode_programs(mode)
    n_frames = len(dura)
    out = []
    for i, program in enumerate(programs):
        if onset is None:
            frame = _to_keys(dura[..., i])
            on_prob = frame
            on = frame > frame_threshold
        else:
            on_prob = _to_keys(onset[..., i])
            frame = _to_keys(dura[..., i]) + on_prob
            on = on_prob > onset_threshold
        alive = (frame > frame_threshold) | on
        ends = off_keys > offset_threshold if off_keys is not None else None
        if ends is not None and offset_gate is not None:
            ends = offset_gated(ends, frame, offset_gate)
        on_i8 = on.astype(np.int8)
        rises = np.diff(np.concatenate([np.zeros((1, N_KEYS), np.int8), on_i8]), axis=0) == 1
        for key in np.flatnonzero(rises.any(axis=0)):
            starts = _spaced(np.flatnonzero(rises[:, key]), min_gap)
            dead = np.flatnonzero(~alive[:, key])
            for k, s in enumerate(starts):
                nxt = int(starts[k + 1]) if k + 1 < len(starts) else n_frames
                j = np.searchsorted(dead, s + 1)
                end = min(int(dead[j]) if j < len(dead) else n_frames, nxt)
                end = max(end, s + 1)
                run_end = s + 1
                while run_end < n_frames and on[run_end, key]:
                    run_end += 1
                stop_frame = float(end)
                if ends is not None:  # the first offset frame after the onset run
                    hit = np.flatnonzero(ends[run_end:end, key])
                    if len(hit):
                        first = run_end + int(hit[0])
                        stop_frame = float(first + 1)
                        if offset_time == "peak":
                            over = np.flatnonzero(~ends[first:nxt, key])
                            last = first + (int(over[0]) if len(over) else nxt - first)
                            stop_frame = run_peak(off_keys[:, key], first, last)
                peak = float(on_prob[s:run_end, key].max())
                vel = float(np.clip(np.rint(127 * peak), 1, 127))
                at = run_peak(on_prob[:, key], s, run_end) if onset_time == "peak" else s
                start = max(at * HOP_S + onset_delay, 0.0)  # an early delay stops at 0 s
                stop = max(stop_frame * HOP_S, start + HOP_S)
                out.append((start, stop, key + LOWEST_PITCH, vel, program))
    return _sorted_notes(np.asarray(out, np.float64) if out else np.zeros((0, 5)))


def offset_gated(ends: np.ndarray, frame: np.ndarray, gate: float) -> np.ndarray:
    """`ends` ``(T, K)`` (offset frames) kept only where the mean of `frame` over the next
    `OFFSET_GATE_FRAMES` frames (fewer at the end; none after the last frame) is below `gate`."""
    n = len(frame)
    total = np.concatenate([np.zeros((1, frame.shape[1])), np.cumsum(frame, axis=0)])
    t = np.arange(n)
    lo, hi = np.minimum(t + 1, n), np.minimum(t + 1 + OFFSET_GATE_FRAMES, n)
    count = np.maximum(hi - lo, 1)[:, None]
    return ends & ((total[hi] - total[lo]) / count < gate)


def run_peak(prob: np.ndarray, start: int, stop: int) -> float:
    """The (fractional) frame of the maximum of ``prob[start:stop]`` (one key's onset or offset
    run): the vertex of the parabola through the maximum and its two neighbours, moved by at
    most half a frame; the frame itself where the maximum is at the edge of `prob` or flat."""
    i = start + int(np.argmax(prob[start:stop]))
    if i == 0 or i == len(prob) - 1:
        return float(i)
    before, top, after = (float(v) for v in prob[i - 1 : i + 2])
    curve = before - 2.0 * top + after
    if curve >= 0.0:
        return float(i)
    return i + float(np.clip(0.5 * (before - after) / curve, -0.5, 0.5))


def _spaced(starts: np.ndarray, min_gap: int) -> np.ndarray:
    """The starts that follow the previous kept one by at least `min_gap` frames."""
    if min_gap <= 1 or len(starts) < 2:
        return starts
    kept = [int(starts[0])]
    for s in starts[1:]:
        if s - kept[-1] >= min_gap:
            kept.append(int(s))
    return np.asarray(kept, np.int64)


def decode_notes(
    posteriors: np.ndarray,
    mode: str,
    th: float | None = None,
    *,
    method: str = "omnizart",
    **kwargs,
) -> np.ndarray:
    """Notes ``float64 (N, 5)`` (onset_s, offset_s, MIDI pitch, velocity, GM program), sorted by
    onset, from posteriors ``(T, 352, n_classes(mode))`` at 20 ms.

    ``method="omnizart"``: `decode_notes_omnizart` (`th` = onset threshold, plus ``dura_th``,
    ``frame_th``, ``inst_th`` keywords). ``method="simple"``: `decode_notes_simple` (keywords
    ``onset_threshold``, ``frame_threshold``; `th`, if given, is used as ``onset_threshold``).
    """
    if method == "omnizart":
        return decode_notes_omnizart(posteriors, mode, th=th, **kwargs)
    if method == "simple":
        if th is not None:
            kwargs.setdefault("onset_threshold", th)
        return decode_notes_simple(posteriors, mode, **kwargs)
    raise ValueError(f"unknown decode method {method!r}; use 'omnizart' or 'simple'")


def notes_to_midi(notes: np.ndarray):
    """A ``pretty_midi.PrettyMIDI`` with one instrument track per distinct program, in program
    order. Program 128 becomes a drum track; unknown programs (-1) a program-0 track named
    "Unknown". Velocities outside 1..127 (e.g. -1 unknown) are written as 100."""
    import pretty_midi

    notes = np.asarray(notes, np.float64).reshape(-1, 5)
    midi = pretty_midi.PrettyMIDI()
    for program in np.unique(np.rint(notes[:, 4]).astype(np.int64)):
        rows = notes[np.rint(notes[:, 4]) == program]
        if program == DRUM_PROGRAM:
            inst = pretty_midi.Instrument(program=0, is_drum=True, name="Drums")
        elif 0 <= program < 128:
            name = pretty_midi.program_to_instrument_name(int(program))
            inst = pretty_midi.Instrument(program=int(program), name=name)
        else:
            inst = pretty_midi.Instrument(program=0, name="Unknown")
        for onset, offset, pitch, velocity, _ in rows[np.argsort(rows[:, 0], kind="stable")]:
            vel = int(velocity) if 1 <= velocity <= 127 else 100
            inst.notes.append(
                pretty_midi.Note(
                    velocity=vel,
                    pitch=int(np.clip(np.rint(pitch), 0, 127)),
                    start=float(onset),
                    end=float(max(offset, onset)),
                )
            )
        midi.instruments.append(inst)
    return midi


def write_notes_csv(path: str | Path, notes: np.ndarray) -> None:
    """Write notes as CSV with header ``onset,offset,pitch,velocity,program``."""
    notes = np.asarray(notes, np.float64).reshape(-1, 5)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_HEADER)
        for onset, offset, pitch, velocity, program in notes:
            writer.writerow(
                [f"{onset:.6f}", f"{offset:.6f}", f"{pitch:g}", f"{velocity:g}", int(program)]
            )
