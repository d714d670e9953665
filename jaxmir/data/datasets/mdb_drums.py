"""MDB-Drums (23 MedleyDB tracks with drum annotations) -> `AudioPiece`s with drum hits.

Layout (the official repository CarlSouthall/MDBDrums, folder `MDB Drums/`):
`audio/full_mix/<Track>_MIX.wav` (and `audio/drum_only/<Track>_Drum.wav`, unused),
`annotations/class/<Track>_class.txt` and `annotations/subclass/<Track>_subclass.txt`
(e.g. `MusicDelta_Rock_subclass.txt`), one hit a line written `time_s \t label ` (a space, a
tab and a space between the fields, a trailing space), e.g. `0.528254 \t SD `. Both files of a
track list the same hits at the same times, one label set coarser than the other.

`level="subclass"` (default) reads the 21 subclass labels, `level="class"` the 6 classes.
Labels -> General MIDI percussion notes:

    subclass                        GM     subclass                        GM
    KD   kick drum                  36     CHH  closed hi-hat              42
    SD   snare drum                 38     PHH  pedal hi-hat               44
    SDB  snare, brush               38     OHH  open hi-hat                46
    SDD  snare, drag                38     LFT  low floor tom              41
    SDF  snare, flam                38     HFT  high floor tom             43
    SDG  snare, ghost note          38     MHT  mid-high tom               48
    SDNS snare, snares off          38     HIT  high tom                   50
    SST  side stick                 37     RDC  ride cymbal                51
    CRC  crash cymbal               49     RDB  ride bell                  53
    CHC  Chinese cymbal             52     SPC  splash cymbal              55
    TMB  tambourine                 54

    class: KD 36, SD 38, HH 42, TT 47 (low-mid tom, a nominal tom), CY 49 (crash, a nominal
    cymbal), OT: see below.

The class-level notes are nominal stand-ins (a class covers several GM keys): prefer the
subclass level. Class `OT` ("other") is not one instrument: over the whole dataset its 70 hits
are 38 side sticks (SST: 32 in MusicDelta_Country1, 6 in MusicDelta_Reggae) and 32 tambourine
hits (TMB, all in MusicDelta_Beatles). So at the class level an `OT` hit takes the note of the
subclass file's SST/TMB hit at the same time (37 or 54) when the track's subclass file exists;
without it, `OT` maps to 37 (side stick), the majority. An unknown label raises
`AnnotationError` naming it.

Split: MDB-Drums has no official split (it is mostly used as a test set; omnizart reports
scores on it), so the crc32 hash split (80/10/10, `_common`) keyed by the track name is used;
with 23 tracks a split can be small or empty. An annotation without its mix is skipped with a
warning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxmir.data.datasets import _common as C
from jaxmir.data.records import AnnotationError, AudioPiece

DATASET = "MDB-Drums"
SUBCLASS_TO_GM = {
    "KD": 36,
    "SD": 38,
    "SDB": 38,
    "SDD": 38,
    "SDF": 38,
    "SDG": 38,
    "SDNS": 38,
    "SST": 37,
    "CHH": 42,
    "PHH": 44,
    "OHH": 46,
    "LFT": 41,
    "HFT": 43,
    "MHT": 48,
    "HIT": 50,
    "RDC": 51,
    "RDB": 53,
    "CRC": 49,
    "CHC": 52,
    "SPC": 55,
    "TMB": 54,
}
CLASS_TO_GM = {"KD": 36, "SD": 38, "HH": 42, "TT": 47, "CY": 49, "OT": 37}
OT_SUBCLASSES = ("SST", "TMB")  # what class OT holds in the real files
MATCH_TOLERANCE = 1e-3  # s; a class hit and its subclass hit share the same time in the files
LEVELS = {"subclass": SUBCLASS_TO_GM, "class": CLASS_TO_GM}


def read_hits(path: Path, level: str = "subclass", subclass_path: Path | None = None) -> np.ndarray:
    """One `_class.txt` / `_subclass.txt` -> float64 (H, 2) [time_s, GM note], sorted by time.
    At the class level, `subclass_path` (the track's `_subclass.txt`) resolves each `OT` hit to
    side stick or tambourine."""
    if level == "subclass" or subclass_path is None:
        return C.read_time_label_hits(path, LEVELS[level].__getitem__, level)
    path = Path(path)
    other = [
        (t, label) for _, t, label in C.read_time_labels(subclass_path) if label in OT_SUBCLASSES
    ]
    other_times = np.asarray([t for t, _ in other])
    rows = []
    for line, t, label in C.read_time_labels(path):
        if label not in CLASS_TO_GM:
            raise AnnotationError(path, line, f"unknown class label {label!r}")
        note = CLASS_TO_GM[label]
        if label == "OT" and len(other):
            i = int(np.argmin(np.abs(other_times - t)))
            if abs(other_times[i] - t) <= MATCH_TOLERANCE:
                note = SUBCLASS_TO_GM[other[i][1]]
        rows.append((t, note))
    return C.hit_array(rows)


def read(root: Path, level: str = "subclass") -> list[AudioPiece]:
    """Every MDB-Drums track with a `level` annotation and its mix, sorted by track name.
    `root` is the `MDB Drums` folder (the one holding `audio/` and `annotations/`)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {tuple(LEVELS)}, got {level!r}")
    root = C.require_root(root, DATASET)
    suffix = f"_{level}.txt"
    pieces = []
    for txt in sorted((root / "annotations" / level).glob(f"*{suffix}")):
        track = txt.name[: -len(suffix)]
        mix = root / "audio" / "full_mix" / f"{track}_MIX.wav"
        if not mix.is_file():
            C.warn_skip(DATASET, txt, f"no audio/full_mix/{mix.name}")
            continue
        subclass = root / "annotations" / "subclass" / f"{track}_subclass.txt"
        with C.skipped_if_unreadable(DATASET, txt):
            hits = read_hits(txt, level, subclass if subclass.is_file() else None)
            pieces.append(
                AudioPiece(name=track, audio=mix, split=C.hash_split(track), drum_hits=hits)
            )
    if not pieces:
        raise C.no_pieces(
            root, DATASET, f"annotations/{level}/*{suffix} with audio/full_mix/*_MIX.wav"
        )
    return pieces
