"""Helpers shared by the hand-written dataset readers (private to `jaxmir.data.datasets`).

Split rule used wherever a dataset has no official split ("hash split"): the piece's key (its
name unless the reader says otherwise) is hashed with `zlib.crc32` (UTF-8), u = crc32 / 2**32;
u < 0.1 -> "test", u < 0.2 -> "val", else "train" (the same rule as
`jaxmir.data.synth.chorales.split_of`). Where a dataset defines only train and test, the test
set is kept as is and "val" is carved out of the official train set with the same hash: a train
piece goes to "val" when u < 0.1. Both are stable whatever the dataset size or file order.
"""

from __future__ import annotations

import contextlib
import math
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jaxmir.data.records import AnnotationError

VAL_FRACTION = 0.1
TEST_FRACTION = 0.1


def hash_unit(key: str) -> float:
    """crc32 of the UTF-8 key mapped onto [0, 1)."""
    return zlib.crc32(key.encode("utf-8")) / 2.0**32


def hash_split(key: str) -> str:
    """'train' | 'val' | 'test' (80/10/10) from the key alone."""
    u = hash_unit(key)
    if u < TEST_FRACTION:
        return "test"
    if u < TEST_FRACTION + VAL_FRACTION:
        return "val"
    return "train"


def train_or_val(key: str) -> str:
    """For a piece of an official train set: 'val' for ~10% of keys (by hash), else 'train'."""
    return "val" if hash_unit(key) < VAL_FRACTION else "train"


def wav_files(folder: Path, recursive: bool = False) -> list[Path]:
    """The WAV files of `folder` (of its subfolders too when `recursive`), sorted, whatever the
    case of their suffix: a copy made on another system may be `.WAV`."""
    found = Path(folder).rglob("*") if recursive else Path(folder).glob("*")
    wavs = sorted(p for p in found if p.suffix.lower() == ".wav" and p.is_file())
    # one piece per name: `x.wav` beside `x.WAV` (two files only where case counts) is read once
    kept = {p.with_suffix(""): p for p in sorted(wavs, key=lambda p: p.suffix == ".wav")}
    return sorted(kept.values())


def require_root(root: Path | str, dataset: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset} root {root} does not exist (or is not a folder)")
    return root


def no_pieces(root: Path, dataset: str, layout: str) -> FileNotFoundError:
    return FileNotFoundError(f"no {dataset} pieces under {root} (expected {layout})")


class SkippedInput(UserWarning):
    """A reader left out one file or piece (`path`) for `reason`; `jaxmir features` lists each
    among the failures (`jaxmir.tasks.base.PieceTask.read_pieces`)."""

    def __init__(self, dataset: str, path: str, reason: str):
        super().__init__(f"{dataset}: skipping {path} ({reason})")
        self.path, self.reason = str(path), reason


def warn_skip(dataset: str, path, reason: str) -> None:
    warnings.warn(SkippedInput(dataset, path, reason), stacklevel=3)


@contextlib.contextmanager
def skipped_if_unreadable(dataset: str, path) -> Iterator[None]:
    """Inside, an annotation file that cannot be read or parsed (`AnnotationError`, a MIDI error,
    an OS error) is left out with its reason (`warn_skip`), and the read goes on with the other
    pieces: one bad file among thousands used to end the whole dataset's read."""
    try:
        yield
    except (ValueError, OSError) as e:
        warn_skip(dataset, path, reason_of(e, path))


def read_or_skip(dataset: str, path, read):
    """`read(path)`, or None where `skipped_if_unreadable` left the file out."""
    with skipped_if_unreadable(dataset, path):
        return read(path)
    return None


def reason_of(error: Exception, path) -> str:
    """Why `path` could not be read, without repeating its name ("line 3: ...")."""
    if isinstance(error, AnnotationError) and error.path == Path(path):
        return f"line {error.line}: {error.reason}" if error.line is not None else error.reason
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = str(error).replace(f"{path}: ", "", 1)
    return text or type(error).__name__


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without surrounding whitespace), blank lines included."""
    with open(path, encoding="utf-8-sig", errors="replace", newline=None) as f:
        for number, line in enumerate(f, start=1):
            yield number, line.strip()


def to_float(token: str, path: Path, line: int | None, what: str) -> float:
    try:
        value = float(token)
    except (TypeError, ValueError):
        raise AnnotationError(path, line, f"{what} is not a number: {token!r}") from None
    if not math.isfinite(value):
        raise AnnotationError(path, line, f"{what} is not finite: {token!r}")
    return value


def to_int(token: str, path: Path, line: int | None, what: str) -> int:
    value = to_float(token, path, line, what)
    if value != int(value):
        raise AnnotationError(path, line, f"{what} is not an integer: {token!r}")
    return int(value)


def check_note(onset: float, offset: float, pitch: float, path: Path, line: int | None) -> None:
    if onset < 0:
        raise AnnotationError(path, line, f"negative onset {onset}")
    if offset < onset:
        raise AnnotationError(path, line, f"offset {offset} before onset {onset}")
    if not 0 <= pitch <= 127:
        raise AnnotationError(path, line, f"MIDI pitch {pitch} outside 0-127")


def note_array(rows: list[tuple[float, float, float, float, float]]) -> np.ndarray:
    """float64 (N, 5) notes sorted by onset, then pitch; (0, 5) when there are none."""
    if not rows:
        return np.zeros((0, 5), np.float64)
    notes = np.asarray(rows, np.float64)
    return notes[np.lexsort((notes[:, 2], notes[:, 0]))]


def read_time_labels(path: Path) -> list[tuple[int, float, str]]:
    """A "time label" per line annotation -> [(line, time_s, label)] in file order."""
    path = Path(path)
    rows = []
    for line, text in text_lines(path):
        if not text:
            continue
        fields = text.split()
        if len(fields) != 2:
            raise AnnotationError(path, line, f"expected 2 fields (time label), got {len(fields)}")
        t = to_float(fields[0], path, line, "time")
        if t < 0:
            raise AnnotationError(path, line, f"negative time {t}")
        rows.append((line, t, fields[1]))
    return rows


def read_time_label_hits(path: Path, label_to_note, what: str = "drum") -> np.ndarray:
    """A "time label" per line drum annotation -> float64 (H, 2) [time_s, GM note], sorted.
    `label_to_note(label)` gives the GM note, None to drop the hit, KeyError if unknown."""
    path = Path(path)
    rows = []
    for line, t, label in read_time_labels(path):
        try:
            note = label_to_note(label)
        except KeyError:
            raise AnnotationError(path, line, f"unknown {what} label {label!r}") from None
        if note is not None:
            rows.append((t, note))
    return hit_array(rows)


def hit_array(rows: list[tuple[float, float]]) -> np.ndarray:
    """float64 (H, 2) drum hits sorted by time, then note; (0, 2) when there are none."""
    if not rows:
        return np.zeros((0, 2), np.float64)
    hits = np.asarray(rows, np.float64)
    return hits[np.lexsort((hits[:, 1], hits[:, 0]))]


def midi_to_hz(pitch: np.ndarray) -> np.ndarray:
    """MIDI number -> Hz (A4 = 440 Hz); values <= 0 (unvoiced) -> 0."""
    pitch = np.asarray(pitch, np.float64)
    return np.where(pitch > 0, 440.0 * 2.0 ** ((pitch - 69.0) / 12.0), 0.0)


def piece_name(path: Path, root: Path) -> str:
    """Relative path without suffix, '/' -> '__' (as `datasets.midi` names files)."""
    return path.relative_to(root).with_suffix("").as_posix().replace("/", "__")
