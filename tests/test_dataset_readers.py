"""Hand-written dataset readers: tiny fixtures in each dataset's official layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jaxmir.data.datasets import (
    _common,
    billboard,
    enst,
    maestro,
    maps,
    mdb_drums,
    medleydb,
    mir1k,
    musicnet,
    registry,
    tonas,
)
from jaxmir.data.datasets._common import SkippedInput
from jaxmir.data.records import AnnotationError

# --------------------------------------------------------------------------------------------
# Fixture writers
# --------------------------------------------------------------------------------------------


def write_wav(path: Path, seconds: float = 0.2, channels: int = 1, sr: int = 16000) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = 0.01 * rng.standard_normal((int(seconds * sr), channels)).astype(np.float32)
    sf.write(str(path), data, sr)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_midi(path: Path, notes, ccs=(), time_signature: bool = False) -> Path:
    """notes: (start, end, pitch, velocity); ccs: (time, number, value) on the same track."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    inst = pretty_midi.Instrument(program=0)
    for start, end, pitch, velocity in notes:
        inst.notes.append(pretty_midi.Note(velocity=velocity, pitch=pitch, start=start, end=end))
    for time, number, value in ccs:
        inst.control_changes.append(pretty_midi.ControlChange(number, value, time))
    pm.instruments.append(inst)
    if time_signature:
        pm.time_signature_changes.append(pretty_midi.TimeSignature(4, 4, 0.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    pm.write(str(path))
    return path


def expect_annotation_error(call, path: Path, line: int | None):
    with pytest.raises(AnnotationError) as info:
        call()
    message = str(info.value)
    assert path.name in message
    if line is not None:
        assert f":{line}:" in message
        assert info.value.line == line
    return info.value


def by_name(pieces):
    return {p.name: p for p in pieces}


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def test_hash_split_is_stable_and_80_10_10():
    keys = [f"piece{i}" for i in range(3000)]
    splits = [_common.hash_split(k) for k in keys]
    frac = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert 0.75 < frac["train"] < 0.85 and 0.07 < frac["val"] < 0.13 and 0.07 < frac["test"] < 0.13
    # pinned: the hash must never change between versions
    assert _common.train_or_val("1727") == "train" and _common.train_or_val("1733") == "val"
    assert _common.train_or_val("0004") == "val" and _common.hash_split("abjones_1") == "train"


# --------------------------------------------------------------------------------------------
# MAESTRO
# --------------------------------------------------------------------------------------------

MAESTRO_HEADER = (
    "canonical_composer,canonical_title,split,year,midi_filename,audio_filename,duration\n"
)


def maestro_fixture(root: Path) -> Path:
    pedal_notes = [
        (0.0, 0.5, 60, 80),  # released under the pedal, re-struck at 1.0
        (1.0, 1.2, 60, 90),  # released under the pedal -> pedal up at 1.5
        (1.1, 1.25, 64, 70),  # same
        (2.0, 2.5, 67, 100),  # no pedal
        (3.0, 3.2, 72, 50),  # pedal never released -> end of file (3.5)
    ]
    ccs = [(0.25, 64, 100), (1.5, 64, 0), (2.75, 64, 127), (3.5, 64, 90)]
    write_midi(root / "2004" / "a.midi", pedal_notes, ccs)
    write_wav(root / "2004" / "a.wav")
    write_midi(root / "2006" / "b.midi", [(0.5, 1.0, 50, 60)])
    write_wav(root / "2006" / "b.wav")
    write_midi(root / "2018" / "c.midi", [(0.0, 0.25, 70, 30)])
    write_wav(root / "2018" / "c.wav")
    return write_text(
        root / "maestro-v3.0.0.csv",
        MAESTRO_HEADER
        + 'Chopin,"Ballade, No. 1",train,2004,2004/a.midi,2004/a.wav,3.5\n'
        + "Bach,Prelude,validation,2006,2006/b.midi,2006/b.wav,1.0\n"
        + "Liszt,Etude,test,2018,2018/c.midi,2018/c.wav,0.25\n",
    )


def test_maestro_csv_splits_and_sustain_pedal(tmp_path):
    maestro_fixture(tmp_path)
    pieces = maestro.read(tmp_path)
    assert [p.name for p in pieces] == ["2004__a", "2006__b", "2018__c"]
    assert [p.split for p in pieces] == ["train", "val", "test"]
    assert pieces[0].audio == tmp_path / "2004" / "a.wav"
    expected = [
        [0.0, 1.0, 60, 80, 0],
        [1.0, 1.5, 60, 90, 0],
        [1.1, 1.5, 64, 70, 0],
        [2.0, 2.5, 67, 100, 0],
        [3.0, 3.5, 72, 50, 0],
    ]
    np.testing.assert_allclose(pieces[0].notes, expected, atol=1e-6)
    np.testing.assert_allclose(pieces[1].notes, [[0.5, 1.0, 50, 60, 0]], atol=1e-6)


def test_maestro_json_column_table(tmp_path):
    maestro_fixture(tmp_path)
    (tmp_path / "maestro-v3.0.0.csv").unlink()
    import json

    table = {
        "canonical_composer": {"0": "Liszt", "1": "Chopin"},
        "canonical_title": {"0": "Etude", "1": "Ballade"},
        "split": {"0": "test", "1": "train"},
        "year": {"0": 2018, "1": 2004},
        "midi_filename": {"0": "2018/c.midi", "1": "2004/a.midi"},
        "audio_filename": {"0": "2018/c.wav", "1": "2004/a.wav"},
        "duration": {"0": 0.25, "1": 3.5},
    }
    write_text(tmp_path / "maestro-v3.0.0.json", json.dumps(table))
    pieces = maestro.read(tmp_path)
    assert [(p.name, p.split) for p in pieces] == [("2018__c", "test"), ("2004__a", "train")]


def test_maestro_missing_files_are_skipped_with_a_warning(tmp_path):
    maestro_fixture(tmp_path)
    (tmp_path / "2006" / "b.wav").unlink()
    with pytest.warns(UserWarning, match="2006/b.midi"):
        pieces = maestro.read(tmp_path)
    assert [p.name for p in pieces] == ["2004__a", "2018__c"]


# --------------------------------------------------------------------------------------------
# MusicNet
# --------------------------------------------------------------------------------------------

MUSICNET_HEADER = "start_time,end_time,instrument,note,start_beat,end_beat,note_value\n"


def musicnet_row(t0: float, t1: float, inst: int, note: int, beat: float, dur: float) -> str:
    return f"{round(t0 * 44100)},{round(t1 * 44100)},{inst},{note},{beat},{dur},Quarter\n"


def musicnet_fixture(root: Path) -> None:
    # a steady 0.5 s beat, beat k at 1.0 + 0.5 k; no note starts on beats 3 and 4
    rows = [
        (1.0, 1.5, 1, 60, 0.0, 1.0),
        (1.02, 1.5, 41, 72, 0.0, 1.0),
        (0.98, 1.5, 43, 48, 0.0, 1.0),
        (1.5, 2.0, 1, 62, 1.0, 1.0),
        (2.0, 2.25, 1, 64, 2.0, 0.5),
        (2.25, 2.5, 1, 65, 2.5, 0.5),
        (3.5, 4.0, 1, 67, 5.0, 1.0),
    ]
    write_text(
        root / "train_labels" / "1727.csv",
        MUSICNET_HEADER + "".join(musicnet_row(*r) for r in rows),
    )
    write_wav(root / "train_data" / "1727.wav")
    # every start_beat carries a global offset of 0.3: shifted onto integers
    rows = [(0.0, 0.5, 1, 60, 0.3, 1.0), (0.5, 1.0, 1, 62, 1.3, 1.0), (1.0, 1.5, 7, 64, 2.3, 1.0)]
    write_text(
        root / "test_labels" / "2303.csv", MUSICNET_HEADER + "".join(musicnet_row(*r) for r in rows)
    )
    write_wav(root / "test_data" / "2303.wav")
    write_text(root / "train_labels" / "1733.csv", MUSICNET_HEADER + musicnet_row(*rows[0]))
    write_wav(root / "train_data" / "1733.wav")


def test_musicnet_notes_programs_and_splits(tmp_path):
    musicnet_fixture(tmp_path)
    pieces = by_name(musicnet.read(tmp_path))
    assert {n: p.split for n, p in pieces.items()} == {
        "1727": "train",
        "1733": "val",
        "2303": "test",
    }
    assert pieces["2303"].audio == tmp_path / "test_data" / "2303.wav"
    np.testing.assert_allclose(
        pieces["2303"].notes,
        [[0.0, 0.5, 60, -1, 0], [0.5, 1.0, 62, -1, 0], [1.0, 1.5, 64, -1, 6]],
        atol=1e-4,
    )
    notes = pieces["1727"].notes
    assert notes.shape == (7, 5)
    np.testing.assert_allclose(notes[:3, 0], [0.98, 1.0, 1.02], atol=1e-4)
    assert notes[:3, 4].tolist() == [42, 0, 40]  # cello 43, piano 1, violin 41 -> 0-based


def test_musicnet_beats_interpolated_with_assumed_4_4(tmp_path):
    musicnet_fixture(tmp_path)
    with pytest.warns(UserWarning, match="1733"):  # a single note on a beat: no grid, skipped
        pieces = by_name(musicnet.read_beats(tmp_path))
    assert sorted(pieces) == ["1727", "2303"]
    p = pieces["1727"]
    # beats 0..6: 0-2 and 5 from notes (beat 0 = median of 0.98, 1.0, 1.02), 3-4 interpolated,
    # 6 extrapolated up to the last note's offset (4.0 s)
    np.testing.assert_allclose(p.beats, [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0], atol=1e-4)
    np.testing.assert_allclose(p.downbeats, [1.5, 3.5], atol=1e-4)  # beats 1 and 5 (k % 4 == 1)
    assert p.notes.shape == (7, 4) and np.all(p.notes[:, 3] == 64)
    assert np.all(np.diff(p.notes[:, 0]) >= 0)
    q = pieces["2303"]
    # the official split, as `read` gives it (it was split by name: test pieces in training)
    assert q.split == "test" and p.split in ("train", "val")
    from jaxmir.tasks.beat.task import TASK as BEAT

    assert BEAT.piece_split(q) == "test" and BEAT.piece_split(p) == p.split
    np.testing.assert_allclose(q.beats, [0.0, 0.5, 1.0, 1.5], atol=1e-4)
    np.testing.assert_allclose(q.downbeats, [0.5], atol=1e-4)
    with pytest.warns(UserWarning, match="1733"):
        zero_based = by_name(musicnet.read_beats(tmp_path, downbeat_phase=0))
    np.testing.assert_allclose(zero_based["1727"].downbeats, [1.0, 3.0], atol=1e-4)


def test_musicnet_missing_labels_warn(tmp_path):
    musicnet_fixture(tmp_path)
    write_wav(tmp_path / "train_data" / "9999.wav")
    with pytest.warns(UserWarning, match="9999"):
        assert len(musicnet.read(tmp_path)) == 3


# --------------------------------------------------------------------------------------------
# MAPS
# --------------------------------------------------------------------------------------------

MAPS_HEADER = "OnsetTime\tOffsetTime\tMidiPitch\n"


def maps_piece(folder: Path, stem: str, rows: str) -> None:
    write_wav(folder / f"{stem}.wav")
    write_text(folder / f"{stem}.txt", MAPS_HEADER + rows)


def maps_fixture(root: Path) -> None:
    maps_piece(
        root / "MAPS_AkPnBcht_2/AkPnBcht/MUS", "MAPS_MUS-a_AkPnBcht", "0.5\t1.25\t60\n0.5\t1\t64\n"
    )
    maps_piece(
        root / "MAPS_AkPnBcht_2/AkPnBcht/ISOL/NO",
        "MAPS_ISOL_NO_F_S0_M60_AkPnBcht",
        "0.1\t0.9\t60\n",
    )
    maps_piece(root / "SptkBGAm/MUS", "MAPS_MUS-b_SptkBGAm", "0.0\t0.5\t21\n")
    maps_piece(root / "MAPS_ENSTDkCl_2/ENSTDkCl/MUS", "MAPS_MUS-c_ENSTDkCl", "1.0\t2.0\t108\n")
    maps_piece(root / "MAPS_ENSTDkCl_2/ENSTDkCl/ISOL/NO", "MAPS_ISOL_NO_ENSTDkCl", "0.1\t0.2\t60\n")
    maps_piece(root / "Elsewhere/MUS", "MAPS_MUS-d_Elsewhere", "0.1\t0.2\t60\n")


def test_maps_omnizart_split_mus_only(tmp_path):
    maps_fixture(tmp_path)
    pieces = maps.read(tmp_path)
    assert [(p.name, p.split) for p in pieces] == [
        ("MAPS_MUS-a_AkPnBcht", "train"),
        ("MAPS_MUS-b_SptkBGAm", "val"),
        ("MAPS_MUS-c_ENSTDkCl", "test"),
    ]
    np.testing.assert_array_equal(pieces[0].notes, [[0.5, 1.25, 60, -1, 0], [0.5, 1.0, 64, -1, 0]])
    np.testing.assert_array_equal(pieces[2].notes, [[1.0, 2.0, 108, -1, 0]])


def test_maps_extra_subsets_for_train_pianos_only(tmp_path):
    maps_fixture(tmp_path)
    names = [p.name for p in maps.read(tmp_path, subsets=("MUS", "ISOL"))]
    assert "MAPS_ISOL_NO_F_S0_M60_AkPnBcht" in names and "MAPS_ISOL_NO_ENSTDkCl" not in names
    with pytest.raises(ValueError, match="BOGUS"):
        maps.read(tmp_path, subsets=("BOGUS",))


# --------------------------------------------------------------------------------------------
# MIR-1K
# --------------------------------------------------------------------------------------------


def test_mir1k_pitch_frames_and_song_split(tmp_path):
    for stem in ("abjones_1_01", "abjones_1_02"):
        write_wav(tmp_path / "Wavfile" / f"{stem}.wav", channels=2)
        # as the real files: each value followed by a space (the blank line at the end is a
        # text editor's, which the reader must survive; the files seen end at "0 \n")
        write_text(tmp_path / "PitchLabel" / f"{stem}.pv", "0 \n45.5 \n69 \n\n")
    pieces = mir1k.read(tmp_path)
    assert [p.name for p in pieces] == ["abjones_1_01", "abjones_1_02"]
    assert {p.split for p in pieces} == {_common.hash_split("abjones_1")}
    p = pieces[0]
    assert p.channels == {"accompaniment": 0, "vocals": 1}
    assert p.audio == tmp_path / "Wavfile" / "abjones_1_01.wav"
    np.testing.assert_allclose(p.f0[:, 0], [0.02, 0.04, 0.06])
    np.testing.assert_allclose(p.f0[:, 1], [0.0, 440 * 2 ** ((45.5 - 69) / 12), 440.0])
    assert mir1k.song_key("abjones_1_01") == "abjones_1" and mir1k.song_key("odd") == "odd"
    # a copy whose audio was renamed .WAV on another system is read the same
    (tmp_path / "Wavfile" / "abjones_1_02.wav").rename(tmp_path / "Wavfile" / "abjones_1_02.WAV")
    assert [p.audio.name for p in mir1k.read(tmp_path)] == ["abjones_1_01.wav", "abjones_1_02.WAV"]
    assert [p.name for p in _common.wav_files(tmp_path, recursive=True)] == [
        "abjones_1_01.wav",
        "abjones_1_02.WAV",
    ]
    # both spellings side by side (possible where case counts): one piece, the .wav
    write_wav(tmp_path / "Wavfile" / "abjones_1_02.wav", channels=2)
    assert [p.audio.name for p in mir1k.read(tmp_path)] == ["abjones_1_01.wav", "abjones_1_02.wav"]


def test_mir1k_blank_line_inside_is_an_error(tmp_path):
    pv = write_text(tmp_path / "x.pv", "50\n\n51\n")
    expect_annotation_error(lambda: mir1k.read_pitch(pv), pv, 2)


# --------------------------------------------------------------------------------------------
# MedleyDB
# --------------------------------------------------------------------------------------------


def medleydb_fixture(root: Path) -> None:
    mel = root / "Annotations" / "Melody_Annotations"
    write_wav(root / "Audio" / "Art_Song" / "Art_Song_MIX.wav")
    write_text(mel / "MELODY2" / "Art_Song_MELODY2.csv", "0.0,0.0\n0.005804988,220.5\n")
    write_text(mel / "MELODY1" / "Art_Song_MELODY1.csv", "0.0,110.0\n")
    write_wav(root / "Audio" / "Instr_Only" / "Instr_Only_MIX.wav")  # no melody: not a piece


def test_medleydb_melody2_default(tmp_path):
    medleydb_fixture(tmp_path)
    (p,) = medleydb.read(tmp_path)
    assert p.name == "Art_Song" and p.split == _common.hash_split("Art_Song")
    assert p.audio == tmp_path / "Audio" / "Art_Song" / "Art_Song_MIX.wav"
    np.testing.assert_array_equal(p.f0, [[0.0, 0.0], [0.005804988, 220.5]])
    (q,) = medleydb.read(tmp_path, melody="MELODY1")
    np.testing.assert_array_equal(q.f0, [[0.0, 110.0]])
    with pytest.raises(ValueError, match="MELODY3"):
        medleydb.read(tmp_path, melody="MELODY3")


# --------------------------------------------------------------------------------------------
# TONAS
# --------------------------------------------------------------------------------------------


def tonas_fixture(root: Path) -> None:
    write_wav(root / "Deblas" / "01-D_x.wav")
    # as the real files are: the tuning (cents) on line 1 and already in every pitch (43 ->
    # 60.43); f0 rows about 11.6 ms apart, times to the millisecond
    write_text(
        root / "Deblas" / "01-D_x.notes.Corrected",
        "43.000000\n0.5, 0.25, 60.43, 0.01\n1.0, 0.5, 62.43, 0.02\n",
    )
    write_text(
        root / "Deblas" / "01-D_x.f0.Corrected",
        "0.197 0.1 0 0\n0.209 0.2 219 220.5\n0.221 0.3 221 -1\n",
    )
    write_wav(root / "Martinetes1" / "02-M_y.wav")
    write_text(root / "Martinetes1" / "02-M_y.f0.Corrected", "0.0 0.1 100 101\n")


def test_tonas_notes_tuning_and_f0(tmp_path):
    tonas_fixture(tmp_path)
    pieces = by_name(tonas.read(tmp_path))
    assert sorted(pieces) == ["Deblas__01-D_x", "Martinetes1__02-M_y"]
    p = pieces["Deblas__01-D_x"]
    assert p.split == _common.hash_split("Deblas__01-D_x")
    # the pitches already carry the tuning of line 1; the f0 is column 3 (column 4: note f0)
    np.testing.assert_allclose(
        p.notes, [[0.5, 0.75, 60.43, -1, -1], [1.0, 1.5, 62.43, -1, -1]], atol=1e-12
    )
    np.testing.assert_array_equal(p.f0, [[0.197, 0.0], [0.209, 219.0], [0.221, 221.0]])
    q = pieces["Martinetes1__02-M_y"]
    assert q.notes is None
    np.testing.assert_array_equal(q.f0, [[0.0, 100.0]])


# --------------------------------------------------------------------------------------------
# McGill Billboard
# --------------------------------------------------------------------------------------------


def chroma_row(first: str, t: float, k: int) -> str:
    values = [0.0] * 24
    values[k] = 1.0
    return ",".join([first, str(t)] + [str(v) for v in values]) + "\n"


def billboard_piece(feature_dir: Path, label_dir: Path, lab: str) -> None:
    write_text(
        feature_dir / "bothchroma.csv",
        chroma_row('"/audio/x.wav"', 0.0, 0) + chroma_row("", 0.046439909, 23),
    )
    write_text(label_dir / "majmin.lab", lab)


def billboard_fixture(root: Path) -> None:
    """Written as the real files are: lab times partly in scientific notation and a blank last
    line; the index with chart rows of no song (empty title and artist), quoted artists holding
    commas, and one song charted twice under two ids (33 and 73, "Crazy On You")."""
    mb = root / "McGill-Billboard"
    lab = "0.0\t7.3469387e-2\tN\n7.3469387e-2\t2.5\tA:maj\n2.5\t4.0\tE:min\n\n"
    billboard_piece(mb / "0003", mb / "0003", lab)
    billboard_piece(mb / "0004", mb / "0004", lab)  # another song with a quoted artist
    billboard_piece(mb / "0033", mb / "0033", lab)
    billboard_piece(mb / "0073", mb / "0073", lab)  # same song as 0033 in the index
    billboard_piece(mb / "0353", mb / "0353", lab)  # ignored by omnizart
    billboard_piece(mb / "1200", mb / "1200", "0.0 1.0 C:min\n")
    billboard_piece(
        root / "McGill-Billboard-Features" / "0010", root / "McGill-Billboard-MIREX" / "0010", lab
    )
    write_text(
        root / "billboard-2.0-index.csv",
        "id,chart_date,target_rank,actual_rank,title,artist,peak_rank,weeks_on_chart\n"
        "1,1987-07-11,82,,,,,\n"
        "2,1973-08-04,14,,,,,\n"
        "3,1961-07-03,56,57,I Don't Mind,James Brown,47,8\n"
        '4,1971-08-07,32,31,You\'ve Got A Friend,"Roberta Flack,Donny Hathaway",29,12\n'
        "10,1984-03-24,49,51,An Innocent Man,Billy Joel,10,18\n"
        "33,1978-02-11,99,100,Crazy On You,Heart,35,19\n"
        "73,1976-06-12,49,49,Crazy On You,Heart,35,19\n",
    )


def test_billboard_split_ignored_ids_and_dedup(tmp_path):
    billboard_fixture(tmp_path)
    pieces = billboard.read(tmp_path)
    assert [(p.name, p.split) for p in pieces] == [
        ("0003", "train"),
        ("0004", "val"),
        ("0010", "val"),
        ("0033", "train"),
        ("1200", "test"),
    ]
    p = pieces[0]
    assert p.audio == tmp_path / "McGill-Billboard" / "0003" / "bothchroma.csv"
    np.testing.assert_array_equal(p.chords, [[0.0, 0.073469387], [0.073469387, 2.5], [2.5, 4.0]])
    assert p.chord_labels == ("N", "A:maj", "E:min")
    assert pieces[2].audio == tmp_path / "McGill-Billboard-Features" / "0010" / "bothchroma.csv"
    times, chroma = billboard.read_chroma(p.audio)
    np.testing.assert_array_equal(times, [0.0, 0.046439909])
    assert chroma.shape == (2, 24) and chroma[0, 0] == 1.0 and chroma[1, 23] == 1.0
    assert chroma.sum() == 2.0
    (tmp_path / "billboard-2.0-index.csv").unlink()  # without the index: no dedup
    assert [p.name for p in billboard.read(tmp_path)] == [
        "0003",
        "0004",
        "0010",
        "0033",
        "0073",
        "1200",
    ]


# --------------------------------------------------------------------------------------------
# ENST-Drums and MDB-Drums
# --------------------------------------------------------------------------------------------


def test_enst_labels_to_gm(tmp_path):
    d = tmp_path / "drummer_1"
    write_wav(d / "audio" / "wet_mix" / "001_hits.wav")
    write_wav(d / "audio" / "dry_mix" / "001_hits.wav")
    write_text(
        d / "annotation" / "001_hits.txt",
        "0.5 \tbd\n0.75\tcr2\n1.0 sd-\n1.25 sweep\n0.25 chh\n1.5 ch5\n1.75 lft\n",
    )
    write_text(tmp_path / "drummer_2" / "annotation" / "002_x.txt", "0.1 bd\n")  # no audio
    with pytest.warns(UserWarning, match="002_x"):
        (p,) = enst.read(tmp_path)
    assert p.name == "drummer_1__001_hits" and p.split == _common.hash_split(p.name)
    assert p.audio == d / "audio" / "wet_mix" / "001_hits.wav"
    np.testing.assert_array_equal(
        p.drum_hits, [[0.25, 42], [0.5, 36], [0.75, 49], [1.0, 38], [1.5, 52], [1.75, 41]]
    )
    with pytest.warns(UserWarning, match="002_x"):
        (q,) = enst.read(tmp_path, audio_dir="dry_mix")
    assert q.audio == d / "audio" / "dry_mix" / "001_hits.wav"


def test_enst_unknown_label(tmp_path):
    txt = write_text(tmp_path / "a.txt", "0.1 bd\n0.2 xyz\n")
    err = expect_annotation_error(lambda: enst.read_hits(txt), txt, 2)
    assert "xyz" in str(err)


def mdb_fixture(root: Path) -> None:
    write_wav(root / "audio" / "full_mix" / "MusicDelta_Rock_MIX.wav")
    ann = root / "annotations"
    write_text(ann / "subclass" / "MusicDelta_Rock_subclass.txt", "0.1\tKD\n0.3\tSDG\n0.2\tCHH\n")
    write_text(ann / "class" / "MusicDelta_Rock_class.txt", "0.1 \t KD\n0.2\tHH\n0.3\tSD\n")


def test_mdb_drums_subclass_and_class(tmp_path):
    mdb_fixture(tmp_path)
    (p,) = mdb_drums.read(tmp_path)
    assert p.name == "MusicDelta_Rock" and p.split == _common.hash_split("MusicDelta_Rock")
    assert p.audio == tmp_path / "audio" / "full_mix" / "MusicDelta_Rock_MIX.wav"
    np.testing.assert_array_equal(p.drum_hits, [[0.1, 36], [0.2, 42], [0.3, 38]])
    (q,) = mdb_drums.read(tmp_path, level="class")
    np.testing.assert_array_equal(q.drum_hits, [[0.1, 36], [0.2, 42], [0.3, 38]])
    with pytest.raises(ValueError, match="level"):
        mdb_drums.read(tmp_path, level="bogus")


# --------------------------------------------------------------------------------------------
# Malformed files: every text format names the file and line 3
# --------------------------------------------------------------------------------------------


def _bad_maestro(root):
    maestro_fixture(root)
    path = root / "maestro-v3.0.0.csv"
    text = path.read_text().splitlines(keepends=True)
    text[2] = text[2].replace(",1.0\n", ",abc\n")  # line 3 = second data row: duration
    path.write_text("".join(text))
    return path, lambda: maestro.read(root)


def _bad_musicnet(root):
    path = write_text(
        root / "train_labels" / "1.csv",
        MUSICNET_HEADER + musicnet_row(0, 1, 1, 60, 0, 1) + "0,44100,1,x,1.0,1.0,Quarter\n",
    )
    write_wav(root / "train_data" / "1.wav")
    return path, lambda: musicnet.read(root)


def _bad_musicnet_beats(root):
    path, _ = _bad_musicnet(root)
    return path, lambda: musicnet.read_beats(root)


def _bad_maps(root):
    folder = root / "AkPnBcht" / "MUS"
    maps_piece(folder, "MAPS_MUS-a_AkPnBcht", "0.5\t1.0\t60\n0.5\tabc\t64\n")
    return folder / "MAPS_MUS-a_AkPnBcht.txt", lambda: maps.read(root)


def _bad_mir1k(root):
    write_wav(root / "Wavfile" / "a_1_01.wav", channels=2)
    path = write_text(root / "PitchLabel" / "a_1_01.pv", "0\n50\nabc\n")
    return path, lambda: mir1k.read(root)


def _bad_medleydb(root):
    write_wav(root / "Audio" / "A_B" / "A_B_MIX.wav")
    path = write_text(
        root / "Annotations/Melody_Annotations/MELODY2/A_B_MELODY2.csv",
        "0.0,0\n0.01,100\n0.02,abc\n",
    )
    return path, lambda: medleydb.read(root)


def _bad_tonas_notes(root):
    write_wav(root / "Deblas" / "a.wav")
    path = write_text(root / "Deblas" / "a.notes.Corrected", "0\n0.5, 0.25, 60, 0\n1.0, x, 62, 0\n")
    return path, lambda: tonas.read(root)


def _bad_tonas_f0(root):
    write_wav(root / "Deblas" / "a.wav")
    path = write_text(root / "Deblas" / "a.f0.Corrected", "0 0 0 0\n0.01 0 0 0\n0.02 0 0 abc\n")
    return path, lambda: tonas.read(root)


def _bad_billboard_lab(root):
    billboard_piece(root / "0003", root / "0003", "0 1 N\n1 2 A:maj\n2 x C:min\n")
    return root / "0003" / "majmin.lab", lambda: billboard.read(root)


def _bad_billboard_chroma(root):
    path = write_text(
        root / "0003" / "bothchroma.csv",
        chroma_row('"a.wav"', 0.0, 0)
        + chroma_row("", 0.05, 1)
        + chroma_row("", 0.1, 2).replace("1.0", "x"),
    )
    return path, lambda: billboard.read_chroma(path)


def _bad_billboard_index(root):
    billboard_piece(root / "0003", root / "0003", "0 1 N\n")
    path = write_text(
        root / "billboard-2.0-index.csv",
        "id,chart_date,target_rank,actual_rank,title,artist,peak_rank,weeks_on_chart\n"
        "3,1961-07-03,56,57,T,A,47,8\nthree,1961-07-03,56,57,T,A,47,8\n",
    )
    return path, lambda: billboard.read(root)


def _bad_enst(root):
    write_wav(root / "drummer_1" / "audio" / "wet_mix" / "a.wav")
    path = write_text(root / "drummer_1" / "annotation" / "a.txt", "0.1 bd\n0.2 sd\nabc chh\n")
    return path, lambda: enst.read(root)


def _bad_mdb(root):
    write_wav(root / "audio" / "full_mix" / "T_MIX.wav")
    path = write_text(root / "annotations/subclass/T_subclass.txt", "0.1\tKD\n0.2\tSD\n0.3\n")
    return path, lambda: mdb_drums.read(root)


@pytest.mark.parametrize(
    "make",
    [
        _bad_maestro,
        _bad_musicnet,
        _bad_musicnet_beats,
        _bad_maps,
        _bad_mir1k,
        _bad_medleydb,
        _bad_tonas_notes,
        _bad_tonas_f0,
        _bad_billboard_lab,
        _bad_billboard_chroma,
        _bad_billboard_index,
        _bad_enst,
        _bad_mdb,
    ],
    ids=lambda f: f.__name__[5:],
)
def test_malformed_line_3(tmp_path, make):
    """A table the whole dataset reads from (MAESTRO's metadata, Billboard's index) stops the
    read, naming file and line; a piece's own annotation file is left out with that reason
    (`SkippedInput`, listed among `jaxmir features`' failures) and the read goes on (here it
    was the only piece: no pieces)."""
    path, call = make(tmp_path)
    if make in (_bad_maestro, _bad_billboard_index, _bad_billboard_chroma):
        expect_annotation_error(call, path, 3)
        return
    with pytest.warns(SkippedInput) as caught:
        with pytest.raises(FileNotFoundError, match="no .* pieces"):
            call()
    skipped = [w.message for w in caught if isinstance(w.message, SkippedInput)]
    assert len(skipped) == 1, skipped
    assert skipped[0].path.endswith(path.name) or path.name in skipped[0].reason
    assert "line 3" in skipped[0].reason or f"{path.name}:3:" in skipped[0].reason


def test_malformed_headers_are_line_1(tmp_path):
    txt = write_text(tmp_path / "m.txt", "Onset\tOffset\tPitch\n0 1 60\n")
    expect_annotation_error(lambda: maps.read_notes(txt), txt, 1)
    csv_path = write_text(tmp_path / "n.csv", "start_time,end_time,note\n0,1,60\n")
    expect_annotation_error(lambda: musicnet.read_labels(csv_path), csv_path, 1)
    notes = write_text(tmp_path / "t.notes.Corrected", "tuning?\n0.5, 0.25, 60, 0\n")
    expect_annotation_error(lambda: tonas.read_notes(notes), notes, 1)


# --------------------------------------------------------------------------------------------
# Registry, missing roots
# --------------------------------------------------------------------------------------------


def test_registry_names_and_unknown(tmp_path):
    assert set(registry.READERS) == {
        "maestro",
        "musicnet",
        "musicnet_beats",
        "maps",
        "mir1k",
        "medleydb",
        "tonas",
        "billboard",
        "enst",
        "mdb_drums",
        "midi",
    }
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*maestro.*mdb_drums"):
        registry.read_dataset("nope", tmp_path)
    mdb_fixture(tmp_path / "mdb")
    (p,) = registry.read_dataset("mdb_drums", str(tmp_path / "mdb"))
    assert p.name == "MusicDelta_Rock"


def test_registry_midi_adapter(tmp_path):
    write_midi(
        tmp_path / "songs" / "a.mid", [(0.0, 0.5, 60, 90), (0.5, 1.0, 62, 90)], time_signature=True
    )
    (piece,) = registry.read_dataset("midi", tmp_path / "songs")
    assert piece.name == "a" and piece.notes.shape == (2, 4) and len(piece.beats) > 0


@pytest.mark.parametrize("name", sorted(registry.READERS))
def test_missing_or_empty_root(tmp_path, name):
    missing = tmp_path / "does-not-exist"
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        registry.read_dataset(name, missing)
    empty = tmp_path / "empty-root"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty-root"):
        registry.read_dataset(name, empty)


def test_musicnet_labels_become_a_beat_cache(tmp_path, capsys):
    from jaxmir.cli import main

    musicnet_fixture(tmp_path / "mn")
    out = tmp_path / "cache"
    argv = [
        "features",
        "beat",
        "--dataset",
        "musicnet",
        "--root",
        str(tmp_path / "mn"),
        "--out",
        str(out),
    ]
    assert main(argv) == 1  # one piece skipped (fewer than two notes on beats)
    from jaxmir.data.cache import FeatureCache

    cache = FeatureCache(out)
    assert cache.names() and cache.params["dataset"] == "musicnet"
    labels = cache.labels(cache.names()[0])
    assert len(labels["beats"]) > 0 and labels["y"].shape[1] == 2
    assert main([*argv[:3], "nosuch", *argv[4:]]) == 2
