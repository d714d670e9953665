"""MedleyDB (multitrack recordings with melody annotations) -> `AudioPiece`s with a melody f0.

Three layouts are read (`<n>` is 1, 2 or 3; the first layout whose melody folder exists wins):
* MedleyDB 1.x: `Audio/<Track>/<Track>_MIX.wav` and
  `Annotations/Melody_Annotations/MELODY<n>/<Track>_MELODY<n>.csv`;
* the annotations of the `medleydb` Python package (marl/medleydb, `medleydb/data/`) beside the
  MedleyDB audio: `Audio/<Track>/<Track>_MIX.wav` and
  `Annotations/Melody/Melody<n>/<Track>_MELODY<n>.csv` (with `Intervals/`, `Ranking/` unused);
* MedleyDB-Melody (Zenodo 10.5281/zenodo.2628782, the `MedleyDB-Melody/` folder): `audio/<Track>_MIX.wav` and
  `melody<n>/<Track>_MELODY<n>.csv` (with `medleydb_melody_metadata.json`, unused).

MELODY1 and MELODY2 files are csv rows `time_s,Hz` with no header, e.g.
`0.0058049886621315194,0.0`, on a 256-sample grid at 44.1 kHz (~5.8 ms), 0 Hz = unvoiced; line
ends are CRLF (MedleyDB-Melody's files may mix CRLF and LF). The three definitions: MELODY1 is
the f0 of the predominant melodic source, MELODY2 the f0 of the melody, whichever source carries
it, MELODY3 the f0s of all melodic lines, one column each: MELODY3 does not fit a single contour
and is refused. `melody="MELODY2"` is the default (the definition used most in
melody-extraction work).

Pieces are the tracks with a melody file of the chosen kind (tracks without melody, about 14 of
122 in MedleyDB 1.0, are not pieces); a melody file without its mix is skipped with a warning.
f0 is float64 (T, 2) [time_s, Hz]; negative frequencies raise `AnnotationError`, as does any
other malformed row.

Split: MedleyDB has no official split, so the crc32 hash split (80/10/10, `_common`) keyed by
the track name is used. omnizart's vocal-melody split (10 named test tracks) is not used: it is
for its vocal subset only and puts tracks of one artist in both train and test. The hash split
does the same (MedleyDB's usual "artist-conditional" splits are random draws, not a fixed list):
keep that in mind when reading its test scores.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from jaxmir.data.datasets import _common as C
from jaxmir.data.records import AnnotationError, AudioPiece

DATASET = "MedleyDB"


# (melody folder of MELODY<n>, the track's mix), relative to the root, in the order tried
LAYOUTS = (
    ("Annotations/Melody_Annotations/MELODY{n}", "Audio/{track}/{track}_MIX.wav"),  # 1.x
    ("Annotations/Melody/Melody{n}", "Audio/{track}/{track}_MIX.wav"),  # medleydb package
    ("melody{n}", "audio/{track}_MIX.wav"),  # MedleyDB-Melody
)
SINGLE_CONTOUR = ("MELODY1", "MELODY2")


def read_melody(path: Path) -> np.ndarray:
    """One MELODY1/MELODY2 csv -> float64 (T, 2) [time_s, Hz]."""
    path = Path(path)
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        for fields in reader:
            line = reader.line_num
            if not fields or all(not x.strip() for x in fields):
                continue
            if len(fields) != 2:
                raise AnnotationError(
                    path, line, f"expected 2 fields (time, Hz), got {len(fields)}"
                )
            t = C.to_float(fields[0].strip(), path, line, "time")
            hz = C.to_float(fields[1].strip(), path, line, "frequency")
            if hz < 0:
                raise AnnotationError(path, line, f"negative frequency {hz}")
            if rows and t <= rows[-1][0]:
                raise AnnotationError(path, line, f"time {t} not after the previous row's")
            rows.append((t, hz))
    if not rows:
        raise AnnotationError(path, None, "no rows")
    return np.asarray(rows, np.float64)


def read(root: Path, melody: str = "MELODY2") -> list[AudioPiece]:
    """Every track with a `melody` annotation and its mix, sorted by track name, from the first
    of `LAYOUTS` whose melody folder exists under `root`."""
    if melody not in SINGLE_CONTOUR:
        raise ValueError(
            f"melody must be one of {SINGLE_CONTOUR}, got {melody!r} "
            "(MELODY3 holds several contours per frame)"
        )
    root = C.require_root(root, DATASET)
    n = melody[-1]
    suffix = f"_{melody}.csv"
    found = [(root / d.format(n=n), mix) for d, mix in LAYOUTS if (root / d.format(n=n)).is_dir()]
    if not found:
        expected = " or ".join(f"{d.format(n=n)}/ with {mix}" for d, mix in LAYOUTS)
        raise C.no_pieces(root, DATASET, expected.replace("{track}", "<Track>"))
    folder, mix_template = found[0]
    pieces = []
    for csv_path in sorted(folder.glob(f"*{suffix}")):
        track = csv_path.name[: -len(suffix)]
        mix = root / mix_template.format(track=track)
        if not mix.is_file():
            C.warn_skip(DATASET, csv_path, f"no {mix.relative_to(root).as_posix()}")
            continue
        with C.skipped_if_unreadable(DATASET, csv_path):
            f0 = read_melody(csv_path)
            pieces.append(AudioPiece(name=track, audio=mix, split=C.hash_split(track), f0=f0))
    if not pieces:
        where = f"{folder.relative_to(root).as_posix()}/*{suffix}"
        raise C.no_pieces(
            root, DATASET, f"{where} with {mix_template.replace('{track}', '<Track>')}"
        )
    return pieces
