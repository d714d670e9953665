"""Sung notes from SDT posteriors (omnizart's vocal inference, rewritten).

1. Peaks of the onset channel (2) and of the offset channel (4): a frame at or above the
   threshold, above the `ctx` frames before it and not below the `ctx` frames after it.
2. Each onset takes the first offset peak at least `min_seconds` after it, or, when there is
   none, the frame where the activation channel (0) first falls below the threshold. An onset
   whose stretch to the next onset is more silent than active is dropped; when the offset comes
   after the next onset, the note ends at that onset (or, if the offset is within `min_seconds`
   past it, at the offset). Notes shorter than `min_seconds` are dropped; every note lasts a
   frame at least, so `min_seconds=0` cannot pair an onset with an offset peak on its own frame.
3. The pitch of a note is the Gaussian-weighted mean (sd 2 frames, centred on the note's middle)
   of the voiced f0 frames inside it; a note with fewer than 3 voiced frames has no pitch and
   is dropped (omnizart writes such notes to a "missing notes" drum track).
"""

from __future__ import annotations

import numpy as np

from jaxmir.tasks.vocal.labels import FRAME_S


def find_peaks(seq: np.ndarray, ctx: int = 2, threshold: float = 0.5) -> np.ndarray:
    """Frames that are peaks of `seq` (see step 1); the first and last `ctx` frames never are."""
    seq = np.asarray(seq, np.float64)
    n = len(seq)
    idx = np.arange(ctx, max(n - ctx - 1, ctx))
    if len(idx) == 0:
        return idx
    ok = seq[idx] >= threshold
    for k in range(1, ctx + 1):
        ok &= seq[idx] > seq[idx - k]
        ok &= seq[idx] >= seq[idx + k]
    return idx[ok]


def first_fall(seq: np.ndarray, threshold: float = 0.5) -> int:
    """The first frame below `threshold` after `seq` has been above it: `len(seq)` when it
    stays above to the end (a note held to the end of the file ends there; omnizart's 0
    dropped it), 0 when it is never above."""
    above = np.asarray(seq) > threshold
    if not above.any():
        return 0
    after = np.flatnonzero(np.asarray(seq)[np.argmax(above) :] < threshold)
    return int(np.argmax(above) + after[0]) if len(after) else len(above)


def note_intervals(
    probs: np.ndarray, ctx: int = 2, threshold: float = 0.5, min_seconds: float = 0.1
) -> np.ndarray:
    """(N, 2) onset and offset frames of the notes in posteriors `probs` (T, 6)."""
    onsets = find_peaks(probs[:, 2], ctx, threshold)
    offsets = find_peaks(probs[:, 4], ctx, threshold)
    if len(onsets) == 0:
        return np.zeros((0, 2), np.int64)
    offsets = offsets[offsets > onsets[0]]
    min_len = max(min_seconds / FRAME_S, 1.0)  # a note lasts a frame at least
    out = []
    for i, on in enumerate(onsets):
        nxt = onsets[i + 1] if i + 1 < len(onsets) else None
        later = offsets[offsets >= on + min_len]
        off = int(later[0]) if len(later) else on + first_fall(probs[on:, 0], threshold)
        if nxt is None:  # the last onset ends where the activation falls
            off = on + first_fall(probs[on:, 0], threshold)
        elif on < nxt < off:
            if probs[on:nxt, 1].mean() > probs[on:nxt, 0].mean():
                continue  # silence between this onset and the next: a false onset
            if off - nxt >= min_len:
                off = int(nxt)
        if off - on >= min_len:
            out.append((int(on), int(off)))
    return np.asarray(out, np.int64).reshape(-1, 2)


def note_hz(f0_hz: np.ndarray, lo: int, hi: int, sd: float = 2.0, min_voiced: int = 3) -> float:
    """Gaussian-weighted mean of the voiced values of f0_hz[lo:hi]; 0 with < min_voiced."""
    part = np.asarray(f0_hz[lo:hi], np.float64)
    voiced = part > 1e-6
    if voiced.sum() < min_voiced:
        return 0.0
    weights = np.exp(-0.5 * ((np.arange(len(part)) - len(part) // 2) / sd) ** 2)
    return float(np.sum(weights[voiced] * part[voiced]) / np.sum(weights[voiced]))


def decode_notes(
    probs: np.ndarray,
    f0_hz: np.ndarray,
    *,
    ctx: int = 2,
    threshold: float = 0.5,
    min_seconds: float = 0.1,
) -> np.ndarray:
    """Notes (N, 3: onset_s, offset_s, MIDI pitch) from SDT posteriors (T, 6) and the f0 of
    the same 20 ms frames (Hz, 0 = unvoiced)."""
    rows = []
    for on, off in note_intervals(probs, ctx, threshold, min_seconds):
        hz = note_hz(f0_hz, on, off)
        if hz > 0:
            midi = int(round(69 + 12 * np.log2(hz / 440.0)))
            if 0 <= midi <= 127:
                rows.append((on * FRAME_S, off * FRAME_S, float(midi)))
    return np.asarray(rows, np.float64).reshape(-1, 3)
