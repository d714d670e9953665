"""Melody building blocks: f0 grids, reference resampling, vocal_contour/patch_cnn labels and
decoders, mir_eval melody scores, writers."""

from __future__ import annotations

import math

import mir_eval
import numpy as np
import pytest

from jaxmir.data.features.cfp import PATCH_CNN, VOCAL_CONTOUR
from jaxmir.melody import (
    bin_freqs,
    bin_to_hz,
    f0_at,
    frame_times,
    hz_to_bin,
    plot_f0,
    write_f0_csv,
    write_melody,
)
from jaxmir.metrics import MELODY_KEYS, melody_scores
from jaxmir.tasks.patch_cnn.decode import decode_patches
from jaxmir.tasks.patch_cnn.labels import patch_ref_bins, patch_targets, two_class_targets
from jaxmir.tasks.vocal_contour.decode import decode_contour
from jaxmir.tasks.vocal_contour.labels import (
    N_BINS,
    OMNIZART_PAD_LOW,
    PAD_LOW,
    contour_bins,
    pad_rows,
    window_targets,
)

# ----------------------------------------------------------------------------- grids


def test_vocal_contour_grid_matches_omnizart_midi_rule():
    assert VOCAL_CONTOUR.n_bins == 352 and N_BINS == 384
    assert PAD_LOW == 0 and OMNIZART_PAD_LOW == 16
    assert hz_to_bin(440.0, VOCAL_CONTOUR) == (69 - 21) * 4 == 192
    rows = np.arange(352)
    hz = bin_to_hz(rows, VOCAL_CONTOUR)
    np.testing.assert_allclose(hz, mir_eval.util.midi_to_hz(21 + rows / 4), rtol=1e-12)
    np.testing.assert_array_equal(hz_to_bin(hz, VOCAL_CONTOUR), rows)
    # +-10 cents stays on the row (rows are 25 cents apart); the nearest row in MIDI terms
    np.testing.assert_array_equal(hz_to_bin(hz[1:] * 2 ** (10 / 1200), VOCAL_CONTOUR), rows[1:])
    np.testing.assert_array_equal(hz_to_bin(hz[1:] * 2 ** (-10 / 1200), VOCAL_CONTOUR), rows[1:])
    midi = np.array([60.1, 60.2, 69.0, 70.37])
    np.testing.assert_array_equal(
        hz_to_bin(mir_eval.util.midi_to_hz(midi), VOCAL_CONTOUR), np.round((midi - 21) * 4)
    )


def test_patch_cnn_grid_round_trip_and_unvoiced():
    assert PATCH_CNN.n_bins == 174
    rows = np.arange(174)
    hz = bin_to_hz(rows, PATCH_CNN)
    assert hz[0] == 80.0
    np.testing.assert_array_equal(hz, np.asarray(PATCH_CNN.central_freqs[:174]))
    np.testing.assert_array_equal(hz_to_bin(hz, PATCH_CNN), rows)
    np.testing.assert_array_equal(hz_to_bin([0.0, -5.0, np.nan, 60.0], PATCH_CNN), [-1] * 4)
    np.testing.assert_array_equal(bin_to_hz([-1, 0], PATCH_CNN), [0.0, 80.0])


def test_bin_freqs_extends_the_geometric_grid():
    cf = np.asarray(VOCAL_CONTOUR.central_freqs[:352])
    np.testing.assert_array_equal(bin_freqs(VOCAL_CONTOUR), cf)
    ext = bin_freqs(VOCAL_CONTOUR, N_BINS)
    assert len(ext) == 384
    np.testing.assert_array_equal(ext[:352], cf)
    np.testing.assert_allclose(ext[352:], 27.5 * 2 ** (np.arange(352, 384) / 48), rtol=1e-12)
    padded = bin_freqs(VOCAL_CONTOUR, N_BINS, start=-16)  # omnizart's centred 384-row axis
    np.testing.assert_array_equal(padded[16 : 16 + 352], cf)
    np.testing.assert_allclose(padded[0], 27.5 * 2 ** (-16 / 48), rtol=1e-12)
    assert np.all(np.diff(np.log2(padded)) > 0)


def test_frame_times():
    np.testing.assert_allclose(frame_times(3, 0.02), [0.02, 0.04, 0.06])
    assert frame_times(0, 0.02).shape == (0,)


# ----------------------------------------------------------------------------- f0_at


def _contour_with_gap() -> np.ndarray:
    """10 ms grid, 0 .. 1 s: 220 Hz to 0.3 s, unvoiced to 0.5 s, 330 Hz to 0.8 s, then unvoiced."""
    t = np.round(np.arange(101) * 0.01, 10)
    hz = np.where(t < 0.295, 220.0, 0.0)
    hz = np.where((t > 0.495) & (t < 0.805), 330.0, hz)
    return np.stack([t, hz], axis=1)


def test_f0_at_gaps_and_outside():
    f0 = _contour_with_gap()
    times = np.array([-0.1, 0.105, 0.295, 0.305, 0.495, 0.505, 0.795, 0.905, 1.0, 1.5])
    want = [0, 220, 220, 0, 0, 330, 330, 0, 0, 0]
    np.testing.assert_allclose(f0_at(f0, times), want)


def test_f0_at_linear_between_voiced_samples_and_edge_cases():
    glide = np.array([[0.0, 200.0], [0.01, 210.0], [0.02, 220.0]])
    np.testing.assert_allclose(f0_at(glide, [0.005, 0.015]), [205.0, 215.0])
    np.testing.assert_array_equal(f0_at(np.zeros((0, 2)), [0.1, 0.2]), [0.0, 0.0])
    np.testing.assert_array_equal(f0_at([[0.1, 300.0]], [0.1, 0.2]), [300.0, 0.0])
    np.testing.assert_array_equal(f0_at(glide, []), np.zeros(0))


# ----------------------------------------------------------------------------- vocal_contour


def test_contour_bins():
    t = np.arange(101) * 0.01  # 0 .. 1 s
    f0 = np.stack([t, np.where(t < 0.5, 440.0, 5000.0)], axis=1)  # 5 kHz is above the grid
    bins = contour_bins(f0, 60)
    assert bins.dtype == np.int32 and bins.shape == (60,)
    times = frame_times(60, VOCAL_CONTOUR.hop_s)
    np.testing.assert_array_equal(bins[times < 0.49], 192)
    assert np.all(bins[times > 0.51] == -1)  # out of range, then past the annotation


@pytest.mark.parametrize("pad", [PAD_LOW, OMNIZART_PAD_LOW])
def test_window_targets_and_pad_rows(pad):
    bins = np.array([192, -1, 0, 351, 352, 100], np.int32)
    y = window_targets(bins, pad_low=pad)
    assert y.shape == (6, 384, 2) and y.dtype == np.float32
    np.testing.assert_array_equal(y.sum(-1), 1.0)  # one-hot pair on every row
    voiced = np.array([1, 0, 1, 1, 0, 1], bool)  # 352 is outside the CFP rows
    np.testing.assert_array_equal(y[..., 1].sum(1), voiced.astype(np.float32))
    np.testing.assert_array_equal(y[voiced, bins[voiced] + pad, 1], 1.0)
    padded = np.r_[0:pad, pad + 352 : 384]
    assert len(padded) == 32
    np.testing.assert_array_equal(y[:, padded, 0], 1.0)

    x = np.random.default_rng(0).random((5, 352, 1))
    xp = pad_rows(x, pad_low=pad)
    assert xp.shape == (5, 384, 1)
    np.testing.assert_array_equal(xp[:, pad : pad + 352], x)
    assert not xp[:, padded].any()
    # the feature row holding energy is the target row
    peak = np.zeros((1, 352))
    peak[0, 192] = 1.0
    assert np.argmax(pad_rows(peak, pad_low=pad)[0]) == np.argmax(
        window_targets(np.array([192]), pad_low=pad)[0, :, 1]
    )


@pytest.mark.parametrize("pad", [PAD_LOW, OMNIZART_PAD_LOW])
def test_decode_contour_recovers_contour_and_thresholds(pad):
    rng = np.random.default_rng(1)
    bins = rng.integers(40, 300, size=50)
    bins[::7] = -1
    probs = window_targets(bins, pad_low=pad).astype(np.float64)
    probs[..., 1] *= 0.9  # channel 1 as a sigmoid posterior
    want = bin_to_hz(bins, VOCAL_CONTOUR)
    np.testing.assert_allclose(decode_contour(probs, pad_low=pad, guess=False), want)
    np.testing.assert_allclose(decode_contour(probs[..., 1], pad_low=pad, guess=False), want)

    probs[3, :, 1] *= 0.5  # 0.45 < 0.5: unvoiced
    probs[4, 370, 1] = 0.99  # a padded row never wins
    out = decode_contour(probs, pad_low=pad, guess=False)
    assert out[3] == 0.0 and out[4] == want[4]
    # with a guess (the default), an unvoiced frame carries minus its best row's Hz
    assert decode_contour(probs, pad_low=pad)[3] == -want[3]
    assert decode_contour(probs, threshold=0.4, pad_low=pad)[3] == want[3]

    p = np.zeros((4, 384, 2))
    p[:, 100 + pad, 1] = [0.9, 0.8, 0.2, 0.1]  # mean of the maxima 0.5
    hz100 = bin_to_hz(100, VOCAL_CONTOUR)
    out = decode_contour(p, threshold=None, pad_low=pad, guess=False)
    np.testing.assert_allclose(out, [hz100, hz100, 0, 0])
    out = decode_contour(p, threshold=0.85, pad_low=pad)
    np.testing.assert_allclose(out, [hz100, -hz100, -hz100, -hz100])
    assert decode_contour(np.zeros((0, 384, 2))).shape == (0,)


# ----------------------------------------------------------------------------- patch_cnn


def test_patch_targets_values():
    ref_bins = np.array([10, -1, 20], np.int32)
    frame_idx = np.array([0, 0, 0, 0, 1, 2])
    bin_idx = np.array([10, 11, 12, 8, 10, 30])
    soft = patch_targets(frame_idx, bin_idx, ref_bins)
    assert soft.dtype == np.float32
    np.testing.assert_allclose(soft, [1.0, 1 / 2, 1 / 3, 1 / 3, 0.0, 1 / 11], rtol=1e-6)
    y = two_class_targets(soft)
    assert y.shape == (6, 2)
    np.testing.assert_allclose(y[:, 1], soft)
    np.testing.assert_allclose(y.sum(1), 1.0)
    with pytest.raises(ValueError):
        patch_targets([3], [10], ref_bins)


def test_patch_ref_bins_on_patch_grid():
    t = np.arange(21) * 0.01  # 0 .. 0.2 s
    f0 = np.stack([t, np.select([t < 0.045, t < 0.095], [80.0, 160.0], 0.0)], axis=1)
    bins = patch_ref_bins(f0, 10)
    # frames at 0.02, 0.04 -> 80 Hz (row 0); 0.06, 0.08 -> 160 Hz (row 48); then unvoiced
    np.testing.assert_array_equal(bins, [0, 0, 48, 48, -1, -1, -1, -1, -1, -1])


def test_decode_patches_best_per_frame_above_threshold():
    probs = np.array([0.3, 0.6, 0.04, 0.2, 0.2, 0.5])
    frame_idx = np.array([0, 0, 1, 2, 2, 0])
    bin_idx = np.array([30, 40, 50, 60, 55, 45])
    out = decode_patches(probs, frame_idx, bin_idx, n_frames=4, guess=False)
    np.testing.assert_allclose(out, [bin_to_hz(40, PATCH_CNN), 0.0, bin_to_hz(55, PATCH_CNN), 0])
    soft = np.stack([1 - probs, probs], axis=1)
    np.testing.assert_allclose(decode_patches(soft, frame_idx, bin_idx, 4, guess=False), out)
    guessed = decode_patches(probs, frame_idx, bin_idx, 4)  # frame 1: 0.04 <= 0.05, a guess
    np.testing.assert_allclose(guessed, [out[0], -bin_to_hz(50, PATCH_CNN), out[2], 0.0])
    out = decode_patches(probs, frame_idx, bin_idx, 4, threshold=0.01)
    assert out[1] == bin_to_hz(50, PATCH_CNN)
    np.testing.assert_array_equal(decode_patches(np.zeros(0), [], [], 3), np.zeros(3))


# ----------------------------------------------------------------------------- metrics


def _ref() -> np.ndarray:
    t = np.arange(100) * 0.01
    return np.stack([t, np.where(np.arange(100) < 80, 220.0, 0.0)], axis=1)


def test_melody_scores_perfect_and_hand_counted():
    ref = _ref()
    s = melody_scores(ref, ref[:, 0], ref[:, 1])
    assert tuple(s) == MELODY_KEYS
    assert s["raw_pitch_accuracy"] == s["overall_accuracy"] == s["voicing_recall"] == 1.0
    assert s["voicing_false_alarm"] == 0.0

    est = ref[:, 1].copy()
    est[40:80] = 440.0  # half the voiced frames an octave off
    est[80:90] = 220.0  # half the unvoiced frames voiced
    s = melody_scores(ref, ref[:, 0], est)
    assert s["raw_pitch_accuracy"] == pytest.approx(40 / 80)
    assert s["raw_chroma_accuracy"] == pytest.approx(1.0)
    assert s["voicing_recall"] == pytest.approx(1.0)
    assert s["voicing_false_alarm"] == pytest.approx(10 / 20)
    assert s["overall_accuracy"] == pytest.approx((40 + 10) / 100)


def test_melody_scores_on_cfp_frames():
    ref = _ref()
    times = frame_times(50, 0.02)
    s = melody_scores(ref, times, f0_at(ref, times))
    assert s["raw_pitch_accuracy"] > 0.95 and s["overall_accuracy"] > 0.95
    s10 = melody_scores(ref, times, f0_at(ref, times), hop=0.01)
    assert s10["raw_pitch_accuracy"] > 0.95


def test_melody_scores_unvoiced_and_empty_never_raise():
    ref = _ref()
    silent = ref.copy()
    silent[:, 1] = 0.0
    cases = [
        (silent, ref[:, 0], ref[:, 1]),
        (ref, ref[:, 0], np.zeros(100)),
        (silent, ref[:, 0], np.zeros(100)),
        (ref, np.zeros(0), np.zeros(0)),
        (np.zeros((0, 2)), ref[:, 0], ref[:, 1]),
    ]
    for r, t, h in cases:
        s = melody_scores(r, t, h)
        assert set(s) == set(MELODY_KEYS)
        assert all(isinstance(v, float) and not math.isnan(v) for v in s.values())
    s = melody_scores(ref, ref[:, 0], np.zeros(100))
    assert s["raw_pitch_accuracy"] == 0.0 and s["voicing_recall"] == 0.0
    assert s["overall_accuracy"] == pytest.approx(0.2)
    s = melody_scores(silent, ref[:, 0], np.zeros(100))
    assert s["overall_accuracy"] == 1.0 and s["raw_pitch_accuracy"] == 0.0


# ----------------------------------------------------------------------------- writers


def test_write_f0_csv_round_trip(tmp_path):
    times = frame_times(5, 0.02)
    hz = np.array([220.12345, 0.0, 330.0, -1.0, np.nan])
    path = write_f0_csv(tmp_path / "sub" / "x_f0.csv", times, hz)
    lines = path.read_text().splitlines()
    assert lines[0] == "time,frequency" and lines[1] == "0.020000,220.123"
    back = np.loadtxt(path, delimiter=",", skiprows=1)
    np.testing.assert_allclose(back[:, 0], times)
    np.testing.assert_allclose(back[:, 1], [220.123, 0, 330, 0, 0])


def test_plot_f0_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    spec = rng.random((40, 352))
    times = frame_times(40, 0.02)
    hz = np.where(np.arange(40) % 10 < 6, 440.0, 0.0)
    path = plot_f0(tmp_path / "f0.png", spec, times, hz, bin_freqs(VOCAL_CONTOUR), title="x")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_write_melody(tmp_path):
    times = frame_times(30, 0.02)
    hz = np.full(30, 220.0)
    spec = np.random.default_rng(0).random((30, 174, 1))
    paths = write_melody(tmp_path, "song", times, hz, spec=spec, freqs=bin_freqs(PATCH_CNN))
    assert [p.name for p in paths] == ["song_f0.csv", "song_f0.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert [p.name for p in write_melody(tmp_path, "b", times, hz)] == ["b_f0.csv"]


def test_melody_scores_count_pitch_guesses_of_unvoiced_frames():
    t = np.arange(100) * 0.01
    ref = np.stack([t, np.full(100, 220.0)], axis=1)
    s = melody_scores(ref, t, -ref[:, 1])  # right pitch, every frame called unvoiced
    assert s["raw_pitch_accuracy"] == 1.0 and s["voicing_recall"] == 0.0
    assert s["overall_accuracy"] == 0.0


def test_window_targets_blur_is_a_bump_at_the_voiced_row():
    y = window_targets(np.array([100, -1]), blur=1.0)
    assert y[0, 100, 1] == 1.0 and y[1, :, 1].sum() == 0.0
    np.testing.assert_allclose(y[0, [99, 101], 1], np.exp(-0.5), rtol=1e-6)
    assert y[0, 110, 1] == 0.0  # cut below 0.01
    np.testing.assert_allclose(y.sum(-1), 1.0)
