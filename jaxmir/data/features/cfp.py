"""Combined frequency and periodicity (CFP) features, as omnizart computes them, in numpy and JAX.

For each frame the CFP stack computes:

* ``Spec``: the magnitude spectrum raised to ``g[0]``.
* ``Ceps``: a generalised cepstrum. Take the real FFT of ``Spec`` divided by sqrt(N), ReLU,
  zero the first and last ``round(fs*tc)`` quefrency rows, then raise to ``g[1]``.
* ``GCoS``: the generalised cepstrum of spectrum. Take the FFT of ``Ceps`` the same way, zero
  ``round(fc/fr)`` rows at both ends, then raise to ``g[2]``.
* ``Z = GCoS * Ceps``.

Spec and GCoS are mapped onto a log-frequency axis by triangular filters centred at
``fc * 2**(i/bins_per_octave)`` below ``1/tc``. Ceps is mapped onto the same axis through
quefrency ``q = 1/f``. The output is ``(T, n_bins, 4)`` with the channels in omnizart's order
``[Z, Spec, GCoS, Ceps]`` (see `CHANNELS`).

The frames and mappings reproduce omnizart's one-process (unsliced) ``_extract_cfp`` exactly:

* Frame ``j`` is centred on sample ``hop*(j+1)`` (1-based), so there are
  ``T = ceil(len/hop) - 1`` frames (`n_frames`).
* omnizart's window indexing starts one sample early. The samples it uses are
  ``h[-1], h[0], ..., h[win-3]`` of the Blackman-Harris window.
* Each frame is divided by the norm of the part of the window it actually uses.
* The last audio sample is never used.
* The frequency grid is ``fs*linspace(0, .5, round(N/2))``.
* The band edges are rounded half to even, as Python does.
* Row 0 of every channel is always zero.

It is re-written, not ported:

* The cepstral FFTs of a real, even spectrum become one real FFT of half the spectrum (a
  DCT-I). The 1/sqrt(N) factors and the zeroed rows are folded into small weight vectors.
* Only the rows that are used are kept.
* The triangular filterbanks are sparse (row, column, weight) tables, built vectorised and
  cached per parameter set.
* Frames are processed in chunks, so memory stays bounded by the chunk size.

Deviations from omnizart (bugs not copied):

* A zero cut-off index (``round(fc/fr) == 0``, as in omnizart's harmonic CFP with fc=1, fr=2)
  zeroes nothing. omnizart's ``X[-0:] = 0`` instead zeroes the whole GCoS.
* Layers with ``g == 0`` (omnizart's log branch) are rejected. No preset uses them.
* The long-audio path that omnizart runs by default slices the audio into 2000-frame pieces
  and loses one frame per slice boundary (2998 frames for 60 s). Here there is always exactly
  ``ceil(len/hop) - 1`` frames (2999 for 60 s).
* Audio is not resampled here. Pass it at ``params.fs`` (see `jaxmir.data.audio.load_audio`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

try:  # pocketfft C++ (native DCT-I, fast float32) and CSR filterbanks; numpy is the fallback
    import scipy.fft as _sfft
    import scipy.sparse as _sparse
except ImportError:  # pragma: no cover - scipy is a declared dependency
    _sfft = _sparse = None

#: omnizart's channel names -> index in the last axis of a CFP feature.
CHANNELS: dict[str, int] = {"Z": 0, "Spec": 1, "GCoS": 2, "Ceps": 3}

#: Lowest note of the harmonic CFP (A0, omnizart's ``fetch_harmonic`` start frequency).
A0_HZ = 27.5


@functools.lru_cache(maxsize=64)
def _central_freqs(fc: float, tc: float, bpo: int) -> tuple[float, ...]:
    stop = 1.0 / tc
    n_max = int(math.ceil(math.log2(stop / fc)) * bpo)
    out = []
    for i in range(n_max):  # Python pow, as omnizart does, so the band edges round identically
        f = fc * pow(2, float(i) / bpo)
        if f >= stop:
            break
        out.append(f)
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class CFPParams:
    """The CFP settings, named as in omnizart's yaml files.

    Attributes:
        fs: Sampling rate (Hz) that the audio must already have.
        hop_s: Hop in seconds. The hop in samples is ``round(fs*hop_s)``.
        win: Blackman-Harris window length in samples.
        fr: Frequency resolution (Hz). The FFT length is ``int(fs/fr)``.
        fc: Lowest centre frequency (Hz).
        tc: Inverse of the highest centre frequency (s).
        g: Power (gamma) of each layer: spectrum, cepstrum, GCoS, ...
        bins_per_octave: Bins per octave of the log-frequency axis.
    """

    fs: int = 44100
    hop_s: float = 0.02
    win: int = 7939
    fr: float = 2.0
    fc: float = 27.5
    tc: float = 1 / 4487
    g: tuple[float, ...] = (0.24, 0.6, 1.0)
    bins_per_octave: int = 48

    def __post_init__(self) -> None:
        object.__setattr__(self, "g", tuple(float(v) for v in self.g))
        if self.fs <= 0 or self.hop_s <= 0 or self.fr <= 0 or self.fc <= 0 or self.tc <= 0:
            raise ValueError(f"CFPParams: fs, hop_s, fr, fc and tc must be positive: {self}")
        if self.win < 2 or self.bins_per_octave < 1 or not self.g:
            raise ValueError(f"CFPParams: need win >= 2, bins_per_octave >= 1, g non-empty: {self}")
        if any(v <= 0 for v in self.g):
            raise ValueError(
                f"CFPParams: every g must be > 0 (the log layer is unsupported): {self}"
            )
        if self.hop < 1 or self.n_fft < 4 or self.n_bins < 2:
            raise ValueError(f"CFPParams: hop, FFT length or bin count too small: {self}")

    @property
    def hop(self) -> int:
        """Hop in samples."""
        return int(round(self.fs * self.hop_s))

    @property
    def n_fft(self) -> int:
        """FFT length N = int(fs/fr)."""
        return int(self.fs / float(self.fr))

    @property
    def central_freqs(self) -> tuple[float, ...]:
        """The ``n_bins + 1`` centre frequencies. Output row i is centred on the i-th one. The
        last is only an upper filter edge, and row 0 is always empty."""
        return _central_freqs(self.fc, self.tc, self.bins_per_octave)

    @property
    def n_bins(self) -> int:
        """Number of log-frequency rows in the output (352 for `MUSIC`)."""
        return len(self.central_freqs) - 1

    @property
    def tc_idx(self) -> int:
        """Quefrency rows zeroed at each end of the cepstrum: round(fs*tc)."""
        return int(round(self.fs * self.tc))

    @property
    def fc_idx(self) -> int:
        """Frequency rows zeroed at each end of the GCoS: round(fc/fr)."""
        return int(round(self.fc / self.fr))


#: omnizart music (``defaults/music.yaml``): 44.1 kHz, 352 bins from A0.
MUSIC = CFPParams()
#: Not in omnizart: the music settings' spectrum layer alone, with a 46-ms window (2047 samples,
#: 2048-point FFT) on the same frames and 352 bins. The 180-ms window of `MUSIC` smears the attack
#: of a re-struck key into the note that was already sounding; this one resolves it. omnizart's
#: vocal model stacks the CFPs of three windows in the same way.
MUSIC_SHORT = CFPParams(win=2047, fr=44100 / 2048, g=(0.24,))
#: omnizart vocal_contour: 16 kHz and window 2049, with the music fc/tc (352 bins).
VOCAL_CONTOUR = CFPParams(fs=16000, win=2049)
#: omnizart patch_cnn: 16 kHz, window 2049, 80 Hz .. 1 kHz (174 bins).
PATCH_CNN = CFPParams(fs=16000, win=2049, fc=80.0, tc=0.001)
#: omnizart vocal: the three windows of its 9-channel input (174 bins each).
VOCAL_743 = CFPParams(fs=16000, win=743, fc=80.0, tc=0.001)
VOCAL_372 = CFPParams(fs=16000, win=372, fc=80.0, tc=0.001)
VOCAL_186 = CFPParams(fs=16000, win=186, fc=80.0, tc=0.001)
#: omnizart harmonic CFP (``extract_hcfp``): the music settings with fc=1 Hz, tc=1/22050 s.
HCFP = dataclasses.replace(MUSIC, fc=1.0, tc=1 / 22050)


def n_frames(num_samples: int, params: CFPParams = MUSIC) -> int:
    """Frames in the CFP of ``num_samples`` samples: ``ceil(num_samples/hop) - 1``, at least 0.

    60 s at 44.1 kHz gives 2999.
    """
    hop = params.hop
    return max(-(-int(num_samples) // hop) - 1, 0)


def blackman_harris(n: int) -> np.ndarray:
    """The symmetric 4-term Blackman-Harris window (``scipy.signal.windows.blackmanharris``)."""
    if n == 1:
        return np.ones(1)
    a = (0.35875, 0.48829, 0.14128, 0.01168)
    phase = np.linspace(-np.pi, np.pi, n)
    return a[0] + a[1] * np.cos(phase) + a[2] * np.cos(2 * phase) + a[3] * np.cos(3 * phase)


# --------------------------------------------------------------------------- plan (cached)


@dataclasses.dataclass(frozen=True)
class _Map:
    """A sparse (rows x columns) filterbank stored by row for `np.add.reduceat`.

    Row ``r`` owns the entries ``starts[r]:starts[r+1]``. Rows with no weights get a dummy entry
    (column 0, weight 0), so every slice is non-empty.
    """

    cols: np.ndarray  # (nnz,) int
    wts: np.ndarray  # (nnz,) float64
    rows: np.ndarray  # (nnz,) int: the row of each entry (sorted)
    starts: np.ndarray  # (n_rows,) int
    n_rows: int
    _csr: dict = dataclasses.field(default_factory=dict, init=False, compare=False, repr=False)

    def scaled(self, col_scale: np.ndarray) -> _Map:
        return dataclasses.replace(self, wts=self.wts * col_scale[self.cols])

    def apply(self, y: np.ndarray, use_scipy: bool = True) -> np.ndarray:
        """``y (C, cols) -> (C, n_rows)``: the filterbank applied to every frame."""
        dt = y.dtype
        if not use_scipy:
            p = y[:, self.cols]
            p *= self.wts.astype(dt)
            return np.add.reduceat(p, self.starts, axis=1)
        key = (dt.str, y.shape[1])
        mat = self._csr.get(key)
        if mat is None:
            shape = (self.n_rows, y.shape[1])
            mat = _sparse.csr_matrix((self.wts.astype(dt), (self.rows, self.cols)), shape=shape)
            self._csr[key] = mat
        return (mat @ y.T).T

    def dense(self, n_cols: int) -> np.ndarray:
        out = np.zeros((self.n_rows, n_cols))
        np.add.at(out, (self.rows, self.cols), self.wts)
        return out


def _to_map(first: np.ndarray, w: np.ndarray, n_cols: int) -> _Map:
    """Build a `_Map` from per-row weights ``w[r, k]`` at columns ``first[r] + k``."""
    n_rows = w.shape[0]
    cols = first[:, None] + np.arange(w.shape[1])[None, :]
    keep = (w != 0) & (cols >= 0) & (cols < n_cols)
    empty = ~keep.any(axis=1)
    keep[empty, 0] = True  # dummy entry for empty rows
    cols = np.where(empty[:, None], 0, cols)
    w = np.where(empty[:, None], 0.0, w)
    r, k = np.nonzero(keep)
    counts = keep.sum(axis=1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return _Map(cols[r, k].astype(np.intp), w[r, k], r.astype(np.intp), starts, n_rows)


def _triangles(x: np.ndarray, lo: np.ndarray, mid: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """omnizart's triangle weight of x under (lo, mid, hi). Edges strict, the rising side wins."""
    rising = (x > lo) & (x < mid)
    falling = (x > mid) & (x < hi) & ~rising
    up = (x - lo) / (mid - lo)
    down = (hi - x) / (hi - mid)
    return np.where(rising, up, np.where(falling, down, 0.0))


def _freq_map(params: CFPParams, n_cols: int, half: int) -> _Map:
    cf = np.asarray(params.central_freqs)
    n_rows = len(cf) - 1
    # omnizart's frequency grid is linspace(0, fs/2, round(N/2)), not k*fr
    f = params.fs * np.linspace(0, 0.5, half, endpoint=True)[:n_cols]
    i = np.arange(1, n_rows)
    left = np.round(cf[i - 1] / params.fr).astype(np.int64)
    right = np.round(cf[i + 1] / params.fr).astype(np.int64) + 1
    width = int(max(1, (right - left).max()))
    cols = left[:, None] + np.arange(width)[None, :]
    inside = cols < right[:, None]
    colc = np.clip(cols, 0, n_cols - 1)
    w = _triangles(f[colc], cf[i - 1, None], cf[i, None], cf[i + 1, None]) * inside
    single = left >= right - 1  # omnizart's "rounding1": the band collapses to one bin
    w[single] = 0.0
    w[single, 0] = 1.0
    w_all = np.zeros((n_rows, width))
    w_all[1:] = w
    first = np.zeros(n_rows, np.int64)
    first[1:] = left
    return _to_map(first, w_all, n_cols)


def _quef_map(params: CFPParams, n_cols: int) -> _Map:
    cf = np.asarray(params.central_freqs)
    n_rows = len(cf) - 1
    fs = params.fs
    n_q = int(round(fs / params.fc) + 1)
    qf = 1.0 / (np.arange(n_q) / float(fs) + 1e-9)  # the frequency of each quefrency row
    i = np.arange(1, n_rows)
    lo = np.round(fs / cf[i + 1]).astype(np.int64)
    hi = np.round(fs / cf[i - 1]).astype(np.int64)  # inclusive
    width = int(max(1, (hi - lo).max() + 1))
    cols = lo[:, None] + np.arange(width)[None, :]
    inside = (cols <= hi[:, None]) & (cols < n_q)
    colc = np.clip(cols, 0, n_q - 1)
    w = _triangles(qf[colc], cf[i - 1, None], cf[i, None], cf[i + 1, None]) * inside
    w_all = np.zeros((n_rows, width))
    w_all[1:] = w
    first = np.zeros(n_rows, np.int64)
    first[1:] = lo
    return _to_map(first, w_all, n_cols)


@dataclasses.dataclass(frozen=True)
class _Layer:
    """One cepstral layer (``g[i]`` for i >= 1) on the half spectrum."""

    g: float
    rows: int  # rows to compute: the full half if a later layer needs it, else the output rows
    fold: np.ndarray | None  # even-part weights (mask folded) for the next layer's input, (half,)


@dataclasses.dataclass(frozen=True)
class _Plan:
    n_fft: int
    half: int  # rfft length: n_fft//2 + 1
    hop: int
    k: int  # frames use taus in [-k, k): 2k samples
    window: np.ndarray  # (2k,) the window samples omnizart uses, tau = -k .. k-1
    win_norm: float
    spec_rows: int  # columns of the frequency mapping
    ceps_rows: int  # columns of the quefrency mapping
    layers: tuple[_Layer, ...]
    spec_map: _Map
    gcos_map: _Map
    gcos_layer: int  # 0 means GCoS is the spectrum itself (fewer than 3 layers)
    ceps_map: _Map | None  # None: no cepstral layer, Ceps is zero
    ceps_layer: int
    n_bins: int


def _cut_mask(n_fft: int, half: int, cutoff: int) -> tuple[np.ndarray, np.ndarray]:
    """The 0/1 mask on the half rows and the even-part fold weights after zeroing ``cutoff`` rows
    at both ends of the full length-N array (the cepstrum has ``X[:c] = X[-c:] = 0``)."""
    full = np.ones(n_fft)
    if cutoff > 0:  # omnizart's X[-0:] = 0 would zero everything: treated as no cut
        full[:cutoff] = 0.0
        full[n_fft - cutoff :] = 0.0
    n = np.arange(half)
    return full[:half], 0.5 * (full[n] + full[(n_fft - n) % n_fft])


@functools.lru_cache(maxsize=32)
def _plan(params: CFPParams) -> _Plan:
    n_fft = params.n_fft
    half = n_fft // 2 + 1
    n_half = int(round(n_fft / 2.0))  # omnizart keeps round(N/2) rows of every layer
    lh = (params.win - 1) // 2
    k = min(n_half - 1, lh)
    h = blackman_harris(params.win)
    tau = np.arange(-k, k)
    window = h[(lh + tau - 1) % params.win]  # omnizart's h[Lh + tau - 1]; index -1 wraps
    spec_rows = min(n_half, int(round((1 / params.tc) / params.fr) + 1))
    ceps_rows = min(n_half, int(round(params.fs / params.fc) + 1))
    fmap = _freq_map(params, spec_rows, n_half)
    qmap = _quef_map(params, ceps_rows)

    n_layers = len(params.g)
    gcos_layer = max(i for i in range(n_layers) if i % 2 == 0)
    ceps_layer = max((i for i in range(n_layers) if i % 2 == 1), default=0)
    # scale[i]: true layer value = scale[i] * computed value (1/sqrt(N) factors deferred)
    scale = [1.0]
    masks = [np.ones(half)]
    folds = [np.ones(half)]
    layers = []
    for i in range(1, n_layers):
        cutoff = params.tc_idx if i % 2 == 1 else params.fc_idx
        mask, fold = _cut_mask(n_fft, half, cutoff)
        masks.append(mask)
        folds.append(fold)
        scale.append((scale[-1] / math.sqrt(n_fft)) ** params.g[i])
        last = i == n_layers - 1
        rows = (spec_rows if i == gcos_layer else ceps_rows) if last else half
        layers.append(_Layer(params.g[i], rows, None))
    # a layer's fold is applied to it when it feeds the next one
    layers = [dataclasses.replace(lay, fold=folds[i + 1]) for i, lay in enumerate(layers)]
    gcos_map = fmap.scaled(masks[gcos_layer] * scale[gcos_layer])
    ceps_map = qmap.scaled(masks[ceps_layer] * scale[ceps_layer]) if ceps_layer else None
    plan = _Plan(
        n_fft=n_fft,
        half=half,
        hop=params.hop,
        k=k,
        window=window,
        win_norm=float(np.linalg.norm(window)),
        spec_rows=spec_rows,
        ceps_rows=ceps_rows,
        layers=tuple(layers),
        spec_map=fmap,
        gcos_map=gcos_map,
        gcos_layer=gcos_layer,
        ceps_map=ceps_map,
        ceps_layer=ceps_layer,
        n_bins=params.n_bins,
    )
    for arr in (window, *(m for lay in layers for m in (lay.fold,))):
        arr.setflags(write=False)
    return plan


def _frame_norms(plan: _Plan, num_samples: int, t: int) -> np.ndarray:
    """Per-frame norm of the window part that lies inside the audio (edge frames use less)."""
    norms = np.full(t, plan.win_norm)
    k, hop = plan.k, plan.hop
    centre = hop * (np.arange(t) + 1)  # 1-based sample index, as omnizart's t
    lo = np.minimum(k, centre - 1)
    hi = np.minimum(k, num_samples - centre)
    for j in np.nonzero((lo < k) | (hi < k))[0]:
        norms[j] = np.linalg.norm(plan.window[k - lo[j] : k + hi[j]])
    return norms


def _framing_source(audio: np.ndarray, plan: _Plan, t: int, extra_frames: int = 0) -> np.ndarray:
    """float32 audio laid out so that frame j is ``src[j*hop : j*hop + 2k]``.

    Samples outside the audio are zero. So is the last sample, which omnizart never uses.
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"CFP needs mono 1-D audio, got shape {x.shape}")
    hop, k = plan.hop, plan.k
    # frame j covers samples (hop*(j+1) - 1) - k .. + 2k - 1 (0-based)
    offset = hop - 1 - k
    length = (t + extra_frames) * hop + 2 * k
    src = np.zeros(length, np.float32)
    body = x[: max(len(x) - 1, 0)]
    a, b = max(offset, 0), min(len(body), offset + length)
    if b > a:
        src[a - offset : b - offset] = body[a:b]
    return src


# --------------------------------------------------------------------------- numpy


def _rfft(x: np.ndarray, n: int | None = None, use_scipy: bool = True) -> np.ndarray:
    if use_scipy:
        return _sfft.rfft(x, n=n, axis=-1)
    return np.fft.rfft(x, n=n, axis=-1)


def _even_fft(e: np.ndarray, n_fft: int, rows: int, use_scipy: bool = True) -> np.ndarray:
    """``real(fft(full))[:rows]``, where ``full`` is the even length-N sequence whose first
    half (``n_fft//2 + 1`` values) is ``e``."""
    if use_scipy and n_fft % 2 == 0:
        return _sfft.dct(e, type=1, axis=-1)[..., :rows]
    half = e.shape[-1]
    ext = np.concatenate([e, e[..., n_fft - half : 0 : -1]], axis=-1)
    return _rfft(ext, use_scipy=use_scipy).real[..., :rows]


def _pow_nonneg(y: np.ndarray, g: float) -> np.ndarray:
    """``y**g`` for ``y >= 0`` (in place where possible), avoiding numpy's slow path at 0.

    float32 uses exp(g*log(y)), which is vectorised (log 0 = -inf, exp -inf = 0). float64 raises
    ones in place of the zeros, then masks them back.
    """
    if g == 1.0:
        return y
    if y.dtype == np.float32:
        with np.errstate(divide="ignore"):
            np.log(y, out=y)
        y *= np.float32(g)
        return np.exp(y, out=y)
    pos = y > 0
    y = np.where(pos, y, 1.0)
    np.power(y, g, out=y)
    y *= pos
    return y


def _numpy_chunk(
    frames: np.ndarray, plan: _Plan, g0: float, out: np.ndarray, use_scipy: bool
) -> None:
    """CFP of windowed frames (C, 2k), written into ``out`` (C, n_bins, 4)."""
    dt = frames.dtype
    spec = np.abs(_rfft(frames, n=plan.n_fft, use_scipy=use_scipy)).astype(dt, copy=False)
    spec = _pow_nonneg(spec, g0)
    out[:, :, 1] = plan.spec_map.apply(spec[:, : plan.spec_rows], use_scipy)
    y = spec
    gcos = ceps = None
    for i, layer in enumerate(plan.layers, start=1):
        y = _even_fft(y, plan.n_fft, layer.rows, use_scipy)
        np.maximum(y, 0, out=y)
        y = _pow_nonneg(y, layer.g)
        if i == plan.gcos_layer:
            gcos = plan.gcos_map.apply(y[:, : plan.spec_rows], use_scipy)
        if i == plan.ceps_layer:
            ceps = plan.ceps_map.apply(y[:, : plan.ceps_rows], use_scipy)
        if i < len(plan.layers):  # fold the zeroed rows into the next layer's input, in place
            idx = np.flatnonzero(layer.fold != 1.0)
            y[:, idx] *= layer.fold[idx].astype(dt)
    out[:, :, 2] = out[:, :, 1] if gcos is None else gcos
    out[:, :, 3] = 0.0 if ceps is None else ceps
    out[:, :, 0] = out[:, :, 2] * out[:, :, 3]


def cfp_numpy(
    audio: np.ndarray,
    params: CFPParams = MUSIC,
    dtype: Any = np.float64,
    *,
    chunk: int = 64,
    workers: int = 1,
    backend: str = "auto",
) -> np.ndarray:
    """CFP of mono audio already at ``params.fs``: ``(T, n_bins, 4)``, channels [Z, Spec, GCoS, Ceps].

    Args:
        audio: 1-D samples at ``params.fs``. They are taken as float32, as omnizart does.
        params: A `CFPParams`, e.g. `MUSIC`, `VOCAL_CONTOUR`, `PATCH_CNN`.
        dtype: ``np.float64`` (omnizart's precision) or ``np.float32`` (about 2x faster).
        chunk: Frames per FFT batch. This bounds memory to about ``chunk * n_fft * 40`` bytes.
        workers: Threads over chunks. numpy/scipy release the GIL in the FFTs.
        backend: ``"scipy"`` (pocketfft's DCT-I and CSR filterbanks, the default when scipy
            is installed, about 1.5x faster) or ``"numpy"`` (``np.fft.rfft`` and
            ``np.add.reduceat`` only). ``"auto"`` picks scipy if it is importable.

    Returns:
        ``(n_frames(len(audio), params), params.n_bins, 4)`` array of ``dtype``.
    """
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    if backend not in ("auto", "scipy", "numpy"):
        raise ValueError(f"backend must be 'auto', 'scipy' or 'numpy', got {backend!r}")
    if backend == "scipy" and _sfft is None:
        raise ValueError("backend='scipy' needs scipy, which is not installed")
    use_scipy = _sfft is not None and backend != "numpy"
    plan = _plan(params)
    x = np.asarray(audio)
    if x.ndim != 1:
        raise ValueError(f"CFP needs mono 1-D audio, got shape {x.shape}")
    t = n_frames(len(x), params)
    out = np.zeros((t, plan.n_bins, 4), dt)
    if t == 0:
        return out
    src = _framing_source(x, plan, t).astype(dt)
    norms = _frame_norms(plan, len(x), t)
    frames_view = np.lib.stride_tricks.sliding_window_view(src, 2 * plan.k)[:: plan.hop]
    window = plan.window.astype(dt)

    def run(start: int) -> None:
        stop = min(start + chunk, t)
        frames = frames_view[start:stop] * window
        frames /= norms[start:stop, None].astype(dt)
        _numpy_chunk(frames, plan, params.g[0], out[start:stop], use_scipy)

    starts = range(0, t, chunk)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, starts))
    else:
        for s in starts:
            run(s)
    return out


def gain_exponents(params: CFPParams = MUSIC) -> dict[str, float]:
    """How each CFP channel follows the audio's amplitude: audio times ``a`` gives the channel
    times ``a ** e``. Each layer is linear maps, a ReLU and a power ``g``, so a layer scales as
    the product of the powers up to it and Z (GCoS times Ceps) as their sum: a gain can be put on
    cached features exactly, up to float rounding (`tests/test_features_cfp.py`)."""
    plan = _plan(params)
    power = np.cumprod(params.g)
    spec = float(power[0])
    ceps = float(power[plan.ceps_layer]) if plan.ceps_layer else 0.0
    gcos = float(power[plan.gcos_layer])
    return {"Z": gcos + ceps, "Spec": spec, "GCoS": gcos, "Ceps": ceps}


def music_cfp_channels(cfp: Any, names: Sequence[str] = ("Spec", "Ceps")) -> Any:
    """Select CFP channels by omnizart's names (``Z``, ``Spec``, ``GCoS``, ``Ceps``), in order."""
    if isinstance(names, str):
        names = (names,)
    try:
        idx = [CHANNELS[n] for n in names]
    except KeyError as e:
        raise ValueError(f"unknown CFP channel {e.args[0]!r}; known: {list(CHANNELS)}") from None
    return cfp[..., idx]


def hcfp_numpy(
    audio: np.ndarray,
    params: CFPParams = MUSIC,
    harmonic_num: int = 6,
    dtype: Any = np.float64,
    **kwargs: Any,
) -> np.ndarray:
    """omnizart's harmonic CFP (``extract_hcfp``): ``(T, 88*bpo/12, 3*(harmonic_num+1))``.

    The CFP is computed with ``fc=1 Hz, tc=1/22050 s`` (hard-coded in omnizart, whatever fc/tc
    the caller has). Then, for h = 1 .. harmonic_num+1, the log-frequency rows starting at the
    bin nearest ``h*A0`` are taken for Spec and GCoS, and at ``A0/h`` for Ceps. Each is
    ``88 notes * bpo/12`` rows long and zero-filled past the top. Channels are
    ``[Spec h1..hH, GCoS h1..hH, Ceps h1..hH]``.

    Deviations from omnizart:

    * omnizart's GCoS here is all zero, because ``round(1/2) == 0`` makes its
      ``X[-0:] = 0`` wipe the layer. This version does not cut anything.
    * The rows per note follow ``params.bins_per_octave``. omnizart always assumes 48.
    * omnizart's music app passes fc/tc to ``extract_hcfp``, which does not accept them, so its
      ``--harmonic`` path raises TypeError. Here they are simply replaced.
    """
    hp = dataclasses.replace(params, fc=1.0, tc=1 / 22050)
    feat = cfp_numpy(audio, hp, dtype, **kwargs)
    cenf = np.asarray(hp.central_freqs)
    n_rows = feat.shape[1]
    total = int(params.bins_per_octave / 12) * 88
    out = np.zeros((feat.shape[0], total, 3 * (harmonic_num + 1)), feat.dtype)
    for group, (ch, reverse) in enumerate(((1, False), (2, False), (3, True))):
        for i in range(harmonic_num + 1):
            mult = 1.0 / (i + 1) if reverse else float(i + 1)
            hid = int(np.argmin(np.abs(cenf - mult * A0_HZ)))
            upper = min(n_rows, hid + total)
            if upper > hid:
                out[:, : upper - hid, group * (harmonic_num + 1) + i] = feat[:, hid:upper, ch]
    return out


# --------------------------------------------------------------------------- JAX


@functools.lru_cache(maxsize=16)
def _jax_chunk_fn(params: CFPParams, chunk: int):
    """A jitted ``(segment, norms) -> (chunk, n_bins, 4)`` float32 function for one frame chunk.

    It is compiled once per (params, chunk), whatever the audio length.
    """
    import jax
    import jax.numpy as jnp

    plan = _plan(params)
    n_fft, half, hop, k2 = plan.n_fft, plan.half, plan.hop, 2 * plan.k
    n_blocks = -(-k2 // hop)
    g0 = params.g[0]
    window = np.asarray(plan.window, np.float32)
    folds = [None if lay.fold is None else np.asarray(lay.fold, np.float32) for lay in plan.layers]

    def even_fft(e, rows):
        ext = jnp.concatenate([e, e[:, n_fft - half : 0 : -1]], axis=1)
        return jnp.fft.rfft(ext, axis=1).real[:, :rows]

    def pow_nonneg(y, g):  # exp(g*log y): vectorised on every backend; log 0 = -inf -> 0
        return y if g == 1.0 else jnp.exp(g * jnp.log(y))

    def apply_map(y, m: _Map):
        p = y[:, m.cols] * m.wts.astype(np.float32)
        s = jax.ops.segment_sum(p.T, m.rows, num_segments=m.n_rows, indices_are_sorted=True)
        return s.T

    def fn(segment, norms):
        blocks = segment.reshape(chunk + n_blocks - 1, hop)
        frames = jnp.concatenate([blocks[b : b + chunk] for b in range(n_blocks)], axis=1)
        frames = frames[:, :k2] * window / norms[:, None]
        spec = pow_nonneg(jnp.abs(jnp.fft.rfft(frames, n=n_fft, axis=1)), g0)
        spec_l = apply_map(spec, plan.spec_map)
        gcos = spec_l
        ceps = jnp.zeros_like(spec_l)
        y = spec
        for i, layer in enumerate(plan.layers, start=1):
            src = y if i == 1 else y * folds[i - 2]
            y = pow_nonneg(jnp.maximum(even_fft(src, layer.rows), 0.0), layer.g)
            if i == plan.gcos_layer:
                gcos = apply_map(y, plan.gcos_map)
            if i == plan.ceps_layer:
                ceps = apply_map(y, plan.ceps_map)
        return jnp.stack([gcos * ceps, spec_l, gcos, ceps], axis=-1)

    return jax.jit(fn), (chunk + n_blocks - 1) * hop


def cfp_jax(audio: Any, params: CFPParams = MUSIC, *, chunk: int | None = None):
    """`cfp_numpy` in JAX (float32), returned as a ``jax.Array`` ``(T, n_bins, 4)`` on the default
    device.

    Frames are processed in fixed chunks (128 on CPU, 1024 on accelerators) by one jitted
    function. It is compiled once per ``(params, chunk)``, so clips of any length reuse it, and
    device memory is bounded by the chunk. FFTs are ``jnp.fft.rfft``. The filterbanks are sparse
    ``segment_sum`` tables, so no matmul precision (TF32) can enter.
    """
    import jax
    import jax.numpy as jnp

    if chunk is None:
        chunk = 128 if jax.default_backend() == "cpu" else 1024
    plan = _plan(params)
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"CFP needs mono 1-D audio, got shape {x.shape}")
    t = n_frames(len(x), params)
    if t == 0:
        return jnp.zeros((0, plan.n_bins, 4), jnp.float32)
    fn, seg_len = _jax_chunk_fn(params, chunk)
    n_chunks = -(-t // chunk)
    src = _framing_source(x, plan, n_chunks * chunk, extra_frames=seg_len // plan.hop)
    norms = np.ones(n_chunks * chunk, np.float32)
    norms[:t] = _frame_norms(plan, len(x), t)
    step = chunk * plan.hop
    parts = [
        fn(src[c * step : c * step + seg_len], norms[c * chunk : (c + 1) * chunk])
        for c in range(n_chunks)
    ]
    out = parts[0] if n_chunks == 1 else jnp.concatenate(parts, axis=0)
    return out[:t]
