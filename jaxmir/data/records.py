"""Audio piece records: what every audio dataset reader and the synthetic corpus hand on.

One `AudioPiece` per recording: where its audio is, which split it belongs to, and whichever
labels the dataset has (None where it has none). Times are seconds; pitches are MIDI numbers
(float, so sung notes may be fractional); frequencies are Hz with 0 meaning unvoiced.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

# Column layout of `AudioPiece.notes`.
NOTE_COLUMNS = ("onset", "offset", "pitch", "velocity", "program")
DRUM_PROGRAM = 128  # `program` value of percussion notes (GM channel 10)
UNKNOWN_PROGRAM = -1


@dataclasses.dataclass(frozen=True)
class AudioPiece:
    """One recording and its labels.

    audio:      the mixture (any format librosa/soundfile reads).
    stems:      optional named stems, e.g. {"vocals": path, "accompaniment": path}; MIR-1K's
                two channels are given as (path, channel) via `channels`.
    notes:      float64 (N, 5): onset_s, offset_s, MIDI pitch, velocity (0-127; -1 unknown),
                GM program (0-127, 128 drums, -1 unknown); sorted by onset.
    f0:         float64 (T, 2): time_s, Hz (0 = unvoiced) - melody or voice contour.
    beats, downbeats: float64 (B,), (D,) seconds.
    chords:     float64 (K, 2) intervals with `chord_labels` (Harte syntax, "N" = no chord).
    drum_hits:  float64 (H, 2): time_s, GM percussion note.
    level_db:   dB re full scale at which the audio's loud passages are read before its features
                (`jaxmir.data.audio.normalise_level`); None reads it as recorded. Datasets leave
                it None, so training sees each recording at its own level (training the music
                task at one level cost 0.06-0.10 note F1); `input` sets `LEVEL_DB`, so a file to
                transcribe reads the same at any gain.
    """

    name: str
    audio: Path
    split: str
    notes: np.ndarray | None = None
    f0: np.ndarray | None = None
    beats: np.ndarray | None = None
    downbeats: np.ndarray | None = None
    chords: np.ndarray | None = None
    chord_labels: tuple[str, ...] | None = None
    drum_hits: np.ndarray | None = None
    stems: dict[str, Path] | None = None
    channels: dict[str, int] | None = None  # stem name -> channel index within `audio`
    level_db: float | None = None

    @classmethod
    def input(cls, path: str | Path) -> AudioPiece:
        """A file to transcribe: no labels, read at `LEVEL_DB`."""
        from jaxmir.data.audio import LEVEL_DB

        return cls(name=Path(path).stem, audio=Path(path), split="", level_db=LEVEL_DB)

    def samples(self, sr: int) -> np.ndarray:
        """The mixture as mono float32 at `sr` Hz, read at `level_db` (None: as recorded)."""
        from jaxmir.data.audio import load_audio

        return load_audio(self.audio, sr, level_db=self.level_db)

    def label_arrays(self) -> dict[str, np.ndarray]:
        """The labels present, as arrays for an `.npz` (chord labels as a unicode array)."""
        out = {}
        for key in ("notes", "f0", "beats", "downbeats", "chords", "drum_hits"):
            value = getattr(self, key)
            if value is not None:
                out[key] = np.asarray(value, np.float64)
        if self.chord_labels is not None:
            out["chord_labels"] = np.asarray(self.chord_labels, dtype=np.str_)
        return out


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and the line."""

    def __init__(self, path: Path | str, line: int | None, reason: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")
        self.path, self.line, self.reason = Path(path), line, reason
