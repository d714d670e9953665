"""ENST-Drums (3 drummers, annotated drum recordings) -> `AudioPiece`s with drum hits.

Layout (the official distribution): `drummer_<n>/audio/wet_mix/<take>.wav` (also `dry_mix/` and
one folder per microphone; `audio_dir` picks the folder, default "wet_mix") and
`drummer_<n>/annotation/<take>.txt`, one hit a line: `time_s label`, whitespace-separated.

Labels -> General MIDI percussion notes (`ENST_TO_GM`). A label is a base name plus an optional
instance number for the kit's cymbals (cr1, cr2, rc3, ch5, spl2, c1, ...): the number is
dropped and the base looked up:

    bd  bass drum             36      chh  closed hi-hat      42
    sd  snare drum            38      ohh  open hi-hat        46
    sd- snare, snares off     38      cr   crash cymbal       49
    rs  rim shot              38      c    other cymbal       49
    cs  cross stick           37      rc   ride cymbal        51
    lft lowest (floor) tom    41      ch   Chinese cymbal     52
    lt  low tom               45      spl  splash cymbal      55
    ltr low tom, rim          45      cb   cowbell            56
    lmt low-mid tom           47      sticks  sticks clicked  31 (GM2/GS "Sticks")
    mt  mid tom               48
    mtr mid tom, rim          48

GM has no rim-shot or tom-rim keys, so those map to the drum itself. "sweep" (a continuous brush
sweep, not a stroke) is skipped. Any other label raises `AnnotationError` naming it (extend
`ENST_TO_GM` to accept it). The label list follows the ENST-Drums documentation as recalled
(Gillet & Richard, ISMIR 2006) and public readers; it was not checked against the files here.

Split: ENST-Drums has no official split (papers use drummer-wise cross-validation; omnizart only
reports test scores), so the crc32 hash split (80/10/10, `_common`) keyed by the name
`drummer_<n>__<take>` is used; one drummer's kit thus appears in several splits. An annotation
without its audio file is skipped with a warning.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from jaxmir.data.datasets import _common as C
from jaxmir.data.records import AudioPiece

DATASET = "ENST-Drums"
ENST_TO_GM = {
    "bd": 36,
    "sd": 38,
    "sd-": 38,
    "rs": 38,
    "cs": 37,
    "chh": 42,
    "ohh": 46,
    "lft": 41,
    "lt": 45,
    "ltr": 45,
    "lmt": 47,
    "mt": 48,
    "mtr": 48,
    "cr": 49,
    "c": 49,
    "rc": 51,
    "ch": 52,
    "spl": 55,
    "cb": 56,
    "sticks": 31,
}
SKIPPED_LABELS = frozenset({"sweep"})
_LABEL = re.compile(r"([a-z]+-?)(\d*)")


def gm_note(label: str) -> int | None:
    """ENST label -> GM note; None for a skipped label; KeyError for an unknown one."""
    if label in SKIPPED_LABELS:
        return None
    m = _LABEL.fullmatch(label)
    if m is None or m.group(1) not in ENST_TO_GM:
        raise KeyError(label)
    return ENST_TO_GM[m.group(1)]


def read_hits(path: Path) -> np.ndarray:
    """One annotation .txt -> float64 (H, 2) [time_s, GM note], sorted by time."""
    return C.read_time_label_hits(path, gm_note)


def read(root: Path, audio_dir: str = "wet_mix") -> list[AudioPiece]:
    """Every annotated ENST-Drums take with audio in `audio_dir`, sorted by drummer then take."""
    root = C.require_root(root, DATASET)
    pieces = []
    for drummer in sorted(p for p in root.glob("drummer_*") if p.is_dir()):
        for txt in sorted((drummer / "annotation").glob("*.txt")):
            wav = drummer / "audio" / audio_dir / f"{txt.stem}.wav"
            if not wav.is_file():
                C.warn_skip(DATASET, txt, f"no audio/{audio_dir}/{wav.name}")
                continue
            name = f"{drummer.name}__{txt.stem}"
            with C.skipped_if_unreadable(DATASET, txt):
                hits = read_hits(txt)
                pieces.append(
                    AudioPiece(name=name, audio=wav, split=C.hash_split(name), drum_hits=hits)
                )
    if not pieces:
        raise C.no_pieces(
            root, DATASET, f"drummer_<n>/annotation/*.txt with drummer_<n>/audio/{audio_dir}/*.wav"
        )
    return pieces
