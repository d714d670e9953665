"""Frame-level input features and targets for symbolic beat tracking.

The representation follows omnizart's beat module (a piano-roll style feature of 178 columns at
10 ms frames, and two fading target curves for beats and downbeats), re-derived from its
definition and vectorised with numpy so that a piece with 100k notes featurises in a fraction of a
second. Where this module deliberately behaves differently from omnizart, the docstring of the
function concerned says so and why.

Feature columns (``N_FEATURES = 178``), one row per frame ``round(t * fps)``:

==========  ==============================================================================
0 .. 87     onset roll: 1 at a note's onset frame, for MIDI pitches 21 (A0) .. 108 (C8)
88 .. 175   duration roll: 1 on every frame a note of that pitch sounds
176         inter-onset interval: at each distinct onset frame, the seconds since the
            previous distinct onset frame (0 at the first onset and on every other frame)
177         spectral flux: number of pitches whose onset-roll entry rises from 0 to 1
            between the previous frame and this one (0 at frame 0)
==========  ==============================================================================
"""

from __future__ import annotations

import numpy as np

from jaxmir.data.symbolic import SymbolicPiece

FPS = 100
"""Frames per second (10 ms frames, omnizart's ``TimeUnit: 0.01``)."""

N_FEATURES = 178
"""Columns of `beat_features`: 88 onset + 88 duration + inter-onset interval + spectral flux."""

FADE = 15
"""Length in frames of the fading target written at each beat: 1, 1/2, ..., 1/FADE."""

LOWEST_PITCH = 21
"""MIDI pitch of the first roll column (A0)."""

N_PITCHES = 88
"""Roll width: MIDI pitches 21 (A0) through 108 (C8)."""

ONSET_COLS = slice(0, N_PITCHES)
DURATION_COLS = slice(N_PITCHES, 2 * N_PITCHES)
IOI_COL = 2 * N_PITCHES
FLUX_COL = 2 * N_PITCHES + 1


def _frames(times: np.ndarray, fps: int) -> np.ndarray:
    """Frame index of each time: ``round(t * fps)``, halves to even (as Python's ``round``)."""
    return np.rint(np.asarray(times, np.float64) * fps).astype(np.int64)


def n_frames_for(piece: SymbolicPiece, fps: int = FPS, fade: int = FADE) -> int:
    """Frame count shared by a piece's features and labels.

    Long enough for every frame `beat_features` writes (up to the last note's offset frame, and
    one frame past a zero-length note's onset) and for the whole fade of the last beat or
    downbeat. At least 1.

    Differs from omnizart, which sizes the features ``ceil(last offset / t_unit)`` and the labels
    that plus the fade, so the two arrays of one piece have different lengths and its data loader
    trims them to the shorter. One length for both keeps features and targets aligned and keeps
    the fade of beats that come after the last note.
    """
    n = 1
    notes = np.asarray(piece.notes, np.float64)
    if len(notes):
        on = _frames(notes[:, 0], fps)
        off = np.maximum(_frames(notes[:, 1], fps), on + 1)
        n = max(n, int(off.max()))
    for times in (piece.beats, piece.downbeats):
        times = np.asarray(times, np.float64)
        if len(times):
            n = max(n, int(_frames(times, fps).max()) + fade)
    return n


def beat_features(notes: np.ndarray, n_frames: int, fps: int = FPS) -> np.ndarray:
    """Onset roll, duration roll, inter-onset interval and spectral flux, float32 (n_frames, 178).

    notes: (N, >=3) array of onset_s, offset_s, MIDI pitch (further columns, e.g. velocity, are
    ignored). A note starts at frame ``round(onset * fps)`` and sounds until, not including,
    frame ``round(offset * fps)``. The column definitions are omnizart's ``extract_feature``
    (see the module docstring), computed without a Python loop over notes or frames.

    Differences from omnizart, each for robustness rather than a change of meaning:

    * Pitches outside 21..108 are dropped (omnizart wraps pitches below 21 to the top of the roll
      through negative indexing and raises on pitches above 108). Dropped notes take no part in
      any column, the inter-onset interval included.
    * A note whose offset frame is not after its onset frame still sounds for one frame (omnizart
      writes its onset but no duration, so a grace note or a very short note would have an onset
      without ever sounding).
    * The frame count is the caller's (see `n_frames_for`); notes are clipped to it: a note that
      starts at or after ``n_frames`` is dropped, and durations stop at the last frame (omnizart
      sizes the roll from the last offset and can raise when an onset rounds past it). Negative
      times are clipped to frame 0.
    * The inter-onset interval is the frame difference divided by ``fps`` (omnizart multiplies
      by ``t_unit``; the same value up to float rounding), and the output is float32 rather than
      float64. Frames are ``round(t * fps)`` where omnizart has ``round(t / t_unit)``; the two
      can differ by one frame for a time on an exact half frame (``0.235 / 0.01`` is just under
      23.5 in binary floating point and rounds to 23; ``0.235 * 100`` is 23.5 and rounds to 24).
    """
    n_frames = int(n_frames)
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    out = np.zeros((n_frames, N_FEATURES), np.float32)
    notes = np.asarray(notes, np.float64)
    if notes.size == 0 or n_frames == 0:
        return out
    if notes.ndim != 2 or notes.shape[1] < 3:
        raise ValueError(f"notes must be (N, >=3) onset, offset, pitch; got shape {notes.shape}")

    pitch = np.rint(notes[:, 2])
    on = np.maximum(_frames(notes[:, 0], fps), 0)
    keep = (pitch >= LOWEST_PITCH) & (pitch < LOWEST_PITCH + N_PITCHES) & (on < n_frames)
    if not keep.any():
        return out
    col = pitch[keep].astype(np.int64) - LOWEST_PITCH
    on = on[keep]
    off = np.clip(_frames(notes[keep, 1], fps), on + 1, n_frames)

    # Onset roll.
    onset = out[:, ONSET_COLS]
    onset[on, col] = 1.0

    # Duration roll: +1 at each onset, -1 at each offset, running sum over time; a frame sounds
    # where at least one note of that pitch is active (overlapping notes of a pitch are a union).
    active = np.zeros((n_frames + 1, N_PITCHES), np.int32)
    np.add.at(active, (on, col), 1)
    np.subtract.at(active, (off, col), 1)
    np.cumsum(active, axis=0, out=active)
    np.greater(active[:n_frames], 0, out=out[:, DURATION_COLS])

    # Inter-onset interval, written at each distinct onset frame but the first.
    onset_frames = np.unique(on)
    out[onset_frames[1:], IOI_COL] = np.diff(onset_frames) / fps

    # Spectral flux of the onset roll: positive frame-to-frame differences, summed over pitch.
    # Only onset frames can be non-zero, so evaluate there instead of over the whole roll.
    rows = onset_frames[onset_frames > 0]
    rises = np.maximum(onset[rows] - onset[rows - 1], 0.0)
    out[rows, FLUX_COL] = rises.sum(axis=1)
    return out


def beat_labels(
    beats: np.ndarray,
    downbeats: np.ndarray,
    n_frames: int,
    fps: int = FPS,
    fade: int = FADE,
) -> np.ndarray:
    """Fading beat (channel 0) and downbeat (channel 1) targets, float32 (n_frames, 2).

    From each beat's frame ``round(t * fps)`` on, frame ``i`` (0 .. fade-1) gets ``1 / (i + 1)``;
    fades that run past the end are cut, and frames before 0 are dropped.

    Differences from omnizart's ``extract_musicnet_label``:

    * Downbeats are the given bar starts (the piece's real meter, pickups and meter changes
      included); omnizart marks every beat whose number is 1 modulo a fixed meter of 4, because
      MusicNet records no meter.
    * Beat times are taken as given; omnizart derives them from the notes that start on an
      integer beat number and interpolates the missing ones, which symbolic sources with an
      exact grid don't need.
    * Where two fades overlap (beats less than ``fade`` frames apart) each frame keeps the larger
      value, so a beat's own frame is always 1; omnizart lets the later beat overwrite.
    """
    n_frames = int(n_frames)
    out = np.zeros((n_frames, 2), np.float32)
    steps = np.arange(fade, dtype=np.int64)
    values = (1.0 / (steps + 1)).astype(np.float32)
    for channel, times in enumerate((beats, downbeats)):
        start = _frames(np.asarray(times, np.float64).ravel(), fps)
        idx = start[:, None] + steps[None, :]
        vals = np.broadcast_to(values, idx.shape)
        inside = (idx >= 0) & (idx < n_frames)
        column = out[:, channel]
        np.maximum.at(column, idx[inside], vals[inside])
    return out
