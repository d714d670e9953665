"""MAESTRO v2 / v3 (piano audio aligned with Disklavier MIDI) -> `AudioPiece`s with notes.

Layout (the official zip, unpacked): the metadata table `maestro-v<version>.csv` and/or
`maestro-v<version>.json` at the root, next to the year folders that hold the `.midi`/`.wav`
pairs. Columns used: `split`, `year`, `midi_filename`, `audio_filename`, `duration` (the paths
are relative to the root; `canonical_composer` and `canonical_title` are not needed). The csv is
read when present, else the json - either pandas' column orientation (v3:
`{"split": {"0": "train", ...}, ...}`) or a list of records (v2). Several metadata files of one
kind (say v2 and v3 in one folder): the highest version is read.

Split: the table's `split` column, train / validation / test -> "train" / "val" / "test"
(omnizart instead used years 2004-2017 for training and 2018 for testing; the official column
keeps MAESTRO's published split, which puts all performances of a composition in one split).

Notes (float64 (N, 5), see `AudioPiece`): every note of every non-drum track of the MIDI, with
its velocity, program 0 (piano). Sustain pedal, as in the usual MAESTRO evaluation (Onsets and
Frames, note-seq's `apply_sustain_control_changes`): CC64 >= 64 is "down", < 64 is "up"; a note
whose key is released at a time t with the pedal down (down <= t < up) sounds until the pedal
comes up (until the end of the file if it never does), except that it ends earlier if the same
pitch is struck again in the meantime (never before its own key release).

A row whose MIDI or audio file is missing is skipped with a warning (partial downloads); a
malformed table row or an unreadable MIDI file raises `AnnotationError`.
"""

from __future__ import annotations

import bisect
import csv
import json
import re
from pathlib import Path

import numpy as np

from jaxmir.data.datasets import _common as C
from jaxmir.data.datasets.midi import MidiError, load_midi
from jaxmir.data.records import AnnotationError, AudioPiece

DATASET = "MAESTRO"
REQUIRED_COLUMNS = ("split", "year", "midi_filename", "audio_filename", "duration")
SPLITS = {"train": "train", "validation": "val", "test": "test"}
SUSTAIN_CC = 64
PIANO_PROGRAM = 0


def _version(path: Path) -> tuple[int, ...]:
    m = re.match(r"maestro-v([0-9.]+?)\.(csv|json)$", path.name)
    return tuple(int(x) for x in m.group(1).split(".") if x) if m else ()


def _metadata_file(root: Path) -> Path:
    for suffix in ("csv", "json"):
        files = sorted(root.glob(f"maestro-v*.{suffix}"), key=_version)
        if files:
            return files[-1]
    raise FileNotFoundError(
        f"no MAESTRO metadata (maestro-v*.csv or maestro-v*.json) at the root of {root}"
    )


def _csv_rows(path: Path) -> list[tuple[int | None, dict]]:
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise AnnotationError(path, 1, f"missing column(s) {', '.join(missing)}")
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise AnnotationError(
                    path, reader.line_num, f"expected {len(header)} fields, got a different count"
                )
            rows.append((reader.line_num, row))
    return rows


def _json_rows(path: Path) -> list[tuple[int | None, dict]]:
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(path, e.lineno, f"invalid JSON ({e.msg})") from None
    if isinstance(data, dict):  # pandas "columns" orientation: {column: {row_index: value}}
        missing = [c for c in REQUIRED_COLUMNS if c not in data]
        if missing:
            raise AnnotationError(path, None, f"missing column(s) {', '.join(missing)}")
        try:
            index = sorted(data["split"], key=int)
            records = [{c: data[c][i] for c in REQUIRED_COLUMNS} for i in index]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise AnnotationError(path, None, f"malformed column table ({e!r})") from None
    elif isinstance(data, list):
        records = data
    else:
        raise AnnotationError(path, None, "expected a JSON object or list at the top level")
    rows = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or any(c not in rec for c in REQUIRED_COLUMNS):
            raise AnnotationError(path, None, f"record {i} lacks one of {REQUIRED_COLUMNS}")
        rows.append((None, rec))
    return rows


def _pedal_intervals(control_changes, end: float) -> list[tuple[float, float]]:
    """Disjoint, sorted [down, up) intervals of CC64 >= 64."""
    intervals, down = [], None
    for cc in sorted((c for c in control_changes if c.number == SUSTAIN_CC), key=lambda c: c.time):
        if cc.value >= 64 and down is None:
            down = cc.time
        elif cc.value < 64 and down is not None:
            if cc.time > down:
                intervals.append((down, cc.time))
            down = None
    if down is not None and end > down:
        intervals.append((down, end))
    return intervals


def _sustained(offset: float, intervals: list[tuple[float, float]], starts: list[float]) -> float:
    i = bisect.bisect_right(starts, offset) - 1
    if i >= 0 and intervals[i][0] <= offset < intervals[i][1]:
        return intervals[i][1]
    return offset


def read_midi_notes(path: Path) -> np.ndarray:
    """MAESTRO MIDI -> float64 (N, 5) notes with sustain-pedal offsets (see module docstring)."""
    path = Path(path)
    try:
        pm = load_midi(path)  # any tick resolution; corrupt files named
    except MidiError as e:
        raise AnnotationError(path, None, e.reason) from e
    file_end = pm.get_end_time()
    rows = []
    for inst in pm.instruments:
        if inst.is_drum:
            continue
        intervals = _pedal_intervals(inst.control_changes, file_end)
        starts = [a for a, _ in intervals]
        notes = sorted(inst.notes, key=lambda n: (n.start, n.pitch))
        offsets = [_sustained(n.end, intervals, starts) for n in notes]
        last_by_pitch: dict[int, int] = {}
        for j, n in enumerate(notes):
            k = last_by_pitch.get(n.pitch)
            if k is not None and offsets[k] > n.start:  # re-struck while sustained
                offsets[k] = max(notes[k].end, n.start)
            last_by_pitch[n.pitch] = j
        for n, off in zip(notes, offsets, strict=True):
            C.check_note(n.start, off, n.pitch, path, None)
            rows.append((n.start, off, n.pitch, n.velocity, PIANO_PROGRAM))
    return C.note_array(rows)


def read(root: Path) -> list[AudioPiece]:
    """Every row of the MAESTRO metadata table whose MIDI and audio exist, in table order."""
    root = C.require_root(root, DATASET)
    meta = _metadata_file(root)
    rows = _csv_rows(meta) if meta.suffix == ".csv" else _json_rows(meta)
    pieces = []
    for line, row in rows:
        split = SPLITS.get(str(row["split"]).strip())
        if split is None:
            raise AnnotationError(meta, line, f"unknown split {row['split']!r}")
        C.to_int(row["year"], meta, line, "year")
        C.to_float(row["duration"], meta, line, "duration")
        midi_rel, audio_rel = str(row["midi_filename"]), str(row["audio_filename"])
        if not midi_rel or not audio_rel:
            raise AnnotationError(meta, line, "empty midi_filename or audio_filename")
        midi, audio = root / midi_rel, root / audio_rel
        if not midi.is_file() or not audio.is_file():
            C.warn_skip(DATASET, midi_rel, f"missing {'MIDI' if not midi.is_file() else 'audio'}")
            continue
        with C.skipped_if_unreadable(DATASET, midi):
            pieces.append(
                AudioPiece(
                    name=Path(midi_rel).with_suffix("").as_posix().replace("/", "__"),
                    audio=audio,
                    split=split,
                    notes=read_midi_notes(midi),
                )
            )
    if not pieces:
        raise C.no_pieces(root, DATASET, f"rows of {meta.name} with their MIDI and audio files")
    return pieces
