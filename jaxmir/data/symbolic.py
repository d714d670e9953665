"""Symbolic pieces: notes with exact beat and downbeat times, in seconds.

A `SymbolicPiece` is what every symbolic source (the embedded chorale corpus, a folder of MIDI
files, MusicNet label CSVs) hands to the feature cache. Arrays only, no pickle: it round-trips
through `.npz`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

NOTE_COLUMNS = ("onset", "offset", "pitch", "velocity")


@dataclasses.dataclass(frozen=True)
class SymbolicPiece:
    """One piece of music as note events plus its metrical grid.

    notes:     float64 (N, 4): onset_s, offset_s, MIDI pitch, velocity (1-127); sorted by onset.
    beats:     float64 (B,) beat times in seconds (the meter's beat unit: a dotted quarter in 6/8).
    downbeats: float64 (D,) bar starts in seconds (a pickup bar's start is not a downbeat).
    split:     a dataset's own split for the piece ("train", "val", "test"); None where it has
               none (a task then splits by name).
    """

    name: str
    notes: np.ndarray
    beats: np.ndarray
    downbeats: np.ndarray
    split: str | None = None

    @property
    def duration(self) -> float:
        """End of the last note, in seconds."""
        return float(self.notes[:, 1].max()) if len(self.notes) else 0.0

    def to_npz_dict(self) -> dict[str, np.ndarray]:
        return {"notes": self.notes, "beats": self.beats, "downbeats": self.downbeats}

    @classmethod
    def from_npz(cls, name: str, data) -> SymbolicPiece:
        return cls(
            name=name,
            notes=np.asarray(data["notes"], np.float64),
            beats=np.asarray(data["beats"], np.float64),
            downbeats=np.asarray(data["downbeats"], np.float64),
        )
