"""Drum (CQT mini-beat patches) and chord (bass/treble chroma, segments, sequences) features."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmir.data.features import chroma as ch
from jaxmir.data.features import cqt

SR = 44100


def _tone(midi: float, seconds: float, partials: int = 8) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    return sum(0.6 ** (h - 1) * np.sin(2 * np.pi * f0 * h * t) for h in range(1, partials + 1))


@pytest.fixture(scope="module")
def drum_audio() -> np.ndarray:
    """2.6 s: a low sine with a click on every beat (every 0.5 s)."""
    y = 0.2 * np.sin(2 * np.pi * 110.0 * np.arange(int(2.6 * SR)) / SR)
    y[:: SR // 2] += 1.0
    return y.astype(np.float32)


@pytest.fixture(scope="module")
def drum_gram(drum_audio) -> np.ndarray:
    return cqt.drum_cqt(drum_audio, SR)


# ------------------------------------------------------------------------------------------ drum


def test_drum_cqt_shape_and_unit_frames(drum_audio, drum_gram):
    n = len(drum_audio) + 2 * SR  # 1 s of padding each side
    assert drum_gram.shape == (1 + n // cqt.HOP, 120)
    assert drum_gram.dtype == np.float32
    norms = np.linalg.norm(drum_gram, axis=1)
    nonzero = norms > 0
    assert nonzero.all()  # silence maps to the flat vector, not to zeros
    np.testing.assert_allclose(norms[nonzero], 1.0, atol=1e-5)
    np.testing.assert_allclose(drum_gram[0], 1 / np.sqrt(120), atol=1e-5)  # padded silence
    times = cqt.drum_frame_times(len(drum_gram))
    assert times[0] == -1.0 and np.isclose(times[1] - times[0], 256 / SR)


def test_mini_beat_times():
    beats = np.array([0.5, 1.0, 1.5, 2.5])
    mini = cqt.mini_beat_times(beats, 8)
    assert len(mini) == 8 * (len(beats) - 1)
    np.testing.assert_allclose(mini[:9], 0.5 + np.arange(9) / 16)
    np.testing.assert_allclose(mini[-8:], 1.5 + np.arange(8) / 8)  # last interval is 1 s
    # omnizart's extension: 1 beat before the first, 7/8 after the last, clipped to the audio
    full = cqt.mini_beat_times(beats, 8, duration=4.0)
    np.testing.assert_allclose(full[:8], np.arange(8) / 16)
    np.testing.assert_allclose(full[-1], 2.5 + 7 / 8 * 1.0)
    assert len(full) == 8 * (len(beats) + 1)
    assert len(cqt.mini_beat_times(beats, 8, duration=3.0)) == 8 * len(beats) + 5
    assert len(cqt.mini_beat_times(beats, 8, duration=2.6)) == 8 * len(beats) + 1
    with pytest.raises(ValueError):
        cqt.mini_beat_times(np.array([1.0]))


def test_drum_patches_shape_and_content(drum_gram):
    times = cqt.drum_frame_times(len(drum_gram))
    mini = cqt.mini_beat_times(np.array([0.5, 1.0, 1.5, 2.0]), 8, duration=2.6)
    patches = cqt.drum_patches(drum_gram, times, mini)
    assert patches.shape == (len(mini), 120, 120) and patches.dtype == np.float32
    # a 121-frame window shrunk to 120 rows stays close to the raw slice
    dt = 256 / SR
    start = int(np.rint((mini[8] - 0.2 + 1.0) / dt))
    stop = int(np.rint((mini[8] + 0.5 + 1.0) / dt))
    raw = drum_gram[start:stop]
    assert abs(len(raw) - 120) <= 1
    assert np.abs(patches[8] - raw[:120]).mean() < 0.02


def test_resize_matches_pil_bicubic():
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for rows in (120, 121, 122, 37):
        a = rng.random((rows, 120)).astype(np.float32)
        ref = np.asarray(image.fromarray(a).resize((120, 120), resample=image.BICUBIC))
        np.testing.assert_allclose(cqt.resize_bicubic(a), ref, atol=1e-5)


def test_drum_labels_nearest_mini_beat():
    mini = np.arange(10) * 0.1  # 0.0 .. 0.9
    hits = np.array(
        [
            [0.02, 36],  # bass drum -> 0
            [-0.04, 49],  # crash, just before the first mini-beat -> 0
            [0.26, 38],  # snare -> 3 (nearest), not 2 (omnizart's off-by-one bins)
            [0.31, 42],  # closed hi-hat -> 3
            [0.25, 46],  # open hi-hat on a mid-point -> the later mini-beat, 3
            [0.5, 99],  # not a drum class: ignored
            [0.94, 51],  # ride -> 9
            [0.96, 36],  # past the last half-interval: ignored
            [-0.06, 36],  # before the first half-interval: ignored
        ]
    )
    labels = cqt.drum_labels(hits, mini)
    assert labels.shape == (10, 13) and labels.dtype == np.float32
    expected = np.zeros((10, 13), np.float32)
    expected[0, 0] = expected[0, 10] = 1
    expected[3, 1] = expected[3, 4] = expected[3, 6] = 1
    expected[9, 11] = 1
    np.testing.assert_array_equal(labels, expected)
    assert cqt.GM_TO_CLASS[35] == 0 and cqt.GM_TO_CLASS[82] == 12 and len(cqt.DRUM_CLASSES) == 13


def test_drum_input_with_and_without_beats(drum_audio, monkeypatch):
    beats = np.array([0.5, 1.0, 1.5, 2.0])
    patches, mini = cqt.drum_input(drum_audio, SR, beats=beats)
    assert patches.shape == (len(mini), 120, 120)
    np.testing.assert_allclose(mini, cqt.mini_beat_times(beats, 8, duration=2.6))
    # without beats, librosa's tracker is asked (stubbed: its numba kernels compile slowly)
    calls = []

    def fake_beat_track(*, y, sr, units):
        calls.append((len(y), sr, units))
        return 120.0, beats

    monkeypatch.setattr(cqt.librosa.beat, "beat_track", fake_beat_track)
    patches2, mini2 = cqt.drum_input(drum_audio, SR)
    assert calls == [(len(drum_audio), SR, "time")]
    np.testing.assert_array_equal(mini2, mini)
    np.testing.assert_allclose(patches2, patches)


# ----------------------------------------------------------------------------------------- chord


def _triad(detune: float = 0.0) -> np.ndarray:
    """C major: C3 E3 G3 plus a C2 bass, harmonic tones, 2 s."""
    y = sum(_tone(m + detune, 2.0) for m in (48, 52, 55)) + _tone(36 + detune, 2.0)
    return (0.1 * y).astype(np.float32)


@pytest.mark.parametrize("detune", [0.0, 0.35])
def test_chroma_of_c_major_triad(detune):
    chroma = ch.bass_treble_chroma(_triad(detune), SR)
    assert chroma.shape == (1 + 2 * SR // ch.HOP, 24) and chroma.dtype == np.float32
    assert np.isclose(ch.frame_times(3)[1], 2048 / SR)
    mean = chroma[3:-3].mean(axis=0)
    names = ch.CHROMA_PITCH_CLASSES
    assert names[int(np.argmax(mean[:12]))] == "C"
    assert {names[i] for i in np.argsort(-mean[12:])[:3]} == {"C", "E", "G"}
    np.testing.assert_allclose(chroma[3:-3, :12].max(axis=1), 1.0, atol=1e-6)  # per-half max
    np.testing.assert_allclose(chroma[3:-3, 12:].max(axis=1), 1.0, atol=1e-6)


def test_tuning_estimate_and_silence():
    spec = ch.log_freq_spectrogram(_triad(0.3), SR)
    assert abs(ch.estimate_tuning(spec) - 0.3) < 0.05
    assert not ch.bass_treble_chroma(np.zeros(SR, np.float32), SR).any()


def test_transposition_rolls_and_inverts():
    rng = np.random.default_rng(1)
    chroma = rng.random((7, 24)).astype(np.float32)
    up = ch.transpose_chroma(chroma, 3)
    np.testing.assert_array_equal(up[:, 3], chroma[:, 0])  # bass A -> C
    np.testing.assert_array_equal(up[:, 12 + 3], chroma[:, 12])  # treble A -> C
    np.testing.assert_array_equal(up[:, 12], chroma[:, 12 + 9])  # treble F# -> A
    for shift in range(12):
        back = ch.transpose_chroma(ch.transpose_chroma(chroma, shift), -shift)
        np.testing.assert_array_equal(back, chroma)
    labels = np.arange(26)
    assert ch.transpose_label(0, 2) == 2  # C:maj -> D:maj
    assert ch.transpose_label(11, 1) == 0  # B:maj -> C:maj
    assert ch.transpose_label(23, 2) == 13  # B:min -> C#:min
    assert ch.transpose_label(24, 5) == 24 and ch.transpose_label(25, 5) == 25
    for shift in range(12):
        moved = ch.transpose_label(labels, shift)
        assert set(moved[:12]) == set(range(12)) and set(moved[12:24]) == set(range(12, 24))
        np.testing.assert_array_equal(ch.transpose_label(moved, -shift), labels)


def test_chord_segments_and_sequences():
    n_frames = 1003
    chroma = np.tile(np.arange(n_frames, dtype=np.float32)[:, None], (1, 24))
    segments = ch.chord_segments(chroma)
    n_seg = len(range(0, n_frames, 5))
    assert segments.shape == (n_seg, 21 * 24)
    window = segments.reshape(n_seg, 21, 24)[:, :, 0]
    np.testing.assert_array_equal(window[4], np.arange(10, 31))  # centred on frame 20
    np.testing.assert_array_equal(window[0, :10], 0)  # zero padding before frame 0
    np.testing.assert_array_equal(window[0, 10:], np.arange(11))

    labels = ch.segment_labels(np.repeat(np.arange(0, 26), 40)[:n_frames])
    assert len(labels) == n_seg
    seqs = ch.chord_sequences(segments, labels)
    total = 300  # 201 segments -> padded to 300 -> sequences at 0, 50, ..., 200
    assert seqs.features.shape == (5, 100, 504) and seqs.features.dtype == np.float32
    assert seqs.chords.shape == seqs.changes.shape == (5, 100)
    np.testing.assert_array_equal(seqs.lengths, [100, 100, 100, 51, 1])
    np.testing.assert_array_equal(seqs.features[1, 0], segments[50])
    assert (seqs.chords[4, 1:] == 24).all() and (seqs.changes[4, 1:] == 0).all()
    flat = np.full(total, 24)
    flat[:n_seg] = labels
    np.testing.assert_array_equal(seqs.chords[2], flat[100:200])
    assert seqs.changes[0, 0] == 1 and seqs.changes[0, 1] == 0 and seqs.changes[0, 8] == 1
    # no extra empty block when the count is already a multiple of 100 (omnizart bug)
    exact = ch.chord_sequences(segments[:200], labels[:200])
    assert exact.features.shape[0] == 3
    np.testing.assert_array_equal(exact.lengths, [100, 100, 100])
    short = ch.chord_sequences(segments[:30])
    assert short.features.shape == (1, 100, 504) and short.chords is None
    np.testing.assert_array_equal(short.lengths, [30])
