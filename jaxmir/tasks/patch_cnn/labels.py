"""patch_cnn targets: a soft "this peak is the melody" label per CFP-Z patch.

omnizart (``patch_cnn/app.py`` ``extract_label``, L277-326 at HEAD 8683e47):

* For each note of the reference (MIR-1K pitch, rounded to whole semitones, segments under
  50 ms and the last segment dropped), the target row is the nearest central frequency in
  linear Hz, ``argmin |cenf - midi_to_hz(note)|``.
* Every patch in the frames of the note (frames ``round(start/hop) .. round(end/hop)``, found
  by the nearest frame in the patch list) gets ``l = 1 / (1 + |row - target|)``, the distance
  in CFP rows with **no cut-off**; later notes overwrite earlier ones. Patches in unvoiced
  frames get 0.
* The ``(2,)`` target is ``[1 - l, l]``, trained with categorical cross-entropy against the
  model's 2-way softmax (`two_class_targets`).

Here `patch_targets` gives ``l`` from a per-frame reference row (`patch_ref_bins`: the f0 at
each CFP frame's centre, nearest row in log frequency). Deviations from omnizart:

* The reference is the f0 contour itself at each frame centre ``(j+1) * hop``, not
  semitone-rounded notes indexed at ``round(t / hop)`` (one frame off the CFP timing).
* The nearest row is taken in log frequency (`jaxmir.melody.hz_to_bin`), not linear Hz; the
  two differ only right at the midpoint between rows.
* f0 outside the 174 CFP rows is unvoiced.
"""

from __future__ import annotations

import numpy as np

from jaxmir.data.features.cfp import PATCH_CNN, CFPParams
from jaxmir.melody import reference_bins


def patch_ref_bins(f0: np.ndarray, n_frames: int, params: CFPParams = PATCH_CNN) -> np.ndarray:
    """The reference f0 ``(N, 2)`` (time s, Hz) at the ``n_frames`` CFP frame times, as rows of
    the patch CNN's 174-row grid (fc 80 Hz). int32, -1 unvoiced or out of range."""
    return reference_bins(f0, n_frames, params)


def patch_targets(frame_idx: np.ndarray, bin_idx: np.ndarray, ref_bins: np.ndarray) -> np.ndarray:
    """float32 ``(n,)`` soft melody labels ``1 / (1 + |bin_idx - ref_bins[frame_idx]|)``.

    ``frame_idx``/``bin_idx`` locate each patch (`jaxmir.data.features.vocal.extract_patches`);
    ``ref_bins (T,)`` is the reference row per frame, -1 unvoiced (`patch_ref_bins`). Patches in
    unvoiced frames get 0. The distance is in CFP rows, with no cut-off, as in omnizart.
    """
    frame_idx = np.asarray(frame_idx, np.int64).reshape(-1)
    bin_idx = np.asarray(bin_idx, np.int64).reshape(-1)
    ref_bins = np.asarray(ref_bins, np.int64).reshape(-1)
    if frame_idx.shape != bin_idx.shape:
        raise ValueError(f"frame_idx and bin_idx differ: {frame_idx.shape} vs {bin_idx.shape}")
    if len(frame_idx) and (frame_idx.min() < 0 or frame_idx.max() >= len(ref_bins)):
        raise ValueError(f"frame_idx out of range for {len(ref_bins)} reference frames")
    ref = ref_bins[frame_idx]
    soft = 1.0 / (1.0 + np.abs(bin_idx - ref))
    return np.where(ref >= 0, soft, 0.0).astype(np.float32)


def two_class_targets(labels: np.ndarray) -> np.ndarray:
    """omnizart's ``(n, 2)`` target ``[1 - l, l]`` of soft labels ``l (n,)``, float32."""
    labels = np.asarray(labels, np.float32).reshape(-1)
    return np.stack([1.0 - labels, labels], axis=-1)
