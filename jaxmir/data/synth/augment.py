"""Audio augmentation in plain numpy/scipy, driven by an explicit `np.random.Generator`.

Building blocks (each keeps the input length and returns float32):
- `random_eq`: a few RBJ-cookbook biquads (peaking, low/high shelf) with random settings;
- `timbre_eq_sos`: a stronger random tilt and resonances, for one instrument at a time;
- `room_impulse_response` + `reverb`: a synthetic room (exponentially decaying noise whose
  envelope falls 60 dB in RT60, brighter at first and darker later) mixed in wet/dry;
- `colored_noise` + `add_noise`: white, pink (1/f) or brown (1/f^2) noise at a given SNR;
- `random_gain`.
`augment_audio` chains them with random settings scaled by `strength`; `mix` sums named stems.
The same generator state always gives the same output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

NOISE_COLORS = ("white", "pink", "brown")
RT60_RANGE = (0.2, 1.5)  # seconds
EQ_GAIN_DB = 6.0  # max |gain| of a random EQ band at strength 1
SNR_RANGE_DB = (20.0, 50.0)  # at strength 1; the lower end rises as strength falls
GAIN_RANGE_DB = (-6.0, 3.0)


# --------------------------------------------------------------------------------------------
# Filters (RBJ Audio EQ Cookbook), as second-order sections for scipy.signal.sosfilt
# --------------------------------------------------------------------------------------------


def _sos(b0, b1, b2, a0, a1, a2) -> np.ndarray:
    return np.array([[b0 / a0, b1 / a0, b2 / a0, 1.0, a1 / a0, a2 / a0]], np.float64)


def peaking_sos(f0: float, gain_db: float, q: float, sr: int) -> np.ndarray:
    """A peaking (bell) biquad centred on f0 Hz."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * math.pi * min(f0, 0.45 * sr) / sr
    alpha = math.sin(w0) / (2.0 * q)
    cw = math.cos(w0)
    return _sos(1 + alpha * a, -2 * cw, 1 - alpha * a, 1 + alpha / a, -2 * cw, 1 - alpha / a)


def shelf_sos(kind: str, f0: float, gain_db: float, sr: int, slope: float = 1.0) -> np.ndarray:
    """A 'low' or 'high' shelving biquad with corner f0 Hz."""
    a = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * math.pi * min(f0, 0.45 * sr) / sr
    cw, sw = math.cos(w0), math.sin(w0)
    alpha = sw / 2.0 * math.sqrt((a + 1.0 / a) * (1.0 / slope - 1.0) + 2.0)
    k = 2.0 * math.sqrt(a) * alpha
    if kind == "low":
        return _sos(
            a * ((a + 1) - (a - 1) * cw + k),
            2 * a * ((a - 1) - (a + 1) * cw),
            a * ((a + 1) - (a - 1) * cw - k),
            (a + 1) + (a - 1) * cw + k,
            -2 * ((a - 1) + (a + 1) * cw),
            (a + 1) + (a - 1) * cw - k,
        )
    if kind == "high":
        return _sos(
            a * ((a + 1) + (a - 1) * cw + k),
            -2 * a * ((a - 1) + (a + 1) * cw),
            a * ((a + 1) + (a - 1) * cw - k),
            (a + 1) - (a - 1) * cw + k,
            2 * ((a - 1) - (a + 1) * cw),
            (a + 1) - (a - 1) * cw - k,
        )
    raise ValueError(f"shelf kind must be 'low' or 'high', got {kind!r}")


def random_eq_sos(sr: int, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """1-3 peaking bands (80 Hz-8 kHz, Q 0.5-2) plus, each with p=0.5, a low shelf (80-300 Hz)
    and a high shelf (2.5-8 kHz); gains uniform in +-6 dB * strength."""
    g = EQ_GAIN_DB * max(0.0, float(strength))
    sections = []
    for _ in range(int(rng.integers(1, 4))):
        f0 = math.exp(rng.uniform(math.log(80.0), math.log(8000.0)))
        sections.append(peaking_sos(f0, rng.uniform(-g, g), rng.uniform(0.5, 2.0), sr))
    if rng.uniform() < 0.5:
        sections.append(shelf_sos("low", rng.uniform(80.0, 300.0), rng.uniform(-g, g), sr))
    if rng.uniform() < 0.5:
        sections.append(shelf_sos("high", rng.uniform(2500.0, 8000.0), rng.uniform(-g, g), sr))
    return np.concatenate(sections, axis=0)


TIMBRE_GAIN_DB = 10.0  # max |gain| of a timbre EQ's tilt and resonances


def timbre_eq_sos(sr: int, rng: np.random.Generator) -> np.ndarray:
    """A random instrument body: a spectral tilt (a low shelf at 150-500 Hz and a high shelf
    at 1.5-5 kHz) and 1-3 resonances (peaking, 150 Hz-5 kHz, Q 1-6), gains uniform in
    +-`TIMBRE_GAIN_DB`. Stronger and narrower than `random_eq_sos`: it re-weights one
    instrument's partials the way another maker's body or microphone would."""
    g = TIMBRE_GAIN_DB
    sections = [
        shelf_sos("low", rng.uniform(150.0, 500.0), rng.uniform(-g, g), sr),
        shelf_sos("high", rng.uniform(1500.0, 5000.0), rng.uniform(-g, g), sr),
    ]
    for _ in range(int(rng.integers(1, 4))):
        f0 = math.exp(rng.uniform(math.log(150.0), math.log(5000.0)))
        sections.append(peaking_sos(f0, rng.uniform(-g, g), rng.uniform(1.0, 6.0), sr))
    return np.concatenate(sections, axis=0)


def apply_sos(x: np.ndarray, sos: np.ndarray) -> np.ndarray:
    from scipy.signal import sosfilt

    return np.asarray(sosfilt(sos, np.asarray(x, np.float64)), np.float32)


def random_eq(
    x: np.ndarray, sr: int, rng: np.random.Generator, strength: float = 1.0
) -> np.ndarray:
    """`x` through a random EQ (see `random_eq_sos`)."""
    return apply_sos(x, random_eq_sos(sr, rng, strength))


# --------------------------------------------------------------------------------------------
# Reverb
# --------------------------------------------------------------------------------------------


def room_impulse_response(
    sr: int, rng: np.random.Generator, rt60: float | None = None, predelay_s: float | None = None
) -> np.ndarray:
    """A synthetic room: Gaussian noise under exp(-6.9 t / RT60) (-60 dB at RT60), split into a
    bright early part and a low-passed late part, after a 0-20 ms pre-delay; unit energy.

    rt60: seconds (None: uniform in `RT60_RANGE`); the response lasts RT60 seconds.
    """
    if rt60 is None:
        rt60 = float(rng.uniform(*RT60_RANGE))
    if predelay_s is None:
        predelay_s = float(rng.uniform(0.0, 0.02))
    n = max(1, int(round(rt60 * sr)))
    t = np.arange(n) / sr
    env = np.exp(-math.log(1000.0) * t / rt60)
    noise = rng.standard_normal(n)
    # high frequencies decay faster: cross-fade towards a one-pole low-passed copy
    from scipy.signal import lfilter

    pole = math.exp(-2.0 * math.pi * rng.uniform(2000.0, 6000.0) / sr)
    dark = lfilter([1.0 - pole], [1.0, -pole], noise)
    dark *= np.std(noise) / max(np.std(dark), 1e-12)
    fade = np.clip(t / (0.5 * rt60), 0.0, 1.0)
    ir = env * ((1.0 - fade) * noise + fade * dark)
    ir = np.concatenate([np.zeros(int(round(predelay_s * sr))), ir])
    return (ir / max(np.sqrt(np.sum(ir**2)), 1e-12)).astype(np.float32)


def reverb(x: np.ndarray, ir: np.ndarray, wet: float) -> np.ndarray:
    """(1 - wet) * x + wet * (x convolved with ir), cut to len(x)."""
    from scipy.signal import oaconvolve

    x = np.asarray(x, np.float32)
    if wet <= 0.0 or len(x) == 0:
        return x.copy()
    y = oaconvolve(x.astype(np.float64), np.asarray(ir, np.float64))[: len(x)]
    return ((1.0 - wet) * x + wet * y).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Noise and gain
# --------------------------------------------------------------------------------------------


def colored_noise(n: int, rng: np.random.Generator, color: str = "white") -> np.ndarray:
    """`n` samples of unit-RMS noise: 'white', 'pink' (power ~ 1/f) or 'brown' (~ 1/f^2)."""
    if color not in NOISE_COLORS:
        raise ValueError(f"noise color must be one of {NOISE_COLORS}, got {color!r}")
    if color == "white" or n <= 1:
        w = rng.standard_normal(n)
    else:
        import scipy.fft

        m = scipy.fft.next_fast_len(n, real=True)  # shaped over a fast length, then cut
        spec = scipy.fft.rfft(rng.standard_normal(m))
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0  # leave DC as is, then remove it below
        spec /= f ** (0.5 if color == "pink" else 1.0)
        w = scipy.fft.irfft(spec, m)[:n]
        w -= w.mean()
    rms = np.sqrt(np.mean(w**2)) if n else 1.0
    return (w / max(rms, 1e-12)).astype(np.float32)


def noise_for_snr(
    x: np.ndarray, snr_db: float, rng: np.random.Generator, color: str = "white"
) -> np.ndarray:
    """Noise whose power is x's mean power divided by 10^(snr_db/10) (0 for a silent x)."""
    x = np.asarray(x, np.float32)
    p = float(np.mean(x.astype(np.float64) ** 2)) if len(x) else 0.0
    scale = math.sqrt(p / 10.0 ** (snr_db / 10.0))
    return (colored_noise(len(x), rng, color) * scale).astype(np.float32)


def add_noise(
    x: np.ndarray, snr_db: float, rng: np.random.Generator, color: str = "white"
) -> np.ndarray:
    """x plus noise at `snr_db` (see `noise_for_snr`)."""
    return (np.asarray(x, np.float32) + noise_for_snr(x, snr_db, rng, color)).astype(np.float32)


def db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


def random_gain(
    x: np.ndarray, rng: np.random.Generator, low_db: float = -6.0, high_db: float = 3.0
) -> np.ndarray:
    """x times a gain uniform in [low_db, high_db] dB."""
    return (np.asarray(x, np.float32) * db_to_gain(rng.uniform(low_db, high_db))).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Chains
# --------------------------------------------------------------------------------------------


def augment_audio(
    x: np.ndarray, sr: int, rng: np.random.Generator, strength: float = 1.0
) -> np.ndarray:
    """Random EQ -> reverb (p = 0.8) -> additive noise -> gain, same length as x, float32.

    strength scales every effect: EQ gains +-6 dB * strength; reverb wet uniform in
    [0.05, 0.45] * strength (RT60 0.2-1.5 s); noise SNR uniform in
    [50 - 30 * strength, 50] dB, white/pink/brown; gain uniform in [-6, 3] * strength dB.
    strength <= 0 returns an unchanged float32 copy (and draws nothing from rng).
    """
    x = np.asarray(x, np.float32)
    s = float(strength)
    if s <= 0.0 or len(x) == 0:
        return x.copy()
    y = random_eq(x, sr, rng, s)
    if rng.uniform() < 0.8:
        y = reverb(y, room_impulse_response(sr, rng), rng.uniform(0.05, 0.45) * min(s, 1.0))
    snr = rng.uniform(SNR_RANGE_DB[1] - (SNR_RANGE_DB[1] - SNR_RANGE_DB[0]) * s, SNR_RANGE_DB[1])
    y = add_noise(y, snr, rng, NOISE_COLORS[int(rng.integers(len(NOISE_COLORS)))])
    return random_gain(y, rng, GAIN_RANGE_DB[0] * s, GAIN_RANGE_DB[1] * s)


def mix(stems: Mapping[str, np.ndarray], gains_db: Mapping[str, float] | None = None) -> np.ndarray:
    """Sum of the stems, each scaled by gains_db[name] dB (missing names: 0 dB); shorter stems
    are zero-padded to the longest. Returns float32 (empty for no stems)."""
    gains_db = dict(gains_db or {})
    unknown = set(gains_db) - set(stems)
    if unknown:
        raise KeyError(f"gains for unknown stems: {sorted(unknown)}")
    n = max((len(v) for v in stems.values()), default=0)
    out = np.zeros(n, np.float64)
    for name, v in stems.items():
        v = np.asarray(v, np.float64).reshape(-1)
        out[: len(v)] += v * db_to_gain(float(gains_db.get(name, 0.0)))
    return out.astype(np.float32)
