"""The drum input: a log-scaled, frame-normalised CQT cut into mini-beat patches.

This follows omnizart's `feature/wrapper_func.py extract_patch_cqt`, `feature/cqt.py` and
`feature/beat_for_drum.py` (re-written, not copied):

* **CQT.** Audio at 44.1 kHz is zero-padded by 1 s at both ends, then `librosa.cqt` runs with hop 256,
  120 bins at 12 per octave from MIDI 16 (20.6 Hz) up to MIDI 135. The magnitude goes to dB
  (`amplitude_to_db`, ref 1, amin 1e-6, top_db 80, so the floor is the song's maximum minus 80 dB),
  then (dB + 80.001) * 1.25, then each frame is L2-normalised. Silence is not zero after this: a
  silent frame becomes the flat vector 1/sqrt(120). Because of the padding, CQT frame i sits at
  `i * 256 / 44100 - 1.0` seconds (`drum_frame_times`).
* **Mini-beats.** There are 8 per beat, spaced evenly between consecutive beats. omnizart also
  extrapolates linearly to one beat before the first beat and 7/8 of a beat after the last, then
  keeps the times inside [0, duration]. `mini_beat_times(..., duration=...)` does the same;
  without `duration` it gives only the 8 * (B - 1) mini-beats between the first and the last beat.
* **Patches.** Around each mini-beat t, the frames from round((t - 0.2) / dt) up to, but not
  including, round((t + 0.5) / dt) are taken. That is 120 or 121 frames, about 0.7 s. They are
  resized to 120 (time) x 120 (bins) with PIL's bicubic filter (Keys a = -0.5, widened when it
  shrinks), the filter omnizart used through `Image.resize(..., BICUBIC)` on a float image. It is
  rebuilt here as a small weight matrix, so neither PIL nor scikit-image is needed.
* **Labels.** There are 13 classes, mapped from General MIDI drum notes as in omnizart's
  `drum/labels.py extract_label_13_inst` (`DRUM_CLASSES`, `GM_TO_CLASS`). Each hit goes to its
  nearest mini-beat.

Differences from omnizart:

* **Beats.** omnizart tracked beats with madmom: an RNN down-beat DBN, a DBN and a plain tracker,
  whose average tempo set the range for a last down-beat DBN pass. madmom cannot be installed
  here. When no beats are given, `drum_input` uses `librosa.beat.beat_track` instead, which is a
  weaker tracker. When beats come from labels, they are used as they are.
* **Label bug.** In omnizart's `extract_label`, the boundary loop indexes `m_beat_arr[idx + 1]`
  with the wrong offset, so each bin ends at the next mini-beat instead of half-way to it. Hits go
  to the mini-beat *before* them, not the nearest one. jaxmir uses the mid-points, which is what
  was evidently intended.
* **Resampling.** Audio at another sample rate is resampled to 44.1 kHz with soxr (librosa's
  default). omnizart's `load_audio` did the same job with its own resampler.
"""

from __future__ import annotations

import functools

import librosa
import numpy as np

SR = 44100
HOP = 256
LOWEST_NOTE = 16
N_BINS = 120
PAD_SEC = 1.0
PATCH_BEFORE = 0.2
PATCH_AFTER = 0.5
PATCH_SIZE = 120
MINI_BEATS_PER_BEAT = 8

DRUM_CLASSES = (
    "bass_drum",
    "snare",
    "side_stick",
    "clap",
    "closed_hihat",
    "pedal_hihat",
    "open_hihat",
    "low_tom",
    "mid_tom",
    "high_tom",
    "crash",
    "ride",
    "maracas",
)
#: GM drum notes of each class, in DRUM_CLASSES order.
CLASS_NOTES = (
    (33, 35, 36),
    (27, 38, 40, 85, 87),
    (37,),
    (39,),
    (42,),
    (44,),
    (46,),
    (41, 43),
    (45, 47),
    (48, 50),
    (49, 55, 57),
    (51, 53, 59),
    (69, 70, 82),
)
#: General MIDI drum note -> index into DRUM_CLASSES (notes not listed are ignored).
GM_TO_CLASS = {note: cls for cls, notes in enumerate(CLASS_NOTES) for note in notes}


def _mono_44k(audio: np.ndarray, sr: float) -> np.ndarray:
    y = np.asarray(audio, dtype=np.float32)
    if y.ndim > 1:
        y = librosa.to_mono(y)
    if sr != SR:
        y = librosa.resample(y, orig_sr=sr, target_sr=SR)
    return y


def drum_cqt(audio: np.ndarray, sr: float = SR) -> np.ndarray:
    """The log-scaled, per-frame L2-normalised CQT of `audio` (padded by 1 s both sides).

    Returns float32 (T, 120), with T = 1 + (len + 2 * 44100) // 256 at 44.1 kHz. Frame i is at
    `drum_frame_times(T)[i]` seconds.
    """
    y = _mono_44k(audio, sr)
    pad = np.zeros(int(PAD_SEC * SR), dtype=y.dtype)
    y = np.concatenate([pad, y, pad])
    gram = librosa.cqt(
        y,
        sr=SR,
        hop_length=HOP,
        fmin=librosa.midi_to_hz(LOWEST_NOTE),
        n_bins=N_BINS,
        bins_per_octave=12,
        tuning=0.0,
    )
    db = librosa.amplitude_to_db(np.abs(gram), ref=1.0, amin=1e-6, top_db=80.0)
    scaled = (db + 80.001) * (100.0 / 80.0)
    return librosa.util.normalize(scaled.T, norm=2.0, axis=1).astype(np.float32)


def drum_frame_times(n_frames: int, sr: float = SR, hop: int = HOP) -> np.ndarray:
    """Times in seconds of `drum_cqt` frames, accounting for its 1 s lead-in padding."""
    return np.arange(n_frames) * (hop / sr) - PAD_SEC


def mini_beat_times(
    beats: np.ndarray, per_beat: int = MINI_BEATS_PER_BEAT, *, duration: float | None = None
) -> np.ndarray:
    """Subdivide each inter-beat interval into `per_beat` equal steps.

    With `duration` None, the result is the 8 * (B - 1) times from the first beat up to, but not
    including, the last one. Given a duration in seconds, it extends linearly, as omnizart did, to
    one beat before the first beat and (per_beat - 1) / per_beat of a beat after the last. Only
    times inside [0, duration] are kept.
    """
    beats = np.asarray(beats, dtype=np.float64).ravel()
    if len(beats) < 2:
        raise ValueError(f"need at least 2 beats to make mini-beats, got {len(beats)}")
    if np.any(np.diff(beats) <= 0):
        raise ValueError("beat times must be strictly increasing")
    n = len(beats)
    if duration is None:
        pos = np.arange((n - 1) * per_beat) / per_beat
    else:
        pos = np.arange(-per_beat, n * per_beat) / per_beat
    seg = np.clip(np.floor(pos).astype(np.int64), 0, n - 2)
    times = beats[seg] + (pos - seg) * (beats[seg + 1] - beats[seg])
    if duration is not None:
        times = times[(times >= 0.0) & (times <= duration)]
    return times


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    outer = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


@functools.lru_cache(maxsize=64)
def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights that resample one axis like PIL's BICUBIC `Image.resize`."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    centers = (np.arange(n_out) + 0.5) * scale
    lo = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((centers + support + 0.5).astype(np.int64), n_in)
    src = np.arange(n_in)
    w = _cubic((src[None, :] - centers[:, None] + 0.5) / filterscale)
    w = np.where((src[None, :] >= lo[:, None]) & (src[None, :] < hi[:, None]), w, 0.0)
    total = w.sum(axis=1, keepdims=True)
    return w / np.where(total == 0.0, 1.0, total)


def resize_bicubic(patch: np.ndarray, shape: tuple[int, int] = (PATCH_SIZE, PATCH_SIZE)):
    """Resize a 2-D array to `shape` (rows, cols) as PIL's bicubic `resize` does for mode 'F'."""
    rows = _bicubic_matrix(patch.shape[0], shape[0])
    cols = _bicubic_matrix(patch.shape[1], shape[1])
    return (rows @ np.asarray(patch, np.float64) @ cols.T).astype(np.float32)


def drum_patches(cqt: np.ndarray, frame_times: np.ndarray, mini_beats: np.ndarray) -> np.ndarray:
    """Cut a [t - 0.2 s, t + 0.5 s] CQT patch around each mini-beat, resized to 120 x 120.

    `cqt` is (T, 120) with evenly spaced frame times `frame_times`, usually from `drum_cqt` and
    `drum_frame_times`. Returns float32 (M, 120 time, 120 bins). A window running past the CQT is
    cut short before it is resized, as in omnizart's slicing. A window wholly outside keeps one
    edge frame.
    """
    cqt = np.asarray(cqt)
    frame_times = np.asarray(frame_times, dtype=np.float64)
    mini_beats = np.asarray(mini_beats, dtype=np.float64).ravel()
    n_frames = cqt.shape[0]
    if n_frames < 2 or len(frame_times) != n_frames:
        raise ValueError("cqt needs at least 2 frames and one time per frame")
    t0, dt = frame_times[0], (frame_times[-1] - frame_times[0]) / (n_frames - 1)
    start = np.rint((mini_beats - PATCH_BEFORE - t0) / dt).astype(np.int64)
    stop = np.rint((mini_beats + PATCH_AFTER - t0) / dt).astype(np.int64)
    start = np.clip(start, 0, n_frames - 1)
    stop = np.clip(stop, start + 1, n_frames)
    out = np.empty((len(mini_beats), PATCH_SIZE, PATCH_SIZE), np.float32)
    cols = _bicubic_matrix(cqt.shape[1], PATCH_SIZE)
    identity = cols.shape[0] == cols.shape[1] and np.array_equal(cols, np.eye(len(cols)))
    for length in np.unique(stop - start):
        idx = np.flatnonzero(stop - start == length)
        windows = start[idx, None] + np.arange(length)[None, :]
        rows = _bicubic_matrix(int(length), PATCH_SIZE)
        # one large GEMM over all k patches: (120, length) x (length, k * bins)
        stack = cqt[windows].astype(np.float64)  # (k, length, bins)
        resized = np.tensordot(rows, stack, axes=([1], [1])).transpose(1, 0, 2)
        out[idx] = resized if identity else resized @ cols.T
    return out


BEAT_TRACK_FFT = 2048  # librosa.onset.onset_strength's default n_fft


def tracked_beats(audio: np.ndarray, sr: float = SR) -> np.ndarray:
    """The beat times (s) that `drum_input` cuts mini-beats on when it is given no beats."""
    return _beat_track(_mono_44k(audio, sr))


def _beat_track(y: np.ndarray) -> np.ndarray:
    """librosa's beat times; none for audio under one of its onset-strength frames (2048
    samples, which librosa would pad with a warning and track no beats in)."""
    if len(y) < BEAT_TRACK_FFT:
        return np.zeros(0, np.float64)
    _, beats = librosa.beat.beat_track(y=y, sr=SR, units="time")
    return np.asarray(beats, dtype=np.float64).ravel()


def drum_input(
    audio: np.ndarray, sr: float = SR, beats: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The drum model's input for one recording: (patches (M, 120, 120) float32, mini-beat times).

    `beats` are beat times in seconds (from labels, for example). Without them, beats come from
    `librosa.beat.beat_track` on the 44.1 kHz audio; omnizart used madmom, see the module notes.
    Mini-beats run from one beat before the first beat to 7/8 of a beat after the last, as in
    omnizart (see `mini_beat_times`): where the beat tracker stops before the recording ends,
    hits after that are not transcribed. A recording
    with fewer than 2 beats (silence, a steady tone, a fraction of a second) has no grid to cut
    patches on: no patches (0, 120, 120) and no mini-beats, so no drum hits.
    """
    y = _mono_44k(audio, sr)
    duration = len(y) / SR
    beats = _beat_track(y) if beats is None else np.asarray(beats, dtype=np.float64).ravel()
    if len(beats) < 2:
        return np.zeros((0, PATCH_SIZE, PATCH_SIZE), np.float32), np.zeros(0, np.float64)
    mini = mini_beat_times(beats, MINI_BEATS_PER_BEAT, duration=duration)
    gram = drum_cqt(y, SR)
    return drum_patches(gram, drum_frame_times(len(gram)), mini), mini


def drum_labels(drum_hits: np.ndarray, mini_beats: np.ndarray) -> np.ndarray:
    """Mark each drum hit at its nearest mini-beat: float32 (M, 13) of 0/1, classes `DRUM_CLASSES`.

    `drum_hits` is (H, 2): onset in seconds, General MIDI drum note. Notes outside `GM_TO_CLASS`
    are ignored. So are hits more than half an interval before the first mini-beat or after the
    last one. A hit exactly half-way between two mini-beats goes to the later one.
    """
    mini_beats = np.asarray(mini_beats, dtype=np.float64).ravel()
    hits = np.asarray(drum_hits, dtype=np.float64).reshape(-1, 2)
    labels = np.zeros((len(mini_beats), len(DRUM_CLASSES)), np.float32)
    if len(mini_beats) == 0 or len(hits) == 0:
        return labels
    if len(mini_beats) == 1:
        edges = np.array([-np.inf, np.inf])
    else:
        mids = (mini_beats[1:] + mini_beats[:-1]) / 2
        first = mini_beats[0] - (mini_beats[1] - mini_beats[0]) / 2
        last = mini_beats[-1] + (mini_beats[-1] - mini_beats[-2]) / 2
        edges = np.concatenate([[first], mids, [last]])
    lookup = np.full(128, -1, np.int64)
    for note, cls in GM_TO_CLASS.items():
        lookup[note] = cls
    notes = np.rint(hits[:, 1]).astype(np.int64)
    cls = np.where((notes >= 0) & (notes < 128), lookup[np.clip(notes, 0, 127)], -1)
    slot = np.searchsorted(edges, hits[:, 0], side="right") - 1
    keep = (cls >= 0) & (slot >= 0) & (slot < len(mini_beats))
    labels[slot[keep], cls[keep]] = 1.0
    return labels
