"""MAPS (MIDI Aligned Piano Sounds) -> `AudioPiece`s with notes.

Layout (the official per-piano zips, unpacked anywhere under the root, e.g. omnizart's
`MAPS_AkPnBcht_2/AkPnBcht/MUS/...` or plain `AkPnBcht/MUS/...`): a folder named after each
piano's code holding the subsets `ISOL/<kind>/`, `RAND/<kind>/`, `UCHO/<kind>/<kind>/` and `MUS/`
with `<name>.wav` next to `<name>.txt` (and `.mid`, unused). The folder is looked for at depths
0-2 below the root. Text annotation: a header line `OnsetTime OffsetTime MidiPitch`, then one
note a line, tab- (or space-) separated: onset_s, offset_s, integer MIDI pitch.

Split: omnizart's (`constants/datasets.py`, `MapsStructure`), the usual "configuration II":
* train: the MUS pieces of the six synthesised pianos omnizart lists: AkPnBcht, AkPnBsdf,
  AkPnCGdD, AkPnStgb, SptkBGCl, StbgTGd2 (omnizart spells the fifth folder "SptKBGCl", a typo
  that a case-sensitive file system misses; the official name is read here);
* test: the MUS pieces of the two real Disklavier recordings, ENSTDkAm and ENSTDkCl;
* val: the MUS pieces of the seventh synthesised piano, SptkBGAm, which omnizart does not use:
  an unseen instrument, as the test set is.
`subsets` (default ("MUS",), as omnizart) adds ISOL / RAND / UCHO files of the train and val
pianos; the test set is always MUS only.

Notes: velocity -1 (the text files carry none), program 0 (piano). A wav without its .txt is
skipped with a warning; a malformed .txt raises `AnnotationError`.
"""

from __future__ import annotations

from pathlib import Path

from jaxmir.data.datasets import _common as C
from jaxmir.data.records import AnnotationError, AudioPiece

DATASET = "MAPS"
TRAIN_PIANOS = ("AkPnBcht", "AkPnBsdf", "AkPnCGdD", "AkPnStgb", "SptkBGCl", "StbgTGd2")
VAL_PIANOS = ("SptkBGAm",)
TEST_PIANOS = ("ENSTDkAm", "ENSTDkCl")
SUBSETS = ("ISOL", "RAND", "UCHO", "MUS")
HEADER = ("OnsetTime", "OffsetTime", "MidiPitch")
PIANO_PROGRAM = 0


def read_notes(path: Path):
    """One MAPS .txt -> float64 (N, 5) notes (velocity -1, program 0). Raises AnnotationError."""
    path = Path(path)
    rows, header_seen = [], False
    for line, text in C.text_lines(path):
        fields = text.split()
        if line == 1:
            if tuple(fields) != HEADER:
                raise AnnotationError(path, 1, f"expected the header {' '.join(HEADER)!r}")
            header_seen = True
            continue
        if not fields:
            continue
        if len(fields) != 3:
            raise AnnotationError(path, line, f"expected 3 fields, got {len(fields)}")
        onset = C.to_float(fields[0], path, line, "onset")
        offset = C.to_float(fields[1], path, line, "offset")
        pitch = C.to_int(fields[2], path, line, "MIDI pitch")
        C.check_note(onset, offset, pitch, path, line)
        rows.append((onset, offset, pitch, -1, PIANO_PROGRAM))
    if not header_seen:
        raise AnnotationError(path, 1, "empty file (no header)")
    return C.note_array(rows)


def _piano_dirs(root: Path, code: str) -> list[Path]:
    found = []
    for pattern in (code, f"*/{code}", f"*/*/{code}"):
        found += [p for p in sorted(root.glob(pattern)) if p.is_dir()]
    return found


def read(root: Path, subsets: tuple[str, ...] = ("MUS",)) -> list[AudioPiece]:
    """MAPS pianos found under `root` -> AudioPieces, sorted by piano (train, val, test order)
    then file name. Names are the wav stems (they carry the piano code)."""
    root = C.require_root(root, DATASET)
    bad = [s for s in subsets if s not in SUBSETS]
    if bad:
        raise ValueError(f"unknown MAPS subset(s) {bad}; known: {SUBSETS}")
    plan = [(code, "train", subsets) for code in TRAIN_PIANOS]
    plan += [(code, "val", subsets) for code in VAL_PIANOS]
    plan += [(code, "test", ("MUS",)) for code in TEST_PIANOS]
    pieces, seen = [], set()
    for code, split, wanted in plan:
        for piano in _piano_dirs(root, code):
            for subset in wanted:
                for wav in C.wav_files(piano / subset, recursive=True):
                    if wav.stem in seen:
                        continue
                    txt = wav.with_suffix(".txt")
                    if not txt.is_file():
                        C.warn_skip(DATASET, wav, f"no {txt.name}")
                        continue
                    with C.skipped_if_unreadable(DATASET, txt):
                        notes = read_notes(txt)
                        seen.add(wav.stem)
                        pieces.append(
                            AudioPiece(name=wav.stem, audio=wav, split=split, notes=notes)
                        )
    if not pieces:
        raise C.no_pieces(
            root, DATASET, "<piano code>/MUS/*.wav with *.txt for the MAPS piano codes"
        )
    return pieces
