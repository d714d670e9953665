"""The chord input: 24-d bass + treble chroma, a librosa-based stand-in for NNLS-chroma.

omnizart's chord model was trained on the McGill Billboard `bothchroma.csv` files. Those hold NNLS
Chroma (Mauch & Dixon, ISMIR 2010; the Vamp plugin behind Chordino) at about 46 ms frames: hop 2048
at 44.1 kHz. At transcription time, omnizart ran the same plugin through `vamp`. That plugin is not
available here and is broken on Apple Silicon. `bass_treble_chroma` rebuilds its pipeline in
numpy/scipy/librosa:

1. **Log-frequency spectrum.** Magnitude CQT (`librosa.cqt`), 36 bins per octave, 255 bins from
   MIDI 20 2/3 to MIDI 105 1/3. Bin 3n+1 sits on note n = MIDI 21 + n. The 84 notes run from A0 to
   G#7, with one spare third-semitone bin each side, as in NNLS-chroma.
2. **Tuning.** One global estimate, worked out as NNLS-chroma does: the phase of the
   frame-averaged energy across each semitone's 3 bins (notes below MIDI 74). The spectrum is then
   shifted by that fraction of a semitone with linear interpolation. A fixed `tuning` in semitones
   can be passed instead.
3. **Silence gate.** Frames whose peak is more than 60 dB under the recording's peak are zeroed.
4. **Whitening.** Subtract a running mean along frequency (a normalised 19-bin Hamming window,
   about 6 semitones) and divide by the running standard deviation. Values at or below the mean
   become 0.
5. **Approximate transcription (NNLS).** For each frame, `scipy.optimize.nnls` fits the spectrum
   with an 84-note dictionary. Each note has 20 partials with amplitude 0.7^(h-1), each a
   raised-cosine pulse 3 bins wide at 36 * log2(h) bins above the fundamental. As in NNLS-chroma,
   the only notes in the fit are those with energy in their own 3 bins.
6. **Chroma.** The note activations are weighted by NNLS-chroma's windows and folded onto 12
   pitch classes. The treble window is a Hann over all 84 notes (peak at MIDI 62-63). The bass
   window is a Hann over MIDI 21-58 (peak at MIDI 39-40). Each half is then max-normalised per
   frame (`norm="max"`).

Pitch-class order is NNLS-chroma's and the Billboard files': **A, Bb, B, C, ..., Ab**
(`CHROMA_PITCH_CLASSES`). The output is `[bass 12, treble 12]`.

How this differs from NNLS-chroma:

* **Spectrum.** NNLS-chroma maps a 16384-point Hann FFT (0.37 s) onto the log-frequency bins with
  cosine kernels. Here librosa's CQT is used: its filters are about 1/3 semitone wide, longer at low
  frequency and shorter at high frequency than that fixed 16384-sample window. Frame centres are
  at `t * hop / sr` (librosa `center=True`). The Vamp host's timestamps may be offset from these by
  up to half a block.
* **Silence gate.** NNLS-chroma zeroes frames whose largest FFT magnitude is below an absolute 2;
  this gate is relative to the recording's peak, so the output does not depend on gain.
* **Edges.** Near the spectrum's edges the running mean and standard deviation reuse the nearest
  full-window value, as NNLS-chroma's "special convolution" does, but NNLS-chroma also zeroes
  2 low and 3 high edge bins; this does not. When the running standard deviation is 0, a bin is
  set to 0; NNLS-chroma keeps the raw value.
* **Tuning.** The estimate covers the whole recording: there is no local-tuning mode and no
  spectral roll-on. `librosa.estimate_tuning` was not used. It measures a different thing (piptrack
  peaks on an STFT). It also goes through numba gufuncs, which cost ~30 s to compile on first
  use and whose on-disk cache is fragile.
* **Normalisation.** NNLS-chroma's max norm for `bothchroma` divides both halves by the *joint*
  maximum. Here each half gets its own by default; `norm="joint_max"` gives NNLS's behaviour and
  `norm="none"` the raw values. omnizart called the plugin with `chromanorm` "none" and also with
  `useNNLS=0`, a linear semitone mapping. Which settings produced the Billboard CSVs is not
  recorded in omnizart.

So the values differ from Billboard's `bothchroma.csv` in scale and detail, though not in layout
or meaning. A model trained on one and run on the other sees a domain shift.

The chord-model input assembly follows omnizart's `chord/features.py` (re-written):

* **Segments.** Take a 21-frame window centred on every 5th frame (zero padding at the ends) and
  flatten it to 504 = 21 * 24 dims (`chord_segments`). Its label is the chord at the centre frame
  (`segment_labels`).
* **Sequences.** Group the segments into sequences of 100 with hop 50. The segment axis is
  zero-padded (chord N = 24, change 0) up to a multiple of 100 (`chord_sequences`). A chord change
  is 1 at the first segment and wherever the chord differs from the segment before.
* **Augmentation.** Transpose 12 ways: roll both chroma halves (`transpose_chroma`) and move
  chord roots, leaving N (24) and X (25) as they are (`transpose_label`).

Two omnizart bugs are not copied. (a) omnizart pads a *further* 100 empty segments when the count
is already a multiple of 100 (it tests `n / 100 == 0`, not `n % 100`). (b) Its `sequence_len`
is 100 for every sequence but the last, which is wrong for the second-to-last when the padding
exceeds 50. Here `lengths` counts the real segments in each sequence.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import librosa
import numpy as np
import scipy.optimize

SR = 44100
HOP = 2048
BINS_PER_SEMITONE = 3
LOWEST_NOTE = 21  # A0
N_NOTES = 84  # A0 .. G#7
N_BINS = BINS_PER_SEMITONE * (N_NOTES + 1)  # 255: MIDI 20 2/3 .. 105 1/3
N_PARTIALS = 20
PARTIAL_DECAY = 0.7
SILENCE_DB = 60.0
_TUNING_NOTES = 53  # notes below MIDI 74 vote on the tuning, as in NNLS-chroma (160 bins)
_WHITEN_WINDOW = 19

CHROMA_PITCH_CLASSES = ("A", "Bb", "B", "C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab")

SEGMENT_WIDTH = 21
SEGMENT_HOP = 5
SEQ_LEN = 100
SEQ_HOP = 50
N_LABEL = 24  # "N", no chord
X_LABEL = 25  # "X", unknown / other chord
N_CHORD_CLASSES = 26


def frame_times(n_frames: int, sr: float = SR, hop: int = HOP) -> np.ndarray:
    """Centre times in seconds of `bass_treble_chroma` frames."""
    return np.arange(n_frames) * (hop / sr)


def _treble_window() -> np.ndarray:
    k = np.arange(N_NOTES) + 0.5
    return np.sin(np.pi * k / N_NOTES) ** 2


def _bass_window() -> np.ndarray:
    k = np.arange(N_NOTES) + 0.5
    width = 112.0 / 3.0  # Hann over A0 .. about MIDI 58
    return np.where(k < width, np.sin(np.pi * k / width) ** 2, 0.0)


@functools.lru_cache(maxsize=4)
def note_dictionary(decay: float = PARTIAL_DECAY, n_partials: int = N_PARTIALS) -> np.ndarray:
    """(N_BINS, 84) harmonic note profiles on the third-of-a-semitone grid."""
    bins = np.arange(N_BINS, dtype=np.float64)
    dictionary = np.zeros((N_BINS, N_NOTES))
    for note in range(N_NOTES):
        for h in range(1, n_partials + 1):
            centre = BINS_PER_SEMITONE * note + 1 + 12 * BINS_PER_SEMITONE * np.log2(h)
            dist = bins - centre
            pulse = np.where(
                np.abs(dist) <= BINS_PER_SEMITONE / 2,
                0.5 + 0.5 * np.cos(2 * np.pi * dist / BINS_PER_SEMITONE),
                0.0,
            )
            dictionary[:, note] += decay ** (h - 1) * pulse
    dictionary.setflags(write=False)
    return dictionary


def log_freq_spectrogram(audio: np.ndarray, sr: float = SR, hop: int = HOP) -> np.ndarray:
    """Untuned magnitude CQT, (T, 255) float64, 3 bins per semitone from MIDI 20 2/3.

    Audio at another sample rate is resampled to 44.1 kHz first; `hop` counts 44.1 kHz samples.
    """
    y = np.asarray(audio, dtype=np.float32)
    if y.ndim > 1:
        y = librosa.to_mono(y)
    if sr != SR:
        y = librosa.resample(y, orig_sr=sr, target_sr=SR)
    with warnings.catch_warnings():
        # short clips: the downsampled low octaves are shorter than librosa's FFT, which warns
        warnings.filterwarnings("ignore", message="n_fft=.* is too large", category=UserWarning)
        gram = librosa.cqt(
            y,
            sr=SR,
            hop_length=hop,
            fmin=librosa.midi_to_hz(LOWEST_NOTE - 1.0 / BINS_PER_SEMITONE),
            n_bins=N_BINS,
            bins_per_octave=12 * BINS_PER_SEMITONE,
            tuning=0.0,
        )
    return np.abs(gram).T.astype(np.float64)


def estimate_tuning(logspec: np.ndarray) -> float:
    """Global tuning deviation in semitones, in (-0.5, 0.5], from the 3 bins around each semitone.

    Takes the angle of the frame-averaged energy at offsets (0, +1/3, -1/3) semitone, folded onto
    a circle (NNLS-chroma's method). A positive result means sharper than A4 = 440 Hz.
    """
    mean = np.asarray(logspec, np.float64).mean(axis=0)
    groups = mean[: BINS_PER_SEMITONE * _TUNING_NOTES].reshape(_TUNING_NOTES, BINS_PER_SEMITONE)
    below, centre, above = groups.sum(axis=0)
    phasor = centre + above * np.exp(2j * np.pi / 3) + below * np.exp(-2j * np.pi / 3)
    if abs(phasor) == 0.0:
        return 0.0
    return float(np.angle(phasor) / (2 * np.pi))


def _shift_bins(logspec: np.ndarray, shift: float) -> np.ndarray:
    """out[:, j] = logspec at fractional bin j + shift (linear interpolation, 0 outside)."""
    whole = int(np.floor(shift))
    frac = shift - whole
    padded = np.pad(logspec, ((0, 0), (2 + abs(whole), 2 + abs(whole))))
    base = 2 + abs(whole) + whole
    n = logspec.shape[1]
    return (1 - frac) * padded[:, base : base + n] + frac * padded[:, base + 1 : base + 1 + n]


def _running(spec: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Weighted running sum along bins; the edges copy the nearest full-window value."""
    half = len(kernel) // 2
    windows = np.lib.stride_tricks.sliding_window_view(spec, len(kernel), axis=1)
    return np.pad(windows @ kernel, ((0, 0), (half, half)), mode="edge")


def whiten(spec: np.ndarray, amount: float = 1.0) -> np.ndarray:
    """Subtract the running mean along frequency and divide by running std ** amount (>= 0)."""
    kernel = np.hamming(_WHITEN_WINDOW)
    kernel /= kernel.sum()
    mean = _running(spec, kernel)
    std = np.sqrt(_running((spec - mean) ** 2, kernel))
    above = (spec > mean) & (std > 0)
    safe = np.where(std > 0, std, 1.0) ** amount
    return np.where(above, (spec - mean) / safe, 0.0)


def semitone_activations(tuned: np.ndarray) -> np.ndarray:
    """Per-frame NNLS fit of the whitened spectrum (T, 255) onto `note_dictionary`: (T, 84)."""
    dictionary = note_dictionary()
    centre_energy = tuned.reshape(len(tuned), N_NOTES + 1, BINS_PER_SEMITONE)
    # note n owns bins 3n, 3n+1, 3n+2 (its centre is 3n+1)
    centre_energy = centre_energy[:, :N_NOTES].sum(axis=2)
    out = np.zeros((len(tuned), N_NOTES))
    for t in np.flatnonzero(centre_energy.max(axis=1) > 0):
        active = np.flatnonzero(centre_energy[t] > 0)
        try:
            out[t, active], _ = scipy.optimize.nnls(dictionary[:, active], tuned[t])
        except RuntimeError:  # iteration limit on a degenerate frame: clipped least squares
            sol = np.linalg.lstsq(dictionary[:, active], tuned[t], rcond=None)[0]
            out[t, active] = np.maximum(sol, 0.0)
    return out


def _max_norm(x: np.ndarray) -> np.ndarray:
    peak = x.max(axis=-1, keepdims=True)
    return x / np.where(peak > 0, peak, 1.0)


def bass_treble_chroma(
    audio: np.ndarray,
    sr: float = SR,
    hop: int = HOP,
    *,
    tuning: float | None = None,
    norm: str = "max",
) -> np.ndarray:
    """NNLS-style [bass 12, treble 12] chroma, float32 (T, 24), pitch classes A .. Ab.

    tuning: deviation from A440 in semitones; None estimates it from the recording.
    norm:   "max" (each half by its own per-frame maximum), "joint_max" (both halves by the
            24-d maximum, NNLS-chroma's `bothchroma`) or "none".
    """
    if norm not in ("max", "joint_max", "none"):
        raise ValueError(f"norm must be 'max', 'joint_max' or 'none', got {norm!r}")
    logspec = log_freq_spectrogram(audio, sr, hop)
    if tuning is None:
        tuning = estimate_tuning(logspec)
    tuned = _shift_bins(logspec, BINS_PER_SEMITONE * float(tuning))
    peak = tuned.max() if tuned.size else 0.0
    if peak <= 0:
        return np.zeros((len(tuned), 24), np.float32)
    tuned[tuned.max(axis=1) < peak * 10 ** (-SILENCE_DB / 20)] = 0.0
    notes = semitone_activations(whiten(tuned))
    octaves = N_NOTES // 12
    treble = (notes * _treble_window()).reshape(len(notes), octaves, 12).sum(axis=1)
    bass = (notes * _bass_window()).reshape(len(notes), octaves, 12).sum(axis=1)
    both = np.concatenate([bass, treble], axis=1)
    if norm == "max":
        both = np.concatenate([_max_norm(bass), _max_norm(treble)], axis=1)
    elif norm == "joint_max":
        both = _max_norm(both)
    return both.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# chord-model input assembly (omnizart chord/features.py)


def transpose_chroma(chroma: np.ndarray, shift: int) -> np.ndarray:
    """Transpose (..., 24) [bass, treble] chroma up by `shift` semitones (rolls both halves)."""
    chroma = np.asarray(chroma)
    bass = np.roll(chroma[..., :12], shift, axis=-1)
    treble = np.roll(chroma[..., 12:24], shift, axis=-1)
    return np.concatenate([bass, treble], axis=-1)


def transpose_label(index, shift: int):
    """Transpose chord class(es) up by `shift` semitones: 0-11 major, 12-23 minor; 24/25 fixed."""
    idx = np.asarray(index)
    out = np.where(
        idx < 12, (idx + shift) % 12, np.where(idx < 24, (idx - 12 + shift) % 12 + 12, idx)
    ).astype(idx.dtype)
    return int(out) if np.ndim(index) == 0 else out


def chord_segments(
    chroma: np.ndarray, segment_width: int = SEGMENT_WIDTH, segment_hop: int = SEGMENT_HOP
) -> np.ndarray:
    """21-frame windows centred on frames 0, 5, 10, ... (zero-padded), flattened: (S, 21 * 24).

    The flattening is frame-major: entry [s, f * 24 + d] is dim d of frame (5s - 10 + f).
    """
    chroma = np.asarray(chroma, np.float32)
    half = segment_width // 2
    padded = np.pad(chroma, ((half, half), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, segment_width, axis=0)
    windows = windows[::segment_hop].transpose(0, 2, 1)  # (S, width, dims)
    return np.ascontiguousarray(windows.reshape(len(windows), -1))


def segment_labels(frame_labels: np.ndarray, segment_hop: int = SEGMENT_HOP) -> np.ndarray:
    """The chord at each segment's centre frame: frame_labels[::segment_hop]."""
    return np.asarray(frame_labels)[::segment_hop]


class ChordSequences(NamedTuple):
    features: np.ndarray  # (N, seq_len, D) float32
    chords: np.ndarray | None  # (N, seq_len) int32, pad_label where padded
    changes: np.ndarray | None  # (N, seq_len) int32, 0 where padded
    lengths: np.ndarray  # (N,) int32 count of real segments in each sequence


def chord_sequences(
    segments: np.ndarray,
    labels: np.ndarray | None = None,
    seq_len: int = SEQ_LEN,
    hop: int = SEQ_HOP,
    pad_label: int = N_LABEL,
) -> ChordSequences:
    """Sequences of `seq_len` segments every `hop`, zero-padded to a multiple of seq_len.

    labels: per-segment chord classes (S,), or None at inference (chords/changes then None).
    """
    segments = np.asarray(segments, np.float32)
    n = len(segments)
    total = max(1, -(-n // seq_len)) * seq_len
    n_seqs = (total - seq_len) // hop + 1
    starts = np.arange(n_seqs) * hop
    index = starts[:, None] + np.arange(seq_len)[None, :]
    padded = np.concatenate([segments, np.zeros((total - n, *segments.shape[1:]), np.float32)])
    lengths = np.clip(n - starts, 0, seq_len).astype(np.int32)
    if labels is None:
        return ChordSequences(padded[index], None, None, lengths)
    labels = np.asarray(labels).astype(np.int32)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} segments")
    change = np.ones(n, np.int32)
    change[1:] = (labels[1:] != labels[:-1]).astype(np.int32)
    chords = np.concatenate([labels, np.full(total - n, pad_label, np.int32)])
    changes = np.concatenate([change, np.zeros(total - n, np.int32)])
    return ChordSequences(padded[index], chords[index], changes[index], lengths)
