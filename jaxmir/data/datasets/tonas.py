"""TONAS (72 a cappella flamenco excerpts) -> `AudioPiece`s with sung notes and an f0 contour.

Layout (the Zenodo distribution 10.5281/zenodo.1290722, unpacked): one folder per style,
`Deblas/`, `Martinetes1/`, `Martinetes2/` (any folder directly under the root is scanned), each
holding `<name>.wav`, `<name>.f0.Corrected` and `<name>.notes.Corrected`.

Formats (as documented with the dataset and read by mirdata's loader; not checked against the
original files here):
* `.notes.Corrected`: a comma-separated text file. Line 1 is the tuning deviation in cents of
  the transcription's reference A4 from 440 Hz (the first field is read; omnizart skips the
  line). Every further line is `onset_s, duration_s, MIDI pitch (fractional), energy`. The
  pitches are relative to the tuned reference, so the stored pitch is
  `pitch + deviation / 100` (a MIDI number against A4 = 440 Hz, matching the audio; omnizart
  rounds the raw value and ignores the tuning). Energy is not a velocity: velocity -1, program -1
  (a singer has no GM program).
* `.f0.Corrected`: whitespace-separated rows `time_s, energy, f0_auto_Hz, f0_corrected_Hz`
  (a 128-sample hop at 44.1 kHz, ~2.9 ms). f0 = (time, last column, the corrected f0); values
  <= 0 mean unvoiced and are stored as 0. Rows with 3 columns (no automatic estimate) are read
  the same way, the last column being the f0.

Pieces: every wav with at least one of the two annotations (the other field is then None);
names are `<folder>__<stem>`. Split: TONAS has no official split (omnizart trains on all of it),
so the crc32 hash split (80/10/10, `_common`) keyed by the name is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxmir.data.datasets import _common as C
from jaxmir.data.records import UNKNOWN_PROGRAM, AnnotationError, AudioPiece

DATASET = "TONAS"
NOTES_SUFFIX = ".notes.Corrected"
F0_SUFFIX = ".f0.Corrected"


def read_notes(path: Path) -> np.ndarray:
    """One .notes.Corrected -> float64 (N, 5) notes, tuning applied (see module docstring)."""
    path = Path(path)
    deviation, rows = None, []
    for line, text in C.text_lines(path):
        if not text:
            continue
        fields = [x.strip() for x in text.split(",")]
        if deviation is None:
            if line != 1:
                raise AnnotationError(path, 1, "line 1 (tuning deviation in cents) is blank")
            deviation = C.to_float(fields[0], path, 1, "tuning deviation (cents)")
            continue
        if len(fields) != 4:
            raise AnnotationError(path, line, f"expected 4 fields, got {len(fields)}")
        onset = C.to_float(fields[0], path, line, "onset")
        duration = C.to_float(fields[1], path, line, "duration")
        pitch = C.to_float(fields[2], path, line, "MIDI pitch") + deviation / 100.0
        C.to_float(fields[3], path, line, "energy")
        if duration < 0:
            raise AnnotationError(path, line, f"negative duration {duration}")
        C.check_note(onset, onset + duration, pitch, path, line)
        rows.append((onset, onset + duration, pitch, -1, UNKNOWN_PROGRAM))
    if deviation is None:
        raise AnnotationError(path, 1, "empty file (no tuning line)")
    return C.note_array(rows)


def read_f0(path: Path) -> np.ndarray:
    """One .f0.Corrected -> float64 (T, 2) [time_s, Hz] (corrected f0; <= 0 -> 0)."""
    path = Path(path)
    rows = []
    for line, text in C.text_lines(path):
        if not text:
            continue
        fields = text.split()
        if len(fields) not in (3, 4):
            raise AnnotationError(path, line, f"expected 3 or 4 columns, got {len(fields)}")
        values = [C.to_float(x, path, line, f"column {i + 1}") for i, x in enumerate(fields)]
        if rows and values[0] <= rows[-1][0]:
            raise AnnotationError(path, line, f"time {values[0]} not after the previous row's")
        rows.append((values[0], max(values[-1], 0.0)))
    if not rows:
        raise AnnotationError(path, None, "no rows")
    return np.asarray(rows, np.float64)


def read(root: Path) -> list[AudioPiece]:
    """Every TONAS excerpt with notes and/or f0, sorted by folder then stem."""
    root = C.require_root(root, DATASET)
    pieces = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for wav in sorted(folder.glob("*.wav")):
            notes_path = wav.with_name(wav.stem + NOTES_SUFFIX)
            f0_path = wav.with_name(wav.stem + F0_SUFFIX)
            if not notes_path.is_file() and not f0_path.is_file():
                C.warn_skip(DATASET, f"{wav} (neither {NOTES_SUFFIX} nor {F0_SUFFIX})")
                continue
            name = f"{folder.name}__{wav.stem}"
            pieces.append(
                AudioPiece(
                    name=name,
                    audio=wav,
                    split=C.hash_split(name),
                    notes=read_notes(notes_path) if notes_path.is_file() else None,
                    f0=read_f0(f0_path) if f0_path.is_file() else None,
                )
            )
    if not pieces:
        raise C.no_pieces(root, DATASET, f"<style>/*.wav with *{NOTES_SUFFIX} and/or *{F0_SUFFIX}")
    return pieces
