"""Inputs of omnizart's vocal (note-level) model and its patch_cnn model, from 16 kHz audio.

`vocal_cfp` gives the 9-channel ``(T, 174, 9)`` input of omnizart's ``_extract_vocal_cfp``. It
computes the CFP with windows 186, 372 and 743 at 16 kHz, hop 20 ms, fc 80 Hz, tc 1 ms. The
channels are, each group in omnizart's order [win 186, 372, 743] ("low, med, high"):

* 0-2: spectral flux of Spec. This is the difference along time (the first frame is 0), then
  a ReLU, then a z-norm over the whole matrix.
* 3-5: inverse spectral flux. The same with the difference negated, so it measures energy
  decrease.
* 6-8: Z, z-normalised over the whole matrix.

omnizart bug, not copied: its training features (``extract_vocal_cfp``) load the audio at
16 kHz. They then call ``_extract_cfp`` without ``down_fs``, so the audio is resampled up to
44.1 kHz and the three windows cover about 2.8x less time than at inference (whose transcribe
path passes ``down_fs=16000``). Here the features are always computed at 16 kHz, the rate the
model sees at inference.

`extract_patches` gives patch_cnn's input (``extract_patch_cfp``): a 25x25 (frequency x time)
patch of Z centred on every spectral local maximum of every frame.

Also deviating from omnizart:

* A z-norm of a constant matrix (silence) gives zeros, not NaN.
* omnizart's patch list drops its last patch and then the first and last 12 patches
  (``data[:counter - 1][12:-12]``), and caps the list at 300000. Here every peak gets its
  patch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxmir.data.features.cfp import (
    PATCH_CNN,
    VOCAL_186,
    VOCAL_372,
    VOCAL_743,
    CFPParams,
    cfp_numpy,
)

#: The three CFP settings of the vocal input, in omnizart's channel order (low, med, high).
VOCAL_WINDOWS: tuple[CFPParams, ...] = (VOCAL_186, VOCAL_372, VOCAL_743)
VOCAL_FS = 16000


def znorm(x: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` over the whole array (population std). A constant array gives zeros,
    an empty one itself (a clip too short for one frame; numpy warned of an empty mean)."""
    if x.size == 0:
        return x
    mean = x.mean()
    std = x.std()
    return (x - mean) / (std if std > 0 else 1.0)


def spectral_flux(spec: np.ndarray, invert: bool = False, norm: bool = True) -> np.ndarray:
    """omnizart's spectral flux of a time-first ``(T, F)`` spectrum.

    It takes the difference along time (frame 0 gets 0), negates it if ``invert``, applies a
    ReLU, and then, if ``norm``, a global z-norm.
    """
    flux = np.zeros_like(spec)
    np.subtract(spec[1:], spec[:-1], out=flux[1:])
    if invert:
        np.negative(flux, out=flux)
    np.maximum(flux, 0, out=flux)
    return znorm(flux) if norm else flux


def vocal_cfp(
    audio: np.ndarray, fs: int = VOCAL_FS, dtype: Any = np.float64, **kwargs: Any
) -> np.ndarray:
    """The vocal model's 9-channel input ``(T, 174, 9)`` of mono 16 kHz audio.

    Channels: [flux, inverse flux, z-normed Z], each for windows [186, 372, 743].
    ``kwargs`` go to `cfp_numpy` (``chunk``, ``workers``).
    """
    if fs != VOCAL_FS:
        raise ValueError(f"vocal_cfp needs {VOCAL_FS} Hz audio, got {fs} Hz: resample first")
    feats = [cfp_numpy(audio, p, dtype, **kwargs) for p in VOCAL_WINDOWS]
    flux = [spectral_flux(f[:, :, 1]) for f in feats]
    inv = [spectral_flux(f[:, :, 1], invert=True) for f in feats]
    z = [znorm(f[:, :, 0]) for f in feats]
    return np.stack(flux + inv + z, axis=-1)


def peak_mask(z: np.ndarray, min_bin: int = 0) -> np.ndarray:
    """``(T, F)`` bool: bins strictly above both neighbours in their frame.

    The bin above the top one counts as 0. The lowest bin, and bins below ``min_bin``, are
    never peaks.
    """
    above = np.concatenate([z[:, 1:], np.zeros((z.shape[0], 1), z.dtype)], axis=1)
    mask = np.zeros(z.shape, bool)
    mask[:, 1:] = (z[:, 1:] > z[:, :-1]) & (z[:, 1:] > above[:, 1:])
    mask[:, :min_bin] = False
    return mask


def extract_patches(
    z: np.ndarray, patch_size: int = 25
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """patch_cnn's patches of a time-first ``(T, F)`` Z: one per spectral local maximum.

    As in omnizart:

    * Patches are (frequency, time) ``patch_size`` squares centred on the peak, zero-padded
      past the top bin and beyond both ends in time.
    * Only peaks at ``bin >= patch_size//2`` count, because omnizart pads the frequency axis
      only at the top.
    * The order is by frame, then bin.

    Returns:
        ``(patches (n, ps, ps), frame_idx (n,), bin_idx (n,))``.
    """
    if patch_size < 1 or patch_size % 2 == 0:
        raise ValueError(f"patch_size must be odd, got {patch_size}")
    z = np.asarray(z)
    half = patch_size // 2
    frame_idx, bin_idx = np.nonzero(peak_mask(z, min_bin=half))
    padded = np.zeros((z.shape[1] + half, z.shape[0] + 2 * half), z.dtype)  # freq x time
    padded[: z.shape[1], half : half + z.shape[0]] = z.T
    windows = np.lib.stride_tricks.sliding_window_view(padded, (patch_size, patch_size))
    patches = windows[bin_idx - half, frame_idx]
    return patches, frame_idx, bin_idx


def patch_cfp(
    audio: np.ndarray,
    params: CFPParams = PATCH_CNN,
    patch_size: int = 25,
    dtype: Any = np.float32,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """patch_cnn's features of mono audio at ``params.fs`` (16 kHz).

    Returns ``(patches, frame_idx, bin_idx, z)``, with ``z`` of shape ``(T, 174)``.
    omnizart's ``threshold`` is computed but unused there, so it is absent here.
    """
    z = cfp_numpy(audio, params, dtype, **kwargs)[:, :, 0]
    return (*extract_patches(z, patch_size), z)


def patch_at(z: np.ndarray, frame: int, row: int, patch_size: int = 25) -> np.ndarray:
    """The ``extract_patches`` patch of one peak: ``(patch_size, patch_size)`` (frequency x
    time) of a time-first ``(T, F)`` Z centred on (frame, row), zero past the top row and beyond
    both ends in time. For reading one training example without cutting every patch."""
    half = patch_size // 2
    out = np.zeros((patch_size, patch_size), np.float32)
    t0, t1 = max(frame - half, 0), min(frame + half + 1, z.shape[0])
    f0, f1 = max(row - half, 0), min(row + half + 1, z.shape[1])
    out[f0 - row + half : f1 - row + half, t0 - frame + half : t1 - frame + half] = z[
        t0:t1, f0:f1
    ].T
    return out
