"""vocal_contour targets: the reference f0 as a one-hot roll on the padded 384-row CFP axis.

omnizart (``vocal_contour/labels.py`` L34-45, ``vocal_contour/app.py`` L374-393):

* The label is a ``(T, 352)`` binary roll with a 1 at row ``round((note - 21) * 4)`` (CFP
  grid fc = 27.5 Hz, 48 bins per octave) for frames ``round(start/hop) .. round(end/hop) - 1``
  of each note.
* The loader pads the roll, like the Z feature, from 352 to 384 rows **centred**: 16 zero rows
  below and 16 above (``pad_bottom = (384 - 352) // 2``), so CFP row ``i`` is row ``i + 16``
  of the model's axis. Then ``to_categorical`` one-hot encodes it to ``(T, 384, 2)``: channel
  1 is the roll, channel 0 is ``1 - roll``.

Here (`contour_bins`, `window_targets`) the same targets are built from an f0 contour.
Deviations from omnizart:

* Layout: by default the 32 zero rows go **above** the CFP rows (``PAD_LOW = 0``: CFP row ``i``
  is model row ``i``; `decode_contour` searches rows 0..351), the layout the task's input
  padding uses. omnizart's centred layout is ``pad_low=OMNIZART_PAD_LOW`` (16) in `pad_rows`,
  `window_targets` and `decode_contour` together; the feature and the targets must always be
  padded the same way (`pad_rows`). For a model trained from scratch the two layouts differ
  only in which edge gets the extra zero context.
* The reference f0 is sampled at each CFP frame's centre, ``(j+1) * hop`` (`jaxmir.melody`).
  omnizart indexes frames by ``round(t / hop)``, i.e. as if frame ``j`` were centred at
  ``j * hop``, one frame (20 ms) off the CFP's timing.
* The row is the nearest row of the f0 itself (quarter-semitone resolution). omnizart's MIR-1K
  labels round the pitch to whole semitones first, drop segments shorter than 50 ms and drop
  the last segment (``constants/datasets.py`` L551-576); nothing of that is copied.
* f0 outside the 352 CFP rows is unvoiced (omnizart would index out of range).
"""

from __future__ import annotations

import numpy as np

from jaxmir.data.features.cfp import VOCAL_CONTOUR, CFPParams
from jaxmir.melody import reference_bins

#: Rows of the model's frequency axis: the 352 CFP rows zero-padded to 384, as omnizart.
N_BINS = 384
#: CFP rows (352 for `VOCAL_CONTOUR`).
N_CFP_BINS = VOCAL_CONTOUR.n_bins
#: Zero rows below the CFP rows on the 384-row axis: 0, all padding at the top (see above).
PAD_LOW = 0
#: omnizart's layout: the padding centred, 16 rows below and 16 above.
OMNIZART_PAD_LOW = (N_BINS - N_CFP_BINS) // 2


def pad_rows(x: np.ndarray, pad_low: int = PAD_LOW, n_rows: int = N_BINS) -> np.ndarray:
    """Zero-pad axis 1 of ``x (T, F, ...)`` to ``n_rows`` rows, ``pad_low`` of them below and
    the rest above (omnizart pads the Z feature and the roll from 352 to 384 rows with
    ``pad_low=OMNIZART_PAD_LOW``)."""
    x = np.asarray(x)
    pad_high = n_rows - x.shape[1] - pad_low
    if pad_high < 0 or pad_low < 0:
        raise ValueError(f"cannot pad {x.shape[1]} rows to {n_rows} with {pad_low} below")
    widths = [(0, 0), (pad_low, pad_high)] + [(0, 0)] * (x.ndim - 2)
    return np.pad(x, widths)


def contour_bins(f0: np.ndarray, n_frames: int, params: CFPParams = VOCAL_CONTOUR) -> np.ndarray:
    """The reference f0 ``(N, 2)`` (time s, Hz) at the ``n_frames`` CFP frame times, as CFP rows.

    int32 ``(n_frames,)``: the nearest row (``round((midi - 21) * 4)`` on the default grid), or
    -1 where unvoiced, outside the annotation, or outside rows ``0 .. params.n_bins - 1``.
    """
    return reference_bins(f0, n_frames, params)


def window_targets(
    bins: np.ndarray, n_cfp_bins: int = N_CFP_BINS, pad_low: int = PAD_LOW, blur: float = 0.0
) -> np.ndarray:
    """float32 ``(T, 384, 2)`` targets of CFP rows ``bins (T,)`` (-1 unvoiced).

    Channel 1 is the one-hot roll (1 at row ``bins[t] + pad_low``), channel 0 is ``1 -
    channel 1``, so the two channels sum to 1 everywhere and padded rows are ``[1, 0]``. Rows
    outside ``0 .. n_cfp_bins - 1`` count as unvoiced. With ``blur`` > 0 (rows), channel 1 is
    a Gaussian bump of that standard deviation, 1 at the voiced row, cut below 0.01 (not in
    omnizart: neighbouring rows are a quarter semitone apart, within mir_eval's 50-cent
    tolerance, and a one-hot target punishes them as hard as a wrong octave).
    """
    bins = np.asarray(bins, np.int64).reshape(-1)
    roll = np.zeros((len(bins), N_BINS), np.float32)
    voiced = (bins >= 0) & (bins < n_cfp_bins)
    if blur > 0:
        rows = np.arange(N_CFP_BINS)
        bump = np.exp(-0.5 * ((rows[None, :] - bins[voiced, None]) / blur) ** 2)
        bump[bump < 0.01] = 0.0
        roll[np.flatnonzero(voiced), pad_low : pad_low + N_CFP_BINS] = bump[:, :n_cfp_bins]
    else:
        roll[np.flatnonzero(voiced), bins[voiced] + pad_low] = 1.0
    return np.stack([1.0 - roll, roll], axis=-1)
