"""Dataset name -> reader: `READERS[name](root)` gives the dataset's pieces.

Audio datasets give `list[AudioPiece]`; "musicnet_beats" and "midi" give `list[SymbolicPiece]`.
Every reader takes the dataset root as its only required argument and uses its defaults
(MedleyDB MELODY2, MDB-Drums subclass labels, ENST wet mix, MAPS MUS only, MusicNet beats at 4
beats per bar); call the module's `read` directly for other settings.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from jaxmir.data.datasets import (
    billboard,
    enst,
    maestro,
    maps,
    mdb_drums,
    medleydb,
    midi,
    mir1k,
    musicnet,
    tonas,
)
from jaxmir.data.records import AudioPiece
from jaxmir.data.symbolic import SymbolicPiece


def _midi_folder(root: Path) -> list[SymbolicPiece]:
    """A folder of MIDI files with meter events; files that fail are skipped with a warning."""
    pieces, failures = midi.read_midi_folder(root)
    for _path, reason in failures:
        warnings.warn(f"skipping {reason}", stacklevel=2)
    return pieces


READERS: dict[str, Callable[[Path], list[AudioPiece] | list[SymbolicPiece]]] = {
    "maestro": maestro.read,
    "musicnet": musicnet.read,
    "musicnet_beats": musicnet.read_beats,
    "maps": maps.read,
    "mir1k": mir1k.read,
    "medleydb": medleydb.read,
    "tonas": tonas.read,
    "billboard": billboard.read,
    "enst": enst.read,
    "mdb_drums": mdb_drums.read,
    "midi": _midi_folder,
}


def read_dataset(name: str, root: Path | str) -> list[AudioPiece] | list[SymbolicPiece]:
    """`READERS[name](Path(root))`; ValueError listing the known names for an unknown one."""
    reader = READERS.get(name)
    if reader is None:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(READERS))}")
    return reader(Path(root))
