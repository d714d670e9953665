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

A performance recording saved as MIDI (MAESTRO's Disklavier files: one tempo event of 120 qpm and
a 4/4, written by the recorder, not by the music) has a meter map too, but a placeholder one: its
beats would be a rigid 0.5 s grid under rubato playing. Such a file is refused with the reason
when its tempo map is a single 120 qpm and fewer than half of its distinct onsets lie within
1/192 beat of a 1/24-beat grid (which holds eighths, sixteenths, 32nds and their triplets):
a quantised score puts nearly all onsets there, a performance about a quarter to a third (a
MAESTRO file: 30%). Files with fewer than 16 distinct onsets are not judged.

Loading: pretty_midi refuses a file whose last tick passes its `MAX_TICK` (1e7) as "likely
corrupt", which also rejects valid files written at a high resolution (MAPS: 32,767 ticks per
quarter, so 1e7 ticks is about 2.5 minutes at 120 qpm). `load_midi` parses with mido and raises
that limit for the read; a file counts as corrupt only when its last event comes more than
`MAX_SECONDS` after the start (a broken variable-length delta gives such ticks), and one too
long to tabulate (`MAX_READ_TICKS`: pretty_midi keeps 8 bytes per tick) is refused by name.
pretty_midi checks the same limit again whenever it maps a tick to seconds, so the beats and
tempo map of such a file are read with it raised too (`high_ticks`).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jaxmir.data.symbolic import SymbolicPiece

MIDI_SUFFIXES = (".mid", ".midi")


MAX_SECONDS = 24 * 3600.0  # no real piece lasts a day; a corrupt delta lasts days
MAX_READ_TICKS = 250_000_000  # pretty_midi's tick -> time table: 8 bytes a tick, 2 GB here
DEFAULT_QPM = 120.0  # what a recorder writes when it knows no tempo (MIDI's own default)
GRID_DIVISIONS = 24  # a score's onsets fall on 1/24 beat: 8ths, 16ths, 32nds, their triplets
GRID_TOLERANCE = 1.0 / 192  # beats
MIN_ON_GRID = 0.5  # scores: ~1.0; performances: ~0.25-0.35
MIN_ONSETS = 16  # fewer distinct onsets say too little about the grid

_TICK_LIMIT = threading.RLock()  # pretty_midi's limit is a module global: one holder at a time


class MidiError(ValueError):
    """A MIDI file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # picklable across worker processes
        return type(self), (self.path, self.reason)


def _seconds(mid, last_tick: int) -> float:
    """Length of a mido file in seconds (type 2 files have no single tempo map: 120 qpm)."""
    try:
        return float(mid.length)
    except ValueError:
        return last_tick / mid.ticks_per_beat * 60.0 / DEFAULT_QPM


@contextlib.contextmanager
def high_ticks() -> Iterator[None]:
    """pretty_midi's `MAX_TICK` raised to what `load_midi` reads (`MAX_READ_TICKS`) for a while.
    pretty_midi checks that module global not only when it reads a file but whenever it maps a
    tick to seconds (`get_tempo_changes`, `get_beats`, `get_downbeats`), so a file read at a
    high resolution needs it raised for those calls too (music21 writes 10,080 ticks per
    quarter: 1e7 ticks are 992 quarters, 8.3 minutes at 120 qpm, 3.3 at 300). One thread holds
    it at a time; the same thread may nest it."""
    import pretty_midi

    module = pretty_midi.pretty_midi
    with _TICK_LIMIT:
        saved = module.MAX_TICK
        module.MAX_TICK = max(saved, MAX_READ_TICKS + 2)
        try:
            yield
        finally:
            module.MAX_TICK = saved


def load_midi(path: Path):
    """`pretty_midi.PrettyMIDI` of a file at any tick resolution; MidiError naming the file when
    it cannot be parsed or is corrupt (see the module docstring)."""
    import mido
    import pretty_midi

    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:  # worded as for audio
        raise MidiError(path, "empty file (0 bytes)")
    try:
        mid = mido.MidiFile(str(path), charset="latin1")
    except PermissionError:
        raise MidiError(path, "file is not readable (permission denied)") from None
    except Exception as e:  # mido raises many kinds on corrupt files
        detail = str(e) or ("the file ends early" if isinstance(e, EOFError) else "")
        raise MidiError(path, f"cannot parse MIDI ({type(e).__name__}: {detail})") from e
    last_tick = max((sum(msg.time for msg in track) for track in mid.tracks), default=0)
    if last_tick + 1 > pretty_midi.pretty_midi.MAX_TICK:
        seconds = _seconds(mid, last_tick)
        where = f"last event at tick {last_tick} ({mid.ticks_per_beat} ticks per quarter)"
        if seconds > MAX_SECONDS:
            raise MidiError(path, f"{where} = {seconds / 3600:.1f} h: corrupt")
        if last_tick > MAX_READ_TICKS:
            raise MidiError(path, f"{where}: too many ticks to read (limit {MAX_READ_TICKS})")
    try:
        with high_ticks(), warnings.catch_warnings():
            # what is left to warn of: a type-2 file's other maps, or those under track 0's own
            warnings.filterwarnings("ignore", "Tempo, Key or Time signature change events")
            mid = zero_length_notes_sounded(meter_in_first_track(mid))
            return pretty_midi.PrettyMIDI(mido_object=mid)
    except Exception as e:
        raise MidiError(path, f"cannot read MIDI ({type(e).__name__}: {e})") from e


def _absolute(track) -> list:
    """[(tick from the track's start, message), ...] of a mido track."""
    tick, out = 0, []
    for msg in track:
        tick += msg.time
        out.append((tick, msg))
    return out


def _relative(events):
    """A mido track of `(absolute tick, message)` events, in their order."""
    import mido

    track, last = mido.MidiTrack(), 0
    for tick, msg in events:
        track.append(msg.copy(time=tick - last))
        last = tick
    return track


def _is_note_off(msg) -> bool:
    return msg.type == "note_off" or (msg.type == "note_on" and msg.velocity == 0)


def zero_length_notes_sounded(mid):
    """`mid` (a mido.MidiFile) with each note-off that shares its note-on's tick moved one tick
    later, so the note lasts one tick. pretty_midi drops the notes a note-off finds all begun
    at its own tick (it keeps such a note open only beside an earlier one it closes: the
    legato repeat), so a note of no length, which step sequencers and drum editors write, was
    lost. Left as they are: the legato case, and a pair followed at the same tick by another
    note-on of its pitch (that note sounds from there; the pair adds nothing). Returned
    unchanged when there is none to move."""
    tracks, moved = [], False
    for track in mid.tracks:
        timed = _absolute(track)
        later_on = {}  # (channel, pitch, tick) -> the last note-on's index there
        for i, (tick, msg) in enumerate(timed):
            if msg.type == "note_on" and msg.velocity > 0:
                later_on[(msg.channel, msg.note, tick)] = i
        opened: dict[tuple[int, int], list[int]] = {}  # (channel, pitch) -> ticks of open notes
        moved_at: dict[tuple[int, int], int] = {}  # (channel, pitch) -> tick of a moved off
        events = []  # (tick, order, message): a moved note-off goes first at its new tick
        for i, (tick, msg) in enumerate(timed):
            order = i
            if msg.type == "note_on" and msg.velocity > 0:
                opened.setdefault((msg.channel, msg.note), []).append(tick)
            elif _is_note_off(msg):
                key = (msg.channel, msg.note)
                ons = opened.pop(key, [])
                renewed = later_on.get((*key, tick), -1) > i  # a note-on of its pitch follows
                if ons and all(t == tick for t in ons) and not renewed:  # notes of no length
                    tick, order, moved = tick + 1, -1, True
                    moved_at[key] = tick - 1
                elif not ons and moved_at.get(key) == tick:  # a second off for them: after
                    tick, order = tick + 1, -1
                elif tick in ons:  # a legato repeat: the note begun here stays open
                    opened[key] = [tick]
            events.append((tick, order, msg))
        end = max((t for t, _, m in events), default=0)
        events = [(end if m.type == "end_of_track" else t, o, m) for t, o, m in events]
        events.sort(key=lambda e: (e[0], e[2].type == "end_of_track", e[1]))
        tracks.append([(t, m) for t, _, m in events])
    if not moved:
        return mid
    out = type(mid)(type=mid.type, ticks_per_beat=mid.ticks_per_beat, charset=mid.charset)
    out.tracks = [_relative(e) for e in tracks]
    return out


#: The meta events that make a file's meter map (pretty_midi reads them from track 0 only).
MAP_EVENTS = ("set_tempo", "time_signature", "key_signature")


def meter_in_first_track(mid):
    """`mid` (a mido.MidiFile) with the tempo, time- and key-signature events of its other
    tracks moved into track 0, at the same ticks, as the MIDI standard places them; of each
    kind only where track 0 holds none (its own map wins). pretty_midi reads the map from
    track 0 alone, and only warns of the others, so a type-1 file that keeps its tempo with
    its notes was read at 120 qpm: every time wrong. Returned unchanged when no other track
    holds one to move (and for type 0 and type 2 files)."""
    import mido

    if mid.type != 1 or len(mid.tracks) < 2:
        return mid
    # a kind track 0 holds stays its own (a stale tempo in an imported track does not win)
    kinds = set(MAP_EVENTS) - {m.type for m in mid.tracks[0] if m.is_meta}
    moved, others = [], []
    for track in mid.tracks[1:]:
        events = _absolute(track)
        moved += [(t, m) for t, m in events if m.is_meta and m.type in kinds]
        others.append([(t, m) for t, m in events if not (m.is_meta and m.type in kinds)])
    if not moved:
        return mid
    first = [e for e in _absolute(mid.tracks[0]) if e[1].type != "end_of_track"]
    merged = sorted(first + sorted(moved, key=lambda e: e[0]), key=lambda e: e[0])
    end = max(t for t, _ in _absolute(mid.tracks[0]) + moved)
    merged.append((end, mido.MetaMessage("end_of_track")))
    out = mido.MidiFile(type=1, ticks_per_beat=mid.ticks_per_beat, charset=mid.charset)
    out.tracks = [_relative(merged), *(_relative(e) for e in others)]
    return out


def _notes(pm, path: Path, rhythm: bool = False) -> np.ndarray:
    def rows(drums: bool) -> list[tuple]:
        return [
            (n.start, n.end, n.pitch, n.velocity)
            for inst in pm.instruments
            if inst.is_drum == drums
            for n in inst.notes
            if n.end > n.start
        ]

    found = rows(drums=False) or (rows(drums=True) if rhythm else [])
    if not found:
        raise MidiError(path, "no notes" if rhythm else "no notes (outside drum tracks)")
    notes = np.asarray(found, np.float64)
    return notes[np.lexsort((notes[:, 2], notes[:, 0]))]


def read_midi_notes(path: Path, rhythm: bool = False) -> np.ndarray:
    """Notes only, float64 (N, 4) [onset_s, offset_s, pitch, velocity] sorted by onset, from
    every non-drum instrument; no meter needed (for inference). ValueError as `read_midi_piece`.

    `rhythm` (a beat tracker's input, where onsets are what counts): a file of drum tracks
    alone gives its drum notes (where there are others, the drums are left out, as training's
    scores have none). A note whose note-off shares its note-on's tick lasts one tick
    (`zero_length_notes_sounded`)."""
    path = Path(path)
    return _notes(load_midi(path), path, rhythm)


def on_grid_share(pm, onsets: np.ndarray) -> float:
    """The share of the distinct `onsets` (s) that lie on a 1/`GRID_DIVISIONS`-beat grid of the
    file's own tempo map (a beat: a quarter note, as the map counts them), within
    `GRID_TOLERANCE`: nearly all of a score's, a quarter to a third of a performance's."""
    with high_ticks():
        change_s, qpm = pm.get_tempo_changes()
    onsets = np.unique(np.asarray(onsets, np.float64))
    if len(onsets) == 0:
        return 0.0
    change_s, qpm = np.asarray(change_s, np.float64), np.asarray(qpm, np.float64)
    change_q = np.concatenate([[0.0], np.cumsum(np.diff(change_s) * qpm[:-1] / 60.0)])
    k = np.maximum(np.searchsorted(change_s, onsets, side="right") - 1, 0)
    steps = (change_q[k] + (onsets - change_s[k]) * qpm[k] / 60.0) * GRID_DIVISIONS
    return float(np.mean(np.abs(steps - np.round(steps)) <= GRID_TOLERANCE * GRID_DIVISIONS))


def placeholder_meter(pm, notes: np.ndarray) -> str | None:
    """Why the file's meter map is a recorder's placeholder (one 120 qpm tempo over onsets off
    any score grid: a performance), or None when it may be the music's own."""
    _, tempi = pm.get_tempo_changes()
    if len(tempi) != 1 or abs(tempi[0] - DEFAULT_QPM) > 1e-6:
        return None
    onsets = np.unique(notes[:, 0])
    if len(onsets) < MIN_ONSETS:
        return None
    on_grid = on_grid_share(pm, onsets)
    if on_grid >= MIN_ON_GRID:
        return None
    return (
        f"performance MIDI with a default tempo map: a single {DEFAULT_QPM:g} qpm tempo, but only "
        f"{on_grid:.0%} of {len(onsets)} onsets on a 1/{GRID_DIVISIONS}-beat grid (a score has "
        "nearly all), so its beats would be a rigid grid unrelated to the playing"
    )


def read_midi_piece(path: Path, name: str | None = None, *, rhythm: bool = False) -> SymbolicPiece:
    """One MIDI file -> SymbolicPiece (notes of every non-drum instrument, the file's meter map).

    `name` defaults to the file's stem. Raises MidiError (a ValueError) naming the file when it
    cannot be parsed, has no (non-drum) notes, has no time-signature event (or none before its
    first note), or carries a performance's placeholder meter (`placeholder_meter`). `rhythm`:
    a file of drum tracks alone gives its drum notes, as `read_midi_notes`.
    """
    path = Path(path)
    pm = load_midi(path)
    notes = _notes(pm, path, rhythm)

    ts_changes = sorted(pm.time_signature_changes, key=lambda ts: ts.time)
    if not ts_changes:
        raise MidiError(
            path, "no time-signature event (meter-less; pretty_midi would silently assume 4/4)"
        )
    if ts_changes[0].time > float(notes[0, 0]) + 1e-6:
        raise MidiError(
            path,
            f"first time-signature event at {ts_changes[0].time:.3f} s comes after the "
            f"first note at {notes[0, 0]:.3f} s (meter undefined at the start)",
        )
    with high_ticks():
        reason = placeholder_meter(pm, notes)
        if reason:
            raise MidiError(path, reason)
        try:
            beats = np.asarray(pm.get_beats(), np.float64)
            downbeats = np.asarray(pm.get_downbeats(), np.float64)
        except Exception as e:
            raise MidiError(path, f"cannot derive beats ({type(e).__name__}: {e})") from e
    if len(beats) == 0 or len(downbeats) == 0:
        raise MidiError(path, "empty beat grid")
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

    Returns (pieces, failures); a file that fails is skipped and listed as (path, reason), for
    the caller to report (no warning as well). Names are the relative path without suffix,
    '/' -> '__' (a clash, e.g.
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
        except ValueError as e:  # returned, not warned: the caller reports each failure once
            failures.append((str(path), str(e)))
            continue
        used.add(name)
        pieces.append(piece)
    return pieces, failures
