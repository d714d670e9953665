"""Procedural synthesis voices, so corpus pieces are not all played by one soundfont's timbres.

A `Voice` is an engine name plus JSON-serialisable parameters drawn by `random_voice`; it is
written into piece metadata. `render_notes` plays a note list with it and keeps the labels
exact: every note starts sounding at the sample nearest its onset (no pre-delay, envelopes
rise from the first sample), its pitch is the nominal MIDI pitch (vibrato and chorus copies
are symmetric in cents around it), and a release envelope that ends at exactly 0 within
`release_s` (<= 0.3 s) follows its offset, for every engine. Amplitude follows velocity as
``(vel / 127) ** vel_exp`` (vel_exp 1.5-2.0) and brightness rises with velocity. Partials at or
above 0.9 x Nyquist are left out, so nothing aliases.

Engines (ENGINES):

* ``additive``: up to 32 partials (fewer at low velocity) with a spectral tilt ``k ** -tilt``
  (tilt grows as velocity falls), per-partial dB jitter, a mild per-partial decay (brighter
  attack), and stiffness inharmonicity B in [0, 2e-4]: partial k sits at
  ``k f0 sqrt(1 + B k^2) / sqrt(1 + B)``, so partial 1 is exactly f0. Random ADSR.
* ``fm``: 2-operator FM, carrier f0, modulator at an integer ratio 1-4 (harmonic spectrum with
  fundamental f0), modulation index with its own decay from a peak to a sustain level (at most
  1.75, so the fundamental stays present) and scaled by velocity. Both operators share one
  random start phase (a time shift), so folded negative-frequency sidebands stay in phase with
  the positive ones and a decaying index cannot drift a low note's pitch. The index is capped
  so sidebands up to order index + 2 stay below 0.9 x Nyquist. Random ADSR.
* ``pluck``: Karplus-Strong. The excitation is one period of noise with a flat magnitude
  spectrum and random phases (a plain white burst can leave the fundamental weak by chance),
  shaped by a pick-position comb and a one-pole lowpass whose cutoff rises with velocity. It
  drives ``y[n] = x[n] + c0 y[n-N] + c1 y[n-N-1] + c2 y[n-N-2]``, i.e.
  ``scipy.signal.lfilter([1], a, x)`` with denominator taps at lags N, N+1, N+2; lfilter costs
  O(N) per sample on that sparse denominator, so `_ks_run` computes the same recursion unrolled
  m times (shortest lag m N >= 512) in blocks of m N samples; the tests check it against
  lfilter to 1e-12. The 3-tap loop filter is ``g (1-s + s z^-1)(1-d + d z^-1)``: s is the
  voice's damping (its phase delay at f0 is computed numerically with `np.angle`), N the
  integer part of what is left of the period ``P = rate / f0``, and the linear-interpolation
  fraction d is solved in closed form so that the interpolator's phase delay at f0 is exactly
  the remainder: ``N + phase_delay(loop filter, f0) = P`` to rounding error (`ks_loop_filter`;
  the tests measure it for A0-C8 at 16 and 44.1 kHz), so no iteration is needed. g sets the
  fundamental's T60, interpolated log-linearly from the voice's 2-6 s at A0 to 0.25-0.8 s at
  C8 (g is capped below 1, so the top notes can decay faster than asked). Short periods would
  let the interpolator's loss dominate (C8 at 44.1 kHz has P = 10.5), so a note whose period is
  under 48 samples runs at an integer oversampling rate (P >= 48 there) with its excitation
  band-limited below the output Nyquist by a causal Chebyshev-II lowpass (70 dB), then is
  decimated by taking every os-th sample: every pitch up to C8 (also at 16 kHz) is a true
  plucked string with an un-delayed onset; there is no additive fallback. No chorus copies.
* ``bowed``: sawtooth-like (all harmonics) or clarinet-like (even harmonics -15..-35 dB)
  spectra, band-limited below min(0.9 x Nyquist, 12 kHz) with up to 64 partials, read from a
  per-note wavetable (random partial phases) by a phase accumulator, so vibrato costs nothing:
  4-7 Hz, +-5..40 cents, sinusoidal in cents, faded in after 0.1-0.5 s. Bandpassed breath noise
  -30..-15 dB under the tone. Attacks of 30-250 ms that mix a linear and an exponential-ish
  ramp, both rising from the first sample.
* ``struck``: piano/mallet-like. Up to 32 inharmonic partials (B up to 4e-4, partial 1 at f0),
  amplitudes from a tilt and a strike-position comb, each decaying exponentially with T60 from
  the voice's 4-10 s at A0 down to 0.2-0.5 s at C8 and shorter for higher partials, plus a
  1-4 ms lowpassed noise click at the onset (brighter at high velocity), a 1 ms attack ramp and a
  damper release at the offset.

Optional chorus (additive, fm, bowed, struck): a pair of copies detuned by +-3..12 cents next to
the nominal voice, all starting in phase, so the mean pitch stays nominal. Their gain is
0.2-0.45: the beating envelope ``1 + 2 g cos(...)`` never changes sign, so the spectral line stays
peaked at the nominal pitch.

Sinusoid banks are computed per note over its own span with a block trick:
``sin(w (T + tau) + phi) = sin(w T + phi) cos(w tau) + cos(w T + phi) sin(w tau)``, so a note of
n samples and K partials costs ~2 sqrt(n) K trig calls and one (n/256, K) @ (K, 256) matrix
product (exponential partial decays factor the same way).

Measured render speed: a 40-s piece of 400 notes (4 monophonic lines, notes 0.5-1.5 s, pitches
28-100, velocities 30-127) at 44.1 kHz, three random voices per engine, CPU seconds with BLAS
on one thread, on this 2-core machine while it was shared (load average ~4, so an idle core
should be faster): additive 0.54-0.88, fm 0.47-0.63, pluck 0.32-0.67, bowed 0.80-1.05,
struck 0.33-0.50. Wall time with the default BLAS threads was 0.5-1.5 s.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import signal

ENGINES: tuple[str, ...] = ("additive", "fm", "pluck", "bowed", "struck")

MAX_PARTIALS = 32  # additive / struck partial cap (per copy)
MAX_BOWED_PARTIALS = 64  # the wavetable makes partials free; still capped
NYQUIST_FRACTION = 0.9  # partials at or above this fraction of Nyquist are left out
BOWED_MAX_HZ = 12000.0
KS_MIN_PERIOD = 48.0  # pluck notes with shorter periods are oversampled to at least this
_RMS_TARGET = 0.12  # tonal RMS of a full-velocity note at full sustain
_PEAK_MAX = 0.9  # hard bound on the partial-sum peak of a full-velocity note
_PLUCK_PEAK = 0.6
_LN1000 = math.log(1000.0)  # T60 <-> exponential rate
_TABLE = 8192  # bowed wavetable length
_BLOCK = 256  # block length of the sinusoid bank
_GEMM_SINGLE_THREAD_MNK = 262144  # OpenBLAS multiplies m*n*k up to this on one thread


@dataclasses.dataclass(frozen=True)
class Voice:
    """One timbre: an engine of ENGINES and its parameters (JSON-serialisable)."""

    engine: str
    params: dict

    def to_json(self) -> dict:
        """{"engine": ..., "params": {...}}, for piece metadata."""
        return {"engine": self.engine, "params": dict(self.params)}

    @classmethod
    def from_json(cls, d: dict) -> Voice:
        """Inverse of `to_json`."""
        _check_engine(d["engine"])
        return cls(str(d["engine"]), dict(d["params"]))


def midi_to_hz(pitch) -> np.ndarray:
    """MIDI pitch (float ok) -> Hz, A4 = 69 = 440 Hz."""
    return 440.0 * 2.0 ** ((np.asarray(pitch, np.float64) - 69.0) / 12.0)


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(
            f"unknown synthesis engine {engine!r}; known engines: {', '.join(ENGINES)}"
        )


# --------------------------------------------------------------------------------------------
# random voices
# --------------------------------------------------------------------------------------------


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _logu(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _jitter(rng: np.random.Generator, n: int, sigma_db: float) -> list[float]:
    """Per-partial dB offsets; partial 1 keeps 0 dB so the fundamental is never buried."""
    j = rng.normal(0.0, sigma_db, n)
    j[0] = 0.0
    return [round(float(x), 3) for x in j]


def _common(rng: np.random.Generator, chorus_p: float) -> dict:
    chorus = int(rng.random() < chorus_p)
    return {
        "vel_exp": _u(rng, 1.5, 2.0),
        "chorus": chorus,
        "detune_cents": _u(rng, 3.0, 12.0),
        "chorus_gain": _u(rng, 0.2, 0.45),
    }


def _adsr_params(rng: np.random.Generator, attack: tuple[float, float], curve_lo: float) -> dict:
    return {
        "attack_s": _logu(rng, *attack),
        "attack_curve": _u(rng, curve_lo, 1.0),
        "decay_s": _logu(rng, 0.05, 0.6),
        "sustain": _u(rng, 0.4, 1.0),
        "release_s": _logu(rng, 0.03, 0.3),
    }


def _random_additive(rng: np.random.Generator) -> dict:
    p = _common(rng, 0.4) | _adsr_params(rng, (0.003, 0.08), 0.0)
    p |= {
        "inharmonicity": _u(rng, 0.0, 2e-4),
        "tilt": _u(rng, 0.6, 1.6),
        "tilt_vel": _u(rng, 0.5, 1.5),
        "max_partials": int(rng.integers(12, MAX_PARTIALS + 1)),
        "partial_decay": _u(rng, 0.0, 2.0),
        "jitter_db": _jitter(rng, MAX_PARTIALS, _u(rng, 1.0, 6.0)),
    }
    return p


def _random_fm(rng: np.random.Generator) -> dict:
    p = _common(rng, 0.4) | _adsr_params(rng, (0.003, 0.08), 0.0)
    p |= {
        "ratio": int(rng.integers(1, 5)),
        "index": _u(rng, 0.8, 3.5),
        "index_sustain": _u(rng, 0.1, 0.5),
        "index_decay_s": _logu(rng, 0.05, 0.8),
        "index_vel": _u(rng, 0.15, 0.5),
    }
    return p


def _random_pluck(rng: np.random.Generator) -> dict:
    return {
        "vel_exp": _u(rng, 1.5, 2.0),
        "t60_low_s": _u(rng, 2.0, 6.0),
        "t60_high_s": _u(rng, 0.25, 0.8),
        "damping": _u(rng, 0.05, 0.5),
        "pick_position": _u(rng, 0.05, 0.3),
        "bright_low": _u(rng, 1.5, 4.0),
        "bright_high": _u(rng, 12.0, 40.0),
        "release_s": _logu(rng, 0.05, 0.25),
    }


def _random_bowed(rng: np.random.Generator) -> dict:
    p = _common(rng, 0.4) | _adsr_params(rng, (0.03, 0.25), 0.5)
    p["sustain"] = _u(rng, 0.6, 1.0)
    p |= {
        "odd_only": int(rng.random() < 0.4),
        "even_db": _u(rng, -35.0, -15.0),
        "tilt": _u(rng, 0.7, 1.3),
        "tilt_vel": _u(rng, 0.4, 1.2),
        "max_partials": int(rng.integers(24, MAX_BOWED_PARTIALS + 1)),
        "jitter_db": _jitter(rng, MAX_BOWED_PARTIALS, _u(rng, 0.5, 3.0)),
        "vib_rate": _u(rng, 4.0, 7.0),
        "vib_cents": _u(rng, 5.0, 40.0),
        "vib_delay_s": _u(rng, 0.1, 0.5),
        "vib_fade_s": _u(rng, 0.1, 0.6),
        "breath_db": _u(rng, -30.0, -15.0),
        "breath_hz": _logu(rng, 800.0, 4000.0),
        "breath_octaves": _u(rng, 0.7, 2.5),
    }
    return p


def _random_struck(rng: np.random.Generator) -> dict:
    p = _common(rng, 0.5)
    p |= {
        "inharmonicity": _u(rng, 0.0, 4e-4),
        "t60_low_s": _u(rng, 4.0, 10.0),
        "t60_high_s": _u(rng, 0.2, 0.5),
        "partial_decay": _u(rng, 0.05, 0.5),
        "strike_position": _u(rng, 0.06, 0.25),
        "tilt": _u(rng, 0.5, 1.2),
        "tilt_vel": _u(rng, 0.5, 1.5),
        "max_partials": int(rng.integers(12, MAX_PARTIALS + 1)),
        "click_db": _u(rng, -24.0, -8.0),
        "click_ms": _u(rng, 1.0, 4.0),
        "release_s": _logu(rng, 0.05, 0.25),
    }
    return p


_RANDOM = {
    "additive": _random_additive,
    "fm": _random_fm,
    "pluck": _random_pluck,
    "bowed": _random_bowed,
    "struck": _random_struck,
}


def random_voice(engine: str, rng: np.random.Generator) -> Voice:
    """One random timbre of `engine` (ValueError naming the engines for an unknown one)."""
    _check_engine(engine)
    return Voice(engine, _RANDOM[engine](rng))


# --------------------------------------------------------------------------------------------
# shared pieces
# --------------------------------------------------------------------------------------------


def _t60_at(lo: float, hi: float, pitch: float) -> float:
    """T60 interpolated log-linearly from `lo` at A0 (21) to `hi` at C8 (108)."""
    x = min(max((pitch - 21.0) / 87.0, 0.0), 1.0)
    return float(lo * (hi / lo) ** x)


def _release_curve(u: np.ndarray, release_s: float) -> np.ndarray:
    """1 -> exactly 0 over `release_s`: an exponential to -60 dB, shifted down to end at 0."""
    r = max(release_s, 1e-3)
    return np.clip((np.exp(-_LN1000 * u / r) - 1e-3) / (1.0 - 1e-3), 0.0, None)


def _ads_at(t: float, a: float, d: float, s: float, curve: float) -> float:
    """The attack/decay/sustain envelope at one time (the level the release starts from)."""
    if t < a:
        x = t / a
        return (1.0 - curve) * x + curve * math.expm1(-3.0 * x) / math.expm1(-3.0)
    return s + (1.0 - s) * math.exp(-3.0 * (t - a) / d)


def _adsr(p: dict, n_on: int, n_max: int, sr: int) -> np.ndarray:
    """Attack (rising from sample 0) / decay / sustain until the offset, then the release."""
    a, d, s, r = p["attack_s"], p["decay_s"], p["sustain"], p["release_s"]
    curve = p.get("attack_curve", 0.0)
    n = min(n_on + int(math.ceil(r * sr)) + 1, n_max)
    env = np.full(n, s)
    n_a = min(int(math.ceil(a * sr)), n_on, n)
    x = np.arange(n_a) / (a * sr)
    env[:n_a] = (1.0 - curve) * x + curve * np.expm1(-3.0 * x) / math.expm1(-3.0)
    # decay towards the sustain level; exp(-3 t / d) is below 1e-7 after 5.4 d
    n_d = min(n_on, n, n_a + int(math.ceil(5.4 * d * sr)))
    if n_d > n_a:
        td = np.arange(n_a, n_d) / sr - a
        env[n_a:n_d] = s + (1.0 - s) * np.exp(-3.0 * td / d)
    if n > n_on:
        level = _ads_at(n_on / sr, a, d, s, curve)
        env[n_on:] = level * _release_curve(np.arange(n - n_on) / sr, r)
    return env


def _damped_env(n: int, n_on: int, sr: int, release_s: float, ramp_s: float) -> np.ndarray:
    """Envelope of free-decaying voices: a short ramp from sample 0, a damper at the offset."""
    t = np.arange(n) / sr
    env = np.minimum(t / ramp_s, 1.0) if ramp_s > 0 else np.ones(n)
    if n > n_on:
        env[n_on:] *= _release_curve(t[n_on:] - n_on / sr, release_s)
    return env


def _copies(p: dict) -> tuple[np.ndarray, np.ndarray]:
    """Frequency ratios and gains of the nominal voice and its symmetric chorus pair."""
    if p.get("chorus", 0):
        r = 2.0 ** (p["detune_cents"] / 1200.0)
        g = p["chorus_gain"]
        return np.array([1.0, r, 1.0 / r]), np.array([1.0, g, g])
    return np.array([1.0]), np.array([1.0])


def _scale(amps: np.ndarray, gains: np.ndarray) -> float:
    """Gain giving RMS `_RMS_TARGET` (partials incoherent), capped so the peak stays bounded."""
    rms = math.sqrt(float(np.sum(amps**2)) / 2.0 * float(np.sum(gains**2)))
    peak = float(np.sum(np.abs(amps))) * float(np.sum(gains))
    if rms <= 0:
        return 0.0
    return min(_RMS_TARGET / rms, _PEAK_MAX / peak)


def _n_partials(p: dict, v: float, cap: int) -> int:
    """Partial count rising with velocity (brightness), at most the voice's cap."""
    k_max = int(p["max_partials"])
    return max(1, min(cap, int(round(min(8, k_max) + (k_max - min(8, k_max)) * v))))


def _tilt(p: dict, v: float) -> float:
    return p["tilt"] + p["tilt_vel"] * (1.0 - v)


def partial_bank(
    freqs: np.ndarray,
    amps: np.ndarray,
    phases: np.ndarray,
    decays: np.ndarray,
    n: int,
    sr: int,
) -> np.ndarray:
    """sum_k amps_k exp(-decays_k t) sin(2 pi freqs_k t + phases_k) at t = i / sr, i < n.

    Vectorised by blocks of `_BLOCK` samples: the trig functions are evaluated on the block
    grid and within one block only, and combined by one matrix product.
    """
    freqs = np.asarray(freqs, np.float64)
    if n <= 0:
        return np.zeros(0)
    if freqs.size == 0:
        return np.zeros(n)
    L = _BLOCK
    nb = -(-n // L)
    w = 2.0 * np.pi * freqs
    tau = np.arange(L) / sr
    T = np.arange(nb) * (L / sr)
    e_tau = np.exp(-np.outer(decays, tau))
    wt = np.outer(w, tau)
    bc = e_tau * np.cos(wt)
    bs = e_tau * np.sin(wt)
    ph = np.outer(T, w) + phases
    g = amps * np.exp(-np.outer(T, decays))
    coef = np.concatenate([g * np.sin(ph), g * np.cos(ph)], axis=1)
    basis = np.concatenate([bc, bs], axis=0)
    # Row chunks small enough for OpenBLAS's single-thread path: threaded tiny GEMMs stall
    # badly when the cores are shared (corpus worker processes).
    rows = max(1, _GEMM_SINGLE_THREAD_MNK // (basis.shape[0] * L))
    out = np.empty((nb, L))
    for i in range(0, nb, rows):
        np.matmul(coef[i : i + rows], basis, out=out[i : i + rows])
    return out.ravel()[:n]


def _wrapped_radians(cycles: np.ndarray) -> np.ndarray:
    """2 pi * fractional part of `cycles`, as float32."""
    frac = cycles - np.floor(cycles)
    return (frac * (2.0 * np.pi)).astype(np.float32)


def _one_pole_lowpass(x: np.ndarray, fc: float, fs: float) -> np.ndarray:
    a = math.exp(-2.0 * math.pi * fc / fs)
    return signal.lfilter([1.0 - a], [1.0, -a], x)


# --------------------------------------------------------------------------------------------
# engines: each renders one note from its onset over at most n_max samples
# --------------------------------------------------------------------------------------------


def _render_additive(p, ctx, f0, pitch, v, n_on, n_max, sr, rng):
    env = _adsr(p, n_on, n_max, sr)
    ratios, gains = _copies(p)
    K = _n_partials(p, v, MAX_PARTIALS)
    k = np.arange(1, K + 1, dtype=np.float64)
    B = p["inharmonicity"]
    fk = f0 * k * np.sqrt(1.0 + B * k**2) / math.sqrt(1.0 + B)
    keep = fk * ratios.max() < NYQUIST_FRACTION * sr / 2
    fk, k = fk[keep], k[keep]
    phases = rng.uniform(0.0, 2.0 * np.pi, K)[keep]
    amps = k ** -_tilt(p, v) * 10.0 ** (np.asarray(p["jitter_db"])[: len(k)] / 20.0)
    decays = p["partial_decay"] * (k - 1.0) / MAX_PARTIALS
    scale = _scale(amps, gains) * v ** p["vel_exp"]
    y = partial_bank(
        np.concatenate([fk * r for r in ratios]),
        np.concatenate([amps * g * scale for g in gains]),
        np.tile(phases, len(ratios)),
        np.tile(decays, len(ratios)),
        len(env),
        sr,
    )
    return y * env


def _render_fm(p, ctx, f0, pitch, v, n_on, n_max, sr, rng):
    env = _adsr(p, n_on, n_max, sr)
    n = len(env)
    ratios, gains = _copies(p)
    m = int(p["ratio"])
    # one random start phase for both operators (a time shift): the folded negative-frequency
    # sidebands then stay in phase with the positive ones, so a changing index only scales the
    # harmonics instead of drifting their phase (which would shift low notes' pitch)
    phc = float(rng.uniform(0.0, 2.0 * np.pi))
    phm = m * phc
    # sidebands sit at |1 + j m| f0; keep orders up to index + 2 below the cutoff
    j_max = math.floor((NYQUIST_FRACTION * sr / 2 / (f0 * ratios.max()) - 1.0) / m)
    if j_max < 0:
        return np.zeros(n)
    i_cap = j_max - 2.0 if j_max >= 3 else 0.25 * j_max
    i_peak = min(p["index"] * (p["index_vel"] + (1.0 - p["index_vel"]) * v), i_cap)
    t = np.arange(n) / sr
    s = min(p["index_sustain"], 1.75 / max(p["index"], 1e-9))
    index = (i_peak * (s + (1.0 - s) * np.exp(-t / p["index_decay_s"]))).astype(np.float32)
    y = np.zeros(n)
    i = np.arange(n)
    for r, g in zip(ratios, gains, strict=True):
        # phases wrapped in float64 (exact cycles), trig in float32 (fast, ample precision)
        cyc = i * (f0 * r / sr)
        car = _wrapped_radians(cyc) + np.float32(phc)
        mod = _wrapped_radians(cyc * m) + np.float32(phm)
        y += g * np.sin(car + index * np.sin(mod))
    level = 0.17 / math.sqrt(float(np.sum(gains**2)))
    return y * env * (level * v ** p["vel_exp"])


def ks_loop_filter(period: float, damping: float, loop_gain: float) -> tuple[int, np.ndarray]:
    """Integer delay N and 3-tap loop filter c of a Karplus-Strong string of `period` samples.

    c = g * conv([1 - s, s], [1 - d, d]). The damping section's phase delay at
    w0 = 2 pi / period is measured numerically; d is solved in closed form from
    ``tan(w0 t) = d sin w0 / (1 - d + d cos w0)`` so the interpolator's phase delay is the
    remainder t, making ``N + phase_delay(c, w0) == period``. g (capped at 0.99999) makes the
    loop's gain at w0 equal `loop_gain` (the fundamental's amplitude factor per period).
    """
    w = 2.0 * math.pi / period
    s = damping
    h_s = (1.0 - s) + s * np.exp(-1j * w)
    tau_s = -float(np.angle(h_s)) / w
    N = int(math.floor(period - tau_s))
    t = period - N - tau_s  # in [0, 1)
    tw = math.tan(w * t)
    d = tw / (math.sin(w) + tw * (1.0 - math.cos(w)))
    c = np.convolve([1.0 - s, s], [1.0 - d, d])
    h = abs(np.polyval(c[::-1], np.exp(-1j * w)))
    g = min(loop_gain / h, 0.99999)
    return N, g * c


def ks_phase_delay(N: int, c: np.ndarray, period: float) -> float:
    """The KS loop's phase delay (samples) at frequency 1 / period cycles per sample."""
    w = 2.0 * math.pi / period
    h = np.polyval(np.asarray(c)[::-1], np.exp(-1j * w))
    return N - float(np.angle(h)) / w


def _ks_run(x: np.ndarray, N: int, c: np.ndarray, n: int) -> np.ndarray:
    """y[i] = x[i] + c0 y[i-N] + c1 y[i-N-1] + c2 y[i-N-2] for i < n (x zero-padded).

    This is ``lfilter([1], a, x)`` with ``a[0] = 1, a[N:N+3] = -c`` (the tests check it), but
    lfilter costs O(N) per sample for the mostly-zero denominator. Unrolling the loop m times,
    ``y = sum_{j<m} (C z^-N)^j x + (C z^-N)^m y``, gives a recursion whose shortest lag is mN,
    so blocks of mN samples (>= 512) are computed at once from earlier output.
    """
    m = max(1, -(-512 // N))
    xt = np.zeros(n)
    u = np.asarray(x[:n], np.float64)
    xt[: len(u)] += u
    cm = np.ones(1)
    for j in range(1, m):  # the first m passes through the loop, straight from the burst
        cm = np.convolve(cm, c)
        start = j * N
        if start >= n:
            break
        u = np.convolve(np.asarray(x, np.float64), cm)[: n - start]
        xt[start : start + len(u)] += u
    cm = np.convolve(cm, c) if m > 1 else np.asarray(c, np.float64)
    lag = m * N
    taps = len(cm)  # lags lag .. lag + taps - 1
    off = lag + taps - 1
    y = np.zeros(n + off)
    y[off:] = xt
    rev = cm[::-1]
    for i0 in range(off, off + n, lag):
        i1 = min(i0 + lag, off + n)
        y[i0:i1] += np.correlate(y[i0 - off : i1 - lag], rev, "valid")
    return y[off:]


def _render_pluck(p, ctx, f0, pitch, v, n_on, n_max, sr, rng):
    if f0 >= NYQUIST_FRACTION * sr / 2:
        return np.zeros(0)
    t60 = _t60_at(p["t60_low_s"], p["t60_high_s"], pitch)
    # the string decays to -90 dB by 1.5 T60: no need to compute further
    n = min(n_on + int(math.ceil(p["release_s"] * sr)) + 1, n_max, int(1.5 * t60 * sr) + 1)
    period = sr / f0
    os = max(1, math.ceil(KS_MIN_PERIOD / period))
    fs = sr * os
    P = period * os
    N, c = ks_loop_filter(P, p["damping"], 10.0 ** (-3.0 / (t60 * f0)))
    # one period of noise with a flat magnitude spectrum and random phases: every harmonic
    # gets the same excitation (a plain noise burst can leave the fundamental weak by chance)
    L = int(round(P))
    spec = np.exp(2j * np.pi * rng.random(L // 2 + 1))
    spec[0] = 0.0
    burst = np.fft.irfft(spec, L)
    M = max(1, int(round(p["pick_position"] * P)))
    burst[M:] -= burst[:-M].copy()
    fc = min(f0 * (p["bright_low"] + (p["bright_high"] - p["bright_low"]) * v), 0.45 * sr)
    burst = _one_pole_lowpass(burst, fc, fs)
    if os > 1:  # band-limit the excitation below the output Nyquist before decimating
        x = np.zeros(min(L + 64 * os, n * os))
        x[: min(L, len(x))] = burst[: len(x)]
        burst = signal.sosfilt(_aa_filter(sr, os), x)
    peak = float(np.abs(burst).max())
    if peak <= 0:
        return np.zeros(n)
    burst *= _PLUCK_PEAK / peak
    y = _ks_run(burst, N, c, n * os)[::os][:n]
    env = _damped_env(n, n_on, sr, p["release_s"], 0.0)
    return y * env * v ** p["vel_exp"]


_AA_CACHE: dict[tuple[int, int], np.ndarray] = {}


def _aa_filter(sr: int, os: int) -> np.ndarray:
    """Causal Chebyshev-II lowpass at sr * os, stopband from the output Nyquist (70 dB)."""
    key = (sr, os)
    if key not in _AA_CACHE:
        _AA_CACHE[key] = signal.cheby2(10, 70.0, 0.5 * sr, fs=sr * os, output="sos")
    return _AA_CACHE[key]


def _render_bowed(p, ctx, f0, pitch, v, n_on, n_max, sr, rng):
    env = _adsr(p, n_on, n_max, sr)
    n = len(env)
    ratios, gains = _copies(p)
    cutoff = min(NYQUIST_FRACTION * sr / 2, BOWED_MAX_HZ)
    top = f0 * ratios.max() * 2.0 ** (p["vib_cents"] / 1200.0)
    K = min(_n_partials(p, v, MAX_BOWED_PARTIALS), int(math.ceil(cutoff / top)) - 1)
    phases = rng.uniform(0.0, 2.0 * np.pi, MAX_BOWED_PARTIALS)
    phv = float(rng.uniform(0.0, 2.0 * np.pi))
    noise = rng.standard_normal(n)
    if K < 1:
        return np.zeros(n)
    k = np.arange(1, K + 1, dtype=np.float64)
    amps = k ** -_tilt(p, v) * 10.0 ** (np.asarray(p["jitter_db"])[:K] / 20.0)
    if p["odd_only"]:
        amps[1::2] *= 10.0 ** (p["even_db"] / 20.0)
    scale = _scale(amps, gains)
    spec = np.zeros(_TABLE // 2 + 1, np.complex128)
    spec[1 : K + 1] = (_TABLE / 2) * amps * scale * -1j * np.exp(1j * phases[:K])
    table = np.fft.irfft(spec, _TABLE)
    table = np.append(table, table[0])
    # phase accumulator with vibrato (sinusoidal in cents, faded in)
    n_v = int(math.ceil(p["vib_delay_s"] * sr))  # vibrato starts after its delay
    inc = np.full(n, f0 / sr)
    if n > n_v:
        t = np.arange(n_v, n) / sr
        fade = np.minimum((t - p["vib_delay_s"]) / p["vib_fade_s"], 1.0)
        cents = p["vib_cents"] * fade * np.sin(2.0 * np.pi * p["vib_rate"] * t + phv)
        inc[n_v:] *= np.exp2(cents / 1200.0)
    cyc = np.empty(n)
    cyc[0] = 0.0
    np.cumsum(inc[:-1], out=cyc[1:])
    dtab = np.diff(table)
    y = np.zeros(n)
    for r, g in zip(ratios, gains, strict=True):
        pos = cyc * r
        pos -= np.floor(pos)
        pos *= _TABLE
        i = pos.astype(np.intp)
        pos -= i
        y += g * (table[i] + pos * dtab[i])
    tone_rms = math.sqrt(float(np.sum((amps * scale) ** 2)) / 2.0 * float(np.sum(gains**2)))
    breath = signal.sosfilt(ctx["breath_sos"], noise)
    b_rms = float(np.sqrt(np.mean(breath**2)))
    if b_rms > 0:
        y += breath * (10.0 ** (p["breath_db"] / 20.0) * tone_rms / b_rms)
    return y * env * v ** p["vel_exp"]


def _render_struck(p, ctx, f0, pitch, v, n_on, n_max, sr, rng):
    ratios, gains = _copies(p)
    t60 = _t60_at(p["t60_low_s"], p["t60_high_s"], pitch)
    n = min(n_on + int(math.ceil(p["release_s"] * sr)) + 1, n_max, int(1.5 * t60 * sr) + 1)
    K = _n_partials(p, v, MAX_PARTIALS)
    k = np.arange(1, K + 1, dtype=np.float64)
    B = p["inharmonicity"]
    fk = f0 * k * np.sqrt(1.0 + B * k**2) / math.sqrt(1.0 + B)
    keep = fk * ratios.max() < NYQUIST_FRACTION * sr / 2
    phases = rng.uniform(0.0, 2.0 * np.pi, K)[keep]
    click = rng.standard_normal(int(math.ceil(5e-3 * p["click_ms"] * sr)) + 1)
    fk, k = fk[keep], k[keep]
    amps = k ** -_tilt(p, v) * np.maximum(np.abs(np.sin(np.pi * k * p["strike_position"])), 0.05)
    decays = _LN1000 / (t60 / (1.0 + p["partial_decay"] * (k - 1.0)))
    scale = _scale(amps, gains) if len(k) else 0.0
    y = partial_bank(
        np.concatenate([fk * r for r in ratios]),
        np.concatenate([amps * g * scale for g in gains]),
        np.tile(phases, len(ratios)),
        np.tile(decays, len(ratios)),
        n,
        sr,
    )
    # hammer / mallet click: decaying lowpassed noise, brighter at high velocity
    tc = np.arange(len(click)) / sr
    click = click * np.exp(-tc / (1e-3 * p["click_ms"]))
    click = _one_pole_lowpass(click, min(500.0 + 7500.0 * v, 0.45 * sr), sr)
    cpk = float(np.abs(click).max())
    if cpk > 0:
        m = min(len(click), n)
        y[:m] += click[:m] * (10.0 ** (p["click_db"] / 20.0) * _PEAK_MAX * 0.5 / cpk)
    env = _damped_env(n, n_on, sr, p["release_s"], 1e-3)
    return y * env * v ** p["vel_exp"]


_RENDER = {
    "additive": _render_additive,
    "fm": _render_fm,
    "pluck": _render_pluck,
    "bowed": _render_bowed,
    "struck": _render_struck,
}


def _context(voice: Voice, sr: int) -> dict:
    """Per-call precomputations (filters) shared by all notes of one render."""
    ctx: dict = {}
    if voice.engine == "bowed":
        p = voice.params
        half = 2.0 ** (p["breath_octaves"] / 2.0)
        hi_lim = 0.45 * sr
        fc = min(p["breath_hz"], hi_lim / half)
        ctx["breath_sos"] = signal.butter(
            2, [fc / half, min(fc * half, hi_lim)], btype="bandpass", fs=sr, output="sos"
        )
    return ctx


def render_notes(
    voice: Voice, notes: np.ndarray, sr: int, n_samples: int, rng: np.random.Generator
) -> np.ndarray:
    """Sum of every note of `notes` ((N, >=4) float: onset s, offset s, MIDI pitch, velocity 1..127; extra columns ignored) played by `voice`, float32 mono of length n_samples (notes cut at the end). Per-note randomness (phases, noise) from rng."""
    _check_engine(voice.engine)
    notes = np.asarray(notes, np.float64)
    if notes.size == 0:
        return np.zeros(int(n_samples), np.float32)
    if notes.ndim != 2 or notes.shape[1] < 4:
        raise ValueError(f"notes must be (N, >=4) onset/offset/pitch/velocity, got {notes.shape}")
    sr, n_samples = int(sr), int(n_samples)
    out = np.zeros(n_samples, np.float64)
    render = _RENDER[voice.engine]
    ctx = _context(voice, sr)
    p = voice.params
    for onset, offset, pitch, vel in notes[:, :4]:
        if not (math.isfinite(onset) and math.isfinite(offset) and math.isfinite(pitch)):
            continue
        start = int(round(onset * sr))
        n_max = n_samples - start
        if n_max <= 0:
            continue
        n_on = max(1, int(round(offset * sr)) - start)
        v = min(max(float(vel) if math.isfinite(vel) else 64.0, 1.0), 127.0) / 127.0
        f0 = float(midi_to_hz(pitch))
        y = render(p, ctx, f0, float(pitch), v, n_on, n_max, sr, rng)
        skip = max(0, -start)
        if skip >= len(y):
            continue
        seg = y[skip:]
        out[start + skip : start + skip + len(seg)] += seg
    return out.astype(np.float32)
