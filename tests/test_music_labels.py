"""Music transcription labels, losses, decoders and metrics (jaxmir.tasks.music)."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from jaxmir.tasks.music.decode import (
    decode_notes,
    decode_notes_simple,
    notes_to_midi,
    write_notes_csv,
)
from jaxmir.tasks.music.labels import (
    FPS,
    LABEL_MODES,
    N_BINS,
    POP_PROGRAMS,
    STREAM_PROGRAMS,
    bce_label_smoothing,
    focal_loss,
    mode_programs,
    music_labels,
    notes_for_mode,
    onset_curve,
    smooth_bce,
)
from jaxmir.tasks.music.metrics import frame_scores, note_metrics

# Two hand-made notes: C4 piano at frames 5..9, E4 viola (41) at frames 7..10 (20 ms frames).
HAND = np.array([[0.10, 0.20, 60, 100, 0], [0.14, 0.22, 64, 90, 41]], np.float64)
C4 = slice(156, 160)  # (60 - 21) * 4 .. + 4
E4 = slice(172, 176)
ONSET_C4 = np.array([1, 1, 1 / 4, 1 / 9, 1 / 16], np.float32)
ONSET_E4 = np.array([1, 1, 1 / 4, 1 / 9], np.float32)

EXPECTED_SHAPES = {
    "note": 3,
    "note-offset": 4,
    "note-stream": 23,
    "pop-note-stream": 13,
    "frame": 3,
    "frame-stream": 23,
    "true-frame": 2,
    "true-frame-stream": 12,
}


def random_notes(rng, programs, n=24, seconds=5.0):
    """Non-overlapping-per-(pitch, program) notes on the 20 ms grid, sorted by onset."""
    rows = []
    for i in range(n):
        on = round(float(rng.uniform(0.1, seconds - 1.0)), 2)
        dur = round(float(rng.uniform(0.2, 0.8)), 2)
        pitch = 24 + 3 * i  # distinct pitches: no same-key overlaps
        rows.append((on, on + dur, pitch, 100, programs[i % len(programs)]))
    rows.sort(key=lambda r: (r[0], r[2]))
    return np.array(rows, np.float64)


def onset_blur(y):
    """Model-like posteriors: the onset channels blurred in time (Gaussian, sigma 1.5 frames)."""
    out = y.copy()
    if y.shape[-1] in (3, 23, 13):
        out[..., 2::2] = gaussian_filter1d(y[..., 2::2], 1.5, axis=0)
    return out


# ---------------------------------------------------------------------------------------------
# Labels


@pytest.mark.parametrize("mode", sorted(LABEL_MODES))
def test_shapes_and_background(mode):
    y = music_labels(HAND, 20, mode)
    assert y.shape == (20, N_BINS, EXPECTED_SHAPES[mode]) and y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 1.0
    if mode == "note-offset":  # the offset channel marks the end; the rest completes to 1
        y = y[..., :3]
    np.testing.assert_allclose(y.sum(-1)[y.sum(-1) > 0], 1.0, atol=1e-6)  # bg completes to 1
    assert np.all(y[:, :156, 0] == 1.0) and np.all(y[:5, :, 0] == 1.0)


def test_note_mode_exact_values():
    y = music_labels(HAND, 20, "note")
    for b in range(156, 160):  # all 4 bins of the key are written
        np.testing.assert_allclose(y[5:10, b, 2], ONSET_C4)
        np.testing.assert_allclose(y[5:10, b, 1], 1 - ONSET_C4)
        np.testing.assert_array_equal(y[5:10, b, 0], 0.0)
    np.testing.assert_allclose(y[7:11, E4, 2], np.repeat(ONSET_E4[:, None], 4, 1))
    assert np.all(y[10:, C4, 1:] == 0) and np.all(y[11:, E4, 1:] == 0)
    assert np.all(y[:5, :, 1:] == 0) and np.all(y[:, 155, 0] == 1) and np.all(y[:, 160, 0] == 1)
    tf = music_labels(HAND, 20, "true-frame")
    np.testing.assert_array_equal(tf[5:10, C4, 1], 1.0)
    np.testing.assert_array_equal(tf[5:10, C4, 0], 0.0)


def test_stream_channel_layouts():
    y = music_labels(HAND, 20, "note-stream")
    # piano (program 0) is stream 0 -> channels 1, 2; viola (41) is stream 3 -> channels 7, 8
    np.testing.assert_allclose(y[5:10, 157, 2], ONSET_C4)
    np.testing.assert_allclose(y[7:11, 173, 8], ONSET_E4)
    np.testing.assert_allclose(y[7:11, 173, 7], 1 - ONSET_E4)
    assert y[..., [3, 4, 5, 6] + list(range(9, 23))].max() == 0
    pop = music_labels(HAND, 20, "pop-note-stream")
    # pop groups: guitar, bass, strings, organ, piano, others -> piano ch 9/10, strings ch 5/6
    np.testing.assert_allclose(pop[5:10, 157, 10], ONSET_C4)
    np.testing.assert_allclose(pop[7:11, 173, 6], ONSET_E4)
    assert pop[..., [1, 2, 3, 4, 7, 8, 11, 12]].max() == 0
    tfs = music_labels(HAND, 20, "true-frame-stream")
    np.testing.assert_array_equal(tfs[5:10, C4, 1], 1.0)
    np.testing.assert_array_equal(tfs[7:11, E4, 4], 1.0)


def test_program_filtering_and_clipping():
    notes = np.array(
        [
            [0.0, 0.1, 60, 100, 1],  # bright piano: not a stream program
            [0.0, 0.1, 62, 100, 128],  # drums: never labelled
            [0.0, 0.1, 64, 100, 0],
            [0.0, 0.1, 64, 100, 40],  # same key, two streams
            [0.0, 0.1, 19, 100, 0],  # below A0: dropped (omnizart wrote it into bins 344-347)
        ]
    )
    note = music_labels(notes, 10, "note")
    assert note[0, 156, 2] == 1 and note[0, 164, 0] == 1 and note[0, 172, 2] == 1
    assert note[:, 340:, 1:].max() == 0
    stream = music_labels(notes, 10, "note-stream")
    assert stream[..., 1:].sum(-1)[:, 156].max() == 0  # program 1 dropped in stream modes
    assert stream[0, 172, 0] == 0.0  # 1 - 2 clipped to 0
    assert music_labels(notes, 10, "pop-note-stream")[0, 156, 10] == 1  # program 1 -> piano
    assert music_labels(np.zeros((0, 5)), 7, "note-stream")[..., 0].min() == 1.0
    np.testing.assert_array_equal(notes_for_mode(notes, "note")[:, 2], [60, 64, 64])
    np.testing.assert_array_equal(notes_for_mode(notes, "note-stream")[:, 4], [0, 40])
    np.testing.assert_array_equal(notes_for_mode(notes, "pop-note-stream")[:, 4], [0, 0, 40])


def test_onset_curve_floor_and_bad_mode():
    c = onset_curve(400)
    assert c[0] == c[1] == 1 and c[2] == np.float32(0.25) and c[316] == np.float32(1 / 316**2)
    np.testing.assert_array_equal(c[317:], np.float32(1 / 317**2))
    with pytest.raises(ValueError):
        music_labels(HAND, 10, "piano")


# ---------------------------------------------------------------------------------------------
# Losses


def test_losses():
    rng = np.random.default_rng(0)
    y = (rng.random((2, 16, 8, 23)) < 0.3).astype(np.float32)
    perfect = jnp.asarray(np.where(y > 0, 6.0, -6.0))
    wrong = -perfect
    rand = jnp.asarray(rng.normal(size=y.shape) * 3, jnp.float32)
    for fn in (smooth_bce, focal_loss, bce_label_smoothing):
        assert float(fn(perfect, y)) < float(fn(rand, y)) < float(fn(wrong, y))
    assert float(focal_loss(perfect, y)) < 1e-4
    bce = bce_label_smoothing(rand, y, smoothing=0.0)
    assert float(focal_loss(rand, y)) <= float(bce)
    assert float(focal_loss(perfect, y)) <= float(bce_label_smoothing(perfect, y, smoothing=0.0))

    # smooth_bce == omnizart's formula (K = clip(23, 8, 25), q(1-y) as the negative target)
    x = np.asarray(rand, np.float64)
    p = np.clip(1 / (1 + np.exp(-x)), 1e-9, 1)
    q = lambda v: 0.75 * v + 0.25 / 23  # noqa: E731
    ref = np.mean(-q(y) * np.log(p) - q(1 - y) * np.log(np.clip(1 - p, 1e-9, 1)))
    np.testing.assert_allclose(float(smooth_bce(rand, y)), ref, rtol=1e-5)

    # label smoothing acts on the targets: optimum at sigmoid(x) = 0.95 for y = 1
    grad = jax.grad(lambda z: bce_label_smoothing(z, jnp.ones(3)))(jnp.full(3, np.log(19.0)))
    np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-6)

    # a (B, T) mask averages over the kept frames only
    mask = np.zeros((2, 16), np.float32)
    mask[:, :8] = 1
    np.testing.assert_allclose(
        float(smooth_bce(rand, y, mask)), float(smooth_bce(rand[:, :8], y[:, :8])), rtol=1e-5
    )


# ---------------------------------------------------------------------------------------------
# Decoding and metrics


def _programs_for(mode):
    return POP_PROGRAMS if mode == "pop-note-stream" else STREAM_PROGRAMS[:4]


@pytest.mark.parametrize("mode", sorted(LABEL_MODES))
def test_simple_decoder_round_trip(mode):
    notes = random_notes(np.random.default_rng(1), _programs_for(mode))
    y = music_labels(notes, 260, mode)
    est = decode_notes(y, mode, method="simple")
    m = note_metrics(notes_for_mode(notes, mode), est)
    assert m["note_f1"] == 1.0 and m["note_with_offset_f1"] == 1.0 and m["frame_f1"] > 0.95
    assert est.shape == (len(notes), 5)
    est, ref = est[np.argsort(est[:, 2])], notes[np.argsort(notes[:, 2])]  # distinct pitches
    np.testing.assert_allclose(est[:, :3], ref[:, :3], atol=0.0101)  # 20 ms grid
    if "stream" in mode:
        for prog in mode_programs(mode)[:2]:
            assert m[f"note_f1/{prog}"] == 1.0


def test_simple_decoder_onset_delay_moves_onsets_only():
    notes = random_notes(np.random.default_rng(3), (0,), n=8)
    y = music_labels(notes, 260, "note-offset")
    base = decode_notes(y, "note-offset", method="simple")
    late = decode_notes(y, "note-offset", method="simple", onset_delay=0.01)
    np.testing.assert_allclose(late[:, 0], base[:, 0] + 0.01)
    np.testing.assert_array_equal(late[:, 1:], base[:, 1:])
    # a note keeps one frame at least, however late its onset is moved
    very = decode_notes(y, "note-offset", method="simple", onset_delay=10.0)
    np.testing.assert_allclose(very[:, 1] - very[:, 0], 0.02)
    # an early delay never moves an onset before 0 s (the CSV had negative onsets)
    early = decode_notes(y, "note-offset", method="simple", onset_delay=-0.5)
    np.testing.assert_allclose(early[:, 0], np.maximum(base[:, 0] - 0.5, 0.0))


@pytest.mark.parametrize(
    "setting, key",
    [
        ("onset_threshold=5", "decode.onset_threshold"),
        ("onset_threshold=-1", "decode.onset_threshold"),
        ("frame_threshold=1.5", "decode.frame_threshold"),
        ("offset_threshold=-0.1", "decode.offset_threshold"),
        ("min_gap=-1", "decode.min_gap"),
        ("onset_delay=-10", "decode.onset_delay"),
        ("offset_gate=-2", "decode.offset_gate"),
        ("offset_gate=0", "decode.offset_gate"),
        ("method=foo", "decode.method"),
        ("onset_time=bar", "decode.onset_time"),
    ],
)
def test_unusable_decode_values_are_refused_by_name(setting, key):
    """Each used to decode silently (no notes, every key at once, negative onsets): now a
    ConfigError naming the key, from `check_decode` (before any model runs) and `decode`."""
    from jaxmir.config import ConfigError, apply_overrides
    from jaxmir.tasks.base import get_task

    task = get_task("music")
    cfg = apply_overrides(task.preset("tiny"), [f"decode.{setting}"])
    with pytest.raises(ConfigError, match=key):
        task.check_decode(cfg)
    with pytest.raises(ConfigError, match=key):
        task.decode(np.zeros((10, N_BINS, 3), np.float32), cfg)
    task.check_decode(task.preset("tiny"))


def test_simple_decoder_min_gap_merges_a_flickering_onset_into_its_note():
    """`decode.min_gap`: an onset run less than `min_gap` frames after the key's last onset
    continues that note; a later one (a re-strike) still starts a new note."""
    post = np.zeros((60, N_BINS, 3), np.float32)
    key = slice((60 - 21) * 4, (61 - 21) * 4)
    post[10:50, key, 1] = 0.9  # sounding from frame 10 to 50
    for start in (10, 14, 35):  # the onset, a flicker 80 ms after it, a re-strike
        post[start : start + 2, key, 1], post[start : start + 2, key, 2] = 0.0, 0.9
    frames = lambda notes: (notes[:, :2] * FPS).round().tolist()  # noqa: E731
    assert frames(decode_notes_simple(post, "note")) == [[10, 14], [14, 35], [35, 50]]
    assert frames(decode_notes_simple(post, "note", min_gap=5)) == [[10, 35], [35, 50]]


@pytest.mark.parametrize(
    "mode", ["note", "note-stream", "pop-note-stream", "frame-stream", "true-frame-stream"]
)
def test_omnizart_decoder_clean_example(mode):
    notes = random_notes(np.random.default_rng(2), _programs_for(mode)[:3], n=16)
    y = music_labels(notes, 260, mode)
    # note modes need model-like (blurred) onsets, see the next test; frame modes take labels
    est = decode_notes(onset_blur(y) if "note" in mode else y, mode, method="omnizart")
    m = note_metrics(notes_for_mode(notes, mode), est)
    assert m["note_f1"] >= 0.9 and m["note_with_offset_f1"] >= 0.9
    assert np.all((est[:, 3] >= 110) & (est[:, 3] <= 127))


def test_omnizart_decoder_needs_blurred_onsets():
    # Raw label onsets are 2 frames (40 ms) wide; omnizart's find_peaks(width=5) at 10 ms needs
    # ~50 ms at half prominence, so perfect labels used as posteriors give no notes at all.
    notes = random_notes(np.random.default_rng(2), (0,), n=8)
    assert len(decode_notes(music_labels(notes, 260, "note"), "note")) == 0
    assert len(decode_notes(music_labels(notes, 260, "note"), "note", method="simple")) == 8


def test_omnizart_instrument_gate_drops_equally_active_streams():
    # The gate compares each stream's std after a *joint* z-normalisation with inst_th = 1.1;
    # when all 11 streams have the same statistics every std is 1, so all are dropped.
    rows = [
        (0.2 + k, 0.8 + k, 30 + 4 * i, 100, p)
        for i, p in enumerate(STREAM_PROGRAMS)
        for k in range(4)
    ]
    notes = np.array(sorted(rows))
    post = onset_blur(music_labels(notes, 260, "note-stream"))
    assert len(decode_notes(post, "note-stream", method="omnizart")) == 0
    assert note_metrics(notes, decode_notes(post, "note-stream", method="simple"))["note_f1"] == 1


def test_empty_predictions_and_metrics():
    zeros = np.zeros((50, N_BINS, 23))
    zeros[..., 0] = 1.0
    for method in ("omnizart", "simple"):
        assert decode_notes(zeros, "note-stream", method=method).shape == (0, 5)
    ref = HAND
    for est in (np.zeros((0, 5)), None):
        m = note_metrics(ref, est)
        assert all(v == 0.0 for k, v in m.items() if k not in ("n_ref",)), m
    m = note_metrics(np.zeros((0, 5)), np.zeros((0, 5)))
    assert all(v == 0.0 for v in m.values())
    # zero-length and negative-time notes do not raise
    odd = np.array([[0.5, 0.5, 60, 100, 0], [-0.1, 0.2, 62, 100, 0]])
    assert note_metrics(odd, odd)["note_f1"] == 1.0


def test_frame_scores_match_mir_eval_multipitch():
    import mir_eval

    ref = np.array([[0.0, 0.5, 60, 1, 0], [0.2, 0.9, 64, 1, 0]])
    est = np.array([[0.05, 0.5, 60, 1, 0], [0.3, 0.6, 67, 1, 0]])
    p, r, _ = frame_scores(ref, est)
    times = np.arange(100) * 0.01

    def freqs(notes):
        return [
            mir_eval.util.midi_to_hz(
                np.array([n[2] for n in notes if round(n[0] / 0.01) <= k < round(n[1] / 0.01)])
            )
            for k in range(100)
        ]

    mp = mir_eval.multipitch.metrics(times, freqs(ref), times, freqs(est))
    np.testing.assert_allclose([p, r], mp[:2], atol=1e-9)


def test_midi_and_csv(tmp_path):
    notes = random_notes(np.random.default_rng(3), (0, 40, 73), n=9)
    midi = notes_to_midi(notes)
    assert sorted(i.program for i in midi.instruments) == [0, 40, 73]
    assert all(len(i.notes) == 3 for i in midi.instruments)
    drums = notes_to_midi(np.array([[0, 0.1, 36, 100, 128], [0, 0.1, 60, -1, -1]]))
    assert [i.is_drum for i in drums.instruments] == [False, True]
    path = tmp_path / "notes.csv"
    write_notes_csv(path, notes)
    with open(path) as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["onset", "offset", "pitch", "velocity", "program"]
    np.testing.assert_allclose(np.array(rows[1:], float), notes, atol=1e-6)


def test_written_notes_of_one_key_never_overlap_and_read_back_whole(tmp_path):
    """Decoding may start a repeated note up to 40 ms before the one before it ends (onset
    peak, then the calibrated delay); a MIDI reader ends both at the first note-off, so the
    later note read back 11 ms long instead of 0.61 s."""
    import pretty_midi

    from jaxmir.tasks.music.decode import one_note_per_key

    decoded = np.array(
        [
            [4.495, 5.000, 55, 110, 0],
            [4.989, 5.599, 55, 120, 0],  # starts 11 ms before the first ends
            [4.700, 5.300, 55, 100, 40],  # the same key, another instrument: left as it is
            [4.800, 5.100, 60, 90, 0],
            [0.0, 0.5, 62, 90, 0],  # two onsets pushed to 0 s by an early delay: one note
            [0.0, 0.4, 62, 95, 0],
        ]
    )
    written = one_note_per_key(decoded)
    np.testing.assert_allclose(
        written[:, :3],
        [[0.0, 0.4, 62], [4.495, 4.989, 55], [4.7, 5.3, 55], [4.8, 5.1, 60], [4.989, 5.599, 55]],
    )
    path = tmp_path / "x.mid"
    notes_to_midi(written).write(str(path))
    back = sorted(
        (n.start, n.end, n.pitch)
        for i in pretty_midi.PrettyMIDI(str(path)).instruments
        if i.program == 0 and not i.is_drum
        for n in i.notes
    )
    np.testing.assert_allclose(  # to MIDI's ticks
        [b for b in back if b[2] == 55], [[4.495, 4.989, 55], [4.989, 5.599, 55]], atol=3e-3
    )


def test_decode_rejects_bad_input():
    with pytest.raises(ValueError):
        decode_notes(np.zeros((10, N_BINS, 3)), "note-stream")
    with pytest.raises(ValueError):
        decode_notes(np.zeros((10, N_BINS, 3)), "note", method="beam")
    assert decode_notes_simple(np.zeros((0, N_BINS, 2)), "true-frame").shape == (0, 5)


def test_log_sigmoids_equal_both_log_sigmoids():
    from jaxmir.tasks.music.labels import log_sigmoids

    x = jnp.linspace(-60.0, 60.0, 2001, dtype=jnp.float32)
    log_p, log_not_p = log_sigmoids(x)
    np.testing.assert_allclose(log_p, jax.nn.log_sigmoid(x), rtol=0, atol=1e-6)
    np.testing.assert_allclose(log_not_p, jax.nn.log_sigmoid(-x), rtol=1e-5, atol=2e-5)
    g = jax.grad(lambda v: jnp.sum(log_sigmoids(v)[1]))(x)
    np.testing.assert_allclose(g, jax.grad(lambda v: jnp.sum(jax.nn.log_sigmoid(-v)))(x), atol=1e-6)


def test_repeat_onsets_mark_keys_struck_again_while_sounding():
    from jaxmir.tasks.music.labels import repeat_onsets

    notes = np.array(
        [
            [0.1, 0.5, 60, 80, 0],  # first note of C4
            [0.5, 0.9, 60, 80, 0],  # touching repeat: frames 25, 26
            [0.93, 1.2, 60, 80, 0],  # 30-ms gap: a repeat (frames 46, 47)
            [1.4, 1.6, 60, 80, 0],  # 200-ms gap: not one
            [0.2, 0.6, 64, 80, 40],  # E4 ...
            [0.3, 0.4, 64, 80, 0],  # ... struck by another part while it sounds: frames 15, 16
            [0.3, 0.4, 67, 80, 0],  # two parts starting one key together: neither repeats
            [0.3, 0.5, 67, 80, 41],
        ]
    )
    r = repeat_onsets(notes, 100, "note-offset")
    marked = {int(k) + 21: list(np.flatnonzero(r[:, k])) for k in np.flatnonzero(r.any(axis=0))}
    assert marked == {60: [25, 26, 46, 47], 64: [15, 16]}
    assert r.shape == (100, 88) and set(np.unique(r)) == {0.0, 1.0}


def _one_entry_weighted(keyword: str, index: tuple, value: float, seed: int):
    """(logits, targets, loss change) when `keyword`'s weight map is `value` at `index` and 1
    elsewhere; an all-ones map changes nothing."""
    from jaxmir.tasks.music.labels import weighted_bce

    rng = np.random.default_rng(seed)
    logits = jnp.asarray(rng.normal(size=(2, 6, 8, 4)), jnp.float32)
    targets = jnp.asarray(rng.uniform(size=(2, 6, 8, 4)) > 0.7, jnp.float32)
    ones = jnp.ones((2, 6, 8))
    base = weighted_bce(logits, targets, pos_weight=5.0)
    np.testing.assert_allclose(
        weighted_bce(logits, targets, pos_weight=5.0, **{keyword: ones}), base
    )
    w = ones.at[index].set(value)
    return logits, targets, weighted_bce(logits, targets, pos_weight=5.0, **{keyword: w}) - base


def test_onset_weight_weighs_only_the_onset_positives():
    logits, targets, diff = _one_entry_weighted("onset_weight", (1, 2, 3), 4.0, seed=0)
    one = -5.0 * 3.0 * targets[1, 2, 3, 2] * jax.nn.log_sigmoid(logits[1, 2, 3, 2]) / targets.size
    np.testing.assert_allclose(diff, one, rtol=1e-4, atol=1e-7)


def test_repeat_weight_reaches_the_batches_and_is_checked():
    import dataclasses

    from jaxmir.config import ConfigError
    from jaxmir.tasks.base import get_task

    task = get_task("music")
    demo = task.presets()["demo"]
    assert demo.data.repeat_weight == task.presets()["quality"].data.repeat_weight == 4.0
    cfg = dataclasses.replace(demo, data=dataclasses.replace(demo.data, repeat_weight=1.0))
    notes = np.array([[0.1, 0.5, 60, 80, 0], [0.5, 0.9, 60, 80, 0]])
    mask = np.ones(50, np.float32)
    assert "w" not in task.window_labels(cfg, {"notes": notes}, 0, mask)
    rw = demo
    out = task.window_labels(rw, {"notes": notes}, 5, mask)  # the window starts at frame 5
    k = (60 - 21) * 4
    assert out["w"].shape == (50, 352)
    assert list(np.flatnonzero(out["w"][:, k] == 4.0)) == [20, 21]
    assert (out["w"] == 4.0).sum() == 2 * 4 and out["w"].min() == 1.0
    bad = dataclasses.replace(rw, data=dataclasses.replace(rw.data, loss="smooth"))
    with pytest.raises(ConfigError, match="repeat_weight"):
        task.bind_loss(bad)


def test_release_frames_mark_the_frames_after_a_note_while_its_key_is_silent():
    from jaxmir.tasks.music.labels import RELEASE_FRAMES, release_frames

    assert RELEASE_FRAMES == 5
    notes = np.array(
        [
            [0.1, 0.5, 60, 80, 0],  # C4 ends at frame 25: frames 25-29
            [0.56, 0.9, 60, 80, 0],  # struck again at frame 28: only 25-27 are silent
            [0.2, 0.4, 64, 80, 0],  # E4 ends at frame 20 ...
            [0.1, 0.46, 64, 80, 40],  # ... another part holds it to 23, then 23-27 are silent
            [-0.5, -0.04, 67, 80, 0],  # ended 2 frames before the window: frames 0-2
            [0.5, 3.0, 72, 80, 0],  # ends after the window: nothing
            [1.9, 1.96, 50, 80, 0],  # ends at frame 98: frames 98, 99
        ]
    )
    r = release_frames(notes, 100, "note-offset")
    marked = {int(k) + 21: list(np.flatnonzero(r[:, k])) for k in np.flatnonzero(r.any(axis=0))}
    assert marked == {
        60: [25, 26, 27, 45, 46, 47, 48, 49],
        64: [23, 24, 25, 26, 27],
        67: [0, 1, 2],
        50: [98, 99],
    }
    assert r.shape == (100, 88) and set(np.unique(r)) == {0.0, 1.0}


def test_release_weight_weighs_only_the_frame_negatives():
    i = (0, 4, 5)
    logits, targets, diff = _one_entry_weighted("release_weight", i, 3.0, seed=1)
    neg = -(1.0 - targets[(*i, 1)]) * jax.nn.log_sigmoid(-logits[(*i, 1)])
    np.testing.assert_allclose(diff, 2.0 * neg / targets.size, rtol=1e-4, atol=1e-7)


def test_release_weight_reaches_the_batches_and_is_checked():
    import dataclasses

    from jaxmir.config import ConfigError
    from jaxmir.tasks.base import get_task

    task = get_task("music")
    quality = task.presets()["quality"]
    cfg = dataclasses.replace(
        quality, data=dataclasses.replace(quality.data, repeat_weight=1.0, release_weight=3.0)
    )
    notes = np.array([[0.1, 0.5, 60, 80, 0], [0.2, 0.3, 62, 80, 0]])
    mask = np.ones(50, np.float32)
    out = task.window_labels(cfg, {"notes": notes}, 5, mask)  # the window starts at frame 5
    assert "w" not in out and out["w_release"].shape == (50, 352)
    c4, d4 = (60 - 21) * 4, (62 - 21) * 4
    assert list(np.flatnonzero(out["w_release"][:, c4] == 3.0)) == [20, 21, 22, 23, 24]
    assert list(np.flatnonzero(out["w_release"][:, d4 + 3] == 3.0)) == [10, 11, 12, 13, 14]
    assert (out["w_release"] == 3.0).sum() == 2 * 5 * 4 and out["w_release"].min() == 1.0
    bad = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, label_mode="note-stream"))
    with pytest.raises(ConfigError, match="release_weight"):
        task.bind_loss(bad)


def test_tail_frames_mark_a_notes_frames_from_half_a_second_after_its_onset():
    from jaxmir.tasks.music.labels import TAIL_START, tail_frames

    assert TAIL_START == 25
    notes = np.array(
        [
            [0.1, 1.0, 60, 80, 0],  # C4, frames 5-49: its tail 30-49
            [0.2, 0.5, 64, 80, 0],  # E4, 0.3 s: no tail
            [-1.0, 0.2, 67, 80, 0],  # G4 began a second before the window: tail to frame 9
            [1.5, 3.0, 72, 80, 0],  # C5, tail from frame 100: after the window
            [1.0, 1.7, 40, 80, 40],  # another part: its tail 75-84
        ]
    )
    t = tail_frames(notes, 100, "note-offset")
    marked = {int(k) + 21: list(np.flatnonzero(t[:, k])) for k in np.flatnonzero(t.any(axis=0))}
    assert marked == {60: list(range(30, 50)), 67: list(range(10)), 40: list(range(75, 85))}
    assert t.shape == (100, 88) and set(np.unique(t)) == {0.0, 1.0}


def test_tail_weight_weighs_only_the_frame_positives_and_reaches_the_batches():
    import dataclasses

    from jaxmir.config import ConfigError
    from jaxmir.tasks.base import get_task
    from jaxmir.tasks.music.labels import weighted_bce

    i = (0, 1, 6)
    logits, targets, diff = _one_entry_weighted("tail_weight", i, 3.0, seed=1)
    assert targets[(*i, 1)] == 1.0
    pos = -5.0 * jax.nn.log_sigmoid(logits[(*i, 1)])
    np.testing.assert_allclose(diff, 2.0 * pos / targets.size, rtol=1e-4, atol=1e-7)

    task = get_task("music")
    quality = task.presets()["quality"]
    assert quality.data.tail_weight == 1.0
    cfg = dataclasses.replace(quality, data=dataclasses.replace(quality.data, tail_weight=3.0))
    notes = np.array([[0.1, 1.0, 60, 80, 0], [0.2, 0.3, 62, 80, 0]])
    mask = np.ones(60, np.float32)
    out = task.window_labels(cfg, {"notes": notes}, 5, mask)  # the window starts at frame 5
    c4 = (60 - 21) * 4
    assert list(np.flatnonzero(out["w_tail"][:, c4 + 2] == 3.0)) == list(range(25, 45))
    assert (out["w_tail"] == 3.0).sum() == 20 * 4 and out["w_tail"].min() == 1.0
    assert "w_tail" not in task.window_labels(quality, {"notes": notes}, 5, mask)
    rng = np.random.default_rng(2)  # the loss reads the batch's map
    batch = {
        "x": jnp.zeros((2, 6, 8, 1)),
        "y": jnp.asarray(rng.uniform(size=(2, 6, 8, 4)) > 0.7, jnp.float32),
        "mask": jnp.ones((2, 6)),
        "w": jnp.ones((2, 6, 8)),
        "w_tail": jnp.asarray(rng.choice([1.0, 3.0], size=(2, 6, 8)), jnp.float32),
    }
    logits = jnp.asarray(rng.normal(size=(2, 6, 8, 4)), jnp.float32)
    value = task.bind_loss(cfg)(lambda variables, x, train: logits, {}, batch, None, False)[0]
    expected = weighted_bce(
        logits,
        batch["y"],
        pos_weight=5.0,
        onset_weight=3.0 * batch["w"],
        tail_weight=batch["w_tail"],
    )
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    smooth = dataclasses.replace(cfg.data, loss="smooth", repeat_weight=1.0)
    with pytest.raises(ConfigError, match="tail_weight"):
        task.bind_loss(dataclasses.replace(cfg, data=smooth))


def test_onset_weight_scales_every_onset_on_top_of_the_repeat_weight():
    import dataclasses

    from jaxmir.config import ConfigError
    from jaxmir.tasks.base import get_task
    from jaxmir.tasks.music.labels import weighted_bce

    task = get_task("music")
    quality = task.presets()["quality"]
    assert quality.data.onset_weight == 3.0
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.normal(size=(2, 6, 8, 4)), jnp.float32)
    batch = {
        "x": jnp.zeros((2, 6, 8, 1)),
        "y": jnp.asarray(rng.uniform(size=(2, 6, 8, 4)) > 0.7, jnp.float32),
        "mask": jnp.ones((2, 6)),
        "w": jnp.asarray(rng.choice([1.0, 4.0], size=(2, 6, 8)), jnp.float32),
    }

    def apply_fn(variables, x, train):  # the model's output is fixed: only the loss is tested
        return logits

    def bound(onset_weight: float) -> jax.Array:
        data = dataclasses.replace(quality.data, onset_weight=onset_weight)
        loss = task.bind_loss(dataclasses.replace(quality, data=data))
        return loss(apply_fn, {}, batch, None, False)[0]

    def expected(onset_weight) -> jax.Array:
        return weighted_bce(logits, batch["y"], pos_weight=5.0, onset_weight=onset_weight)

    np.testing.assert_allclose(bound(1.0), expected(batch["w"]), rtol=1e-6)
    np.testing.assert_allclose(bound(3.0), expected(3.0 * batch["w"]), rtol=1e-6)
    assert bound(3.0) > bound(1.0)
    stream = dataclasses.replace(quality.data, onset_weight=3.0, label_mode="note-stream")
    with pytest.raises(ConfigError, match="onset_weight"):
        task.bind_loss(
            dataclasses.replace(quality, data=dataclasses.replace(stream, repeat_weight=1.0))
        )


def test_offset_weight_weighs_only_the_offset_positives_and_is_checked():
    import dataclasses

    from jaxmir.config import ConfigError
    from jaxmir.tasks.base import get_task
    from jaxmir.tasks.music.labels import weighted_bce

    rng = np.random.default_rng(4)
    logits = jnp.asarray(rng.normal(size=(2, 6, 8, 4)), jnp.float32)
    targets = jnp.asarray(rng.uniform(size=(2, 6, 8, 4)) > 0.7, jnp.float32)
    base = weighted_bce(logits, targets, pos_weight=5.0)
    diff = weighted_bce(logits, targets, pos_weight=5.0, offset_weight=3.0) - base
    one = -5.0 * targets[..., 3] * jax.nn.log_sigmoid(logits[..., 3])
    np.testing.assert_allclose(diff, 2.0 * one.sum() / targets.size, rtol=1e-4, atol=1e-7)

    task = get_task("music")
    quality = task.presets()["quality"]
    assert quality.data.offset_weight == 1.0
    batch = {"x": jnp.zeros((2, 6, 8, 1)), "y": targets, "mask": jnp.ones((2, 6))}

    def bound(data) -> jax.Array:
        loss = task.bind_loss(dataclasses.replace(quality, data=data))
        return loss(lambda variables, x, train: logits, {}, batch, None, False)[0]

    weighted = dataclasses.replace(quality.data, offset_weight=3.0)
    expected = weighted_bce(logits, targets, pos_weight=5.0, onset_weight=3.0, offset_weight=3.0)
    np.testing.assert_allclose(bound(weighted), expected, rtol=1e-6)
    assert bound(weighted) > bound(quality.data)
    no_offsets = dataclasses.replace(weighted, label_mode="note", repeat_weight=1.0)
    with pytest.raises(ConfigError, match="offset_weight.*note-offset"):
        bound(no_offsets)


def test_peak_onsets_start_at_the_onset_runs_maximum_between_frames():
    from jaxmir.tasks.music.decode import run_peak

    # a parabola sampled at frames, vertex at frame 10.3: recovered exactly
    prob = np.clip(0.9 - 0.05 * (np.arange(30) - 10.3) ** 2, 0.0, None)
    assert run_peak(prob, 7, 14) == pytest.approx(10.3)
    assert run_peak(prob, 0, 9) == 8.5  # a maximum still rising: moved half a frame at most
    assert run_peak(np.array([0.9, 0.5, 0.1]), 0, 3) == 0.0  # at the edge: the frame itself
    assert run_peak(np.array([0.1, 0.7, 0.7, 0.1]), 1, 3) == 1.5  # flat top: half-way

    notes = np.array([[0.2, 0.6, 60, 80, 0]])  # frames 10-29
    y = music_labels(notes, 100, "note-offset")
    k = (60 - 21) * 4
    y[..., 2] = 0.0
    y[:30, k : k + 4, 2] = prob[:, None]  # the onset run: frames 8-13 over 0.5
    first = decode_notes(y, "note-offset", method="simple", onset_time="first")
    peak = decode_notes(y, "note-offset", method="simple", onset_time="peak", onset_delay=-0.03)
    assert first[0, 0] == pytest.approx(0.16)
    assert peak[0, 0] == pytest.approx(10.3 * 0.02 - 0.03)
    np.testing.assert_array_equal(peak[:, 1:], first[:, 1:])
    with pytest.raises(ValueError, match="onset_time"):
        decode_notes(y, "note-offset", method="simple", onset_time="last")


def test_offset_triangles_peak_at_the_exact_end_and_the_peak_decoder_finds_it():
    import dataclasses

    from jaxmir.config import ConfigError
    from jaxmir.tasks.base import get_task

    # ends off the 20-ms grid: 0.513 s is frame 25.65
    notes = np.array([[0.10, 0.513, 60, 100, 0], [0.30, 1.207, 64, 100, 0]], np.float64)
    y = music_labels(notes, 80, "note-offset", offset_spread=3.0)
    frames = np.arange(80)
    expected = np.maximum(0.0, 1.0 - np.abs(frames - 25.65) / 3.0)
    expected[:5] = 0.0  # nothing before the note's first frame
    np.testing.assert_allclose(y[:, C4, 3], np.repeat(expected[:, None], 4, axis=1), atol=1e-6)
    assert np.argmax(y[:, 172, 3]) == 60  # 1.207 s: frame 60.35
    np.testing.assert_array_equal(y[..., :3], music_labels(notes, 80, "note-offset")[..., :3])

    # decoded at the offset run's peak, the ends come back within a fraction of a frame; after
    # the run's first frame over the threshold (binary labels' rule), on the frame grid
    rng = np.random.default_rng(7)
    many = random_notes(rng, (0,), n=16)
    many[:, 1] += rng.uniform(-0.009, 0.009, len(many))
    y = music_labels(many, 260, "note-offset", offset_spread=3.0)
    peak = decode_notes(y, "note-offset", method="simple", offset_time="peak")
    first = decode_notes(y, "note-offset", method="simple")
    order = np.argsort(many[:, 2])
    peak, first, ref = peak[np.argsort(peak[:, 2])], first[np.argsort(first[:, 2])], many[order]
    assert np.abs(peak[:, 1] - ref[:, 1]).max() < 0.005
    assert np.abs(peak[:, 1] - ref[:, 1]).mean() < 0.5 * np.abs(first[:, 1] - ref[:, 1]).mean()
    with pytest.raises(ValueError, match="offset_time"):
        decode_notes(y, "note-offset", method="simple", offset_time="last")
    with pytest.raises(ValueError, match="offset_spread"):
        music_labels(notes, 80, "note", offset_spread=3.0)

    # the config reaches the training windows and the decoder, and is checked
    task = get_task("music")
    quality = task.presets()["quality"]
    assert quality.data.offset_spread == 0.0 and quality.decode.offset_time == "first"
    soft = dataclasses.replace(
        quality,
        data=dataclasses.replace(quality.data, offset_spread=3.0),
        decode=dataclasses.replace(quality.decode, offset_time="peak"),
    )
    window = task.window_labels(soft, {"notes": notes}, 0, np.ones(80, np.float32))
    np.testing.assert_allclose(window["y"][:, 156, 3], expected, atol=1e-6)
    ends = np.sort(task.decode(y, soft)[:, 1])
    assert len(ends) == len(many) and np.abs(ends - np.sort(many[:, 1])).max() < 0.005
    hard = dataclasses.replace(soft.data, label_mode="note", repeat_weight=1.0)
    with pytest.raises(ConfigError, match="offset_spread.*note-offset"):
        task.bind_loss(dataclasses.replace(soft, data=hard))
    bad = dataclasses.replace(soft, decode=dataclasses.replace(soft.decode, offset_time="last"))
    with pytest.raises(ConfigError, match="decode.offset_time"):
        task.decode(y, bad)


def gated_offset_posteriors(n_notes: int = 10, rng=None) -> tuple[np.ndarray, np.ndarray]:
    """Note-offset posteriors ``(T, 352, 4)`` of 1-s notes one per 1.2 s as a model hearing a
    sustained tone gives them: the onset probability lingers at 0.4 inside each note (frame =
    duration + onset = 1.4), the duration channel sounds on at 1.0 for 0.3 s past the end (a
    tail no frame threshold on the grid cuts), the true offset is a faint 0.25, and a 0.6
    offset bump rises at each note's middle while it sounds on. The onset probability comes
    back after a 120-ms gap, so an onset threshold under 0.4 strikes each note twice."""
    rng = np.random.default_rng(0) if rng is None else rng
    on = 0.5 + 1.2 * np.arange(n_notes)
    pitch = rng.integers(40, 80, n_notes)
    notes = np.column_stack([on, on + 1.0, pitch, np.full(n_notes, 80), 0 * on])
    y = music_labels(notes, int((on[-1] + 2.0) * 50), "note-offset")
    y[..., 3] *= 0.25
    for start, end, p, _, _ in notes:
        k, s, e = (int(p) - 21) * 4, int(round(start * 50)), int(round(end * 50))
        y[s + 8 : e, k : k + 4, 2] = 0.4
        y[e : e + 15, k : k + 4, 1] = 1.0
        y[(s + e) // 2 : (s + e) // 2 + 2, k : k + 4, 3] = 0.6
    return y, notes


def test_an_offset_gate_lets_notes_end_only_where_the_frame_falls():
    import dataclasses

    from jaxmir.tasks.base import get_task
    from jaxmir.tasks.music.decode import OFFSET_GATE_FRAMES, offset_gated
    from jaxmir.tasks.music.metrics import note_f1_scores

    y, notes = gated_offset_posteriors()
    kw = dict(onset_threshold=0.5, frame_threshold=0.95, offset_threshold=0.2)
    plain = decode_notes(y, "note-offset", method="simple", **kw)
    gated = decode_notes(y, "note-offset", method="simple", offset_gate=1.2, **kw)
    assert len(plain) == len(gated) == len(notes)
    # ungated, the bump in each note's middle ends it; gated, the faint true offset does
    np.testing.assert_allclose(plain[:, 1] - plain[:, 0], 0.52, atol=0.03)
    np.testing.assert_allclose(gated[:, 1], notes[:, 1], atol=1e-9)
    assert note_f1_scores(notes, gated)["note_with_offset_f1"] == 1.0
    assert note_f1_scores(notes, plain)["note_with_offset_f1"] == 0.0
    # without the offset channel's help the tail ends each note 0.3 s late
    late = decode_notes(y, "note-offset", method="simple", **{**kw, "offset_threshold": 0.9})
    np.testing.assert_allclose(late[:, 1] - notes[:, 1], 0.3, atol=1e-9)

    # the gate reads the mean of the next OFFSET_GATE_FRAMES frames; none after the last
    frame = np.array([[2.0], [1.0], [1.0], [1.0], [3.0], [0.0]])
    ends = np.ones_like(frame, bool)
    assert OFFSET_GATE_FRAMES == 3
    kept = offset_gated(ends, frame, 1.5)[:, 0].tolist()
    # means of the next frames: 1, 5/3, 4/3, 3/2 (two left), 0 (one), none (kept)
    assert kept == [True, False, True, False, True, True]
    assert not offset_gated(~ends, frame, 9.0).any()  # it only removes offset frames

    # the config reaches the decoder
    cfg = get_task("music").presets()["quality"]
    assert cfg.decode.offset_gate is None
    on = dataclasses.replace(cfg.decode, offset_gate=1.2, **kw)
    np.testing.assert_array_equal(
        get_task("music").decode(y, dataclasses.replace(cfg, decode=on)), gated
    )


def test_a_random_gain_reaches_training_windows_only_and_is_checked(music_cache):
    """`data.gain_db`: each training window is its features as read at one random gain within
    the range (every channel by the same gain, `feature_gain_exponents`); validation windows
    and runs without it are untouched, and a negative range is refused."""
    import dataclasses

    from jaxmir.config import ConfigError
    from jaxmir.data.cache import FeatureCache
    from jaxmir.tasks.base import get_task
    from jaxmir.tasks.music.task import WITH_SHORT, feature_gain_exponents

    task = get_task("music")
    tiny = task.preset("tiny")
    model = dataclasses.replace(tiny.model, channels=WITH_SHORT)
    plain = dataclasses.replace(tiny, model=model)

    def with_gain(db):
        return dataclasses.replace(plain, data=dataclasses.replace(plain.data, gain_db=db))

    cache = FeatureCache(music_cache)
    base = task.dataset(plain, cache, "train", True)
    gained = task.dataset(with_gain(12.0), cache, "train", True)
    e = feature_gain_exponents(WITH_SHORT)
    gains = []
    for i in range(6):
        x, y = base[i]["x"], gained[i]["x"]
        np.testing.assert_array_equal(base[i]["y"], gained[i]["y"])
        big = x > 1e-3 * x.max()
        # one gain a for the whole window: y = x * a**e[c] on every channel c
        a_per_channel = [
            np.median(y[..., c][big[..., c]] / x[..., c][big[..., c]]) ** (1 / e[c])
            for c in range(len(e))
        ]
        assert np.ptp(a_per_channel) < 1e-3 * a_per_channel[0]
        a = a_per_channel[0]
        np.testing.assert_allclose(y, x * a**e, rtol=1e-5, atol=1e-7)
        gains.append(20 * np.log10(a))
    assert max(abs(g) for g in gains) <= 12.0 and np.ptp(gains) > 1.0
    val = task.dataset(with_gain(12.0), cache, "val", False)[0]["x"]
    np.testing.assert_array_equal(val, task.dataset(plain, cache, "val", False)[0]["x"])
    with pytest.raises(ConfigError, match="gain_db"):
        task.dataset(with_gain(-1.0), cache, "train", True)


def test_a_notes_velocity_is_127_times_its_onset_runs_peak():
    """The README: velocity = 127 x the onset's peak probability (the model's confidence)."""
    post = np.zeros((50, N_BINS, 3), np.float32)  # "note": silence, duration, onset
    key = 40
    bins = slice(4 * key, 4 * key + 4)
    post[10:13, bins, 2] = np.array([0.6, 0.8, 0.7])[:, None]  # an onset run peaking at 0.8
    post[10:30, bins, 1] = 0.9
    post[35:37, bins, 2] = 0.55  # a second note, peak 0.55
    post[35:40, bins, 1] = 0.9
    notes = decode_notes_simple(post, "note")
    assert notes[:, 3].tolist() == [round(127 * 0.8), round(127 * 0.55)]
    assert notes[:, 2].tolist() == [key + 21, key + 21]
