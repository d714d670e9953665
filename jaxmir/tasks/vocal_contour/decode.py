"""vocal_contour decoding: f0 (Hz) per frame from the model's ``(T, 384, 2)`` posteriors.

omnizart (``vocal_contour/inference.py`` L8-54):

* The Z feature is padded to 384 rows (16 below, 16 above, ``app.py`` L374-380) and by ``timestep - 1`` frames at
  both ends; every window of ``timestep`` frames (hop 1 frame) is predicted.
* Each prediction goes through a sigmoid **twice** (``1/(1+exp(-expit(pred)))``, so every value
  lands in (0.5, 0.73)), and the predictions of overlapping windows are **summed**, not
  averaged (frames near the ends get fewer terms).
* Padding is removed and channel 1 is kept, giving ``(T, 352)``. Values not above the mean of
  the per-frame maxima are set to 0. A frame with anything left is voiced, at
  ``midi_to_hz(argmax / 4 + 21)``, i.e. the centre of the argmax CFP row.

Here the caller applies one sigmoid and averages overlapping windows (the double sigmoid and the
unnormalised sum are bugs not copied), and `decode_contour` takes the per-frame argmax over the
352 CFP rows of channel 1: rows ``pad_low .. pad_low + 351`` of the 384, with ``pad_low`` the
layout of `jaxmir.tasks.vocal_contour.labels` (0 by default; omnizart's 16 is
``OMNIZART_PAD_LOW``). A frame is voiced when its maximum is above ``threshold`` (0.5 by
default, the natural cut for a sigmoid posterior), or, with ``threshold=None``, above the mean
of the per-frame maxima (omnizart's rule: it voices every frame whose maximum is above
average, however confident the model is overall). Ties in the argmax go to the lowest row
(``np.argmax``).
"""

from __future__ import annotations

import numpy as np

from jaxmir.data.features.cfp import VOCAL_CONTOUR, CFPParams
from jaxmir.melody import bin_to_hz
from jaxmir.tasks.vocal_contour.labels import PAD_LOW


def decode_contour(
    probs: np.ndarray,
    params: CFPParams = VOCAL_CONTOUR,
    threshold: float | None = 0.5,
    pad_low: int = PAD_LOW,
    guess: bool = True,
) -> np.ndarray:
    """f0 (Hz; 0 or, with ``guess``, minus the best row's Hz = unvoiced) ``(T,)`` from posteriors ``(T, 384, 2)`` (or channel 1 alone,
    ``(T, 384)``).

    Only rows ``pad_low .. pad_low + params.n_bins - 1`` (the CFP rows) are searched. A frame is
    voiced when its best posterior is ``> threshold``; ``threshold=None`` uses omnizart's rule
    (``>`` the mean of the per-frame maxima).
    """
    p = np.asarray(probs, np.float64)
    if p.ndim == 3:
        p = p[..., 1]
    if p.ndim != 2 or p.shape[1] < pad_low + params.n_bins:
        raise ValueError(f"probs must be (T, >= {pad_low + params.n_bins}[, 2]), got {probs.shape}")
    p = p[:, pad_low : pad_low + params.n_bins]
    if len(p) == 0:
        return np.zeros(0, np.float64)
    rows = np.argmax(p, axis=1)
    peak = p[np.arange(len(p)), rows]
    cut = float(np.mean(peak)) if threshold is None else float(threshold)
    hz = bin_to_hz(rows, params)
    return np.where(peak > cut, hz, -hz if guess else 0.0)
