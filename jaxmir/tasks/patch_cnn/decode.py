"""patch_cnn decoding: one f0 per frame from the melody posteriors of its peak patches.

omnizart (``patch_cnn/inference.py`` L4-59, default ``threshold`` 0.05 and ``max_method``
"posterior" from ``defaults/patch_cnn.yaml``): patches whose posterior ``pred[:, 1]`` is
``> threshold`` are candidates; in each frame the candidate with the highest posterior gives
the row, and the frame's f0 is that row's centre frequency (``cenf[row]``); frames without a
candidate are 0.

Bugs not copied:

* The frame loop runs over ``range(number of candidates)``, not over the frames, so when there
  are fewer candidates than frames the later frames are never decoded; and the contour length is
  ``max(row, frame) + 1`` rather than the frame count. Here the output has exactly
  ``n_frames`` entries.
* A tie for the best posterior in a frame makes omnizart's ``int(np.where(...)[0])`` fail;
  here the lowest row wins.
* Rows 0 and 1 were treated as unvoiced (``cont > 1``); peaks are never there (patches need
  ``row >= patch_size // 2``), so every row is converted here.
"""

from __future__ import annotations

import numpy as np

from jaxmir.data.features.cfp import PATCH_CNN, CFPParams
from jaxmir.melody import bin_to_hz


def decode_patches(
    probs: np.ndarray,
    frame_idx: np.ndarray,
    bin_idx: np.ndarray,
    n_frames: int,
    params: CFPParams = PATCH_CNN,
    threshold: float = 0.05,
    guess: bool = True,
) -> np.ndarray:
    """f0 (Hz, 0 = unvoiced) ``(n_frames,)`` from per-patch melody posteriors. With ``guess``, a
    frame whose best patch is not above the threshold gets minus that patch's Hz (unvoiced, with
    a pitch guess: mir_eval's convention); frames without any patch stay 0.

    ``probs`` is ``(n,)`` (the melody posterior) or ``(n, 2)`` (softmax; column 1 is used).
    ``frame_idx``/``bin_idx`` ``(n,)`` locate the patches. Per frame, the patch with the highest
    posterior ``> threshold`` gives the row (ties: lowest row).
    """
    p = np.asarray(probs, np.float64)
    if p.ndim == 2:
        p = p[:, 1]
    p = p.reshape(-1)
    frame_idx = np.asarray(frame_idx, np.int64).reshape(-1)
    bin_idx = np.asarray(bin_idx, np.int64).reshape(-1)
    if not (p.shape == frame_idx.shape == bin_idx.shape):
        raise ValueError(
            f"probs, frame_idx, bin_idx differ: {p.shape}, {frame_idx.shape}, {bin_idx.shape}"
        )
    if len(frame_idx) and (frame_idx.min() < 0 or frame_idx.max() >= n_frames):
        raise ValueError(f"frame_idx out of range for {n_frames} frames")
    rows = np.full(int(n_frames), -1, np.int64)
    best_p = np.full(int(n_frames), -np.inf)
    if len(frame_idx):
        order = np.lexsort((bin_idx, -p, frame_idx))  # by frame, then best posterior, lowest row
        first = np.unique(frame_idx[order], return_index=True)[1]
        best = order[first]
        rows[frame_idx[best]] = bin_idx[best]
        best_p[frame_idx[best]] = p[best]
    hz = bin_to_hz(rows, params)
    voiced = best_p > threshold
    return np.where(voiced, hz, -hz if guess else 0.0)
