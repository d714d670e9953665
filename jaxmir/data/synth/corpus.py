"""The embedded synthetic AUDIO corpus: music21's Bach chorales rendered with a SoundFont.

Per chorale `bach/bwvX` (named `bach__bwvX`), in the output folder:
    <name>.wav                mixture, 44.1 kHz mono, 16-bit
    <name>.vocals.wav         the soprano line on a voice program (52-54) with vibrato and drift
    <name>.accompaniment.wav  the other parts on random GM programs
    <name>.drums.wav          a procedural GM drum pattern on the beat grid (channel 10)
    <name>.labels.npz         exact labels (np.savez, no pickle; see below)
plus `corpus.json`: the manifest (pieces, per-piece durations and counts, a summary).

Labels (float64 unless noted; times in seconds from the audio's first sample):
    notes        (N, 5) onset, offset, MIDI pitch, velocity, GM program; vocal and accompaniment
                 notes, sorted by onset (drums are not in `notes`)
    drum_hits    (H, 2) time, GM percussion note (program 128 = `records.DRUM_PROGRAM`)
    beats, downbeats  (B,), (D,) from music21's measures through the piece's tempo map
    f0           (T, 2) time, Hz of the vocal line on a 10 ms grid from 0 (0 = silent); the pitch
                 bends (vibrato, drift, intonation) are included exactly as written to the MIDI
    melody_f0    (T, 2) the top voice; here the same as f0
    chords       (K, 2) start, end covering [0, duration]; `chord_labels` (K,) unicode Harte
                 labels in omnizart's 26 classes ("C#:maj", "A:min", "N", "X"); `chord_ids` (K,)
                 int64 class indices (`chord_index`)
    meta         0-d unicode JSON: build config and the random arrangement of the piece

How a piece is made (all draws from generators seeded by (seed, chorale id)):
- tempo map, velocity curves and +-10 ms onset jitter from `chorales.py` (random base tempo,
  smooth curve, step change, ritardando, fermata holds); transposition uniform in -5..+5;
- programs: the vocal line on 52, 53 or 54; each other part on one of omnizart's 11
  note-stream programs (p = 0.25: all other parts share one program);
- MIDI times are rounded to 1 ms (the files are written at 1 ms per tick); note labels carry
  the rounded times, beats/downbeats/chords the exact tempo-map times;
- the vocal line is made monophonic (highest note wins, earlier notes end at the next onset);
  pitch bends every 5 ms carry vibrato (5-7 Hz, +-20-60 cents, faded in after each onset),
  slow drift (+-5-20 cents) and a per-note intonation offset (sd 5 cents);
- drums: kick on downbeats/strong beats, snare/side stick/clap on backbeats, closed hat, ride,
  pedal hat or maracas on beats or subdivisions, open hat pickups, extra kicks, ghost notes,
  tom/snare fills before phrase ends with a crash after, an optional late entry and a break;
  every GM note used falls in one of omnizart's 13 drum classes (`drum_class`);
- audio: stems normalised to -20 dBFS RMS and levelled (vocals +-3 dB, accompaniment -6..0 dB,
  drums -12..-2 dB), then per stem a random EQ and a shared synthetic room (p = 0.8,
  RT60 0.2-1.5 s, per-stem wet mix); mixture = sum of the written stems + noise (white, pink or
  brown) at a random SNR, one global gain (peak <= 0.95). Strength 1 on train, 0.5 on val/test,
  0 (dry stems, no noise) with augment=False.

Splits come from `chorales.split_of`. Train pieces draw from `seed`; val and test pieces draw
from the fixed `EVAL_SEED` whatever `seed` is, so evaluation audio is the same across runs.
music21's string quartets (Haydn, Mozart, Beethoven), Palestrina and Monteverdi are never used
(`RESERVED_FOR_EVAL`).

Rendering is deterministic: the same seed gives identical labels and identical audio.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import io
import json
import math
import time
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from jaxmir.data.audio import chunk_truncation
from jaxmir.data.cache import DISK_FULL, atomic_write_bytes
from jaxmir.data.datasets._common import warn_skip
from jaxmir.data.features import cqt as _cqt
from jaxmir.data.records import AnnotationError, AudioPiece
from jaxmir.data.synth import augment as aug
from jaxmir.data.synth.chorales import (
    ONSET_JITTER_S,
    _collect_notes,
    _metrical_grid,
    _parts,
    _piece_name,
    _tempo_map,
    _velocities,
    chorale_ids,
    split_of,
)
from jaxmir.data.synth.render import soundfont_digest
from jaxmir.runtime import WorkerPool

VERSION = 1
SR = 44100
FRAME_S = 0.01  # f0 hop
BEND_STEP_MS = 5  # pitch-bend update period of the vocal line
TAIL_S = 1.5  # audio kept after the last note/hit
DEFAULT_PIECES = 48  # the demo size: first 48 chorales (40 train, 4 val, 4 test)
EVAL_SEED = 20_240_601  # val/test pieces ignore the build seed
MANIFEST = "corpus.json"
STEMS = ("vocals", "accompaniment", "drums")

VOICE_PROGRAMS = (52, 53, 54)  # Choir Aahs, Voice Oohs, Synth Voice
OMNIZART_PROGRAMS = (0, 6, 40, 41, 42, 43, 60, 68, 70, 71, 73)  # music note-stream classes
# Every pitched General MIDI program but timpani (47), orchestra hit (55), the sound effects
# (96-103) and the percussive ones (112-127): `Variety.programs = "wide"`.
WIDE_PROGRAMS = (*range(0, 47), *range(48, 55), *range(56, 96), *range(104, 112))
PROGRAM_SETS = ("omnizart", "wide")
PIANO_PROGRAMS = (0, 1, 2, 3, 4, 5, 6, 7)  # the soundfont's keyboards, for the piano subset
PIANO_PROGRAM_P = (0.4, 0.15, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05)
DRUM_KITS = (0, 8, 16, 24, 25, 40, 48)  # the GM kits TimGM6mb.sf2 has
TRANSPOSE_RANGE = (-5, 5)
ENSEMBLE_PROB = 0.25

# Never rendered: held back for independent evaluation (music21 corpus folders).
RESERVED_FOR_EVAL = ("beethoven/", "haydn/", "mozart/", "palestrina/", "monteverdi/")

_MIN_NOTE_MS = 5
_DRUM_NOTE_MS = 50
_BEND_MAX = 8191
_BEND_RANGE_CENTS = 200.0  # GM default pitch-bend range, +-2 semitones


PROCEDURAL_KINDS = ("texture", "random")  # ids "texture/0003", "random/0012"
# Other music21 works (beside the chorales), interleaved folder by folder so that the first
# few span many composers and styles. Multi-tune song books, demos and exercises are left out.
WORK_FOLDERS = (
    "joplin", "schumann_robert", "schumann_clara", "schubert", "chopin", "handel", "corelli",
    "cpebach", "beach", "johnson_j_r", "liliuokalani", "lusitano", "josquin", "trecento",
    "ciconia", "luca", "weber", "verdi", "leadSheet", "ryansMammoth", "schoenberg", "webern",
)  # fmt: skip
SUBSETS = ("mixed", "piano", "both")
FIT_SPLITS = ("train", "val")  # the splits `Variety.part_eq` and `.rt60_max` play in
SOUNDFONT_VARIANT = "sf_"  # prefix of the test renderings with `Variety.test_soundfont`


@dataclasses.dataclass(frozen=True)
class Variety:
    """Timbre and musical variety of a corpus (None on a job: the original chorale corpus).

    voices: the probability that a part (mixed) or a piece (piano) is played by one of the
    numpy synthesis voices (`voices.py`) instead of the soundfont. holdout: an engine that no
    train or val piece uses; every test piece then gets one more rendering with only that
    engine (split `test_heldout`). velocity: wide per-piece velocity ranges. piece_seconds:
    the length of procedural pieces and the cut of other works. test_soundfont: a SoundFont 2
    file that only the test pieces hear: every test piece gets two more renderings played by it
    alone, no numpy voices (splits `test_sf_piano`, `test_sf_mixed`). programs: the GM
    programs the soundfont plays in mixed train and val pieces: omnizart's 11 instrument classes
    ("omnizart", what its stream label modes name) or every pitched one (`WIDE_PROGRAMS`,
    "wide": more sampled timbres); test pieces keep omnizart's, so test splits stay the same.
    part_eq: the probability that a soundfont part of a train or val piece is rendered alone
    and through its own random instrument body (`augment.timbre_eq_sos`): the soundfont's
    instruments as another maker or another microphone would give them; test pieces never.
    rt60_max: the longest reverberation time (s) of a train or val piece's room, drawn uniform
    from 0.2 s (None: `augment.RT60_RANGE`, 0.2-1.5 s, as test pieces always)."""

    voices: float = 0.5
    holdout: str | None = "fm"
    velocity: bool = True
    piece_seconds: float = 40.0
    test_soundfont: str | None = None
    programs: str = "omnizart"
    part_eq: float = 0.0
    rt60_max: float | None = None

    def rt60_range(self, split: str) -> tuple[float, float]:
        """The reverberation times a piece of `split` draws its room's from."""
        if self.rt60_max is None or split not in FIT_SPLITS:
            return aug.RT60_RANGE
        return (aug.RT60_RANGE[0], float(self.rt60_max))

    def program_pool(self, split: str) -> tuple[int, ...]:
        """The GM programs a mixed piece of `split` draws its parts from."""
        wide = self.programs == "wide" and split in ("train", "val")
        return WIDE_PROGRAMS if wide else OMNIZART_PROGRAMS

    def engines(self, split: str) -> tuple[str, ...]:
        from jaxmir.data.synth.voices import ENGINES

        if split == "test_heldout":
            return (self.holdout,) if self.holdout else ENGINES
        return tuple(e for e in ENGINES if e != self.holdout)


def work_ids() -> list[str]:
    """music21 corpus paths of the other works (see `WORK_FOLDERS`), reserved ones never."""
    from music21 import corpus

    by_folder: dict[str, list[str]] = {f: [] for f in WORK_FOLDERS}
    for p in corpus.getCorePaths():
        s = str(p).replace("\\", "/")
        rel = s[s.rfind("/corpus/") + len("/corpus/") :]
        head = rel.split("/", 1)[0]
        if head in by_folder and not is_reserved(rel):
            by_folder[head].append(rel)
    lists = [sorted(v) for v in by_folder.values()]
    out = []
    for i in range(max((len(v) for v in lists), default=0)):
        out.extend(v[i] for v in lists if i < len(v))
    return out


def is_reserved(corpus_id: str) -> bool:
    """True for music21 works reserved for independent evaluation."""
    cid = corpus_id.replace("\\", "/").lower()
    return any(cid.startswith(p) or f"/{p}" in cid for p in RESERVED_FOR_EVAL)


# --------------------------------------------------------------------------------------------
# Chord classes (omnizart: 12 major + 12 minor + N + X)
# --------------------------------------------------------------------------------------------

PITCH_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
CHORD_LABELS = (
    tuple(f"{r}:maj" for r in PITCH_NAMES) + tuple(f"{r}:min" for r in PITCH_NAMES) + ("N", "X")
)
N_CHORD, X_CHORD = 24, 25
_LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
# extensions (semitones above the root) a triad may carry and still count as maj / min,
# as in the usual majmin reduction: sevenths, sixths (maj only), ninths, elevenths (min only)
_EXTENSIONS = {"maj": frozenset({2, 9, 10, 11}), "min": frozenset({2, 5, 10})}
_THIRDS = (("maj", 4), ("min", 3))


def chord_class(pitch_classes: Iterable[int], bass: int | None = None) -> str:
    """Reduce a set of sounding pitch classes (0 = C) to omnizart's classes, in Harte syntax.

    'N' for silence; 'R:maj' / 'R:min' when the set is a major/minor triad on R, possibly with a
    seventh, sixth (maj), ninth or eleventh (min) added, or a seventh chord without its fifth;
    a bare third (two pitch classes) counts only over its root in the `bass`; everything else
    ('X'): single notes, open fifths, diminished, augmented, suspended, half-diminished...
    Ties (C-E-G-A = C6 or Am7) go to the root in the bass, then to the reading with a seventh.
    """
    pcs = {int(p) % 12 for p in pitch_classes}
    if not pcs:
        return "N"
    bass = None if bass is None else int(bass) % 12
    best: tuple | None = None
    for root in sorted(pcs):
        rel = {(p - root) % 12 for p in pcs}
        for quality, third in _THIRDS:
            if third not in rel:
                continue
            has_fifth = 7 in rel
            ext = rel - {0, third, 7}
            if not ext <= _EXTENSIONS[quality]:
                continue
            if not has_fifth:
                if ext - {10, 11}:
                    continue  # without its fifth only a seventh may be added
                if len(rel) == 2 and bass != root:
                    continue  # a bare third: only in root position
            key = (len(ext), not has_fifth, bass != root, len(ext - {10, 11}), root, quality)
            if best is None or key < best:
                best = key
    if best is None:
        return "X"
    return f"{PITCH_NAMES[best[4]]}:{best[5]}"


def _root_pc(name: str) -> int:
    if not name or name[0].upper() not in _LETTERS:
        raise ValueError(f"bad chord root {name!r}")
    pc = _LETTERS[name[0].upper()]
    for acc in name[1:]:
        if acc == "#":
            pc += 1
        elif acc == "b":
            pc -= 1
        else:
            raise ValueError(f"bad chord root {name!r}")
    return pc % 12


def chord_index(label: str) -> int:
    """omnizart's class index of a reduced Harte label: 'C:maj'..'B:maj' -> 0-11,
    'C:min'..'B:min' -> 12-23, 'N' -> 24, 'X' -> 25. Flats and bass inversions are accepted
    ('Bb:min/b3' -> 22), a bare root means major. Other qualities raise ValueError: reduce them
    with `chord_class` first."""
    label = label.strip()
    if label == "N":
        return N_CHORD
    if label == "X":
        return X_CHORD
    root, _, quality = label.partition(":")
    quality = quality.split("/")[0] or "maj"
    root = root.split("/")[0]
    pc = _root_pc(root)
    if quality == "maj":
        return pc
    if quality == "min":
        return 12 + pc
    raise ValueError(f"chord {label!r} is not one of omnizart's classes (maj, min, N, X)")


# --------------------------------------------------------------------------------------------
# Drum classes (omnizart's 13-class grouping of GM percussion notes)
# --------------------------------------------------------------------------------------------

# One table for the whole project: the drum task's features own it.
DRUM_CLASSES = _cqt.DRUM_CLASSES
DRUM_CLASS_NOTES = _cqt.CLASS_NOTES


def drum_class(note: int) -> int:
    """Index into `DRUM_CLASSES` of a GM percussion note, -1 when outside the 13 classes."""
    return _cqt.GM_TO_CLASS.get(int(note), -1)


# --------------------------------------------------------------------------------------------
# One piece: arrangement and labels
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Job:
    chorale_id: str
    split: str
    out: str
    seed: int
    max_seconds: float | None
    augment: bool
    instruments: str = "mixed"  # mixed | piano (every part on program 0, no drums) | both
    variety: Variety | None = None  # timbre and dynamics variety (None: the original corpus)
    variant: str = ""  # "" | piano | mixed | heldout | sf_piano | sf_mixed: a test rendering

    @property
    def name(self) -> str:
        return _piece_name(self.chorale_id) + (f"__{self.variant}" if self.variant else "")

    @property
    def kind(self) -> str:
        """chorale | work (another music21 score) | texture | random (procedural)."""
        head = self.chorale_id.split("/", 1)[0]
        if head in PROCEDURAL_KINDS:
            return head
        return "chorale" if self.chorale_id.startswith("bach/") else "work"

    @property
    def effective_seed(self) -> int:
        return int(self.seed) if self.split == "train" else EVAL_SEED

    @property
    def strength(self) -> float:
        if not self.augment:
            return 0.0
        return 1.0 if self.split == "train" else 0.5

    def config(self) -> dict:
        out = {
            "version": VERSION,
            "seed": self.effective_seed,
            "max_seconds": self.max_seconds,
            "augment": self.augment,
            "instruments": self.instruments,
            "sr": SR,
        }
        if self.variety is not None:  # absent for the original corpus: its pieces stay valid
            variety = dataclasses.asdict(self.variety)
            del variety["test_soundfont"]  # only its own renderings depend on it
            if variety["programs"] == "omnizart":  # as before the choice: corpora stay valid
                del variety["programs"]
            if not variety["part_eq"] or self.split not in FIT_SPLITS:
                del variety["part_eq"]  # where it plays no part, pieces stay valid
            if variety["rt60_max"] is None or self.split not in FIT_SPLITS:
                del variety["rt60_max"]  # as part_eq
            out["variety"] = variety
            out["variant"] = self.variant
            if self.soundfont is not None:
                out["soundfont"] = soundfont_digest(self.soundfont)
        return out

    @property
    def soundfont(self) -> str | None:
        """The soundfont this rendering plays (None: the corpus's own, TimGM6mb)."""
        if self.variant.startswith(SOUNDFONT_VARIANT) and self.variety is not None:
            return self.variety.test_soundfont
        return None


def piece_files(root: Path, name: str) -> dict[str, Path]:
    """The files of one piece: 'mixture', the stems and 'labels'."""
    root = Path(root)
    out = {"mixture": root / f"{name}.wav"}
    out.update({s: root / f"{name}.{s}.wav" for s in STEMS})
    out["labels"] = root / f"{name}.labels.npz"
    return out


def _streams(seed: int, chorale_id: str) -> dict[str, np.random.Generator]:
    ss = np.random.SeedSequence([int(seed) % 2**63, zlib.crc32(chorale_id.encode()), 0xA0D10])
    names = ("tempo", "arrange", "voice", "drums", "audio", "timbre", "score", "part_eq")
    # append only: a name's stream stays the same whatever follows it
    return {n: np.random.default_rng(s) for n, s in zip(names, ss.spawn(len(names)), strict=True)}


def _vocal_part(score) -> int:
    names = [(p.partName or "").lower() for p in _parts(score)]
    for i, n in enumerate(names):
        if "soprano" in n:
            return i
    return 0


def _fix_overlaps(on: np.ndarray, off: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Per key (channel * 128 + pitch), end each note no later than the next onset; returns the
    kept mask (notes that end up empty, or duplicate onsets, are dropped). Edits `off` in place."""
    order = np.lexsort((on, key))
    for a, b in zip(order[:-1], order[1:], strict=True):
        if key[a] == key[b]:
            off[a] = min(off[a], on[b])
    return off - on >= 1


def _monophonic(on: np.ndarray, off: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """Indices of a monophonic line: at equal onsets the highest pitch; each note ends by the
    next onset. Edits `off` in place."""
    order = np.lexsort((-pitch, on))
    kept: list[int] = []
    for i in order:
        if kept and on[i] == on[kept[-1]]:
            continue
        if kept:
            off[kept[-1]] = min(off[kept[-1]], on[i])
        kept.append(int(i))
    idx = np.asarray(kept, np.int64)
    return idx[off[idx] - on[idx] >= 1]


def _vocal_bends(on, off, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Pitch-bend times (ms) and 14-bit values for the vocal notes (sorted, monophonic)."""
    rate = rng.uniform(5.0, 7.0)
    depth = rng.uniform(20.0, 60.0)
    drift_amp = rng.uniform(5.0, 20.0)
    k = 3
    d_per = rng.uniform(2.0, 10.0, size=k)
    d_phase = rng.uniform(0.0, 2 * math.pi, size=k)
    d_w = rng.dirichlet(np.ones(k))
    n = len(on)
    n_rate = np.clip(rate + rng.normal(0.0, 0.2, size=n), 5.0, 7.0)
    n_depth = np.clip(depth * rng.uniform(0.85, 1.15, size=n), 20.0, 60.0)
    n_delay = rng.uniform(0.05, 0.2, size=n)
    n_fade = rng.uniform(0.1, 0.25, size=n)
    n_phase = rng.uniform(0.0, 2 * math.pi, size=n)
    n_offset = np.clip(rng.normal(0.0, 5.0, size=n), -15.0, 15.0)
    meta = {"rate_hz": rate, "depth_cents": depth, "drift_cents": drift_amp}
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), meta
    start = int(on[0]) - int(on[0]) % BEND_STEP_MS
    t_ms = np.arange(start, int(off[-1]) + BEND_STEP_MS, BEND_STEP_MS, dtype=np.int64)
    t = t_ms / 1000.0
    # the note in charge of each bend: the last one started (its release keeps its bend)
    j = np.clip(np.searchsorted(on, t_ms, side="right") - 1, 0, n - 1)
    since = t - on[j] / 1000.0
    fade = np.clip((since - n_delay[j]) / n_fade[j], 0.0, 1.0)
    vib = n_depth[j] * fade * np.sin(2 * np.pi * n_rate[j] * np.maximum(since, 0.0) + n_phase[j])
    drift = drift_amp * (d_w * np.sin(2 * np.pi * t[:, None] / d_per + d_phase)).sum(axis=1)
    cents = vib + drift + n_offset[j]
    values = np.clip(np.round(cents / _BEND_RANGE_CENTS * 8192.0), -8192, _BEND_MAX)
    return t_ms, values.astype(np.int64), meta


def _f0_track(on, off, pitch, bend_t, bend_v, n_frames: int) -> np.ndarray:
    """(T, 2) time, Hz on the 10 ms grid: the vocal note sounding at each frame with the bend in
    effect there (the last bend event at or before the frame); 0 where no note sounds."""
    frame_ms = np.arange(n_frames, dtype=np.int64) * int(round(FRAME_S * 1000))
    hz = np.zeros(n_frames, np.float64)
    if len(on):
        j = np.searchsorted(on, frame_ms, side="right") - 1
        ok = j >= 0
        jj = np.where(ok, j, 0)
        voiced = ok & (frame_ms < off[jj])
        b = np.searchsorted(bend_t, frame_ms, side="right") - 1
        bend = np.where(b >= 0, bend_v[np.clip(b, 0, None)], 0) if len(bend_t) else 0
        semis = pitch[jj] + bend * (_BEND_RANGE_CENTS / 100.0) / 8192.0
        hz = np.where(voiced, 440.0 * 2.0 ** ((semis - 69.0) / 12.0), 0.0)
    return np.stack([frame_ms / 1000.0, hz], axis=1)


def _beat_roles(grid) -> list[dict]:
    """Per beat (quarter-length grid): position in its bar, beats in that bar, subdivisions."""
    beats = grid.beats_q
    downs = grid.downbeats_q
    roles = []
    for i, b in enumerate(beats):
        nxt = beats[i + 1] if i + 1 < len(beats) else b + grid.beat_q
        length = float(nxt - b)
        d = np.searchsorted(downs, b + 1e-6, side="right") - 1
        if d < 0:
            pos, n_bar, bar = -1, 0, -1  # pickup
        else:
            bar_start = downs[d]
            bar_end = downs[d + 1] if d + 1 < len(downs) else np.inf
            in_bar = beats[(beats >= bar_start - 1e-6) & (beats < bar_end - 1e-6)]
            pos = int(np.searchsorted(in_bar, b - 1e-6))
            n_bar, bar = len(in_bar), int(d)
        sub = 3 if abs(length - 1.5) < 1e-6 or abs(length - 0.75) < 1e-6 else 2
        roles.append({"q": float(b), "len": length, "pos": pos, "n": n_bar, "bar": bar, "sub": sub})
    return roles


def _is_kick_beat(pos: int, n: int) -> bool:
    return pos == 0 or (n == 4 and pos == 2) or (n >= 6 and n % 2 == 0 and pos == n // 2)


def _is_backbeat(pos: int, n: int) -> bool:
    if pos <= 0:
        return False
    return n == 3 or pos % 2 == 1


def _drum_pattern(grid, rng: np.random.Generator) -> tuple[list[tuple[float, int, float]], dict]:
    """(quarter-length position, GM note, velocity) hits and the pattern settings."""
    roles = _beat_roles(grid)
    n_bars = len(grid.downbeats_q)
    kit = int(rng.choice(DRUM_KITS))
    back_note = int(rng.choice([38, 40, 37, 39], p=[0.6, 0.1, 0.15, 0.15]))
    hat_choices = [42, 51, 44, 70]
    hat_p = [0.6, 0.2, 0.1, 0.1]
    hat_note = int(rng.choice(hat_choices, p=hat_p))
    hat_sub = bool(rng.uniform() < 0.6)  # hats on subdivisions (else on beats)
    open_hat = bool(rng.uniform() < 0.4)
    start_bar = int(rng.integers(1, 3)) if rng.uniform() < 0.3 else 0
    break_bar = int(rng.integers(1, n_bars - 1)) if n_bars > 3 and rng.uniform() < 0.2 else -1
    fill_prob = rng.uniform(0.2, 0.6)
    extra_kick_p = rng.uniform(0.0, 0.4)
    ghost_p = rng.uniform(0.0, 0.3)
    settings = {
        "kit": kit,
        "backbeat_note": back_note,
        "hat_note": hat_note,
        "hat_subdivisions": hat_sub,
        "open_hat": open_hat,
        "start_bar": start_bar,
        "break_bar": break_bar,
    }
    hits: list[tuple[float, int, float]] = []

    def hit(q: float, note: int, lo: float, hi: float) -> None:
        hits.append((q, note, float(np.clip(rng.uniform(lo, hi) + rng.normal(0, 4), 1, 127))))

    last_bar = n_bars - 1
    # bars that get a fill on their last beat(s): phrase ends (every 4th bar) and the bar
    # before the final one
    fill_bars = {b for b in range(n_bars - 1) if (b - start_bar) % 4 == 3 or b == last_bar - 1}
    fill_bars = {b for b in sorted(fill_bars) if b >= start_bar and rng.uniform() < fill_prob}
    crash_bars = {start_bar, last_bar} | {b + 1 for b in fill_bars}
    cur_hat = hat_note
    for r in roles:
        bar, pos, n, q, length, sub = r["bar"], r["pos"], r["n"], r["q"], r["len"], r["sub"]
        if bar == -1:
            if start_bar == 0 and rng.uniform() < 0.5:
                hit(q, 42 if cur_hat == 51 else cur_hat, 50, 80)  # pickup: a light hat
            continue
        if bar < start_bar or bar == break_bar:
            continue
        if bar == last_bar:  # the held final chord: one last hit
            if pos == 0:
                hit(q, 36, 100, 120)
                hit(q, int(rng.choice([49, 57])), 100, 125)
            continue
        if pos == 0 and bar % 4 == start_bar % 4 and rng.uniform() < 0.3:
            cur_hat = int(rng.choice(hat_choices, p=hat_p))  # a new section: new time keeper
        fill_len = 1 if rng.uniform() < 0.7 else 2
        in_fill = bar in fill_bars and pos >= n - fill_len
        if in_fill:
            step = length / (2 * sub)
            toms = [50, 48, 47, 45, 43, 41] if rng.uniform() < 0.6 else [38]
            for k in range(2 * sub):
                if rng.uniform() < 0.85:
                    note = toms[min(k * len(toms) // (2 * sub), len(toms) - 1)]
                    hit(q + k * step, note, 80, 115)
            continue
        if pos == 0 and bar in crash_bars:
            hit(q, int(rng.choice([49, 57])), 100, 125)
        if _is_kick_beat(pos, n):
            hit(q, 36 if rng.uniform() < 0.8 else 35, 95, 120)
        if _is_backbeat(pos, n):
            hit(q, back_note, 70 if back_note == 37 else 90, 100 if back_note == 37 else 120)
        steps = sub if hat_sub else 1
        for k in range(steps):
            last_off = open_hat and pos == n - 1 and k == steps - 1 and steps > 1
            note = 46 if last_off and cur_hat == 42 else cur_hat
            acc = 10.0 if k == 0 else 0.0
            hit(q + k * length / steps, note, 55 + acc, 85 + acc)
        for k in range(1, sub):  # variations on the off-beat subdivisions
            if rng.uniform() < extra_kick_p / n:
                hit(q + k * length / sub, 36, 80, 105)
            if rng.uniform() < ghost_p / n:
                hit(q + k * length / sub, 38, 25, 45)
    return hits, settings


def _chord_segments(score, transpose: int) -> list[tuple[float, float, str]]:
    """(start_q, end_q, label) from music21's chordify, equal neighbours merged, gaps as 'N'."""
    from music21 import chord as m21chord

    segs: list[list] = []
    for el in score.chordify().flatten().notesAndRests:
        a = float(el.offset)
        b = a + float(el.quarterLength)
        if b <= a:
            continue
        if isinstance(el, m21chord.Chord) and len(el.pitches):
            pcs = [(p.pitchClass + transpose) % 12 for p in el.pitches]
            label = chord_class(pcs, (el.bass().pitchClass + transpose) % 12)
        else:
            label = "N"
        if segs and a > segs[-1][1] + 1e-9:
            segs.append([segs[-1][1], a, "N"])
        if segs and segs[-1][2] == label and abs(segs[-1][1] - a) < 1e-9:
            segs[-1][1] = b
        else:
            segs.append([a, b, label])
    return [(float(a), float(b), str(lab)) for a, b, lab in segs]


@dataclasses.dataclass
class _Arranged:
    notes: np.ndarray  # (N, 5) with ms times in columns 0-1
    parts: np.ndarray  # (N,) part index per note
    vocal_part: int
    programs: list[int]
    drum_hits: np.ndarray  # (H, 3) ms time, note, velocity
    bend_t: np.ndarray
    bend_v: np.ndarray
    beats: np.ndarray
    downbeats: np.ndarray
    chords: list[tuple[float, float, str]]
    end_ms: int
    meta: dict


def _widen_velocities(vel: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map the chorale-style velocities (about 40-125) onto a random range inside 5-127."""
    lo = rng.uniform(5.0, 70.0)
    hi = rng.uniform(min(lo + 30.0, 127.0), 127.0)
    return np.clip(np.round(lo + (vel - 40.0) / 85.0 * (hi - lo)), 1.0, 127.0)


def _limit_ms(job: _Job) -> int | None:
    limits = [job.max_seconds]
    if job.variety is not None and job.kind != "chorale":
        limits.append(job.variety.piece_seconds)
    limits = [x for x in limits if x is not None]
    return int(round(min(limits) * 1000)) if limits else None


def _program_pool(job: _Job) -> tuple[int, ...]:
    if job.variety is None:
        return OMNIZART_PROGRAMS
    return job.variety.program_pool(job.split)


def _arrange(score, job: _Job, subset: str) -> _Arranged:
    """Arrange a score: tempo, velocities, programs (subset: mixed, or piano / heldout: one
    keyboard-like part set with no sung line and no drums), vocal bends and drums."""
    grid = _metrical_grid(score)
    notes = _collect_notes(score)
    rs = _streams(job.effective_seed, job.chorale_id)
    r = rs["tempo"]
    tmap = _tempo_map(grid, notes, r, True)
    on = tmap(notes.onset_q)
    off = tmap(notes.offset_q)
    vel = _velocities(notes, notes.onset_q / grid.bar_q, r)
    if job.variety is not None and job.variety.velocity:
        vel = _widen_velocities(vel, rs["score"])
    jit = r.uniform(-ONSET_JITTER_S, ONSET_JITTER_S, size=len(on))
    new_on = np.minimum(np.maximum(on + jit, 0.0), off - _MIN_NOTE_MS / 1000.0)
    on = np.where(new_on >= 0.0, new_on, on)

    ra = rs["arrange"]
    transpose = int(ra.integers(TRANSPOSE_RANGE[0], TRANSPOSE_RANGE[1] + 1))
    n_parts = max(len(_parts(score)), int(notes.part.max()) + 1)
    # a sung line only in chorales (a work's top part may hold chords: it keeps them)
    vocal = _vocal_part(score) if job.variety is None or job.kind == "chorale" else -1
    pool = _program_pool(job)
    if ra.uniform() < ENSEMBLE_PROB:
        programs = [int(ra.choice(pool))] * n_parts
    else:
        programs = [int(p) for p in ra.choice(pool, size=n_parts)]
    if vocal >= 0:
        programs[vocal] = int(ra.choice(VOICE_PROGRAMS))
    if subset != "mixed":
        programs = [0] * n_parts
    pitch = np.clip(notes.pitch + transpose, 0, 127)
    part = notes.part.copy()

    limit_ms = _limit_ms(job)
    on_ms = np.round(on * 1000).astype(np.int64)
    off_ms = np.round(off * 1000).astype(np.int64)
    if limit_ms is not None:
        keep = on_ms < limit_ms
        on_ms, off_ms, pitch, vel, part = (
            on_ms[keep],
            off_ms[keep],
            pitch[keep],
            vel[keep],
            part[keep],
        )
        off_ms = np.minimum(off_ms, limit_ms)
    is_voc = part == vocal
    # the vocal line: monophonic
    vi = np.flatnonzero(is_voc)
    v_on, v_off = on_ms[vi], off_ms[vi].copy()
    mono = _monophonic(v_on, v_off, pitch[vi])
    off_ms[vi] = v_off
    keep = ~is_voc
    keep[vi[mono]] = True
    on_ms, off_ms, pitch, vel, part = on_ms[keep], off_ms[keep], pitch[keep], vel[keep], part[keep]
    # one channel per part: no note may cut off a same-pitch note of its own part
    ok = _fix_overlaps(on_ms, off_ms, part * 128 + pitch.astype(np.int64))
    on_ms, off_ms, pitch, vel, part = on_ms[ok], off_ms[ok], pitch[ok], vel[ok], part[ok]
    order = np.lexsort((part, pitch, on_ms))
    on_ms, off_ms, pitch, vel, part = (a[order] for a in (on_ms, off_ms, pitch, vel, part))
    prog = np.asarray(programs, np.float64)[part]
    arr = np.stack([on_ms, off_ms, pitch, vel, prog], axis=1).astype(np.float64)

    is_voc = part == vocal
    bend_t, bend_v, vib_meta = _vocal_bends(on_ms[is_voc], off_ms[is_voc], rs["voice"])
    if subset != "mixed":  # a piano does not sing: no vibrato or drift
        bend_t, bend_v = bend_t[:0], bend_v[:0]

    hits_q, drum_meta = _drum_pattern(grid, rs["drums"])
    if subset != "mixed":
        hits_q = []
    rd = rs["drums"]
    if hits_q:
        hq = np.asarray([h[0] for h in hits_q])
        t_ms = tmap(hq) * 1000.0 + np.clip(rd.normal(0.0, 2.0, size=len(hq)), -6.0, 6.0)
        h = np.stack(
            [np.maximum(np.round(t_ms), 0), [h[1] for h in hits_q], [h[2] for h in hits_q]], 1
        )
        h = h[np.lexsort((h[:, 1], h[:, 0]))]
        _, first = np.unique(h[:, :2], axis=0, return_index=True)
        h = h[np.sort(first)]
        if limit_ms is not None:
            h = h[h[:, 0] < limit_ms]
    else:
        h = np.zeros((0, 3))

    beats = tmap(grid.beats_q)
    downbeats = tmap(grid.downbeats_q)
    chords = [
        (float(tmap(a)), float(tmap(b)), lab) for a, b, lab in _chord_segments(score, transpose)
    ]
    ends = [int(off_ms.max()) if len(off_ms) else 0]
    if len(h):
        ends.append(int(h[:, 0].max()) + _DRUM_NOTE_MS)
    end_ms = max(ends)
    if limit_ms is not None:
        end_ms = min(end_ms, limit_ms)
    meta = {
        "chorale_id": job.chorale_id,
        "split": job.split,
        "config": job.config(),
        "transpose": transpose,
        "vocal_part": vocal,
        "programs": programs,
        "vibrato": vib_meta,
        "drums": drum_meta,
    }
    return _Arranged(
        notes=arr,
        parts=part,
        vocal_part=vocal,
        programs=programs,
        drum_hits=h,
        bend_t=bend_t,
        bend_v=bend_v,
        beats=beats,
        downbeats=downbeats,
        chords=chords,
        end_ms=end_ms,
        meta=meta,
    )


# --------------------------------------------------------------------------------------------
# One piece: MIDI, audio, files
# --------------------------------------------------------------------------------------------


def _new_midi():
    import pretty_midi

    return pretty_midi.PrettyMIDI(resolution=1000, initial_tempo=60.0)  # 1 tick = 1 ms


def _midis(a: _Arranged, synth_parts: Iterable[int] = ()) -> dict[str, object]:
    """The soundfont's MIDI per stem; parts in `synth_parts` are left to the numpy voices."""
    import pretty_midi

    def note(row) -> pretty_midi.Note:
        return pretty_midi.Note(int(row[3]), int(row[2]), row[0] / 1000.0, row[1] / 1000.0)

    skip = set(synth_parts)
    vocals, accomp, drums = _new_midi(), _new_midi(), _new_midi()
    if a.vocal_part >= 0 and a.vocal_part not in skip:
        v = pretty_midi.Instrument(a.programs[a.vocal_part], name="vocals")
        v.notes = [note(row) for row in a.notes[a.parts == a.vocal_part]]
        v.pitch_bends = [
            pretty_midi.PitchBend(int(b), t / 1000.0)
            for t, b in zip(a.bend_t, a.bend_v, strict=True)
        ]
        vocals.instruments.append(v)
    for p, prog in enumerate(a.programs):
        if p == a.vocal_part or p in skip:
            continue
        inst = pretty_midi.Instrument(prog, name=f"part{p}")
        inst.notes = [note(row) for row in a.notes[a.parts == p]]
        if inst.notes:
            accomp.instruments.append(inst)
    d = pretty_midi.Instrument(a.meta.get("drums", {}).get("kit", 0), is_drum=True, name="drums")
    if len(a.drum_hits):
        h_on = a.drum_hits[:, 0].astype(np.int64)
        h_off = h_on + _DRUM_NOTE_MS
        keep = _fix_overlaps(h_on, h_off, a.drum_hits[:, 1].astype(np.int64))
        for t0, t1, row in zip(h_on[keep], h_off[keep], a.drum_hits[keep], strict=True):
            d.notes.append(pretty_midi.Note(int(row[2]), int(row[1]), t0 / 1000.0, t1 / 1000.0))
    drums.instruments.append(d)
    return {"vocals": vocals, "accompaniment": accomp, "drums": drums}


def _render_stem(pm, job: _Job, n: int, rng: np.random.Generator) -> tuple[np.ndarray, list]:
    """A stem's soundfont audio (n samples). With `Variety.part_eq` (train and val), each
    part drawn with that probability is rendered alone and through its own
    `augment.timbre_eq_sos`, its RMS kept; returns (audio, the names of the parts so treated)."""
    from jaxmir.data.synth.render import render_midi

    def render(midi) -> np.ndarray:
        return _fit(render_midi(midi, SR, tail_s=TAIL_S, soundfont=job.soundfont), n)

    p = job.variety.part_eq if job.variety is not None else 0.0
    drawn, rest = [], _new_midi()
    for inst in pm.instruments:
        gets_body = p > 0 and job.split in FIT_SPLITS and not inst.is_drum
        (drawn if gets_body and rng.uniform() < p else rest.instruments).append(inst)
    if not drawn:
        return render(pm), []
    out = render(rest) if rest.instruments else np.zeros(n, np.float32)
    for inst in drawn:
        alone = _new_midi()
        alone.instruments = [inst]
        x = render(alone)
        y = aug.apply_sos(x, aug.timbre_eq_sos(SR, rng))
        change_db = _rms_db(x) - _rms_db(y)
        out = out + y * np.float32(aug.db_to_gain(change_db) if np.isfinite(change_db) else 0.0)
    return out.astype(np.float32), [inst.name for inst in drawn]


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    return np.pad(x, (0, n - len(x))) if len(x) < n else x[:n]


def _rms_db(x: np.ndarray) -> float:
    p = float(np.mean(np.asarray(x, np.float64) ** 2)) if len(x) else 0.0
    return 10.0 * math.log10(p) if p > 1e-20 else -np.inf


def _produce(
    stems: dict[str, np.ndarray],
    rng: np.random.Generator,
    strength: float,
    rt60_range: tuple[float, float] = aug.RT60_RANGE,
):
    """Level, EQ and reverb the stems (a room whose RT60 is uniform in `rt60_range`); mixture =
    sum + noise; returns (mixture, stems, meta)."""
    gains = {
        "vocals": rng.uniform(-3.0, 3.0),
        "accompaniment": rng.uniform(-6.0, 0.0),
        "drums": rng.uniform(-12.0, -2.0),
    }
    out = {}
    for name, x in stems.items():
        level = _rms_db(x)
        g = gains[name] - 20.0 - level if np.isfinite(level) else 0.0
        out[name] = np.asarray(x, np.float32) * np.float32(aug.db_to_gain(g))
    meta: dict = {"gains_db": gains, "strength": strength}
    n = len(next(iter(out.values())))
    noise = np.zeros(n, np.float32)
    if strength > 0:
        for name in out:
            out[name] = aug.apply_sos(out[name], aug.random_eq_sos(SR, rng, strength))
        if rng.uniform() < 0.8:
            rt60 = float(rng.uniform(*rt60_range))
            ir = aug.room_impulse_response(SR, rng, rt60)
            wets = {}
            for name in out:
                wet = rng.uniform(0.05, 0.45) * min(strength, 1.0)
                wet *= 0.5 if name == "drums" else 1.0
                out[name] = aug.reverb(out[name], ir, wet)
                wets[name] = wet
            meta.update(rt60=rt60, wet=wets)
        lo_snr = aug.SNR_RANGE_DB[1] - (aug.SNR_RANGE_DB[1] - aug.SNR_RANGE_DB[0]) * strength
        snr = float(rng.uniform(lo_snr, aug.SNR_RANGE_DB[1]))
        color = aug.NOISE_COLORS[int(rng.integers(len(aug.NOISE_COLORS)))]
        noise = aug.noise_for_snr(aug.mix(out), snr, rng, color)
        meta.update(snr_db=snr, noise=color)
    g = aug.db_to_gain(rng.uniform(-6.0, 0.0))
    mixture = aug.mix(out) + noise
    peak = max([float(np.max(np.abs(v))) if len(v) else 0.0 for v in [mixture, *out.values()]])
    g = min(g, 0.95 / peak) if peak > 0 else g
    out = {k: (v * np.float32(g)).astype(np.float32) for k, v in out.items()}
    mixture = (aug.mix(out) + noise * np.float32(g)).astype(np.float32)
    meta["global_gain"] = g
    return mixture, out, meta


def _subset(job: _Job) -> str:
    """mixed | piano | heldout: how this piece is orchestrated."""
    if job.variant:
        return job.variant.removeprefix(SOUNDFONT_VARIANT)
    if job.instruments != "both":
        return job.instruments
    r = np.random.default_rng(zlib.crc32(f"{job.effective_seed}:{job.chorale_id}".encode()))
    return "piano" if r.uniform() < 0.5 else "mixed"


def _arrange_procedural(job: _Job, subset: str) -> _Arranged:
    """A texture or random piece (`textures.py`) as an arrangement (no sung line, no drums)."""
    from jaxmir.data.synth import textures

    rs = _streams(job.effective_seed, job.chorale_id)
    seconds = job.variety.piece_seconds if job.variety is not None else 30.0
    if job.max_seconds is not None:
        seconds = min(seconds, job.max_seconds)
    make = textures.texture_piece if job.kind == "texture" else textures.random_piece
    piece = make(rs["score"], seconds)
    limit = _limit_ms(job)
    n_parts = int(piece.notes[:, 4].max()) + 1 if len(piece.notes) else 1
    if subset == "mixed":
        programs = [int(p) for p in rs["arrange"].choice(_program_pool(job), size=n_parts)]
    else:
        programs = [0] * n_parts
    on_ms = np.round(piece.notes[:, 0] * 1000).astype(np.int64)
    off_ms = np.round(piece.notes[:, 1] * 1000).astype(np.int64)
    if limit is not None:
        keep = on_ms < limit
        piece_notes = piece.notes[keep]
        on_ms, off_ms = on_ms[keep], np.minimum(off_ms[keep], limit)
    else:
        piece_notes = piece.notes
    pitch = piece_notes[:, 2]
    part = piece_notes[:, 4].astype(np.int64)
    vel = piece_notes[:, 3]
    ok = _fix_overlaps(on_ms, off_ms, part * 128 + pitch.astype(np.int64))
    on_ms, off_ms, pitch, vel, part = on_ms[ok], off_ms[ok], pitch[ok], vel[ok], part[ok]
    order = np.lexsort((part, pitch, on_ms))
    on_ms, off_ms, pitch, vel, part = (a[order] for a in (on_ms, off_ms, pitch, vel, part))
    prog = np.asarray(programs, np.float64)[part]
    arr = np.stack([on_ms, off_ms, pitch, vel, prog], axis=1).astype(np.float64)
    chords = [(a, b, chord_class(pcs, bass)) for a, b, pcs, bass in piece.chords]
    end_ms = int(off_ms.max()) if len(off_ms) else 0
    meta = {
        "chorale_id": job.chorale_id,
        "split": job.split,
        "config": job.config(),
        "transpose": 0,
        "vocal_part": -1,
        "programs": programs,
        "score": piece.meta,
    }
    empty = np.zeros(0, np.int64)
    return _Arranged(
        notes=arr,
        parts=part,
        vocal_part=-1,
        programs=programs,
        drum_hits=np.zeros((0, 3)),
        bend_t=empty,
        bend_v=empty,
        beats=piece.beats,
        downbeats=piece.downbeats,
        chords=chords,
        end_ms=end_ms,
        meta=meta,
    )


def _choose_voices(a: _Arranged, job: _Job, subset: str) -> dict[int, object]:
    """part -> `voices.Voice` for the parts the numpy voices play (the rest: the soundfont).

    Mixed: each part but the sung line with probability `variety.voices`. Piano: the whole
    piece with that probability, else one of the soundfont's keyboards (programs 0-7; the
    labels keep program 0). Heldout: every part on the held-out engine. A rendering with the
    test soundfont draws as the others but plays no voice."""
    if job.variety is None:
        return {}
    from jaxmir.data.synth.voices import random_voice

    p_voice = 0.0 if job.soundfont is not None else job.variety.voices
    r = _streams(job.effective_seed, job.chorale_id)["timbre"]
    engines = job.variety.engines("test_heldout" if subset == "heldout" else job.split)
    parts = sorted({int(p) for p in a.parts})
    out: dict[int, object] = {}
    if subset == "heldout":
        for p in parts:
            out[p] = random_voice(engines[int(r.integers(len(engines)))], r)
    elif subset == "piano":
        if r.uniform() < p_voice:
            voice = random_voice(engines[int(r.integers(len(engines)))], r)
            out = {p: voice for p in parts}
        else:
            keyboard = int(r.choice(PIANO_PROGRAMS, p=PIANO_PROGRAM_P))
            a.programs[:] = [keyboard] * len(a.programs)  # the MIDI's; labels keep 0
    else:
        for p in parts:
            if p != a.vocal_part and r.uniform() < p_voice:
                out[p] = random_voice(engines[int(r.integers(len(engines)))], r)
    return out


def _render_voices(a: _Arranged, voices: dict[int, object], n: int, seed_rng) -> dict:
    """The numpy voices' audio per stem (vocals / accompaniment)."""
    from jaxmir.data.synth.voices import render_notes

    out = {"vocals": np.zeros(n, np.float32), "accompaniment": np.zeros(n, np.float32)}
    for p, voice in voices.items():
        rows = a.notes[a.parts == p]
        if not len(rows):
            continue
        notes = np.stack([rows[:, 0] / 1000.0, rows[:, 1] / 1000.0, rows[:, 2], rows[:, 3]], 1)
        stem = "vocals" if p == a.vocal_part else "accompaniment"
        out[stem] += render_notes(voice, notes, SR, n, seed_rng)
    return out


def _synthesize(job: _Job) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Render one piece: ({'mixture', stems...}: audio), labels for the .npz."""
    subset = _subset(job)
    if job.kind in PROCEDURAL_KINDS:
        a = _arrange_procedural(job, subset)
    else:
        from music21 import corpus

        a = _arrange(corpus.parse(job.chorale_id, forceSource=True), job, subset)
    voices = _choose_voices(a, job, subset)
    n = int(round((a.end_ms / 1000.0 + TAIL_S) * SR))
    duration = n / SR
    midis = _midis(a, voices)
    eq_rng = _streams(job.effective_seed, job.chorale_id)["part_eq"]
    stems, bodies = {}, []
    for k, pm in midis.items():
        stems[k], names = _render_stem(pm, job, n, eq_rng)
        bodies += names
    if bodies:
        a.meta["part_eq"] = bodies
    if voices:
        r = _streams(job.effective_seed, job.chorale_id)["timbre"]
        for k, x in _render_voices(a, voices, n, r).items():
            stems[k] = stems[k] + x
        a.meta["voices"] = {str(p): v.to_json() for p, v in voices.items()}
    a.meta["subset"] = subset
    if subset != "mixed":
        a.notes[:, 4] = 0  # piano-subset labels: program 0 whatever keyboard played them
    rng_audio = _streams(job.effective_seed, job.chorale_id)["audio"]  # untouched by _arrange
    rooms = job.variety.rt60_range(job.split) if job.variety is not None else aug.RT60_RANGE
    mixture, stems, prod_meta = _produce(stems, rng_audio, job.strength, rooms)

    notes = a.notes.copy()
    notes[:, :2] /= 1000.0
    n_frames = int(math.floor(duration / FRAME_S + 1e-9)) + 1
    voc = a.parts == a.vocal_part
    f0 = _f0_track(
        a.notes[voc, 0].astype(np.int64),
        a.notes[voc, 1].astype(np.int64),
        a.notes[voc, 2],
        a.bend_t,
        a.bend_v,
        n_frames,
    )
    limit_ms = _limit_ms(job)
    limit = duration if limit_ms is None else min(duration, limit_ms / 1000.0)
    beats = a.beats[a.beats < limit - 1e-9]
    downbeats = a.downbeats[a.downbeats < limit - 1e-9]
    chords = _clip_chords(a.chords, limit, duration)
    labels_txt = [c[2] for c in chords]
    meta = dict(a.meta, audio=prod_meta, duration_s=duration, sr=SR)
    labels = {
        "notes": notes,
        "drum_hits": np.stack([a.drum_hits[:, 0] / 1000.0, a.drum_hits[:, 1]], 1)
        if len(a.drum_hits)
        else np.zeros((0, 2)),
        "beats": np.asarray(beats, np.float64),
        "downbeats": np.asarray(downbeats, np.float64),
        "f0": f0,
        "melody_f0": f0.copy(),
        "chords": np.asarray([[c[0], c[1]] for c in chords], np.float64).reshape(-1, 2),
        "chord_labels": np.asarray(labels_txt, dtype=np.str_),
        "chord_ids": np.asarray([chord_index(c) for c in labels_txt], np.int64),
        "meta": np.asarray(json.dumps(meta, sort_keys=True, default=_json_default), dtype=np.str_),
    }
    audio = {"mixture": mixture, **stems}
    return audio, labels


def _clip_chords(chords, limit: float, duration: float) -> list[tuple[float, float, str]]:
    out: list[tuple[float, float, str]] = []
    for a, b, lab in chords:
        a, b = max(a, 0.0), min(b, limit)
        if b - a <= 1e-9:
            continue
        if out and a > out[-1][1] + 1e-9:
            out.append((out[-1][1], a, "N"))
        out.append((a, b, lab))
    if not out or out[0][0] > 1e-9:
        out.insert(0, (0.0, out[0][0] if out else duration, "N"))
    if out[-1][1] < duration - 1e-9:
        if out[-1][2] == "N":
            out[-1] = (out[-1][0], duration, "N")
        else:
            out.append((out[-1][1], duration, "N"))
    return out


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _write_wav(path: Path, x: np.ndarray) -> None:
    """Written whole or not at all, no temporary file left (a full disk left them)."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(x, -1.0, 1.0), SR, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buffer.getvalue())


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _load_labels(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _entry(job: _Job, labels: dict[str, np.ndarray]) -> dict:
    meta = json.loads(str(labels["meta"]))
    notes = labels["notes"]
    voiced = float(np.count_nonzero(labels["f0"][:, 1] > 0) * FRAME_S)
    files = piece_files(Path(job.out), job.name)
    return {
        "name": job.name,
        "chorale_id": job.chorale_id,
        "split": job.split,
        "duration_s": round(float(meta["duration_s"]), 6),
        "music_s": round(float(notes[:, 1].max()) if len(notes) else 0.0, 6),
        "voiced_s": round(voiced, 6),
        "notes": int(len(notes)),
        "vocal_notes": int(np.count_nonzero(np.isin(notes[:, 4], VOICE_PROGRAMS))),
        "beats": int(len(labels["beats"])),
        "downbeats": int(len(labels["downbeats"])),
        "chords": int(np.count_nonzero(labels["chord_labels"] != "N")),
        "drum_hits": int(len(labels["drum_hits"])),
        "transpose": meta["transpose"],
        "programs": meta["programs"],
        "files": {k: p.name for k, p in files.items()},
    }


def _finished_labels(job: _Job) -> dict[str, np.ndarray] | None:
    """The labels of a complete piece built with this job's config, else None."""
    files = piece_files(Path(job.out), job.name)
    if not all(p.is_file() for p in files.values()):
        return None
    if any(chunk_truncation(p) for p in files.values() if p.suffix == ".wav"):
        return None  # cut short (a full disk, a copy): rendered again, not featurised forever
    try:
        labels = _load_labels(files["labels"])
        meta = json.loads(str(labels["meta"]))
    except Exception:
        return None
    return labels if meta.get("config") == job.config() else None


def _build_one(job: _Job) -> tuple[dict, bool]:
    """Build one piece unless it is finished; (manifest entry, whether it was built)."""
    labels = _finished_labels(job)
    if labels is not None:
        return _entry(job, labels), False
    audio, labels = _synthesize(job)
    files = piece_files(Path(job.out), job.name)
    for key in ("mixture", *STEMS):
        _write_wav(files[key], audio[key])
    # labels last: they carry the config, so a half-written rebuild never passes as finished
    _write_npz(files["labels"], labels)
    return _entry(job, labels), True


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------


def select_chorales(
    n_pieces: int | None = None,
    ids: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> list[tuple[str, str]]:
    """(chorale id, split) for the first `n_pieces` of `ids` (default: `chorale_ids()`)."""
    ids = list(chorale_ids() if ids is None else ids)
    if n_pieces is not None:
        if n_pieces < 0:
            raise ValueError(f"n_pieces must be >= 0, got {n_pieces}")
        ids = _first_with_every_split(ids, n_pieces, val_fraction, test_fraction)
    for cid in ids:
        if is_reserved(cid):
            raise ValueError(f"{cid} is reserved for independent evaluation (RESERVED_FOR_EVAL)")
    return [(cid, split_of(cid, val_fraction, test_fraction)) for cid in ids]


def select_pieces(
    n_pieces: int | None,
    ids: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    works: int = 0,
    textures: int = 0,
    random_pieces: int = 0,
) -> list[tuple[str, str]]:
    """(id, split) of the chorales (`select_chorales`), then `works` other music21 works, then
    the procedural pieces; each kind split by the same stable hash of its ids."""
    chosen = select_chorales(n_pieces, ids, val_fraction, test_fraction) if n_pieces != 0 else []
    pools = [(work_ids(), works) if works else ([], 0)]
    pools += [([f"{k}/{i:04d}" for i in range(100_000)], m) for k, m in
              (("texture", textures), ("random", random_pieces)) if m]  # fmt: skip
    for pool, m in pools:
        for cid in _first_with_every_split(pool, m, val_fraction, test_fraction):
            if is_reserved(cid):
                raise ValueError(f"{cid} is reserved for independent evaluation")
            chosen.append((cid, split_of(cid, val_fraction, test_fraction)))
    return chosen


def _first_with_every_split(
    ids: list[str], n: int, val_fraction: float, test_fraction: float
) -> list[str]:
    """The first `n` ids; when those lack a validation or test piece (small corpora: the first
    4 chorales are all train), the first ones of each split instead, at least one val and one
    test piece from n >= 3 on."""
    first = ids[:n]
    splits = {split_of(c, val_fraction, test_fraction) for c in first}
    if n < 3 or {"val", "test"} <= splits:
        return first
    n_val = max(1, round(n * val_fraction))
    n_test = max(1, round(n * test_fraction))
    quota = {"train": n - n_val - n_test, "val": n_val, "test": n_test}
    chosen = []
    for cid in ids:
        split = split_of(cid, val_fraction, test_fraction)
        if quota[split] > 0:
            quota[split] -= 1
            chosen.append(cid)
    return chosen


def _test_variants(instruments: str, variety: Variety | None) -> list[str]:
    """The other renderings of every test piece (split ``test_<variant>``)."""
    if variety is None:
        return []
    extra = ["piano", "mixed"] if instruments == "both" else []
    extra += ["heldout"] if variety.holdout else []
    if variety.test_soundfont is not None:
        extra += [SOUNDFONT_VARIANT + v for v in ("piano", "mixed")]
    return extra


def remove_partial_writes(out: Path, names: Iterable[str]) -> list[Path]:
    """Remove the temporary files (`atomic_write_bytes`'s ``FILE.<random>.tmp``) of pieces `names`
    in `out`: a worker ended while writing one (Ctrl-C, a full disk elsewhere) never renames
    or removes it. Returns what was removed."""
    removed = []
    for name in names:
        for tmp in Path(out).glob(f"{glob.escape(name)}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def corpus_splits(instruments: str, variety: Variety | None) -> tuple[str, ...]:
    """Every split `build_corpus` can write with these settings, known before anything is
    rendered (a small corpus may leave one empty)."""
    return ("train", "val", "test", *(f"test_{v}" for v in _test_variants(instruments, variety)))


def build_corpus(
    out: Path,
    n_pieces: int | None,
    seed: int,
    workers: int = 1,
    progress: bool = True,
    *,
    max_seconds: float | None = None,
    ids: Sequence[str] | None = None,
    augment: bool = True,
    instruments: str = "mixed",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    variety: Variety | None = None,
    works: int = 0,
    textures: int = 0,
    random_pieces: int = 0,
) -> dict:
    """Render the chorale audio corpus into `out` and write its manifest `corpus.json`.

    n_pieces: the first n chorales of `ids` (default `chorale_ids()`, Riemenschneider order);
    None = all 350. seed: the train pieces' seed (val/test use `EVAL_SEED`). workers > 1 renders
    in a spawn-context process pool. max_seconds: cut every piece at that time (for tests).
    augment=False: dry stems and no noise (levels still random). instruments="piano": every
    part on the acoustic grand (program 0), no vibrato and no drums (the piano subset).

    instruments="both": each piece draws piano or mixed, and every test piece is also rendered
    both ways (splits `test_piano`, `test_mixed`). variety (see `Variety`): numpy synthesis
    voices beside the soundfont, wide velocities, and with `variety.holdout` one more rendering
    of every test piece with only the held-out engine (split `test_heldout`), and with
    `variety.test_soundfont` two more with only that soundfont (`test_sf_piano`,
    `test_sf_mixed`). works, textures, random_pieces: that many other music21 works
    (`work_ids`), piano-texture pieces and random-note pieces (`textures.py`) beside the
    chorales; each needs a `variety`.

    Incremental: a piece whose five files exist and whose labels were made with the same
    config is skipped; any missing file gets the whole piece rebuilt (every file is written to a
    temporary name and renamed). Pieces that fail are skipped with a warning.
    Returns the manifest's summary plus 'built', 'skipped', 'failed' and 'seconds'.
    """
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
    if instruments not in SUBSETS:
        raise ValueError(f"instruments must be one of {SUBSETS}, not {instruments!r}")
    if variety is None and (works or textures or random_pieces or instruments == "both"):
        raise ValueError("works, textures, random pieces and instruments='both' need a variety")
    if variety is not None and variety.programs not in PROGRAM_SETS:
        raise ValueError(f"programs must be one of {PROGRAM_SETS}, not {variety.programs!r}")
    if variety is not None and variety.test_soundfont is not None:
        soundfont_digest(variety.test_soundfont)  # a bad file fails now, not in every piece
    chosen = select_pieces(
        n_pieces, ids, val_fraction, test_fraction, works, textures, random_pieces
    )
    jobs = []
    for cid, split in chosen:
        job = _Job(
            cid, split, str(out), int(seed), max_seconds, bool(augment), instruments, variety
        )
        jobs.append(job)
        if split != "test":
            continue
        for v in _test_variants(instruments, variety):
            jobs.append(dataclasses.replace(job, split=f"test_{v}", variant=v))
    results: dict[str, tuple[dict, bool]] = {}
    failures: list[tuple[str, str]] = []

    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="synth corpus", unit="piece", disable=not progress)

    def failed(job: _Job, e: BaseException) -> None:
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            raise e  # a full disk is no bad chorale: every piece after it would fail too
        reason = f"{type(e).__name__}: {e}"
        warnings.warn(f"skipping {job.kind} {job.chorale_id}: {reason}", stacklevel=3)
        failures.append((job.chorale_id, reason))

    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                try:
                    results[job.name] = _build_one(job)
                except Exception as e:  # one bad chorale must not sink the corpus
                    failed(job, e)
                bar.update(1)
        else:
            try:
                with WorkerPool(min(workers, len(jobs))) as ex:
                    # leaving by an exception (a full disk, Ctrl-C) ends the workers and
                    # cancels the pieces not started
                    futs = {ex.submit(_build_one, job): job for job in jobs}
                    for fut in concurrent.futures.as_completed(futs):
                        job = futs[fut]
                        try:
                            results[job.name] = fut.result()
                        except concurrent.futures.process.BrokenProcessPool:
                            raise  # the pool itself died (an unguarded __main__): not a piece
                        except Exception as e:
                            failed(job, e)
                        bar.update(1)
            except BaseException:  # workers ended mid-write leave their temporary files
                remove_partial_writes(out, [j.name for j in jobs if j.name not in results])
                raise
    finally:
        bar.close()

    entries = [results[j.name][0] for j in jobs if j.name in results]
    summary = _summary(entries)
    manifest = {
        "version": VERSION,
        "sr": SR,
        "frame_s": FRAME_S,
        "seed": int(seed),
        "eval_seed": EVAL_SEED,
        "max_seconds": max_seconds,
        "augment": bool(augment),
        "instruments": instruments,
        "variety": None if variety is None else dataclasses.asdict(variety),
        "summary": summary,
        "failures": [{"chorale_id": c, "reason": r} for c, r in failures],
        "pieces": entries,
    }
    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    built = sum(1 for j in jobs if j.name in results and results[j.name][1])
    return dict(
        summary,
        built=built,
        skipped=len(entries) - built,
        failed=[c for c, _ in failures],
        seconds=time.perf_counter() - t0,
    )


def _summary(entries: list[dict]) -> dict:
    splits: dict[str, int] = {}
    for e in entries:
        splits[e["split"]] = splits.get(e["split"], 0) + 1
    secs = sum(e["duration_s"] for e in entries)
    return {
        "pieces": len(entries),
        "splits": splits,
        "hours": round(secs / 3600.0, 4),
        "voiced_hours": round(sum(e["voiced_s"] for e in entries) / 3600.0, 4),
        "notes": sum(e["notes"] for e in entries),
        "vocal_notes": sum(e["vocal_notes"] for e in entries),
        "chords": sum(e["chords"] for e in entries),
        "beats": sum(e["beats"] for e in entries),
        "downbeats": sum(e["downbeats"] for e in entries),
        "drum_hits": sum(e["drum_hits"] for e in entries),
    }


def read_corpus(root: Path) -> list[AudioPiece]:
    """The pieces listed in `root/corpus.json`, in manifest order, as `AudioPiece`s
    (audio = the mixture; stems = vocals, accompaniment, drums; f0 = the vocal line)."""
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        entries = [(str(e["name"]), str(e["split"])) for e in manifest["pieces"]]
    except (ValueError, KeyError, TypeError) as e:  # not JSON, not UTF-8, not a corpus index
        what = f"no {e}" if isinstance(e, KeyError) else str(e)
        raise AnnotationError(root / MANIFEST, None, f"not a corpus index ({what})") from None
    pieces = []
    for name, split in entries:
        files = piece_files(root, name)
        try:
            lab = _load_labels(files["labels"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:  # damaged or missing
            warn_skip("corpus", files["labels"], f"unreadable labels ({err})")
            continue
        pieces.append(
            AudioPiece(
                name=name,
                audio=files["mixture"],
                split=split,
                notes=lab["notes"],
                f0=lab["f0"],
                beats=lab["beats"],
                downbeats=lab["downbeats"],
                chords=lab["chords"],
                chord_labels=tuple(str(s) for s in lab["chord_labels"]),
                drum_hits=lab["drum_hits"],
                stems={s: files[s] for s in STEMS},
            )
        )
    return pieces
