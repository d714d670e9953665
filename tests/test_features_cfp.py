"""CFP features (numpy, JAX, harmonic), the vocal/patch_cnn inputs and audio loading.

The oracle `literal_cfp` below is a slow, loop-by-loop float64 transcription of the maths of
omnizart's one-process ``_extract_cfp`` (STFT placed by modulo, full complex FFTs, the
nonlinearity and both filterbanks as explicit loops). It is kept independent of the vectorised
code under test.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import scipy.signal

from jaxmir.data.audio import (
    AudioError,
    active_level_db,
    load_audio,
    normalise_level,
    validate_audio,
)
from jaxmir.data.features import cfp as C
from jaxmir.data.features.vocal import (
    VOCAL_WINDOWS,
    extract_patches,
    patch_cfp,
    spectral_flux,
    vocal_cfp,
)


def synth(seconds: float, fs: int, seed: int = 0) -> np.ndarray:
    """Three harmonic tones with vibrato and a decaying envelope, plus white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * fs))) / fs
    x = np.zeros_like(t)
    for f0, amp in ((220.0, 0.3), (329.6, 0.2), (523.3, 0.15)):
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))) / fs
        for h in range(1, 7):
            x += amp / h * np.sin(h * phase)
    x *= 0.6 + 0.4 * np.exp(-(t % 0.5) * 8)
    return (x + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def literal_cfp(audio: np.ndarray, p: C.CFPParams) -> np.ndarray:
    """omnizart's CFP maths, literally, in float64: (T, bins, [Z, Spec, GCoS, Ceps])."""
    x = np.asarray(audio, np.float32)
    fs, fr = p.fs, p.fr
    hop = round(fs * p.hop_s)
    h = scipy.signal.windows.blackmanharris(p.win)
    n = int(fs / float(fr))
    centres = np.arange(hop, np.ceil(len(x) / float(hop)) * hop, hop).astype(int)
    lh = int(np.floor((p.win - 1) / 2))
    nh = int(round(n / 2.0))
    buf = np.zeros((n, len(centres)))
    for col, c in enumerate(centres):
        taus = np.arange(-min(nh - 1, lh, c - 1), min(nh - 1, lh, len(x) - c))
        hw = h[lh + taus - 1]
        buf[np.mod(n + taus, n), col] = x[c + taus - 1] * hw / np.linalg.norm(hw)
    spec = np.abs(np.fft.fft(buf, n=n, axis=0)) ** p.g[0]

    def nonlin(v, g, cut):
        v = v.copy()
        v[v < 0] = 0
        if cut > 0:
            v[:cut] = 0
            v[-cut:] = 0
        return v**g

    tfr, ceps = spec, np.zeros_like(spec)
    for layer in range(1, len(p.g)):
        if layer % 2:
            ceps = nonlin(
                np.real(np.fft.fft(tfr, axis=0)) / np.sqrt(n), p.g[layer], round(fs * p.tc)
            )
        else:
            tfr = nonlin(
                np.real(np.fft.fft(ceps, axis=0)) / np.sqrt(n), p.g[layer], round(p.fc / fr)
            )
    top_f = int(round((1 / p.tc) / fr) + 1)
    top_q = int(round(fs / p.fc) + 1)
    freqs = (fs * np.linspace(0, 0.5, nh, endpoint=True))[:top_f]
    spec0, tfr, ceps = spec[:nh][:top_f], tfr[:nh][:top_f], ceps[:nh][:top_q]
    stop, cf = 1 / p.tc, []
    for i in range(int(np.ceil(np.log2(stop / p.fc)) * p.bins_per_octave)):
        v = p.fc * pow(2, float(i) / p.bins_per_octave)
        if v >= stop:
            break
        cf.append(v)
    nb = len(cf)
    wf = np.zeros((nb - 1, len(freqs)))
    for i in range(1, nb - 1):
        lo, hi = int(round(cf[i - 1] / fr)), int(round(cf[i + 1] / fr) + 1)
        if lo >= hi - 1:
            wf[i, lo] = 1
            continue
        for j in range(lo, hi):
            if cf[i - 1] < freqs[j] < cf[i]:
                wf[i, j] = (freqs[j] - cf[i - 1]) / (cf[i] - cf[i - 1])
            elif cf[i] < freqs[j] < cf[i + 1]:
                wf[i, j] = (cf[i + 1] - freqs[j]) / (cf[i + 1] - cf[i])
    qf = 1 / (np.arange(top_q) / float(fs) + 1e-9)
    wq = np.zeros((nb - 1, top_q))
    for i in range(1, nb - 1):
        for j in range(int(round(fs / cf[i + 1])), int(round(fs / cf[i - 1])) + 1):
            if cf[i - 1] < qf[j] < cf[i]:
                wq[i, j] = (qf[j] - cf[i - 1]) / (cf[i] - cf[i - 1])
            elif cf[i] < qf[j] < cf[i + 1]:
                wq[i, j] = (cf[i + 1] - qf[j]) / (cf[i + 1] - cf[i])
    s_l, g_l, c_l = wf @ spec0, wf @ tfr, wq[:, : len(ceps)] @ ceps
    return np.stack([g_l * c_l, s_l, g_l, c_l], axis=-1).transpose(1, 0, 2)


def rel_err(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per channel: max|a - ref| / max|ref|."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return np.abs(a - ref).max(axis=(0, 1)) / np.abs(ref).max(axis=(0, 1))


@pytest.fixture(scope="module")
def music3():
    x = synth(3.0, 44100)
    return x, C.cfp_numpy(x, C.MUSIC)


# --------------------------------------------------------------------------- parameters


def test_presets_and_frame_count():
    assert C.n_frames(60 * 44100, C.MUSIC) == 2999  # omnizart's unsliced formula
    assert C.n_frames(3 * 44100, C.MUSIC) == 149
    assert [C.n_frames(n, C.MUSIC) for n in (0, 1, 882, 883, 1764, 1765)] == [0, 0, 0, 1, 1, 2]
    assert (C.MUSIC.hop, C.MUSIC.n_fft, C.MUSIC.tc_idx, C.MUSIC.fc_idx) == (882, 22050, 10, 14)
    assert (C.VOCAL_CONTOUR.hop, C.VOCAL_CONTOUR.tc_idx, C.VOCAL_CONTOUR.fc_idx) == (320, 4, 14)
    assert (C.PATCH_CNN.n_fft, C.PATCH_CNN.tc_idx, C.PATCH_CNN.fc_idx) == (8000, 16, 40)
    assert C.MUSIC.n_bins == C.VOCAL_CONTOUR.n_bins == 352
    assert C.PATCH_CNN.n_bins == 174
    assert [p.win for p in VOCAL_WINDOWS] == [186, 372, 743]
    assert all(p.n_bins == 174 and p.fs == 16000 for p in VOCAL_WINDOWS)
    assert hash(C.MUSIC) == hash(C.CFPParams(g=[0.24, 0.6, 1]))  # g coerced to a tuple
    with pytest.raises(ValueError):
        C.CFPParams(g=(0.24, 0.0, 1.0))
    np.testing.assert_allclose(
        C.blackman_harris(7939), scipy.signal.windows.blackmanharris(7939), atol=1e-15
    )


def test_structural_zero_bins_match_omnizart():
    # bins whose filter has no weight: omnizart's 60 s music CFP shows [Spec 21, GCoS 21, Ceps 38]
    plan = C._plan(C.MUSIC)
    counts = [
        int((np.abs(m.dense(4000)).sum(axis=1) == 0).sum())
        for m in (plan.spec_map, plan.gcos_map, plan.ceps_map)
    ]
    assert counts == [21, 21, 38]
    # on broadband audio the all-zero bins are exactly omnizart's (music and vocal_contour)
    noise = (0.1 * np.random.default_rng(1).standard_normal(44100)).astype(np.float32)
    for params, want in ((C.MUSIC, [58, 21, 21, 38]), (C.VOCAL_CONTOUR, [115, 21, 21, 95])):
        out = C.cfp_numpy(noise[: params.fs], params, np.float32)
        assert (np.abs(out).max(axis=0) == 0).sum(axis=0).tolist() == want


# --------------------------------------------------------------------------- numpy vs literal


@pytest.mark.parametrize(
    "params, seconds",
    [
        (C.MUSIC, 1.0),
        (C.MUSIC, 0.12),  # shorter than the window: every frame is cut at both ends
        (C.VOCAL_CONTOUR, 0.73),
        (C.VOCAL_372, 0.51),
        (C.VOCAL_743, 0.6),
    ],
    ids=["music", "music-short", "vocal_contour", "vocal372", "vocal743"],
)
def test_numpy_matches_literal_reference(params, seconds):
    x = synth(seconds, params.fs, seed=1)
    ref = literal_cfp(x, params)
    out = C.cfp_numpy(x, params)
    assert out.shape == ref.shape == (C.n_frames(len(x), params), params.n_bins, 4)
    assert out.dtype == np.float64
    assert rel_err(out, ref).max() <= 1e-6
    np.testing.assert_array_equal(np.abs(out).max(axis=0) == 0, np.abs(ref).max(axis=0) == 0)


def test_numpy_shapes_rows_and_variants(music3):
    x, out = music3
    assert out.shape == (149, 352, 4)
    assert np.isfinite(out).all() and (out >= 0).all()
    assert not out[:, 0, :].any()  # row 0 is always zero
    zero = np.abs(out).max(axis=0) == 0
    assert zero[:, 1].sum() == 21 and zero[1:, 1].sum() == 20
    # chunking and threads change nothing; float32 stays within 1e-4
    same = C.cfp_numpy(x, C.MUSIC, chunk=7, workers=2)
    np.testing.assert_allclose(same, out, rtol=1e-12, atol=1e-12 * np.abs(out).max())
    assert rel_err(C.cfp_numpy(x, C.MUSIC, np.float32), out).max() <= 1e-4
    short = x[:30000]
    pure = C.cfp_numpy(short, C.MUSIC, backend="numpy")  # np.fft + reduceat, no scipy
    assert rel_err(pure, C.cfp_numpy(short, C.MUSIC)).max() <= 1e-12
    assert C.cfp_numpy(x[:500], C.MUSIC).shape == (0, 352, 4)
    with pytest.raises(ValueError):
        C.cfp_numpy(np.zeros((2, 5000), np.float32), C.MUSIC)


def test_jax_matches_numpy(music3):
    x, out = music3
    got = np.asarray(C.cfp_jax(x, C.MUSIC))
    assert got.shape == out.shape and got.dtype == np.float32
    errs = rel_err(got, out)
    assert errs.max() <= 1e-4, errs
    assert not got[:, 0, :].any()
    small = synth(0.5, 16000, seed=3)  # 174 bins, several chunks, edge frames in the last
    errs = rel_err(
        np.asarray(C.cfp_jax(small, C.PATCH_CNN, chunk=16)), C.cfp_numpy(small, C.PATCH_CNN)
    )
    assert errs.max() <= 1e-4, errs


def test_music_cfp_channels(music3):
    _, out = music3
    sel = C.music_cfp_channels(out)
    np.testing.assert_array_equal(sel, out[..., [1, 3]])
    np.testing.assert_array_equal(
        C.music_cfp_channels(out, ("Ceps", "Z", "GCoS")), out[..., [3, 0, 2]]
    )
    assert C.music_cfp_channels(out, "Spec").shape == (149, 352, 1)
    with pytest.raises(ValueError, match="unknown CFP channel"):
        C.music_cfp_channels(out, ("Spectrum",))


def test_hcfp():
    x = synth(0.4, 44100, seed=2)
    base = C.cfp_numpy(x, C.HCFP)
    h = C.hcfp_numpy(x, C.MUSIC, harmonic_num=6)
    assert h.shape == (base.shape[0], 352, 21)
    cenf = np.asarray(C.HCFP.central_freqs)
    # (group, CFP channel, harmonic index i, frequency multiple of A0): Ceps uses A0/(i+1)
    for group, ch, i, mult in ((0, 1, 1, 2.0), (1, 2, 2, 3.0), (2, 3, 1, 0.5)):
        hid = int(np.argmin(np.abs(cenf - mult * C.A0_HZ)))
        np.testing.assert_array_equal(h[:, :, group * 7 + i], base[:, hid : hid + 352, ch])
    assert h[..., 7:14].any()  # GCoS is not wiped, unlike omnizart's round(0.5) == 0 cut
    assert not h[:, -10:, 6].any()  # the 7th harmonic runs off the top: zero-filled


# --------------------------------------------------------------------------- vocal / patch_cnn


def test_vocal_nine_channels():
    x = synth(1.0, 16000, seed=4)
    v = vocal_cfp(x)
    assert v.shape == (C.n_frames(len(x), C.VOCAL_743), 174, 9) and np.isfinite(v).all()
    low = C.cfp_numpy(x, C.VOCAL_186)
    np.testing.assert_allclose(v[..., 0], spectral_flux(low[..., 1]), atol=1e-12)
    diff = np.maximum(low[:-1, :, 1] - low[1:, :, 1], 0)  # inverse flux: energy decrease
    inv = np.concatenate([np.zeros((1, 174)), diff])
    np.testing.assert_allclose(v[..., 3], (inv - inv.mean()) / inv.std(), atol=1e-12)
    assert (np.ptp(v[0, :, :6], axis=0) == 0).all()  # frame 0 has no flux: one constant
    for ch in (0, 3, 6, 8):
        assert abs(v[..., ch].mean()) < 1e-9 and abs(v[..., ch].std() - 1) < 1e-9
    with pytest.raises(ValueError, match="16000"):
        vocal_cfp(x, fs=44100)


def test_patch_extraction_count_and_content():
    x = synth(1.0, 16000, seed=5)
    patches, frames, bins, z = patch_cfp(x)
    t, f = z.shape
    assert (t, f) == (C.n_frames(len(x), C.PATCH_CNN), 174)
    expected = [
        (ti, b)
        for ti in range(t)
        for b in range(12, f)
        if z[ti, b] > z[ti, b - 1] and z[ti, b] > (z[ti, b + 1] if b + 1 < f else 0.0)
    ]
    assert len(expected) > 0 and patches.shape == (len(expected), 25, 25)
    assert list(zip(frames.tolist(), bins.tolist(), strict=True)) == expected
    padded = np.pad(z.T, ((12, 12), (12, 12)))
    for i in (0, len(expected) // 2, len(expected) - 1):
        ti, b = expected[i]
        np.testing.assert_array_equal(patches[i], padded[b : b + 25, ti : ti + 25])
        assert patches[i][12, 12] == z[ti, b]
    p2, f2, b2 = extract_patches(np.zeros((5, 30)))
    assert p2.shape == (0, 25, 25) and f2.size == b2.size == 0


# --------------------------------------------------------------------------- audio


def test_load_audio_ok_and_errors(tmp_path):
    sf = pytest.importorskip("soundfile")
    rng = np.random.default_rng(0)
    stereo = (0.1 * rng.standard_normal((22050, 2))).astype(np.float32)
    good = tmp_path / "good.wav"
    sf.write(good, stereo, 22050, subtype="FLOAT")
    y = load_audio(good, 16000)
    assert y.dtype == np.float32 and y.ndim == 1 and abs(len(y) - 16000) <= 1
    assert load_audio(good, 22050, mono=False).shape == (2, 22050)

    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    nan = tmp_path / "nan.wav"
    sf.write(
        nan,
        np.where(np.arange(1000) == 500, np.nan, 0.1).astype(np.float32),
        16000,
        subtype="FLOAT",
    )
    cut = tmp_path / "cut.wav"
    sf.write(cut, stereo, 22050, subtype="PCM_16")
    cut.write_bytes(cut.read_bytes()[:5000])
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all " * 40)
    for path, reason in (
        (empty, "empty"),
        (nan, "NaN"),
        (cut, "truncated"),
        (junk, "cannot decode"),
        (tmp_path / "missing.wav", "no such file"),
    ):
        with pytest.raises(AudioError, match=reason) as info:
            load_audio(path, 16000)
        assert str(path) in str(info.value) and info.value.path == str(path)
    assert isinstance(AudioError("x", "y"), ValueError)
    with pytest.raises(AudioError, match="inf"):
        validate_audio(np.array([0.0, np.inf]), "arr")
    assert math.isclose(float(validate_audio(np.ones(3), "ok").sum()), 3.0)


def test_music_short_window_places_an_attack_where_the_long_one_smears_it():
    """`MUSIC_SHORT` (46 ms) has the CFP's frames and bins; a tone switched on at 0.5 s (the
    centre of frame 24) first shows in it within a frame of the onset, while the 180-ms
    `MUSIC` spectrum shows it 3 frames and more before."""
    sr = C.MUSIC.fs
    t = np.arange(int(sr * 1.5)) / sr
    y = np.where(t >= 0.5, np.sin(2 * np.pi * 440.0 * t), 0.0).astype(np.float32)
    k = (69 - 21) * 4  # A4's 4 bins
    short = C.cfp_numpy(y, C.MUSIC_SHORT, np.float32)
    long = C.cfp_numpy(y, C.MUSIC, np.float32)
    assert short.shape == long.shape and C.MUSIC_SHORT.n_fft == 2048

    def first_over_tenth(x):
        v = x[:, k : k + 4, C.CHANNELS["Spec"]].mean(axis=1)
        return int(np.flatnonzero(v > 0.1 * v[-20])[0])

    assert abs(first_over_tenth(short) - 24) <= 1
    assert first_over_tenth(long) <= 24 - 3


def test_level_reads_loud_passages_and_leaves_silence_alone():
    sr = 16000
    t = np.arange(sr * 2) / sr
    sine = np.sin(2 * np.pi * 440.0 * t)
    assert abs(active_level_db(sine, sr) + 3.01) < 0.01  # a full-scale sine
    # rests do not pull the level down: 1.5 s of silence after 0.5 s of the sine
    assert abs(active_level_db(np.where(t < 0.5, sine, 0.0), sr) + 3.01) < 0.01
    y = normalise_level(0.001 * sine, sr, -20.0)
    assert y.dtype == np.float32 and abs(active_level_db(y, sr) + 20.0) < 0.01
    short = normalise_level(0.5 * sine[:100], sr, -20.0)  # shorter than a 100-ms frame
    assert abs(active_level_db(short, sr) + 20.0) < 0.01
    # a DC offset is no sound: a quiet recording on one is read at its sound's level
    offset = 0.01 * sine + 0.2
    assert abs(active_level_db(offset, sr) - active_level_db(0.01 * sine, sr)) < 0.01
    levelled = normalise_level(offset, sr, -20.0)
    assert abs(active_level_db(levelled, sr) + 20.0) < 0.01 and abs(levelled.mean()) < 1e-4
    assert not normalise_level(np.full(sr, 0.5, np.float32), sr, -20.0).any()  # DC alone: silence
    silence = np.zeros(sr, np.float32)
    assert np.array_equal(normalise_level(silence, sr, -20.0), silence)
    assert active_level_db(np.zeros(0), sr) == float("-inf")


def test_music_reads_files_to_transcribe_at_one_level_and_training_data_as_rendered(tmp_path):
    """A file 40 dB quieter or 12 dB louder gives, when transcribed (`input_features`, through
    `load_audio(..., level_db=LEVEL_DB)`), the features it gives at its own level; the CFP alone
    would not (its power-law layers follow the level). Training pieces are read as rendered (a
    gain augmentation): the same files give different training features, and the cache's
    parameters are those of features read as rendered (caches from before are reused)."""
    sf = pytest.importorskip("soundfile")
    from jaxmir.data.records import AudioPiece
    from jaxmir.tasks.music.task import TASK, WITH_SHORT, music_features

    sr = C.MUSIC.fs
    t = np.arange(int(sr * 0.8)) / sr
    y = sum(np.exp(-3.0 * t) * np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6, 660.0))
    y = (0.05 * y * (t > 0.1)).astype(np.float32)
    tiny = TASK.preset("tiny")
    cfg = dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, channels=WITH_SHORT))
    paths = []
    for gain in (1.0, 0.01, 4.0):
        paths.append(tmp_path / f"{gain}.wav")
        sf.write(paths[-1], (gain * y).astype(np.float32), sr, subtype="FLOAT")
    at_level, *others = (TASK.input_features(p, cfg) for p in paths)
    scale = np.abs(at_level).max(axis=(0, 1))
    for other in others:
        # float32 rounding of a 40-dB-quieter input leaves at most 0.4 % of a channel's range
        assert np.all(np.abs(other - at_level).max(axis=(0, 1)) <= 0.01 * scale)
    raw, raw_quiet = (music_features(AudioPiece(p.stem, p, "train"))[0] for p in paths[:2])
    assert np.max(np.abs(raw - raw_quiet)) > 0.1 * np.max(np.abs(raw))
    assert "level_db" not in TASK.cache_params("synth")


@pytest.mark.parametrize("task_name", ["vocal", "vocal_contour", "patch_cnn", "drum", "chord"])
def test_every_audio_task_reads_a_recording_the_same_at_any_level(task_name, tmp_path):
    """Each audio task's features of a file to transcribe 30 dB quieter match its own.
    vocal_contour, patch_cnn and drum level such a file first (`AudioPiece.input`) and read their
    training data as recorded (there the two files' features differ by 60-170 % on average);
    vocal's CFP and chord's per-frame chroma are level-free by construction (their differences
    here, 0.1 % and 1.6 %, are float rounding, the chroma's in near-silent frames)."""
    sf = pytest.importorskip("soundfile")
    from jaxmir.data.records import AudioPiece
    from jaxmir.tasks.base import get_task

    task = get_task(task_name)
    sr = 44100
    t = np.arange(int(sr * 4.0)) / sr
    rng = np.random.default_rng(0)
    tones = sum(
        np.sin(2 * np.pi * f * t) * (np.sin(np.pi * t * k) > 0)
        for k, f in enumerate((220.0, 330.0, 440.0), 1)
    )
    clicks = np.zeros_like(t)
    clicks[:: sr // 2] = 1.0  # a beat for the drum task's tracker
    hits = np.convolve(clicks, rng.standard_normal(400) * np.exp(-np.arange(400) / 60.0))
    y = 0.05 * (tones + hits[: len(t)])
    paths = []
    for gain in (1.0, 10 ** (-30 / 20)):
        paths.append(tmp_path / f"{gain:.4f}.wav")
        sf.write(paths[-1], (gain * y).astype(np.float32), sr, subtype="FLOAT")
    loud, quiet = (np.asarray(task.input_features(p, None), np.float32) for p in paths)
    assert loud.shape == quiet.shape and np.abs(loud).max() > 0
    assert np.abs(loud - quiet).mean() <= 0.03 * np.abs(loud).mean()
    if task_name in ("vocal_contour", "patch_cnn", "drum"):  # training reads as recorded
        trained = (task.piece_features(AudioPiece(p.stem, p, "train"))[0] for p in paths)
        loud, quiet = (np.asarray(x, np.float32) for x in trained)
        assert np.abs(loud - quiet).mean() > 0.3 * np.abs(loud).mean()
        assert "level_db" not in task.cache_params("synth")


@pytest.mark.parametrize("params", ["MUSIC", "MUSIC_SHORT", "VOCAL_CONTOUR"])
def test_a_gain_on_the_audio_is_a_power_of_it_on_each_cfp_channel(params):
    """`gain_exponents`: the CFP of the audio times a equals each channel times a**e, for a
    gain 20 dB down and 10 dB up, within float rounding of each channel's range."""
    p = getattr(C, params)
    rng = np.random.default_rng(3)
    t = np.arange(int(p.fs * 0.5)) / p.fs
    y = 0.1 * np.sin(2 * np.pi * 330.0 * t) + 0.01 * rng.standard_normal(len(t))
    x = C.cfp_numpy(y.astype(np.float32), p, np.float64)
    e = C.gain_exponents(p)
    for a in (0.1, 10**0.5):
        scaled = C.cfp_numpy((a * y).astype(np.float32), p, np.float64)
        for name, c in C.CHANNELS.items():
            if not x[..., c].any():
                continue  # a one-layer CFP has no Ceps (nor Z)
            err = np.abs(scaled[..., c] - x[..., c] * a ** e[name]).max()
            assert err <= 1e-4 * np.abs(scaled[..., c]).max(), (name, a)
    assert e["Spec"] == p.g[0] and e["Z"] == pytest.approx(e["GCoS"] + e["Ceps"])
