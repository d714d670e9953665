"""McGill Billboard (chord annotations + NNLS chroma features, no audio) -> `AudioPiece`s.

Layout: the official archives `billboard-2.0-chordino.tar.gz` (features) and
`billboard-2.0.1-mirex.tar.gz` (MIREX-style .lab files) both unpack to `McGill-Billboard/<id>/`
with a four-digit id (`0003`). Read here: `<id>/bothchroma.csv` and `<id>/majmin.lab`, found
anywhere under the root and paired by id, so the two archives may share one folder
(`McGill-Billboard/0003/...`, or `<root>/0003/...`) or sit apart, as omnizart keeps them
(`McGill-Billboard-Features/0003/bothchroma.csv`, `McGill-Billboard-MIREX/0003/majmin.lab`).
An id folder is a folder whose name is all digits.

There is no audio: a piece's `audio` is its `bothchroma.csv`, to be read with `read_chroma`.
bothchroma.csv rows (written by sonic-annotator with the NNLS Chroma Vamp plug-in): the source
audio file name on the first row and an empty field after it, the frame time in seconds, then
24 values: the 12-bin bass chroma followed by the 12-bin treble chroma, in the plug-in's bin
order, which starts at A (checked on files 0003 and 0035: averaged over their `C:maj`
segments the strongest treble bins are 3, 7 and 10, C, E and G counted from A).
majmin.lab lines: `start_s end_s label` (tab- or space-separated), labels in Harte syntax
reduced to major/minor ("C:maj", "A:min", "N" = no chord, "X" = unclassifiable), kept verbatim.

Split: omnizart's (`constants/datasets.py`, `McGillBillBoard`): ids 353, 634 and 1106 are left
out; id <= 1000 -> train, id > 1000 -> test; ~10% of train becomes "val" by the crc32 hash of
the id (`_common.train_or_val`). When `billboard-2.0-index.csv` is at the root, slots that are
the same song (same artist and title; the index has rows charting one song several times) are
read once, under their lowest available id, so that no song is in two splits (omnizart dedupes
too but keeps the third id of a song listed three or more times; the intent - one copy a song -
is what is kept here). Without the index no de-duplication is done.

Names are the id folder names ("0003"). An id with only one of its two files is skipped with a
warning; a malformed .lab or (via `read_chroma`, which `read` does not call) .csv raises
`AnnotationError`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from jaxmir.data.datasets import _common as C
from jaxmir.data.records import AnnotationError, AudioPiece

DATASET = "McGill Billboard"
CHROMA_FILE = "bothchroma.csv"
LABEL_FILE = "majmin.lab"
INDEX_FILE = "billboard-2.0-index.csv"
IGNORED_IDS = frozenset({353, 634, 1106})
TRAIN_MAX_ID = 1000
N_CHROMA = 24


def read_chroma(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """bothchroma.csv -> (times float64 (T,), chroma float64 (T, 24): bass 12 then treble 12)."""
    path = Path(path)
    times, chroma = [], []
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f)
        for fields in reader:
            line = reader.line_num
            if not fields or all(not x.strip() for x in fields):
                continue
            if len(fields) != N_CHROMA + 2:
                raise AnnotationError(
                    path, line, f"expected {N_CHROMA + 2} fields, got {len(fields)}"
                )
            times.append(C.to_float(fields[1], path, line, "time"))
            chroma.append([C.to_float(x, path, line, "chroma value") for x in fields[2:]])
    if not times:
        raise AnnotationError(path, None, "no frames")
    return np.asarray(times, np.float64), np.asarray(chroma, np.float64)


def read_chords(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """majmin.lab -> (intervals float64 (K, 2), labels)."""
    path = Path(path)
    intervals, labels = [], []
    for line, text in C.text_lines(path):
        if not text:
            continue
        fields = text.split()
        if len(fields) != 3:
            raise AnnotationError(
                path, line, f"expected 3 fields (start end label), got {len(fields)}"
            )
        start = C.to_float(fields[0], path, line, "start")
        end = C.to_float(fields[1], path, line, "end")
        if start < 0 or end < start:
            raise AnnotationError(path, line, f"bad interval [{start}, {end}]")
        intervals.append((start, end))
        labels.append(fields[2])
    if not intervals:
        raise AnnotationError(path, None, "no chord segments")
    return np.asarray(intervals, np.float64), tuple(labels)


def _by_id(root: Path, file_name: str) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for path in sorted(root.rglob(file_name)):
        if path.parent.name.isdigit():
            found.setdefault(int(path.parent.name), path)
    return found


def _duplicates(index: Path, ids: set[int]) -> set[int]:
    """Ids to drop: every id of a song (artist, title) but the lowest one present in `ids`."""
    songs: dict[tuple[str, str], list[int]] = {}
    with open(index, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("id", "title", "artist") if c not in (reader.fieldnames or [])]
        if missing:
            raise AnnotationError(index, 1, f"missing column(s) {', '.join(missing)}")
        for row in reader:
            pid = C.to_int(row["id"], index, reader.line_num, "id")
            title, artist = (row["title"] or "").strip(), (row["artist"] or "").strip()
            if title and pid in ids:
                songs.setdefault((artist.lower(), title.lower()), []).append(pid)
    return {pid for pids in songs.values() for pid in sorted(pids)[1:]}


def read(root: Path) -> list[AudioPiece]:
    """Every Billboard id with both bothchroma.csv and majmin.lab, sorted by id."""
    root = C.require_root(root, DATASET)
    chroma, labels = _by_id(root, CHROMA_FILE), _by_id(root, LABEL_FILE)
    ids = (set(chroma) | set(labels)) - IGNORED_IDS
    for pid in sorted(ids):
        if pid not in chroma or pid not in labels:
            missing = CHROMA_FILE if pid not in chroma else LABEL_FILE
            C.warn_skip(DATASET, f"id {pid}", f"no {missing}")
    ids = {pid for pid in ids if pid in chroma and pid in labels}
    if (root / INDEX_FILE).is_file():
        ids -= _duplicates(root / INDEX_FILE, ids)
    pieces = []
    for pid in sorted(ids):
        name = chroma[pid].parent.name
        chords = C.read_or_skip(DATASET, labels[pid], read_chords)
        if chords is None:
            continue
        intervals, chord_labels = chords
        pieces.append(
            AudioPiece(
                name=name,
                audio=chroma[pid],
                split=C.train_or_val(name) if pid <= TRAIN_MAX_ID else "test",
                chords=intervals,
                chord_labels=chord_labels,
            )
        )
    if not pieces:
        raise C.no_pieces(root, DATASET, f"<id>/{CHROMA_FILE} with <id>/{LABEL_FILE}")
    return pieces
