"""A MIDI file that reads as a score is decoded at its notated beat level
(`decode.notated_level`, `BeatTask.input_decode_config`); a performance, a file whose beat
changes length and a user's own bounds are left as they are."""

from __future__ import annotations

import dataclasses

import numpy as np
import pretty_midi
import pytest

from jaxmir.config import apply_overrides
from jaxmir.tasks.beat.agreement import file_meter
from jaxmir.tasks.beat.task import TASK


def reel(path, qpm=120.0, bars=24, numerator=2, jitter=0.0, seed=0, tempo_change=None):
    """A reel as a score writes it: `numerator`/2 (a half-note beat) at `qpm`, running eighths
    with a bass note on each beat, onsets moved by up to `jitter` s (a performance);
    `tempo_change`: (bar, qpm) where the tempo changes. Returns the file's beats (s)."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=qpm)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(numerator, 2, 0.0))
    if tempo_change is not None:  # pretty_midi writes its tempo map from these private fields
        bar, new_qpm = tempo_change
        tick = bar * numerator * 2 * pm.resolution
        pm._tick_scales.append((tick, 60.0 / (new_qpm * pm.resolution)))
        pm._update_tick_to_time(tick + 1)
    piano = pretty_midi.Instrument(0)
    rng = np.random.default_rng(seed)
    eighths = bars * numerator * 4
    for i in range(eighths):
        t = pm.tick_to_time(i * pm.resolution // 2) + jitter * rng.uniform(-1, 1) * (i > 0)
        end = pm.tick_to_time((i + 1) * pm.resolution // 2)
        piano.notes.append(pretty_midi.Note(90 if i % 4 == 0 else 70, 67 + (i * 5) % 12, t, end))
        if i % 4 == 0:
            piano.notes.append(pretty_midi.Note(80, 43 + (i // 4) % 5, t, end + 0.5))
    pm.instruments.append(piano)
    pm.write(str(path))
    return pretty_midi.PrettyMIDI(str(path)).get_beats()


def shipped_decoding():
    """The quality preset decoding as the shipped model does (the tracker, the taggers' bars)."""
    return apply_overrides(TASK.preset("quality"), ["decode.method=dbn", "decode.downbeats=tagger"])


def test_a_score_is_decoded_within_its_notated_beat(tmp_path):
    beats = reel(tmp_path / "reel.mid")  # half notes at 60 per minute over eighths at 240
    assert np.diff(beats) == pytest.approx(1.0)
    cfg = shipped_decoding()
    assert cfg.decode.downbeats == "tagger" and cfg.decode.bar_beats == 0
    got = TASK.input_decode_config(tmp_path / "reel.mid", cfg)
    assert (got.decode.min_bpm, got.decode.max_bpm) == pytest.approx((48.0, 75.0))
    assert got.decode.bar_beats == 2  # 2/2: bars of two half notes
    nothing_else = dataclasses.replace(got.decode, min_bpm=0.0, max_bpm=0.0, bar_beats=0)
    assert dataclasses.replace(got, decode=nothing_else) == cfg
    assert file_meter(tmp_path / "reel.mid").on_grid == 1.0
    # the user's own bounds or bar length, peak picking (no bounds), the frame model's
    # downbeats (no bars) and each setting off leave that part alone; bars in the file's
    # beats only where the beats are tracked at its level
    reel_mid = tmp_path / "reel.mid"
    for sets, kept in (
        (["decode.min_bpm=100", "decode.max_bpm=140"], (100.0, 140.0, 0)),
        (["decode.method=peaks"], (0.0, 0.0, 0)),
        (["decode.notated_level=false"], (0.0, 0.0, 0)),
        (["decode.bar_beats=4"], (48.0, 75.0, 4)),
        (["decode.downbeats=peaks"], (48.0, 75.0, 0)),
        (["decode.notated_bars=false"], (48.0, 75.0, 0)),
    ):
        d = TASK.input_decode_config(reel_mid, apply_overrides(cfg, sets)).decode
        assert (d.min_bpm, d.max_bpm, d.bar_beats) == pytest.approx(kept), sets
    level_off = apply_overrides(cfg, ["decode.notated_level=false"])
    assert TASK.input_decode_config(reel_mid, level_off) is level_off


def test_a_performance_or_a_beat_that_changes_length_is_left_to_the_notes(tmp_path):
    cfg = shipped_decoding()
    # played freely against a tempo map of 100 qpm (not the recorder's default 120, which the
    # reader refuses outright): its onsets miss the map's grid
    reel(tmp_path / "played.mid", qpm=100.0, jitter=0.05)
    assert file_meter(tmp_path / "played.mid").on_grid < 0.5
    assert TASK.input_decode_config(tmp_path / "played.mid", cfg) is cfg
    # a score whose tempo doubles half-way: no one pair of bounds holds its beat (nor its
    # bars, counted in beats tracked at another level)
    reel(tmp_path / "faster.mid", tempo_change=(12, 240.0), numerator=3)
    meter = file_meter(tmp_path / "faster.mid")
    assert (meter.on_grid, meter.bar_beats, meter.score_beat_s) == (1.0, 3, None)
    assert TASK.input_decode_config(tmp_path / "faster.mid", cfg) is cfg
    # a file that is not MIDI: transcription's reader names it; here it is left alone
    (tmp_path / "broken.mid").write_bytes(b"not midi")
    assert TASK.input_decode_config(tmp_path / "broken.mid", cfg) is cfg


def test_transcribe_tracks_a_score_at_its_notated_beat_and_says_so(tmp_path):
    """The shipped model through `transcribe_many`, as `jaxmir transcribe beat` runs it: a reel
    at 60 half notes per minute is tracked at its half notes; told to hear the notes alone,
    the model follows a faster level (the music is the same whichever way it was notated)."""
    from jaxmir.engine.run import make_predict
    from jaxmir.shipped import load_for_inference
    from jaxmir.tasks.beat.decode import read_beat_csv
    from jaxmir.tasks.beat.task import median_interval

    reel(tmp_path / "reel.mid", bars=32)
    cfg, mesh, state = load_for_inference(TASK, None)
    predict = make_predict(mesh, state)
    intervals, notes = [], []
    for name, sets in (("notated", []), ("heard", ["decode.notated_level=false"])):
        own = apply_overrides(cfg, sets)
        out = tmp_path / name
        written = TASK.transcribe_many(predict, [tmp_path / "reel.mid"], own, out, progress=False)
        intervals.append(median_interval(read_beat_csv(out / "reel_beats.csv")))
        notes.append(TASK.transcription_note(tmp_path / "reel.mid", written, own))
    assert intervals[0] == pytest.approx(1.0, rel=0.05)
    assert intervals[1] < 0.75  # the quarters or the eighths
    assert "follow its beat" in notes[0]
    assert notes[0].endswith(
        "; its beat level and bars of 2 beats taken from that map (decode.notated_level=false, "
        "decode.notated_bars=false: from the notes)"
    )
    assert "taken from that map" not in notes[1] and "decode.min_bpm=48" in notes[1]


def test_a_bar_length_is_a_pieces_choice_not_a_runs():
    import pytest

    from jaxmir.config import ConfigError

    with pytest.raises(ConfigError, match="decode.bar_beats: the bar length of a piece"):
        TASK.check_training(apply_overrides(TASK.preset("tiny"), ["decode.bar_beats=3"]))
    with pytest.raises(ConfigError, match=r"decode.bar_beats: beats per bar, 1-16 \(0: any\)"):
        TASK.check_decode(apply_overrides(TASK.preset("tiny"), ["decode.bar_beats=17"]))


def test_bars_of_one_given_length():
    from jaxmir.tasks.beat.bar_lengths import bar_downbeats

    p = np.tile([0.9, 0.3, 0.55], 6)  # bars of 3; a third beat the taggers half hear
    assert np.flatnonzero(bar_downbeats(p, 0.1, 0.1, (3,))).tolist() == list(range(0, 18, 3))
    assert np.median(np.diff(np.flatnonzero(bar_downbeats(p, 0.1, 0.1, (2,))))) == 2


def test_a_pickup_bar_of_its_own_meter_keeps_the_bar_length_and_odd_beats_take_no_bounds(
    tmp_path,
):
    from jaxmir.tasks.beat.agreement import bounds_of_beat

    pm = pretty_midi.PrettyMIDI(initial_tempo=90.0)  # a 1/4 pickup bar, then 3/4
    pm.time_signature_changes += [
        pretty_midi.TimeSignature(1, 4, 0.0),
        pretty_midi.TimeSignature(3, 4, 60 / 90),
    ]
    piano = pretty_midi.Instrument(0)
    for i in range(1 + 3 * 12):
        t = i * 60 / 90
        piano.notes.append(pretty_midi.Note(90 if i % 3 == 1 else 60, 60 + i % 7, t, t + 0.5))
    pm.instruments.append(piano)
    pm.write(str(tmp_path / "waltz.mid"))
    assert file_meter(tmp_path / "waltz.mid").bar_beats == 3
    # a notated beat outside what decoding takes (10-1000 per minute): no bounds at all
    lo, hi = bounds_of_beat(60 / 9)
    assert lo >= hi
    assert bounds_of_beat(1.0) == pytest.approx((48.0, 75.0))


def test_a_bar_length_needs_the_taggers_downbeats():
    from jaxmir.config import ConfigError

    cfg = apply_overrides(TASK.preset("tiny"), ["decode.bar_beats=3"])  # downbeats: peaks
    with pytest.raises(ConfigError, match="decode.bar_beats: bars of the downbeat taggers"):
        TASK.check_decode(cfg)
