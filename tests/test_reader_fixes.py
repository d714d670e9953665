"""Dataset readers on fixtures written the way the real files are (line ends, spacing, quirks)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from jaxmir.data.cache import FeatureCache
from jaxmir.data.datasets import maestro, mdb_drums, medleydb, midi, tonas
from jaxmir.data.featurize import featurize
from jaxmir.data.records import AudioPiece


def write_bytes(path: Path, text: str) -> Path:
    """Write `text` as is: no newline translation, so CRLF files stay CRLF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def write_wav(path: Path, seconds: float = 0.2, sr: int = 8000) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(int(seconds * sr), np.float32), sr)
    return path


# --------------------------------------------------------------------------------------------
# TONAS: pitches already tuned; f0 on an ~11.6 ms hop, column 3
# --------------------------------------------------------------------------------------------

# The first lines of Deblas/01-D_AMairena (CRLF line ends, as distributed).
TONAS_NOTES = (
    "43.000000\r\n"
    "0.216667, 0.433333, 66.430000, 0.018007\r\n"
    "0.650000, 1.016667, 67.430000, 0.010794\r\n"
)
TONAS_F0 = (
    "0.197     0.00000309     0.000     0.000\r\n"
    "0.209     0.00000286     0.000     379.299\r\n"
    "0.221     0.00000715     143.918     379.299\r\n"
    "0.232     0.00001545     143.918     379.299\r\n"
)


def test_tonas_pitches_are_not_shifted_by_the_tuning_again(tmp_path):
    write_wav(tmp_path / "Deblas" / "01-D_AMairena.wav")
    write_bytes(tmp_path / "Deblas" / "01-D_AMairena.notes.Corrected", TONAS_NOTES)
    write_bytes(tmp_path / "Deblas" / "01-D_AMairena.f0.Corrected", TONAS_F0)
    (piece,) = tonas.read(tmp_path)
    np.testing.assert_allclose(piece.notes[:, 2], [66.43, 67.43])
    np.testing.assert_array_equal(np.round(piece.notes[:, 2]), [66, 67])  # not 67, 67
    np.testing.assert_allclose(piece.notes[:, :2], [[0.216667, 0.65], [0.65, 1.666667]])
    # ~11.6 ms hop (512 samples at 44.1 kHz), not 2.9 ms
    np.testing.assert_allclose(np.diff(piece.f0[:, 0]).mean(), 512 / 44100, atol=1e-3)
    # the contour is column 3; column 4 is the note staircase (379.299 Hz = MIDI 66.43)
    np.testing.assert_allclose(piece.f0[:, 1], [0.0, 0.0, 143.918, 143.918])
    assert 69 + 12 * np.log2(379.299 / 440) == pytest.approx(66.43, abs=1e-3)


# --------------------------------------------------------------------------------------------
# MDB-Drums: class OT is side stick or tambourine
# --------------------------------------------------------------------------------------------


def mdb_lines(rows) -> str:
    """The files' own spacing: `time \\t label ` with a trailing space."""
    return "".join(f"{t:.6f} \t {label} \n" for t, label in rows)


def mdb_track(root: Path, track: str, rows, subclass: bool = True) -> None:
    write_wav(root / "audio" / "full_mix" / f"{track}_MIX.wav")
    ann = root / "annotations"
    write_bytes(ann / "class" / f"{track}_class.txt", mdb_lines([(t, c) for t, c, _ in rows]))
    if subclass:
        text = mdb_lines([(t, s) for t, _, s in rows])
        write_bytes(ann / "subclass" / f"{track}_subclass.txt", text)


def test_mdb_drums_class_ot_follows_the_subclass_file(tmp_path):
    # as in MusicDelta_Country1 (OT = SST) and MusicDelta_Beatles (OT = TMB)
    mdb_track(tmp_path, "MusicDelta_Country1", [(0.098685, "KD", "KD"), (0.68, "OT", "SST")])
    mdb_track(tmp_path, "MusicDelta_Beatles", [(0.1, "HH", "CHH"), (0.508163, "OT", "TMB")])
    mdb_track(tmp_path, "MusicDelta_Reggae", [(1.15, "OT", "SST")], subclass=False)
    by_name = {p.name: p for p in mdb_drums.read(tmp_path, level="class")}
    np.testing.assert_array_equal(by_name["MusicDelta_Country1"].drum_hits[:, 1], [36, 37])
    np.testing.assert_array_equal(by_name["MusicDelta_Beatles"].drum_hits[:, 1], [42, 54])
    # no subclass file: OT -> side stick, the majority (38 of the 70 OT hits)
    np.testing.assert_array_equal(by_name["MusicDelta_Reggae"].drum_hits, [[1.15, 37]])
    sub = {p.name: p for p in mdb_drums.read(tmp_path)}
    np.testing.assert_array_equal(sub["MusicDelta_Country1"].drum_hits[:, 1], [36, 37])
    np.testing.assert_array_equal(sub["MusicDelta_Beatles"].drum_hits[:, 1], [42, 54])
    assert "MusicDelta_Reggae" not in sub


# --------------------------------------------------------------------------------------------
# MIDI: high tick resolutions (MAPS), corrupt files
# --------------------------------------------------------------------------------------------


def write_mido(path: Path, ticks_per_beat: int, notes, tempo: int = 500_000) -> Path:
    """Type-1 file as MAESTRO/MAPS write them: track 0 tempo + 4/4, track 1 notes with
    note-on velocity 0 as note-off. `notes`: (start_tick, end_tick, pitch)."""
    import mido

    mid = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
    meta = mido.MidiTrack()
    meta.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    meta.append(mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0))
    meta.append(mido.MetaMessage("end_of_track", time=1))
    events = sorted(
        [(a, 1, p) for a, _, p in notes] + [(b, 0, p) for _, b, p in notes]
    )  # offs before ons at the same tick
    track = mido.MidiTrack([mido.Message("program_change", program=0, time=0)])
    now = 0
    for tick, on, pitch in events:
        track.append(mido.Message("note_on", note=pitch, velocity=64 * on, time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=1))
    mid.tracks += [meta, track]
    path.parent.mkdir(parents=True, exist_ok=True)
    mid.save(str(path))
    return path


def test_midi_at_32767_ticks_per_quarter_with_a_late_note(tmp_path):
    import pretty_midi

    q = 32767
    last = 12_000_000  # > 1e7 ticks: ~183 s at 120 qpm
    path = write_mido(
        tmp_path / "MAPS_MUS-x.mid", q, [(0, q, 60), (q, 2 * q, 64), (last, last + q, 67)]
    )
    with pytest.raises(ValueError, match="likely corrupt"):
        pretty_midi.PrettyMIDI(str(path))  # what the readers used to do
    limit = pretty_midi.pretty_midi.MAX_TICK
    notes = midi.read_midi_notes(path)
    assert pretty_midi.pretty_midi.MAX_TICK == limit  # restored after the read
    np.testing.assert_allclose(notes[:, 0], [0.0, 0.5, last / q * 0.5])
    np.testing.assert_allclose(notes[:, 1], [0.5, 1.0, (last + q) / q * 0.5])
    piece = midi.read_midi_piece(path)
    np.testing.assert_allclose(piece.beats[:3], [0.0, 0.5, 1.0])
    maestro_notes = maestro.read_midi_notes(path)
    np.testing.assert_allclose(maestro_notes[:, 0], notes[:, 0])
    from jaxmir.inference import input_seconds  # what a transcription's s/min divides by

    assert input_seconds(path) == pytest.approx((last + q) / q * 0.5, abs=0.01)


def test_midi_with_a_tempo_change_past_pretty_midis_tick_limit_keeps_its_beats(tmp_path):
    """music21 writes 10,080 ticks per quarter: a long or fast score's late tempo change lies
    past pretty_midi's 1e7 ticks, which it checks again when it maps ticks to seconds."""
    import mido

    q = 10_080
    change = 1100 * q  # 60 qpm from the 1101st beat on, 550 s in (at 120 qpm)
    path = write_mido(tmp_path / "late-tempo.mid", q, [(0, q, 60), (change, change + 4 * q, 64)])
    mid = mido.MidiFile(str(path))
    meta = mid.tracks[0]
    meta.insert(2, mido.MetaMessage("set_tempo", tempo=1_000_000, time=change))
    mid.save(str(path))
    piece = midi.read_midi_piece(path)  # an IndexError from pretty_midi before
    at = change / q * 0.5
    np.testing.assert_allclose(piece.notes[:, 0], [0.0, at])
    np.testing.assert_allclose(piece.beats[:3], [0.0, 0.5, 1.0])
    after = piece.beats[piece.beats >= at]
    assert len(after) == 4  # the last note's four quarters, one a second: 60 qpm after it
    np.testing.assert_allclose(after, at + np.arange(4))


def test_midi_corrupt_files_are_named(tmp_path):
    # a delta of 2**28 - 1 ticks (the largest a MIDI delta can be) at 220 per quarter: 169 h
    path = write_mido(tmp_path / "huge.mid", 220, [(0, 220, 60), (2**28 - 1, 2**28 + 219, 62)])
    with pytest.raises(midi.MidiError, match=r"huge\.mid: last event at tick .*corrupt"):
        midi.read_midi_notes(path)
    garbage = write_bytes(tmp_path / "garbage.mid", "MThd not really a MIDI file")
    with pytest.raises(midi.MidiError, match=r"garbage\.mid: cannot parse MIDI"):
        midi.read_midi_notes(garbage)
    with pytest.raises(ValueError, match=r"huge\.mid.*corrupt"):  # AnnotationError for MAESTRO
        maestro.read_midi_notes(path)


def test_an_unreadable_midi_file_is_worded_as_an_unreadable_audio_file(tmp_path, monkeypatch):
    """It was "cannot parse MIDI (PermissionError: [Errno 13] ...)". (Set by mido's reader
    here: root, who runs the tests on some machines, may read any file.)"""
    import mido

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(mido, "MidiFile", refused)
    path = write_bytes(tmp_path / "locked.mid", "MThd")
    with pytest.raises(midi.MidiError, match=r"locked\.mid: file is not readable \(permission"):
        midi.read_midi_notes(path)


# --------------------------------------------------------------------------------------------
# MIDI beats: a performance's placeholder 120 qpm meter
# --------------------------------------------------------------------------------------------


def test_performance_midi_with_default_tempo_is_skipped_score_is_kept(tmp_path):
    rng = np.random.default_rng(7)
    # a performance at MAESTRO's 384 ticks per quarter: onsets wherever the pianist played
    starts = np.cumsum(rng.integers(40, 400, size=80))
    played = [
        (int(a), int(a) + int(rng.integers(60, 300)), int(rng.integers(40, 90))) for a in starts
    ]
    write_mido(tmp_path / "songs" / "2018" / "performance.midi", 384, played)
    # a quantised score at 120 qpm, 480 per quarter: quarters, sixteenths, triplets, 32nds
    grid = [0, 480, 960, 1080, 1200, 1320, 1440, 1600, 1760, 1920, 1980, 2040, 2100, 2160]
    grid += [2400 + 480 * k for k in range(10)]
    write_mido(
        tmp_path / "songs" / "score.mid",
        480,
        [(a, a + 60, 60 + i % 12) for i, a in enumerate(grid)],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # failures are returned, not also warned
        pieces, failures = midi.read_midi_folder(tmp_path / "songs")
    assert [p.name for p in pieces] == ["score"]
    ((path, reason),) = failures
    assert path.endswith("performance.midi") and "default tempo map" in reason
    np.testing.assert_allclose(np.diff(pieces[0].beats[:4]), 0.5)
    # notes alone (inference) are still read from a performance
    assert midi.read_midi_notes(tmp_path / "songs" / "2018" / "performance.midi").shape == (80, 4)


# --------------------------------------------------------------------------------------------
# MedleyDB: three layouts
# --------------------------------------------------------------------------------------------


def test_medleydb_1x_layout(tmp_path):
    mel = tmp_path / "Annotations" / "Melody_Annotations"
    write_wav(tmp_path / "Audio" / "LizNelson_Rainfall" / "LizNelson_Rainfall_MIX.wav")
    write_bytes(
        mel / "MELODY2" / "LizNelson_Rainfall_MELODY2.csv",
        "0.0,0.0\r\n0.0058049886621315194,0.0\r\n",
    )
    (p,) = medleydb.read(tmp_path)
    assert p.audio == tmp_path / "Audio" / "LizNelson_Rainfall" / "LizNelson_Rainfall_MIX.wav"
    np.testing.assert_allclose(p.f0, [[0.0, 0.0], [256 / 44100, 0.0]])


def test_medleydb_package_annotation_layout(tmp_path):
    # marl/medleydb: medleydb/data/Annotations/Melody/Melody<n>/<Track>_MELODY<n>.csv
    mel = tmp_path / "Annotations" / "Melody"
    write_wav(
        tmp_path / "Audio" / "AClassicEducation_NightOwl" / "AClassicEducation_NightOwl_MIX.wav"
    )
    body = "0.0,0.0\r\n0.0058049886621315194,0.0\r\n0.011609977324263039,220.5\r\n"
    write_bytes(mel / "Melody1" / "AClassicEducation_NightOwl_MELODY1.csv", body)
    write_bytes(mel / "Melody2" / "AClassicEducation_NightOwl_MELODY2.csv", body)
    write_bytes(mel / "Melody3" / "AClassicEducation_NightOwl_MELODY3.csv", "0.0,0.0,0.0\r\n")
    write_bytes(mel / "Intervals" / "AClassicEducation_NightOwl_INTERVALS.txt", "")
    (p,) = medleydb.read(tmp_path)
    assert p.name == "AClassicEducation_NightOwl"
    np.testing.assert_allclose(p.f0[:, 1], [0.0, 0.0, 220.5])
    (q,) = medleydb.read(tmp_path, melody="MELODY1")
    np.testing.assert_allclose(q.f0[:, 0], [0.0, 256 / 44100, 512 / 44100])


def test_medleydb_melody_zenodo_layout(tmp_path):
    # MedleyDB-Melody: audio/, melody1/, melody2/, melody3/ (first line CRLF, second LF)
    write_wav(tmp_path / "audio" / "MusicDelta_Beethoven_MIX.wav")
    write_bytes(
        tmp_path / "melody1" / "MusicDelta_Beethoven_MELODY1.csv",
        "0.0058049886621315194,0.0\r\n0.052244897959183675,965.99199999999996\n",
    )
    write_bytes(
        tmp_path / "melody2" / "MusicDelta_Beethoven_MELODY2.csv",
        "0.046439909297052155,0.0\r\n0.052244897959183675,965.99199999999996\r\n",
    )
    write_bytes(
        tmp_path / "melody3" / "MusicDelta_Beethoven_MELODY3.csv",
        "0.046439909297052155,0.0,0.0,497.01600000000002,0.0,0.0\r\n",
    )
    write_bytes(tmp_path / "medleydb_melody_metadata.json", "{}")
    (p,) = medleydb.read(tmp_path)
    assert p.audio == tmp_path / "audio" / "MusicDelta_Beethoven_MIX.wav"
    np.testing.assert_allclose(p.f0, [[0.046439909297052155, 0.0], [0.052244897959183675, 965.992]])
    (q,) = medleydb.read(tmp_path, melody="MELODY1")
    np.testing.assert_allclose(q.f0[:, 1], [0.0, 965.992])


def test_medleydb_unknown_layout_lists_the_known_ones(tmp_path):
    write_wav(tmp_path / "mixes" / "a.wav")
    with pytest.raises(
        FileNotFoundError, match=r"Melody_Annotations/MELODY2.*Melody/Melody2.*melody2/"
    ):
        medleydb.read(tmp_path)


# --------------------------------------------------------------------------------------------
# Featurising: audio shorter than its labels
# --------------------------------------------------------------------------------------------


def _frames(piece):
    return np.zeros((4, 2), np.float32), piece.label_arrays()


def test_featurize_warns_when_audio_is_shorter_than_labels(tmp_path):
    notes = np.array([[0.5, 1.0, 60, 80, 0], [700.0, 703.98, 64, 80, 0]], np.float64)
    short = AudioPiece("2018__truncated", write_wav(tmp_path / "a.wav", 2.0), "train", notes=notes)
    ok_notes = np.array([[0.5, 2.5, 60, 80, 0]], np.float64)  # 0.5 s past the end: tolerated
    fine = AudioPiece("2018__fine", write_wav(tmp_path / "b.wav", 2.0), "train", notes=ok_notes)
    cache = FeatureCache.create(tmp_path / "cache", "music", {"version": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = featurize([short, fine], _frames, cache, progress=False)
    messages = [str(w.message) for w in caught]
    flagged = [m for m in messages if "labels run to" in m]
    assert len(flagged) == 1, messages
    assert "2018__truncated" in flagged[0] and "2.0 s" in flagged[0] and "704.0 s" in flagged[0]
    assert summary["written"] == 2  # still written: the labels may be right, the audio cut
