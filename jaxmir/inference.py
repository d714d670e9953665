"""Windowed prediction over whole pieces, shared by every frame-based task.

A piece of any length is cut into fixed-size windows (one jit compile per window shape and
batch size), the model runs on batches of windows, and the window outputs are stitched back with
per-frame weights: `centre` keeps each window's centre half (omnizart beat's scheme: a BLSTM's
edges see little context), `average` averages every overlapping window (omnizart music).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large |x|."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float32)))


def window_starts(n_frames: int, timesteps: int, hop: int, front_pad: int) -> np.ndarray:
    """Starts (in piece frames, may be negative) of windows covering [0, n_frames)."""
    last = max(n_frames - timesteps + front_pad, 0)
    return np.arange(-front_pad, last + hop, hop)


def stitch_weights(timesteps: int, mode: str) -> np.ndarray:
    if mode == "average":
        return np.ones(timesteps, np.float32)
    if mode == "centre":
        w = np.full(timesteps, 1e-3, np.float32)  # edges count only where nothing else covers
        q = timesteps // 4
        w[q : timesteps - q] = 1.0
        return w
    raise ValueError(f"unknown stitch mode {mode!r} (centre, average)")


def predict_piece(
    predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    *,
    timesteps: int,
    batch_size: int,
    mode: str = "centre",
) -> np.ndarray:
    """Run `predict` (batch of windows (B, timesteps, ...) -> (B, timesteps, C)) over a piece.

    Windows overlap by half; the last batch is zero-padded to `batch_size` so the compiled
    function is reused. Returns (n_frames, C) float32.
    """
    n = len(x)
    hop = max(timesteps // 2, 1)
    front = timesteps // 4 if mode == "centre" else 0
    starts = window_starts(n, timesteps, hop, front)
    weights = stitch_weights(timesteps, mode)
    out = None
    norm = np.zeros(n, np.float32)
    for b in range(0, len(starts), batch_size):
        chunk = starts[b : b + batch_size]
        windows = np.zeros((batch_size, timesteps, *x.shape[1:]), np.float32)
        for i, s in enumerate(chunk):
            lo, hi = max(s, 0), min(s + timesteps, n)
            windows[i, lo - s : hi - s] = x[lo:hi]
        y = np.asarray(predict(windows), np.float32)
        if out is None:
            out = np.zeros((n, *y.shape[2:]), np.float32)
        for i, s in enumerate(chunk):
            lo, hi = max(s, 0), min(s + timesteps, n)
            w = weights[lo - s : hi - s]
            out[lo:hi] += y[i, lo - s : hi - s] * w.reshape(-1, *([1] * (y.ndim - 2)))
            norm[lo:hi] += w
    return out / np.maximum(norm, 1e-9).reshape(-1, *([1] * (out.ndim - 1)))
