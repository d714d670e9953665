"""Tracked beats against the meter map of the MIDI file they came from
(`jaxmir.tasks.beat.agreement`, the line `jaxmir transcribe beat` prints per file)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pretty_midi
import pytest

from jaxmir.tasks.beat.agreement import LEVEL_WORDS, GridShift, grid_shift, meter_agreement
from jaxmir.tasks.beat.bars import subdivided
from jaxmir.tasks.beat.decode import read_beat_csv, write_beat_csv
from jaxmir.tasks.beat.task import LEVELS


def score_midi(path, numerator=3, qpm=90.0, bars=12, pickup=0.0, time_signature=True):
    """A score exported as MIDI: `numerator`/4 at `qpm`, a chord on each downbeat and a note on
    every beat, after `pickup` beats of upbeat written from t=0 (no padding, as music21 writes
    one), so the file's own grid is `pickup` beats early. Returns the score's beats (s)."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=qpm)
    if time_signature:
        pm.time_signature_changes.append(pretty_midi.TimeSignature(numerator, 4, 0.0))
    piano = pretty_midi.Instrument(0)
    beat = 60.0 / qpm
    if pickup:
        piano.notes.append(pretty_midi.Note(80, 62, 0.0, 0.8 * pickup * beat))
    beats = (pickup + np.arange(bars * numerator)) * beat
    for i, t in enumerate(beats):
        piano.notes.append(pretty_midi.Note(80, 67 + i % 3, t, t + 0.8 * beat))
        if i % numerator == 0:
            piano.notes.append(pretty_midi.Note(100, 43, t, t + numerator * beat * 0.9))
    pm.instruments.append(piano)
    pm.write(str(path))
    return beats


def test_beats_at_the_files_own_level_agree(tmp_path):
    beats = score_midi(tmp_path / "waltz.mid")
    a = meter_agreement(tmp_path / "waltz.mid", beats, beats[::3])
    assert (a.level, a.beat_f_measure, a.downbeat_f_measure, a.shift) == ("beat", 1.0, 1.0, None)
    assert a.file_beat_s == pytest.approx(60 / 90, abs=1e-5) and a.tracked_beat_s == pytest.approx(
        60 / 90, abs=1e-5
    )
    line = a.line("waltz.mid")
    assert line.startswith("waltz.mid: against its own meter map (a beat every 0.67 s, 90 per")
    assert "follow its beat: beat F 1.00, downbeat F 1.00" in line


@pytest.mark.parametrize(
    "tracked, level, words",
    [
        (lambda b: subdivided(b, 2)[0], "1/2", "run twice as fast as its beat"),
        (lambda b: b[::2], "2", "mark every 2nd of its beats"),
        (lambda b: b[::4], "other", "run at 0.25 times its tempo"),
        (lambda b: b[:1], "none", "are too few to compare"),
    ],
)
def test_another_metrical_level_is_named(tmp_path, tracked, level, words):
    beats = score_midi(tmp_path / "piece.mid")
    a = meter_agreement(tmp_path / "piece.mid", tracked(beats), beats[::3])
    assert a.level == level and words in a.line("piece.mid")
    # and how to track the file's own beat instead: its tempo (90) within 25 % either way
    hint = "(to follow its beat: --set decode.min_bpm=72 --set decode.max_bpm=113)"
    assert (hint in a.line("piece.mid")) == (level not in ("beat", "none"))
    # peak picking has no tempo to bound: a run that decodes so is told to track
    tracked_hint = "(to follow its beat: --set decode.method=track --set decode.min_bpm=72"
    assert (tracked_hint in a.line("piece.mid", peaks=True)) == (level not in ("beat", "none"))
    assert "to follow its beat" not in a.line("piece.mid", hint=False)  # bounds given already
    assert a.beat_f_measure < 0.7 and a.shift is None  # the grid is right: no shift helps


@pytest.mark.parametrize("pickup", [1, 2, 0.5])
def test_a_pickup_the_file_does_not_mark_is_pointed_out(tmp_path, pickup):
    beats = score_midi(tmp_path / "chorale.mid", numerator=4, pickup=pickup)
    a = meter_agreement(tmp_path / "chorale.mid", beats, beats[::4])
    assert a.level == "beat" and a.downbeat_f_measure == 0.0
    # the file's beats: the score's, and `pickup` more at the start; or all between them
    assert a.beat_f_measure == (pytest.approx(1.0, abs=0.03) if pickup == int(pickup) else 0.0)
    assert a.shift == GridShift(Fraction(pickup), 1.0, 1.0)
    expected = f"moved {Fraction(pickup)} beat{'s' if pickup > 1 else ''} later, its grid agrees"
    assert expected in a.line("chorale.mid")
    assert a.line("chorale.mid").endswith("beat F 1.00, downbeat F 1.00")


def test_of_shifts_that_agree_alike_the_plainest_fraction_is_named(tmp_path):
    beats = score_midi(tmp_path / "chorale.mid", numerator=4, pickup=1)
    tracked = beats.copy()
    tracked[5] += 0.080  # one beat late: 1 beat scores 0.02 below 25/24 beat, which has it
    a = meter_agreement(tmp_path / "chorale.mid", tracked, beats[::4])
    assert a.shift.beats == Fraction(1) and a.shift.beat_f_measure < 1.0


def test_no_shift_is_named_where_none_agrees_better(tmp_path):
    beats = score_midi(tmp_path / "chorale.mid", numerator=4)
    assert meter_agreement(tmp_path / "chorale.mid", beats, beats[::4]).shift is None
    # tracked beats at random times agree with no shift of the grid either
    rng = np.random.default_rng(0)
    noise = np.sort(rng.uniform(0, beats[-1], len(beats)))
    assert grid_shift(noise, noise[::4], beats, beats[::4]) is None
    # nor for a beat or two, wherever they lie (in a bar of three, one beat would favour a shift)
    short = score_midi(tmp_path / "bar.mid", bars=1)
    one = short[:1] + 0.3
    assert grid_shift(one, one, short, short[:1]) is None


def test_every_level_has_its_words():
    assert set(LEVEL_WORDS) == set(LEVELS) | {"none"}


def test_the_transcription_note_reads_the_beats_written_for_the_file(tmp_path):
    from jaxmir.tasks.beat.task import TASK

    beats = score_midi(tmp_path / "waltz.mid")
    out = tmp_path / "out"
    out.mkdir()
    write_beat_csv(out / "waltz_beats.csv", beats)
    write_beat_csv(out / "waltz_downbeats.csv", beats[::3])
    written = [out / "waltz_beats.mid", out / "waltz_downbeats.csv", out / "waltz_beats.csv"]
    note = TASK.transcription_note(tmp_path / "waltz.mid", written)
    assert note.startswith("waltz.mid: against its own meter map")
    assert note.endswith("follow its beat: beat F 1.00, downbeat F 1.00")


def test_no_line_for_a_file_without_a_meter_map_of_its_own(tmp_path):
    import mido

    track = mido.MidiTrack()  # notes only: no tempo, no time signature (pretty_midi adds a 4/4)
    for _ in range(24):
        track += [mido.Message("note_on", note=60, velocity=80, time=0)]
        track += [mido.Message("note_off", note=60, velocity=0, time=480)]
    mido.MidiFile(ticks_per_beat=480, tracks=[track]).save(tmp_path / "bare.mid")
    beats = np.arange(24) * 0.5
    assert meter_agreement(tmp_path / "bare.mid", beats, beats[::4]) is None


def test_no_line_for_a_performance_with_a_placeholder_map(tmp_path):
    rng = np.random.default_rng(3)
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)  # a recorder's 120 qpm 4/4 over free timing
    pm.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0.0))
    piano = pretty_midi.Instrument(0)
    for t in np.cumsum(rng.uniform(0.13, 0.61, 60)):
        piano.notes.append(pretty_midi.Note(70, int(rng.integers(50, 80)), t, t + 0.3))
    pm.instruments.append(piano)
    pm.write(str(tmp_path / "played.mid"))
    assert meter_agreement(tmp_path / "played.mid", np.arange(20.0), np.arange(0, 20.0, 4)) is None


def test_no_line_for_a_short_file_with_midis_default_map(tmp_path):
    """A transcription's MIDI file (120 qpm, 4/4: what pretty_midi writes) of a few notes was
    read as a score: a line with tempo bounds to follow a beat the file never had."""
    from jaxmir.tasks.music.decode import notes_to_midi

    notes = np.array([[0.31 + 0.43 * k, 0.6 + 0.43 * k, 60 + k, 100, 0] for k in range(9)])
    notes_to_midi(notes).write(str(tmp_path / "song.mid"))
    assert meter_agreement(tmp_path / "song.mid", np.arange(8.0) * 0.5, np.arange(2.0) * 2) is None
    # a short score at another tempo keeps its line
    beats = score_midi(tmp_path / "short.mid", numerator=3, qpm=90.0, bars=3)
    assert meter_agreement(tmp_path / "short.mid", beats, beats[::3]).level == "beat"


def test_beat_csv_reads_back_what_was_written(tmp_path):
    for times in (np.array([0.5, 1.25, 2.0]), np.array([]), np.array([3.0])):
        write_beat_csv(tmp_path / "b.csv", times)
        np.testing.assert_array_equal(read_beat_csv(tmp_path / "b.csv"), times)


def test_no_tempo_bounds_are_suggested_for_a_file_whose_tempo_changes(tmp_path):
    """90 bpm for 16 beats, then 140: bounds around the median tempo would track the second
    half at half its beat, so the line says the tempo changes instead of suggesting them."""
    import mido

    mid = mido.MidiFile(type=0, ticks_per_beat=480)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0))
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(90), time=0))
    for i in range(48):
        if i == 16:
            track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(140), time=0))
        track.append(mido.Message("note_on", note=60, velocity=80, time=0))
        track.append(mido.Message("note_off", note=60, velocity=0, time=480))
    mid.save(tmp_path / "changes.mid")
    beats = np.r_[np.arange(16) * 60 / 90, 16 * 60 / 90 + np.arange(32) * 60 / 140]
    a = meter_agreement(tmp_path / "changes.mid", beats[::2], beats[::8])
    assert not a.steady and a.level != "beat"
    line = a.line("changes.mid")
    assert "its beat changes length: no one pair of tempo bounds" in line and "min_bpm" not in line
    steady = score_midi(tmp_path / "steady.mid")
    assert meter_agreement(tmp_path / "steady.mid", steady[::2], steady[::6]).steady


def test_a_drum_only_file_is_compared_on_its_drum_notes(tmp_path):
    """A file of drum tracks alone is compared on its drum notes, which is what transcription
    tracked (it got no line)."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0.0))
    kit = pretty_midi.Instrument(0, is_drum=True)
    heard = np.arange(32) * 0.5  # a hit on every beat, a bass drum on each downbeat
    kit.notes += [
        pretty_midi.Note(100, 36 if i % 4 == 0 else 42, t, t + 0.1) for i, t in enumerate(heard)
    ]
    pm.instruments.append(kit)
    pm.write(str(tmp_path / "groove.mid"))
    a = meter_agreement(tmp_path / "groove.mid", heard, heard[::4])
    assert a is not None and (a.beat_f_measure, a.downbeat_f_measure, a.level) == (1.0, 1.0, "beat")
