"""TONAS (72 a cappella flamenco excerpts) -> `AudioPiece`s with sung notes and an f0 contour.

Layout (the Zenodo distribution 10.5281/zenodo.1290722, unpacked): one folder per style,
`Deblas/`, `Martinetes1/`, `Martinetes2/` (any folder directly under the root is scanned), each
holding `<name>.wav`, `<name>.f0.Corrected` and `<name>.notes.Corrected`.

Formats (checked against the dataset's README and a real excerpt, `Deblas/01-D_AMairena`; both
files have CRLF line ends):
* `.notes.Corrected`: a comma-separated text file. Line 1 is the tuning deviation in cents of
  the transcription's reference A4 from 440 Hz, e.g. `43.000000`. Every further line is
  `onset_s, duration_s, MIDI pitch (fractional), energy`, e.g. `0.216667, 0.433333, 66.430000,
  0.018007`. The pitches already include the deviation (with a tuning of 43 cents every pitch ends
  in .43), so they are stored as they are: adding the tuning again would make every note 43 cents
  sharp and round 66.43 to 67 instead of 66. The tuning line is checked to be a number, not
  applied. Energy is not a velocity: velocity -1, program -1 (a singer has no GM program).
* `.f0.Corrected`: whitespace-separated rows `time_s energy f0_Hz note_f0_Hz` on a 512-sample
  hop at 44.1 kHz (~11.6 ms: the real rows start `0.197`, `0.209`, `0.221`, `0.232`). Per the
  README, column 3 is the f0 envelope after manual correction and column 4 the f0 of the
  transcribed note, quantised to the tuned equal-tempered scale (a staircase equal to the notes'
  pitches: 379.299 Hz = MIDI 66.43 in the excerpt). The contour stored is column 3:
  f0 = (time, column 3); values <= 0 mean unvoiced and are stored as 0. Rows of 3 columns (no
  note f0) are read the same way. (mirdata's loader calls column 4 "corrected" and column 3
  "automatic"; the README's column names and the values above say otherwise.)

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
F0_COLUMN = 2  # time, energy, f0 (corrected envelope), note f0 (quantised)


def read_notes(path: Path) -> np.ndarray:
    """One .notes.Corrected -> float64 (N, 5) notes; the pitches already carry the tuning of line 1
    (see the module docstring), so they are kept as written."""
    path = Path(path)
    deviation, rows = None, []
    for line, text in C.text_lines(path):
        if not text:
            continue
        fields = [x.strip() for x in text.split(",")]
        if deviation is None:
            if line != 1:
                raise AnnotationError(path, 1, "line 1 (tuning deviation in cents) is blank")
            deviation = C.to_float(fields[0], path, 1, "tuning deviation (cents)")  # in pitches
            continue
        if len(fields) != 4:
            raise AnnotationError(path, line, f"expected 4 fields, got {len(fields)}")
        onset = C.to_float(fields[0], path, line, "onset")
        duration = C.to_float(fields[1], path, line, "duration")
        pitch = C.to_float(fields[2], path, line, "MIDI pitch")
        C.to_float(fields[3], path, line, "energy")
        if duration < 0:
            raise AnnotationError(path, line, f"negative duration {duration}")
        C.check_note(onset, onset + duration, pitch, path, line)
        rows.append((onset, onset + duration, pitch, -1, UNKNOWN_PROGRAM))
    if deviation is None:
        raise AnnotationError(path, 1, "empty file (no tuning line)")
    return C.note_array(rows)


def read_f0(path: Path) -> np.ndarray:
    """One .f0.Corrected -> float64 (T, 2) [time_s, Hz] (column 3, the corrected f0 envelope;
    <= 0 -> 0). Column 4 is skipped: it is the note-level staircase, not a contour."""
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
        rows.append((values[0], max(values[F0_COLUMN], 0.0)))
    if not rows:
        raise AnnotationError(path, None, "no rows")
    return np.asarray(rows, np.float64)


def read(root: Path) -> list[AudioPiece]:
    """Every TONAS excerpt with notes and/or f0, sorted by folder then stem."""
    root = C.require_root(root, DATASET)
    pieces = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for wav in C.wav_files(folder):
            notes_path = wav.with_name(wav.stem + NOTES_SUFFIX)
            f0_path = wav.with_name(wav.stem + F0_SUFFIX)
            if not notes_path.is_file() and not f0_path.is_file():
                C.warn_skip(DATASET, wav, f"neither {NOTES_SUFFIX} nor {F0_SUFFIX}")
                continue
            name = f"{folder.name}__{wav.stem}"
            with C.skipped_if_unreadable(DATASET, wav):
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
