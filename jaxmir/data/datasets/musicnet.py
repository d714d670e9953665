"""MusicNet (330 aligned classical recordings) -> `AudioPiece`s with notes, and `SymbolicPiece`s
with beats for the symbolic beat task.

Layout (the official `musicnet.tar.gz`, unpacked): `train_data/<id>.wav`, `train_labels/<id>.csv`,
`test_data/<id>.wav`, `test_labels/<id>.csv` under the root (`musicnet_metadata.csv`, if present,
is not needed: it holds no meter). Label csv header and columns:
`start_time,end_time,instrument,note,start_beat,end_beat,note_value`, where

* start_time / end_time are sample indices at 44.1 kHz (divided by 44100 to give seconds),
* instrument is MusicNet's instrument code, a 1-based General MIDI program number (1 piano,
  7 harpsichord, 41 violin, 42 viola, 43 cello, 44 contrabass, 61 horn, 69 oboe, 71 bassoon,
  72 clarinet, 74 flute); it is stored 0-based in `notes[:, 4]` (piano = 0), as omnizart does,
* note is the MIDI pitch,
* start_beat is the note's position in beats counted from the start of the score, and end_beat
  is - despite its name - the note's duration in beats; note_value is a name ("Quarter", ...).

MusicNet has no velocities: `notes[:, 3]` is -1 (unknown).

Split: the official one, test_* -> "test"; train_* -> "train", with ~10% of it carved out as
"val" by the crc32 hash of the id (`_common.train_or_val`), since MusicNet has no validation set.

Beats (`read_beats`), following omnizart's beat labels (`beat/features.py`), rewritten:

* A note is "on a beat" when its start_beat is within 0.05 of an integer (omnizart rounds to one
  decimal). Where no note of a piece is on an integer beat (a global offset in the annotation),
  every start_beat is first shifted by the fractional part of the first note's start_beat.
* The time of integer beat k is the median onset time of the notes on it (omnizart keeps the
  last one it meets). Integer beats between the first note's beat and the last beat at or before
  the end of the last note (start_beat + end_beat) that no note starts on get a time by linear
  interpolation in beat number between the known beats, and by linear extrapolation from the two
  outermost known beats on either side beyond them (the first beat is the first integer at or
  after the earliest start_beat); times below 0 s or after the last note's offset are dropped.
  A beat whose time is not after the previous beat's (alignment noise) is dropped too.
* Downbeats: MusicNet has NO meter information (neither the label csvs nor
  `musicnet_metadata.csv` give a time signature), so, like omnizart, every piece is assumed to
  have 4 beats per bar, with downbeats at the integer beats k where k % 4 == 1 (omnizart's rule,
  which reads beat numbers as 1-based). Both numbers are parameters. This is wrong for pieces in
  3/4, 6/8, ..., and for pieces whose first bar is a pickup: treat MusicNet downbeats as weak
  labels. The beat unit is whatever unit MusicNet's start_beat counts in.
* Notes of a `SymbolicPiece`: (onset, offset, pitch, velocity) with velocity 64 for every note
  (MusicNet has none; 64 is MIDI's default note-on velocity); zero-length notes are dropped.
  A piece with fewer than two notes on integer beats cannot be given a grid: it is skipped with
  a warning.

A recording whose label csv (or a label csv whose recording) is missing is skipped with a
warning; a malformed label csv raises `AnnotationError`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from jaxmir.data.datasets import _common as C
from jaxmir.data.records import AnnotationError, AudioPiece
from jaxmir.data.symbolic import SymbolicPiece

DATASET = "MusicNet"
SAMPLE_RATE = 44100
COLUMNS = ("start_time", "end_time", "instrument", "note", "start_beat", "end_beat", "note_value")
SPLIT_DIRS = (("train", "train_data", "train_labels"), ("test", "test_data", "test_labels"))
ON_BEAT_TOLERANCE = 0.05
DEFAULT_VELOCITY = 64
LAYOUT = "train_data/*.wav + train_labels/*.csv and/or test_data/*.wav + test_labels/*.csv"


def read_labels(path: Path) -> np.ndarray:
    """One label csv -> float64 (N, 7) rows in file order: onset_s, offset_s, program (0-based),
    MIDI pitch, start_beat, duration_beats, line number. Raises AnnotationError."""
    path = Path(path)
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise AnnotationError(path, 1, "empty file (no header)")
        header = [h.strip() for h in header]
        missing = [c for c in COLUMNS[:6] if c not in header]
        if missing:
            raise AnnotationError(path, 1, f"missing column(s) {', '.join(missing)}")
        col = {c: header.index(c) for c in COLUMNS[:6]}
        for fields in reader:
            line = reader.line_num
            if not fields or all(not x.strip() for x in fields):
                continue
            if len(fields) != len(header):
                raise AnnotationError(
                    path, line, f"expected {len(header)} fields, got {len(fields)}"
                )
            start = C.to_float(fields[col["start_time"]], path, line, "start_time")
            end = C.to_float(fields[col["end_time"]], path, line, "end_time")
            inst = C.to_int(fields[col["instrument"]], path, line, "instrument")
            pitch = C.to_int(fields[col["note"]], path, line, "note")
            beat = C.to_float(fields[col["start_beat"]], path, line, "start_beat")
            dur = C.to_float(fields[col["end_beat"]], path, line, "end_beat")
            if not 1 <= inst <= 128:
                raise AnnotationError(path, line, f"instrument {inst} outside 1-128")
            if dur < 0:
                raise AnnotationError(path, line, f"negative duration in beats {dur}")
            onset, offset = start / SAMPLE_RATE, end / SAMPLE_RATE
            C.check_note(onset, offset, pitch, path, line)
            rows.append((onset, offset, inst - 1, pitch, beat, dur, line))
    return np.asarray(rows, np.float64).reshape(-1, 7)


def _pairs(root: Path):
    """(split, id, wav, csv) for every recording with both files, sorted by split then id."""
    out = []
    for split, data_dir, label_dir in SPLIT_DIRS:
        wavs = {p.stem: p for p in C.wav_files(root / data_dir)}
        labels = {p.stem: p for p in sorted((root / label_dir).glob("*.csv"))}
        for stem in sorted(set(wavs) | set(labels)):
            if stem not in wavs or stem not in labels:
                C.warn_skip(
                    DATASET,
                    f"{split} recording {stem}",
                    f"no {'wav' if stem not in wavs else 'label csv'}",
                )
                continue
            out.append((split, stem, wavs[stem], labels[stem]))
    return out


def read(root: Path) -> list[AudioPiece]:
    """Every MusicNet recording with its label csv -> AudioPiece (notes; program 0-based)."""
    root = C.require_root(root, DATASET)
    pieces = []
    for split, stem, wav, label in _pairs(root):
        lab = C.read_or_skip(DATASET, label, read_labels)
        if lab is None:
            continue
        velocity = np.full(len(lab), -1.0)
        notes = C.note_array(
            list(zip(lab[:, 0], lab[:, 1], lab[:, 3], velocity, lab[:, 2], strict=True))
        )
        pieces.append(
            AudioPiece(
                name=stem,
                audio=wav,
                split=C.train_or_val(stem) if split == "train" else "test",
                notes=notes,
            )
        )
    if not pieces:
        raise C.no_pieces(root, DATASET, LAYOUT)
    return pieces


def beat_grid(
    labels: np.ndarray, beats_per_bar: int = 4, downbeat_phase: int = 1
) -> tuple[np.ndarray, np.ndarray] | None:
    """(beats, downbeats) in seconds from `read_labels` rows (see the module docstring), or None
    when fewer than two notes lie on integer beats."""
    if len(labels) == 0:
        return None
    onset, offset, start_beat = labels[:, 0], labels[:, 1], labels[:, 4]
    end_beat = start_beat + labels[:, 5]

    def on_beat(b):
        return np.abs(b - np.round(b)) < ON_BEAT_TOLERANCE

    if not on_beat(start_beat).any():
        shift = start_beat[0] - math.floor(start_beat[0])
        start_beat, end_beat = start_beat - shift, end_beat - shift
    hit = on_beat(start_beat)
    ks = np.round(start_beat[hit]).astype(np.int64)
    known_k = np.unique(ks)
    if len(known_k) < 2:
        return None
    known_t = np.array([np.median(onset[hit][ks == k]) for k in known_k])

    k_min = min(int(math.ceil(start_beat.min() - ON_BEAT_TOLERANCE)), int(known_k[0]))
    k_max = max(int(math.floor(end_beat.max() + ON_BEAT_TOLERANCE)), int(known_k[-1]))
    k_all = np.arange(k_min, k_max + 1)
    t_all = np.interp(k_all, known_k, known_t)
    for outside, (k0, k1), (t0, t1) in (
        (k_all < known_k[0], known_k[:2], known_t[:2]),
        (k_all > known_k[-1], known_k[-2:], known_t[-2:]),
    ):
        t_all[outside] = t0 + (t1 - t0) / (k1 - k0) * (k_all[outside] - k0)
    keep = (t_all >= 0.0) & (t_all <= offset.max() + 1e-9)
    k_all, t_all = k_all[keep], t_all[keep]

    kept_k, kept_t = [], []
    for k, t in zip(k_all, t_all, strict=True):
        if not kept_t or t > kept_t[-1]:
            kept_k.append(int(k))
            kept_t.append(float(t))
    beats = np.asarray(kept_t, np.float64)
    is_down = np.array([(k - downbeat_phase) % beats_per_bar == 0 for k in kept_k], bool)
    return beats, beats[is_down]


def read_beats(root: Path, beats_per_bar: int = 4, downbeat_phase: int = 1) -> list[SymbolicPiece]:
    """Every MusicNet label csv (train and test) -> SymbolicPiece with beats and downbeats (see
    the module docstring; ASSUMES 4 beats per bar, downbeats at beat numbers 1, 5, 9, ...).

    Audio is not needed. Pieces are sorted by split folder, then id; names are the ids. Their
    split is the official one, as `read` gives it (val carved out of train by id).
    """
    root = C.require_root(root, DATASET)
    if beats_per_bar < 1:
        raise ValueError(f"beats_per_bar must be >= 1, got {beats_per_bar}")
    pieces = []
    for split, _, label_dir in SPLIT_DIRS:
        for path in sorted((root / label_dir).glob("*.csv")):
            lab = C.read_or_skip(DATASET, path, read_labels)
            if lab is None:
                continue
            grid = beat_grid(lab, beats_per_bar, downbeat_phase)
            if grid is None:
                C.warn_skip(DATASET, path, "fewer than two notes on integer beats")
                continue
            sounding = lab[lab[:, 1] > lab[:, 0]]
            if len(sounding) == 0:
                C.warn_skip(DATASET, path, "no notes of positive length")
                continue
            notes = np.stack(
                [
                    sounding[:, 0],
                    sounding[:, 1],
                    sounding[:, 3],
                    np.full(len(sounding), float(DEFAULT_VELOCITY)),
                ],
                1,
            )
            notes = notes[np.lexsort((notes[:, 2], notes[:, 0]))]
            own = C.train_or_val(path.stem) if split == "train" else "test"  # the official one
            pieces.append(
                SymbolicPiece(path.stem, notes, beats=grid[0], downbeats=grid[1], split=own)
            )
    if not pieces:
        raise C.no_pieces(root, DATASET, "train_labels/*.csv and/or test_labels/*.csv")
    return pieces
