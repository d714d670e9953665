"""f0 (melody contour) helpers shared by the ``vocal_contour`` and ``patch_cnn`` tasks.

Conventions:

* A contour is an array ``(T, 2)`` of (time in s, f0 in Hz), with ``0`` Hz (or any value
  <= 0) meaning unvoiced, as in ``mir_eval.melody``.
* CFP frame ``j`` is centred on sample ``hop*(j+1)``, i.e. at ``(j+1)*hop_s`` seconds
  (`jaxmir.data.features.cfp`); `frame_times` gives these times.
* Row ``i`` of a CFP's log-frequency axis is centred on ``params.central_freqs[i]``
  ``= fc * 2**(i/bins_per_octave)``. The grid is extended geometrically beyond the CFP's rows
  when more rows are asked for (vocal_contour's 384-row padded axis; `bin_freqs` ``start`` for
  rows below the CFP's first).
* `hz_to_bin` is the nearest row in log frequency: ``round(bpo*log2(hz/fc))``. With
  fc = 27.5 Hz and 48 bins per octave this is omnizart's vocal_contour rule
  ``round((midi - 21) * 4)``. omnizart's patch_cnn picks the nearest row in *linear* Hz
  (``argmin |cenf - hz|``); the two differ only for an f0 within a tiny fraction of a row of
  the midpoint between two rows.
* `f0_at` samples a reference onto frame times with ``mir_eval.melody.resample_melody_series``,
  the resampling mir_eval's melody metrics use (linear in Hz between voiced samples, voicing
  held from the previous sample). Frames before the first or after the last annotated time are
  unvoiced.

The writers (`write_f0_csv`, `plot_f0`, `write_melody`) are the only I/O here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxmir.data.features.cfp import CFPParams


def frame_times(n_frames: int, hop_s: float) -> np.ndarray:
    """Centre times (s) of ``n_frames`` CFP frames: ``(j+1) * hop_s`` for j = 0 .. n_frames-1."""
    return (np.arange(int(n_frames), dtype=np.float64) + 1.0) * float(hop_s)


def bin_freqs(params: CFPParams, n_bins: int | None = None, start: int = 0) -> np.ndarray:
    """Frequency (Hz) of ``n_bins`` consecutive log-frequency rows, the first being grid row
    ``start``.

    Rows inside the CFP (``0 <= row < params.n_bins``) take ``params.central_freqs`` exactly.
    Rows outside (more rows than the CFP has, e.g. vocal_contour's 384-row axis, or a negative
    ``start``, e.g. ``-16`` for omnizart's centred padding of that axis) extend the geometric
    grid ``fc * 2**(row/bins_per_octave)``.
    """
    n = params.n_bins if n_bins is None else int(n_bins)
    rows = np.arange(n, dtype=np.int64) + int(start)
    out = params.fc * np.power(2.0, rows / float(params.bins_per_octave))
    cf = np.asarray(params.central_freqs[: params.n_bins], np.float64)
    inside = (rows >= 0) & (rows < params.n_bins)
    out[inside] = cf[rows[inside]]
    return out


def hz_to_bin(hz: np.ndarray | float, params: CFPParams) -> np.ndarray:
    """The nearest row (in log frequency) of each f0 on the CFP grid, as int64.

    ``-1`` for ``hz <= 0`` (unvoiced), non-finite values and f0 below the grid (row < 0). Rows
    at or above ``params.n_bins`` are returned as they are (the grid extends upward); callers
    that need a CFP row check the range.
    """
    hz = np.asarray(hz, np.float64)
    ok = np.isfinite(hz) & (hz > 0)
    safe = np.where(ok, hz, params.fc)
    rows = np.rint(params.bins_per_octave * np.log2(safe / params.fc)).astype(np.int64)
    return np.where(ok & (rows >= 0), rows, -1)


def bin_to_hz(bins: np.ndarray | int, params: CFPParams) -> np.ndarray:
    """The centre frequency (Hz) of each row (float64); ``0`` for negative rows (unvoiced)."""
    bins = np.asarray(bins, np.int64)
    if bins.size == 0:
        return np.zeros(bins.shape, np.float64)
    top = max(params.n_bins, int(bins.max()) + 1)
    grid = bin_freqs(params, top)
    return np.where(bins >= 0, grid[np.clip(bins, 0, top - 1)], 0.0)


def f0_at(f0: np.ndarray, times: np.ndarray) -> np.ndarray:
    """A reference contour ``(N, 2)`` (time s, Hz; <= 0 unvoiced) sampled at ``times``: Hz, 0 =
    unvoiced.

    Uses ``mir_eval.melody.resample_melody_series``: f0 is linear between voiced samples and
    voicing is held from the previous sample (mir_eval's zero-order rule). Times before the
    first or after the last sample are unvoiced. An empty contour gives all zeros, and a
    one-sample contour is voiced only at its own time. Rows are sorted by time first. mir_eval
    warns when the time grid is not uniform (silences must be 0 Hz rows, not missing rows).
    """
    import mir_eval

    times = np.asarray(times, np.float64)
    out = np.zeros(times.shape, np.float64)
    f0 = np.asarray(f0, np.float64).reshape(-1, 2)
    f0 = f0[np.isfinite(f0[:, 0])]
    if len(f0) == 0 or times.size == 0:
        return out
    f0 = f0[np.argsort(f0[:, 0], kind="stable")]
    t = f0[:, 0]
    hz = np.where(np.isfinite(f0[:, 1]) & (f0[:, 1] > 0), f0[:, 1], 0.0)
    if len(f0) == 1:
        return np.where(np.isclose(times, t[0], rtol=0.0, atol=1e-9), hz[0], 0.0)
    inside = (times >= t[0]) & (times <= t[-1])
    if not inside.any():
        return out
    freq, voicing = mir_eval.melody.resample_melody_series(
        t, hz, (hz > 0).astype(np.float64), times[inside]
    )
    out[inside] = np.where(np.asarray(voicing) > 0, freq, 0.0)
    return out


def reference_bins(f0: np.ndarray, n_frames: int, params: CFPParams) -> np.ndarray:
    """The reference f0 at the ``n_frames`` CFP frame times as CFP rows, int32.

    ``-1`` where unvoiced or outside the CFP's rows ``0 .. params.n_bins - 1``.
    """
    hz = f0_at(f0, frame_times(n_frames, params.hop_s))
    bins = hz_to_bin(hz, params)
    return np.where((bins >= 0) & (bins < params.n_bins), bins, -1).astype(np.int32)


def write_f0_csv(path: str | Path, times: np.ndarray, hz: np.ndarray) -> Path:
    """Write a contour as CSV: header ``time,frequency``, time with 6 decimals, Hz with 3 (0 for
    unvoiced). Returns the path."""
    times = np.asarray(times, np.float64).reshape(-1)
    hz = np.asarray(hz, np.float64).reshape(-1)
    if times.shape != hz.shape:
        raise ValueError(f"times and hz differ in length: {times.shape} vs {hz.shape}")
    hz = np.where(np.isfinite(hz) & (hz > 0), hz, 0.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(
        path,
        np.stack([times, hz], axis=1),
        fmt=("%.6f", "%.3f"),
        delimiter=",",
        header="time,frequency",
        comments="",
    )
    return path


def _hz_ticks(freqs: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Row positions and labels of round frequencies (1, 2, 5 x 10^k Hz) within ``freqs``."""
    cands = np.array([m * 10.0**k for k in range(0, 6) for m in (1, 2, 5)])
    cands = cands[(cands >= freqs[0]) & (cands <= freqs[-1])]
    rows = np.interp(np.log2(cands), np.log2(freqs), np.arange(len(freqs)))
    return rows, [f"{c:g}" for c in cands]


def plot_f0(
    path: str | Path,
    spec: np.ndarray,
    times: np.ndarray,
    hz: np.ndarray,
    freqs: np.ndarray,
    title: str = "",
) -> Path:
    """Save a PNG of ``spec (T, F)`` (log magnitude, 80 dB range) with the contour's voiced
    frames drawn over it. Returns the path.

    ``freqs (F,)`` is the Hz of each row of ``spec`` (increasing, e.g. `bin_freqs`); rows are
    drawn evenly spaced and labelled in Hz, and the contour is placed on the same row axis (log
    interpolation of ``freqs``). ``times (T,)`` are the frame times of both ``spec`` and ``hz``.
    A bare ``matplotlib.figure.Figure`` on the Agg canvas is used, so no pyplot state is
    touched and nothing is left open.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    spec = np.abs(np.asarray(spec, np.float64))
    times = np.asarray(times, np.float64).reshape(-1)
    hz = np.asarray(hz, np.float64).reshape(-1)
    freqs = np.asarray(freqs, np.float64).reshape(-1)
    if spec.ndim != 2 or spec.shape[1] != len(freqs):
        raise ValueError(f"spec must be (T, {len(freqs)}), got {spec.shape}")
    if len(times) != len(hz):
        raise ValueError(f"times and hz differ in length: {len(times)} vs {len(hz)}")
    peak = spec.max() if spec.size else 0.0
    db = 20.0 * np.log10(np.maximum(spec, max(peak, 1e-12) * 1e-4) / max(peak, 1e-12))

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    t0 = float(times[0]) if len(times) else 0.0
    t1 = float(times[-1]) if len(times) > 1 else t0 + 1.0
    half = 0.5 * (t1 - t0) / max(len(times) - 1, 1)
    ax.imshow(
        db.T if db.size else np.zeros((len(freqs), 1)),
        origin="lower",
        aspect="auto",
        cmap="magma",
        interpolation="nearest",
        extent=(t0 - half, t1 + half, -0.5, len(freqs) - 0.5),
    )
    voiced = np.isfinite(hz) & (hz > 0)
    if voiced.any() and len(freqs) > 1:
        rows = np.interp(np.log2(hz[voiced]), np.log2(freqs), np.arange(len(freqs)))
        y = np.full(len(hz), np.nan)
        y[voiced] = rows  # NaN breaks the line at unvoiced frames
        ax.plot(times, y, color="cyan", linewidth=1.0)
    ticks, labels = _hz_ticks(freqs)
    ax.set_yticks(ticks, labels)
    ax.set_ylim(-0.5, len(freqs) - 0.5)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz)")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    fig.clear()
    return path


def write_melody(
    outdir: str | Path,
    stem: str,
    times: np.ndarray,
    hz: np.ndarray,
    *,
    spec: np.ndarray | None = None,
    freqs: np.ndarray | None = None,
) -> list[Path]:
    """A transcription's files: ``{stem}_f0.csv`` (`write_f0_csv`, omnizart's file name) and, when
    ``spec`` is given, ``{stem}_f0.png`` (`plot_f0`).

    ``spec`` is the feature ``(T, F)``; a ``(T, F, C)`` one is drawn from channel 0 (Z for a
    CFP). ``freqs (F,)`` is the Hz of its rows (`bin_freqs`), required with ``spec``.
    """
    outdir = Path(outdir)
    paths = [write_f0_csv(outdir / f"{stem}_f0.csv", times, hz)]
    if spec is not None:
        if freqs is None:
            raise ValueError("write_melody: freqs is needed to plot spec")
        spec = np.asarray(spec)
        if spec.ndim == 3:
            spec = spec[..., 0]
        paths.append(plot_f0(outdir / f"{stem}_f0.png", spec, times, hz, freqs, title=stem))
    return paths
