"""A folder of MIDI files that carry tempo and time-signature events -> `SymbolicPiece`s.

Beats and downbeats come from the file's own meter map through pretty_midi (0.2.11):

* `get_beats()` starts at t=0 (not at the first note) and steps by one beat of the current
  tempo and time signature until the end of the file (`get_end_time()`, exclusive). The beat unit
  follows `pretty_midi.qpm_to_bpm`: in a compound meter (numerator a multiple of 3 greater than 3:
  6/8, 9/8, 12/8, 6/4, ...) a beat is three denominator notes (a dotted quarter in 6/8, so 6/8
  has 2 beats a bar); in every other meter a beat is one denominator note (a quarter in 4/4 and
  3/4, a half in 2/2, an eighth in 3/8 and 5/8: note that music21 counts 3/8 as one dotted-quarter
  beat a bar, pretty_midi as three eighths). A beat is snapped onto a time-signature change when
  it would pass one, so the grid restarts at each change.
* `get_downbeats()` takes every `numerator`-th beat (every `numerator // 3`-th in a compound
  meter) from the first beat at each time-signature change; before the first time-signature event
  it assumes 4/4 from t=0.

MIDI has no notion of a pickup: an anacrusis is either padded to a full bar with rests (then the
downbeats are right) or written as a short bar with its own time signature (then t=0 counts as a
downbeat). Files without any time-signature event are refused rather than read as 4/4, and so are
files whose first time-signature event comes after the first note.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from jaxmir.data.symbolic import SymbolicPiece

MIDI_SUFFIXES = (".mid", ".midi")


class MidiError(ValueError):
    """A MIDI file that cannot be used; the message names the file and the reason."""


def _load(path: Path):
    import pretty_midi

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "tempo/key/time signature on non-zero tracks"
            return pretty_midi.PrettyMIDI(str(path))
    except Exception as e:  # mido/pretty_midi raise many kinds on corrupt files
        raise MidiError(f"{path}: cannot parse MIDI ({type(e).__name__}: {e})") from e


def _notes(pm, path: Path) -> np.ndarray:
    rows = [
        (n.start, n.end, n.pitch, n.velocity)
        for inst in pm.instruments
        if not inst.is_drum
        for n in inst.notes
        if n.end > n.start
    ]
    if not rows:
        raise MidiError(f"{path}: no notes (outside drum tracks)")
    notes = np.asarray(rows, np.float64)
    return notes[np.lexsort((notes[:, 2], notes[:, 0]))]


def read_midi_notes(path: Path) -> np.ndarray:
    """Notes only, float64 (N, 4) [onset_s, offset_s, pitch, velocity] sorted by onset, from
    every non-drum instrument; no meter needed (for inference). ValueError as `read_midi_piece`."""
    path = Path(path)
    return _notes(_load(path), path)


def read_midi_piece(path: Path, name: str | None = None) -> SymbolicPiece:
    """One MIDI file -> SymbolicPiece (notes of every non-drum instrument, the file's meter map).

    `name` defaults to the file's stem. Raises ValueError naming the file when it cannot be
    parsed, has no (non-drum) notes, or has no time-signature event (or none before its first
    note).
    """
    path = Path(path)
    pm = _load(path)
    notes = _notes(pm, path)

    ts_changes = sorted(pm.time_signature_changes, key=lambda ts: ts.time)
    if not ts_changes:
        raise ValueError(
            f"{path}: no time-signature event (meter-less; pretty_midi would silently assume 4/4)"
        )
    if ts_changes[0].time > float(notes[0, 0]) + 1e-6:
        raise ValueError(
            f"{path}: first time-signature event at {ts_changes[0].time:.3f} s comes after the "
            f"first note at {notes[0, 0]:.3f} s (meter undefined at the start)"
        )
    try:
        beats = np.asarray(pm.get_beats(), np.float64)
        downbeats = np.asarray(pm.get_downbeats(), np.float64)
    except Exception as e:
        raise ValueError(f"{path}: cannot derive beats ({type(e).__name__}: {e})") from e
    if len(beats) == 0 or len(downbeats) == 0:
        raise ValueError(f"{path}: empty beat grid")
    return SymbolicPiece(
        name=name if name is not None else path.stem,
        notes=notes,
        beats=beats,
        downbeats=downbeats,
    )


def _piece_name(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix().replace("/", "__")


def read_midi_folder(root: Path) -> tuple[list[SymbolicPiece], list[tuple[str, str]]]:
    """Every *.mid / *.midi under `root` (recursive, case-insensitive, sorted by relative path).

    Returns (pieces, failures); a file that fails is skipped with a warning and listed as
    (path, reason). Names are the relative path without suffix, '/' -> '__' (a clash, e.g.
    a.mid next to a.midi, gets '__2', '__3', ... in sorted order).
    Raises FileNotFoundError when `root` is not a folder or holds no MIDI file.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MIDI folder {root} does not exist (or is not a folder)")
    files = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise FileNotFoundError(f"no MIDI files (*.mid, *.midi) under {root}")
    pieces: list[SymbolicPiece] = []
    failures: list[tuple[str, str]] = []
    used: set[str] = set()
    for path in files:
        base = _piece_name(path, root)
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}__{k}"
        try:
            piece = read_midi_piece(path, name=name)
        except ValueError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
            failures.append((str(path), str(e)))
            continue
        used.add(name)
        pieces.append(piece)
    return pieces, failures
