"""Chord targets: a class per 232 ms segment, the change flag, and 12x transposition.

Classes are omnizart's: 0-11 major chords on C..B, 12-23 minor chords on C..B, 24 = N (no
chord). X (an unclassifiable or non-major/minor sonority, index 25) is not a class: its
segments are kept in the data but masked out of the loss and out of the score (mir_eval skips
X in a reference).
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from jaxmir.data.features.chroma import transpose_chroma, transpose_label
from jaxmir.data.synth.corpus import N_CHORD, X_CHORD, chord_index

N_CLASSES = 25  # 12 major, 12 minor, N
PITCH_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def class_name(index: int) -> str:
    """'C:maj' .. 'B:maj', 'C:min' .. 'B:min', 'N', 'X' (mir_eval's Harte syntax)."""
    if index == N_CHORD:
        return "N"
    if index == X_CHORD:
        return "X"
    return f"{PITCH_NAMES[index % 12]}:{'maj' if index < 12 else 'min'}"


def label_index(label: str) -> int:
    """The class of a reduced Harte label; a quality other than maj/min counts as X."""
    try:
        return chord_index(label)
    except ValueError:
        return X_CHORD


def segment_classes(
    times: np.ndarray, intervals: np.ndarray, labels: tuple[str, ...] | np.ndarray
) -> np.ndarray:
    """The class at each time (int32): the chord interval holding it, N outside all of them
    (a time on a boundary belongs to the later chord)."""
    times = np.asarray(times, np.float64)
    out = np.full(len(times), N_CHORD, np.int32)
    intervals = np.asarray(intervals, np.float64).reshape(-1, 2)
    for (start, end), label in zip(intervals, labels, strict=True):
        out[(times >= start) & (times < end)] = label_index(str(label))
    return out


def change_flags(classes: np.ndarray) -> np.ndarray:
    """1 where the class differs from the previous segment's (and at the first), else 0."""
    classes = np.asarray(classes)
    change = np.ones(len(classes), np.float32)
    change[1:] = classes[1:] != classes[:-1]
    return change


@dataclasses.dataclass
class Transpose(grain.transforms.RandomMap):
    """Training-time 12x transposition: each example is moved by a random 0-11 semitones,
    chroma and chord labels together (omnizart stored all 12 copies on disk instead).

    `x` is (T, width * 24) frame-major segments of [bass 12, treble 12] chroma."""

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        shift = int(rng.integers(12))
        if shift == 0:
            return element
        x = element["x"]
        frames = x.reshape(*x.shape[:-1], -1, 24)
        moved = transpose_chroma(frames, shift).reshape(x.shape).astype(x.dtype)
        return {**element, "x": moved, "chord": transpose_label(element["chord"], shift)}
