"""Symbolic sources: the Bach-chorale renderer and the MIDI-folder reader."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

music21 = pytest.importorskip("music21")
pretty_midi = pytest.importorskip("pretty_midi")
mido = pytest.importorskip("mido")

from music21 import expressions, meter, note, stream  # noqa: E402

from jaxmir.data.datasets.midi import (  # noqa: E402
    read_midi_folder,
    read_midi_notes,
    read_midi_piece,
)
from jaxmir.data.synth import chorales  # noqa: E402

SPQ = 60.0 / chorales.UNAUGMENTED_QPM  # seconds per quarter, unaugmented


def _score(ts: str, bars: list[list[float]], pickup_padding: float | None = None) -> stream.Score:
    """One-part score; bars[k] lists the quarter lengths of bar k's notes (C4 D4 E4 ...)."""
    part = stream.Part()
    pitches = ["C4", "D4", "E4", "F4", "G4", "A4"]
    for k, durs in enumerate(bars):
        m = stream.Measure(number=k)
        if k == 0:
            m.insert(0, meter.TimeSignature(ts))
        for j, ql in enumerate(durs):
            m.append(note.Note(pitches[j % len(pitches)], quarterLength=ql))
        if k == 0 and pickup_padding is not None:
            m.paddingLeft = pickup_padding
        part.append(m)
    score = stream.Score()
    score.insert(0, part)
    return score


# ---- chorales: exact grids at the unaugmented constant tempo --------------------------------


@pytest.mark.parametrize("annotate", [True, False])
def test_pickup_in_three_four(annotate):
    # pickup of two quarters, two full bars, a final bar of two quarters
    score = _score("3/4", [[1, 1], [1, 1, 1], [2, 1], [1, 1]], 1.0 if annotate else None)
    piece = chorales.score_to_piece(score, "p", None, augment=False)
    np.testing.assert_allclose(piece.beats, np.arange(10) * SPQ)  # 0 1 | 2 3 4 | 5 6 7 | 8 9
    np.testing.assert_allclose(piece.downbeats, np.array([2.0, 5.0, 8.0]) * SPQ)
    np.testing.assert_allclose(piece.notes[:, 0], np.array([0, 1, 2, 3, 4, 5, 7, 8, 9]) * SPQ)
    np.testing.assert_allclose(piece.notes[:, 1], np.array([1, 2, 3, 4, 5, 7, 8, 9, 10]) * SPQ)
    assert np.all(piece.notes[:, 3] == chorales.UNAUGMENTED_VELOCITY)


def test_one_quarter_pickup_is_right_aligned():
    score = _score("3/4", [[1], [1, 1, 1], [3]], 2.0)
    piece = chorales.score_to_piece(score, "p", None, augment=False)
    np.testing.assert_allclose(piece.beats, np.arange(7) * SPQ)
    np.testing.assert_allclose(piece.downbeats, np.array([1.0, 4.0]) * SPQ)


def test_six_eight_beats_every_dotted_quarter():
    score = _score("6/8", [[1.5, 1.5], [0.5] * 6, [3.0]])
    piece = chorales.score_to_piece(score, "p", None, augment=False)
    np.testing.assert_allclose(piece.beats, np.arange(6) * 1.5 * SPQ)
    np.testing.assert_allclose(piece.downbeats, np.array([0.0, 3.0, 6.0]) * SPQ)


def test_no_time_signature_is_refused():
    part = stream.Part()
    m = stream.Measure(number=1)
    m.append(note.Note("C4", quarterLength=4))
    part.append(m)
    score = stream.Score()
    score.insert(0, part)
    with pytest.raises(ValueError, match="time signature"):
        chorales.score_to_piece(score, "p", None, augment=False)


# ---- chorales: augmentation --------------------------------------------------------------------


def _fermata_score() -> stream.Score:
    bars = [[1]] + [[1, 1, 1]] * 8 + [[2]]
    score = _score("3/4", bars, 2.0)
    last = list(score.parts[0].getElementsByClass("Measure"))[-1].notes[0]
    last.expressions.append(expressions.Fermata())
    return score


def test_augmentation_keeps_labels_exact():
    score = _fermata_score()
    for seed in range(8):
        piece = chorales.score_to_piece(score, "p", np.random.default_rng(seed), augment=True)
        beats, notes = piece.beats, piece.notes
        assert len(beats) == 1 + 8 * 3 + 2 and len(piece.downbeats) == 9
        assert np.all(np.diff(beats) > 0)
        assert np.all(np.isin(piece.downbeats, beats))
        # every note of this score starts on a beat: only the +-10 ms onset jitter separates them
        gap = np.abs(notes[:, 0, None] - beats[None, :]).min(axis=1)
        assert gap.max() <= chorales.ONSET_JITTER_S + 1e-9
        assert notes[:, 0].min() >= 0.0 and np.all(notes[:, 1] > notes[:, 0])
        assert notes[:, 1].max() <= beats[-1] + 3.0 * np.diff(beats).max()
        assert np.all(np.diff(notes[:, 0]) >= 0)
        assert np.all((notes[:, 3] >= 1) & (notes[:, 3] <= 127))
        # tempo within the documented envelope (60-160 bpm per beat, +-15%, steps, rit, fermata)
        ioi = np.diff(beats)
        assert ioi.min() > 60.0 / (160 * 1.15 * 1.25) - 1e-9
        assert ioi.max() < 60.0 / (60 / 1.15 / 1.25 * 0.6) * 2.5 + 1e-9


def test_same_seed_same_output():
    score = _fermata_score()
    a = chorales.score_to_piece(score, "p", np.random.default_rng(3), augment=True)
    b = chorales.score_to_piece(score, "p", np.random.default_rng(3), augment=True)
    c = chorales.score_to_piece(score, "p", np.random.default_rng(4), augment=True)
    for field in ("notes", "beats", "downbeats"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.allclose(a.beats, c.beats)
    u1 = chorales.score_to_piece(score, "p", None, augment=False)
    u2 = chorales.score_to_piece(score, "p", np.random.default_rng(9), augment=False)
    np.testing.assert_array_equal(u1.notes, u2.notes)


def test_split_of_is_stable():
    ids = [f"bach/bwv{k}.{j}" for k in range(1, 200) for j in range(1, 4)]
    splits = [chorales.split_of(i) for i in ids]
    assert splits == [chorales.split_of(i) for i in ids]
    assert set(splits) == {"train", "val", "test"}
    frac = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert 0.7 < frac["train"] < 0.9 and 0.05 < frac["val"] < 0.15 and 0.05 < frac["test"] < 0.15
    # a pinned value: the hash must never change between versions
    assert chorales.split_of("bach/bwv66.6") == "train"
    assert chorales.split_of("bach/bwv66.6", val_fraction=0.0, test_fraction=1.0) == "test"


def test_chorale_ids():
    ids = chorales.chorale_ids()
    assert ids == chorales.chorale_ids()
    assert len(ids) == len(set(ids)) >= 340
    assert all(i.startswith("bach/") for i in ids)


def test_real_chorale_downbeats():
    score = music21.corpus.parse("bach/bwv66.6", forceSource=True)
    measures = list(score.parts[0].getElementsByClass("Measure"))
    bar = measures[1].barDuration.quarterLength
    assert measures[0].duration.quarterLength < bar  # this chorale starts with a pickup
    piece = chorales.score_to_piece(score, "bwv66.6", None, augment=False)
    # every measure but the pickup starts a bar (the truncated final bar included)
    assert len(piece.downbeats) == len(measures) - 1
    pickup = measures[0].duration.quarterLength
    np.testing.assert_allclose(piece.downbeats[0], pickup * SPQ)
    np.testing.assert_allclose(np.diff(piece.downbeats), bar * SPQ)
    np.testing.assert_allclose(np.diff(piece.beats), SPQ)


def test_a_part_subset_rendering_thins_the_parts_and_keeps_the_rest():
    """A rendering that keeps some parts: a strict, non-empty subset of the chorale's voices,
    the same beats, tempo and (for the notes kept) the same times as the full rendering; the
    corpus names it with its suffix."""
    cid = "bach/bwv66.6"
    score = music21.corpus.parse(cid, forceSource=True)
    grid, notes = chorales._metrical_grid(score), chorales._collect_notes(score)
    for variant in range(4):
        thin = chorales._render(
            grid, notes, "t", chorales._piece_rng(0, cid, variant), True, part_subsets=1.0
        )
        ref = chorales._render(grid, notes, "r", chorales._piece_rng(0, cid, variant), True)
        np.testing.assert_array_equal(thin.beats, ref.beats)
        np.testing.assert_array_equal(thin.downbeats, ref.downbeats)
        assert 0 < len(thin.notes) < len(ref.notes)
        rows = {tuple(r) for r in ref.notes}
        assert all(tuple(r) in rows for r in thin.notes)  # a subset of the same notes
    rng = np.random.default_rng(0)
    part = np.repeat(np.arange(4), 5)
    kept = [chorales._part_subset(part, rng, 1.0) for _ in range(200)]
    voices = [len(set(part[k])) for k in kept]
    assert min(voices) == 1 and max(voices) == 3  # one to three of four voices
    for k in kept:  # whole parts: all of a part's notes or none
        assert all(k[part == p].all() or not k[part == p].any() for p in range(4))
    assert chorales._part_subset(np.zeros(6, int), rng, 1.0).all()  # one part: all kept
    assert chorales._part_subset(part, rng, 0.0).all()
    pieces, _ = chorales.build_chorale_pieces(
        "all", 1, progress=False, ids=[cid], part_subsets=1.0, suffix="__sparse"
    )
    assert pieces[0].name == "bach__bwv66.6__sparse"


# ---- MIDI folder ---------------------------------------------------------------------------


def _write_pm(path, ts: tuple[int, int] | None, qpm: float = 120.0, n: int = 12) -> None:
    pm = pretty_midi.PrettyMIDI(initial_tempo=qpm)
    if ts is not None:
        pm.time_signature_changes.append(pretty_midi.TimeSignature(ts[0], ts[1], 0.0))
    inst = pretty_midi.Instrument(program=0)
    for k in range(n):
        inst.notes.append(pretty_midi.Note(80, 60 + k % 12, 0.5 * k, 0.5 * k + 0.5))
    pm.instruments.append(inst)
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    drums.notes.append(pretty_midi.Note(100, 36, 0.0, 0.1))
    pm.instruments.append(drums)
    path.parent.mkdir(parents=True, exist_ok=True)
    pm.write(str(path))


def _write_meterless(path) -> None:
    # pretty_midi.write() would add a 4/4 event, so write this one with mido
    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=500000, time=0))
    for k in range(4):
        track.append(mido.Message("note_on", note=60 + k, velocity=80, time=0))
        track.append(mido.Message("note_off", note=60 + k, velocity=0, time=480))
    mid.tracks.append(track)
    mid.save(str(path))


@pytest.fixture
def midi_folder(tmp_path):
    root = tmp_path / "midi"
    _write_pm(root / "a_four.mid", (4, 4))
    _write_pm(root / "sub" / "six_eight.MIDI", (6, 8))
    _write_pm(root / "sub" / "empty.mid", (4, 4), n=0)
    _write_meterless(root / "nometer.mid")
    (root / "corrupt.mid").write_bytes(np.random.default_rng(0).bytes(300))
    (root / "notes.txt").write_text("not midi")
    return root


def test_read_midi_piece_six_eight(midi_folder):
    piece = read_midi_piece(midi_folder / "sub" / "six_eight.MIDI")
    # 120 quarter-bpm, 6/8: a beat per dotted quarter (0.75 s), two beats a bar, from t=0
    np.testing.assert_allclose(piece.beats, np.arange(8) * 0.75)
    np.testing.assert_allclose(piece.downbeats, np.arange(4) * 1.5)
    assert piece.notes.shape == (12, 4)  # the drum note is left out
    np.testing.assert_allclose(piece.notes[:, 0], np.arange(12) * 0.5)


def test_read_midi_folder(midi_folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # failures are returned, not also warned
        pieces, failures = read_midi_folder(midi_folder)
    assert [p.name for p in pieces] == ["a_four", "sub__six_eight"]
    four = pieces[0]
    np.testing.assert_allclose(four.beats, np.arange(12) * 0.5)
    np.testing.assert_allclose(four.downbeats, np.arange(3) * 2.0)
    reasons = {p.rsplit("/", 1)[-1]: r for p, r in failures}
    assert set(reasons) == {"corrupt.mid", "nometer.mid", "empty.mid"}
    assert "cannot parse" in reasons["corrupt.mid"] and "corrupt.mid" in reasons["corrupt.mid"]
    assert "time-signature" in reasons["nometer.mid"] and "nometer.mid" in reasons["nometer.mid"]
    assert "no notes" in reasons["empty.mid"]


def test_a_meter_map_kept_with_the_notes_is_read(tmp_path):
    """A type-1 file whose tempo and time signature sit in the notes' track (not track 0, where
    pretty_midi alone looks) is read at its own tempo and meter, with no warning: 75 qpm, so
    a quarter every 0.8 s, in 3/4, doubling to 150 qpm after 12 beats."""
    import mido

    mid = mido.MidiFile(type=1, ticks_per_beat=480)
    mid.tracks += [mido.MidiTrack(), track := mido.MidiTrack()]
    track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(75), time=0))
    track.append(mido.MetaMessage("time_signature", numerator=3, denominator=4, time=0))
    for b in range(24):
        if b == 12:
            track.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(150), time=80))
        pitch = 48 if b % 3 == 0 else 55
        track.append(
            mido.Message("note_on", note=pitch, velocity=90, time=0 if b in (0, 12) else 80)
        )
        track.append(mido.Message("note_off", note=pitch, velocity=0, time=400))
    mid.save(tmp_path / "kept.mid")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        piece = read_midi_piece(tmp_path / "kept.mid")
        notes = read_midi_notes(tmp_path / "kept.mid")
    expected = np.r_[np.arange(12) * 0.8, 9.6 + np.arange(12) * 0.4]
    np.testing.assert_allclose(notes[:, 0], expected)
    np.testing.assert_allclose(piece.beats[:14], expected[:14])
    np.testing.assert_allclose(piece.downbeats[:5], [0.0, 2.4, 4.8, 7.2, 9.6])
    # where track 0 holds a tempo of its own, it stays the map (no stray tempo overrides it)
    mid.tracks[0].append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(100), time=0))
    mid.save(tmp_path / "conductor.mid")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        notes = read_midi_notes(tmp_path / "conductor.mid")
    np.testing.assert_allclose(notes[:3, 0], [0.0, 0.6, 1.2])


def test_a_beat_trackers_input_reads_drums_when_there_is_nothing_else(tmp_path):
    """Drum tracks are left out of a file's notes; a file of drums alone is refused, except
    as a beat tracker's input (`rhythm`), which reads its drum notes: their onsets carry the
    beat. Beside pitched notes the drums stay out there too."""
    import pretty_midi

    def write(name, drums_only):
        pm = pretty_midi.PrettyMIDI(initial_tempo=120)
        kit = pretty_midi.Instrument(0, is_drum=True)
        kit.notes += [
            pretty_midi.Note(90, 36 if i % 2 == 0 else 42, i / 4, i / 4 + 0.1) for i in range(16)
        ]
        pm.instruments.append(kit)
        if not drums_only:
            piano = pretty_midi.Instrument(0)
            piano.notes += [pretty_midi.Note(80, 60, i, i + 0.9) for i in range(4)]
            pm.instruments.append(piano)
        pm.write(str(tmp_path / name))
        return tmp_path / name

    drums, mixed = write("drums.mid", True), write("mixed.mid", False)
    with pytest.raises(ValueError, match="no notes"):
        read_midi_notes(drums)
    np.testing.assert_allclose(read_midi_notes(drums, rhythm=True)[:, 0], np.arange(16) / 4)
    for rhythm in (False, True):
        np.testing.assert_allclose(read_midi_notes(mixed, rhythm=rhythm)[:, 2], [60] * 4)


def test_notes_of_no_length_are_read_one_tick_long(tmp_path):
    """A note-off at its note-on's own tick (a step sequencer's drum hit) kept the note open in
    pretty_midi: dropped, or held until the next off of its pitch. Such notes now last one
    tick; a legato repeat (the old note's off and the new note's on at one tick, in either
    order) reads as two notes, as before."""
    import mido

    def hit(pitch, delay):  # note-on and note-off at one tick
        return [
            mido.Message("note_on", channel=9, note=pitch, velocity=100, time=delay),
            mido.Message("note_off", channel=9, note=pitch, velocity=0, time=0),
        ]

    kit = mido.MidiTrack()
    for i in range(8):
        kit += hit(36 if i % 2 == 0 else 42, 0 if i == 0 else 240)
    kit.append(mido.Message("note_off", channel=9, note=36, velocity=0, time=480))  # stray off
    kit.append(mido.MetaMessage("end_of_track", time=0))
    legato = mido.MidiTrack()  # on 60 / [on 60, off 60] at one tick / off 60
    legato += [
        mido.Message("note_on", note=60, velocity=80, time=0),
        mido.Message("note_on", note=60, velocity=80, time=480),
        mido.Message("note_off", note=60, velocity=0, time=0),
        mido.Message("note_off", note=60, velocity=0, time=480),
    ]
    tempo = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500_000, time=0)])
    mido.MidiFile(type=1, ticks_per_beat=480, tracks=[tempo, kit]).save(tmp_path / "steps.mid")
    notes = read_midi_notes(tmp_path / "steps.mid", rhythm=True)
    np.testing.assert_allclose(notes[:, 0], np.arange(8) * 0.25)
    np.testing.assert_allclose(notes[:, 1] - notes[:, 0], 0.5 / 480)  # one tick
    np.testing.assert_array_equal(notes[:, 2], [36, 42] * 4)
    mido.MidiFile(type=1, ticks_per_beat=480, tracks=[tempo, legato]).save(tmp_path / "tie.mid")
    np.testing.assert_allclose(read_midi_notes(tmp_path / "tie.mid")[:, :2], [[0, 0.5], [0.5, 1]])

    def one_pitch(*events):  # (kind, absolute tick) of pitch 60
        track, last = mido.MidiTrack(), 0
        for kind, tick in events:
            velocity = 80 if kind == "on" else 0
            track.append(mido.Message(f"note_{kind}", note=60, velocity=velocity, time=tick - last))
            last = tick
        mido.MidiFile(type=1, ticks_per_beat=480, tracks=[tempo, track]).save(tmp_path / "p.mid")
        return read_midi_notes(tmp_path / "p.mid")[:, :2]

    # a pair of no length followed at its tick by a note of its pitch: that note, as before
    np.testing.assert_allclose(
        one_pitch(("on", 480), ("off", 480), ("on", 480), ("off", 960)), [[0.5, 1.0]]
    )
    # two notes of no length at one tick (two offs): both sound one tick
    tick = 0.5 / 480
    np.testing.assert_allclose(
        one_pitch(("on", 0), ("on", 0), ("off", 0), ("off", 0)), [[0, tick]] * 2
    )


def test_read_midi_piece_raises(midi_folder):
    with pytest.raises(ValueError, match=r"nometer\.mid.*meter-less"):
        read_midi_piece(midi_folder / "nometer.mid")
    with pytest.raises(ValueError, match=r"corrupt\.mid"):
        read_midi_piece(midi_folder / "corrupt.mid")
    # notes alone need no meter
    assert read_midi_notes(midi_folder / "nometer.mid").shape == (4, 4)


def test_read_midi_folder_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_midi_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="empty"):
        read_midi_folder(tmp_path / "empty")
