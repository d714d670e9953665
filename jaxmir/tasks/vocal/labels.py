"""SDT labels of sung notes (omnizart's vocal app): six channels per 20 ms frame.

Channels, in omnizart's order: 0 activation (a note sounds), 1 silence (= 1 - activation),
2 onset, 3 non-onset, 4 offset, 5 non-offset. An onset (offset) marks the frames
[t - 2, t + 4) around the note's first (last) frame, so the events are 6 frames (120 ms) wide.
A note shorter than half a frame has no activation frame and is left out, as in omnizart.

MIR-1K has no note annotations, only a semitone pitch every 10 ms: `notes_from_f0` makes notes
of its runs of one rounded pitch, at least 50 ms long (omnizart's MIR-1K label reader).
"""

from __future__ import annotations

import numpy as np

FRAME_S = 0.02  # the vocal feature's hop (320 samples at 16 kHz)
EVENT_BEFORE, EVENT_AFTER = 2, 4  # frames an onset/offset label spans before and after it
N_CHANNELS = 6
CHANNELS = ("activation", "silence", "onset", "non_onset", "offset", "non_offset")


def sdt_labels(notes: np.ndarray, n_frames: int, frame_s: float = FRAME_S) -> np.ndarray:
    """float32 (n_frames, 6) SDT targets of `notes` (rows onset_s, offset_s, ...)."""
    y = np.zeros((n_frames, N_CHANNELS), np.float32)
    for onset, offset in np.asarray(notes, np.float64).reshape(-1, np.shape(notes)[-1])[:, :2]:
        on, off = round(onset / frame_s), round(offset / frame_s)
        if off <= on:
            continue
        for channel, lo, hi in (
            (0, on, off),
            (2, on - EVENT_BEFORE, on + EVENT_AFTER),
            (4, off - EVENT_BEFORE, off + EVENT_AFTER),
        ):
            y[max(lo, 0) : max(min(hi, n_frames), 0), channel] = 1.0
    y[:, 1] = 1.0 - y[:, 0]
    y[:, 3] = 1.0 - y[:, 2]
    y[:, 5] = 1.0 - y[:, 4]
    return y


def notes_from_f0(f0: np.ndarray, min_seconds: float = 0.05) -> np.ndarray:
    """Notes (N, 3: onset_s, offset_s, MIDI pitch) of the runs of one rounded MIDI pitch in a
    contour `f0` (T, 2: time_s, Hz with 0 = unvoiced) on a regular grid."""
    f0 = np.asarray(f0, np.float64)
    if len(f0) < 2:
        return np.zeros((0, 3))
    hop = float(np.median(np.diff(f0[:, 0])))
    voiced = f0[:, 1] > 0
    pitch = np.where(voiced, np.round(69 + 12 * np.log2(np.where(voiced, f0[:, 1], 1) / 440)), 0)
    change = np.flatnonzero(np.diff(pitch) != 0) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(pitch)]])
    rows = [
        (f0[s, 0], f0[s, 0] + (e - s) * hop, pitch[s])
        for s, e in zip(starts, ends, strict=True)
        if pitch[s] > 0 and (e - s) * hop >= min_seconds
    ]
    return np.asarray(rows, np.float64).reshape(-1, 3)
