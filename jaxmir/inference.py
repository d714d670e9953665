"""Windowed prediction over whole pieces, shared by every frame-based task.

A piece of any length is cut into fixed-size windows, the model runs on batches of windows, and
the window outputs are stitched back with per-frame weights: `centre` keeps each window's centre
(omnizart beat's scheme: a BLSTM's edges see little context), `average` averages every
overlapping window (omnizart music).

`predict_pieces` streams the windows of *several* pieces through one sequence of fixed-shape
batches: one compiled shape serves every piece of a command, a piece's windows may share a
batch with the next piece's, and only the very last batch of the stream is zero-padded. Pieces
are read lazily (the next one only when a batch needs its windows), so their features can be
computed one at a time; each piece's stitched output comes out, in input order, as soon as its
last window has run. `predict_piece` is the one-piece case.
"""

from __future__ import annotations

import collections
import dataclasses
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".m4a")
"""The files a folder given to `jaxmir transcribe` contributes for an audio task (soundfile
decodes them; librosa/audioread what it does not know)."""
MIDI_SUFFIXES = (".mid", ".midi")
"""... and for a task that reads MIDI (beat)."""

DEFAULT_BATCH = {"cpu": 4}
"""Windows per inference batch by JAX backend (`default_batch_size`). On the 2-core CPU the
music demo model costs the same per window at 1 to 16 windows a batch (2.3-2.5 CPU-s per
minute of audio, within noise) and ~40% more at 32 (out of cache: `python -m
benchmarks.inference --sweep`); 4 keeps memory and the stream's last-batch padding small.
Other backends (not measured) take `ACCELERATOR_BATCH`."""
ACCELERATOR_BATCH = 16


def default_batch_size(backend: str | None = None) -> int:
    """The inference batch (windows per model call) for `backend` (default: JAX's)."""
    if backend is None:
        import jax

        backend = jax.default_backend()
    return DEFAULT_BATCH.get(backend, ACCELERATOR_BATCH)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large |x|, as float32. One new array,
    worked on in place (an hour of music posteriors is 1 GB: each temporary cost another)."""
    y = np.multiply(np.asarray(x, np.float32), np.float32(0.5), dtype=np.float32)
    np.tanh(y, out=y)
    y += np.float32(1.0)
    y *= np.float32(0.5)
    return y


def window_starts(n_frames: int, timesteps: int, hop: int, front_pad: int) -> np.ndarray:
    """Starts (in piece frames, may be negative) of windows covering [0, n_frames); none past
    the piece's end (a piece shorter than `front_pad` has one window)."""
    last = max(n_frames - timesteps + front_pad, 0)
    starts = np.arange(-front_pad, last + hop, hop)
    return starts[(starts < n_frames) | (starts == starts[0])]


def resolve_hop(timesteps: int, mode: str, hop: int | None = None) -> tuple[int, int]:
    """(hop, front padding) of the windows: `hop` frames between window starts (default half a
    window); `centre` windows start `(timesteps - hop) // 2` frames before the piece, so its
    first frames fall in a window's kept centre."""
    hop = max(timesteps // 2, 1) if hop is None else int(hop)
    if not 1 <= hop <= timesteps:
        raise ValueError(f"window hop must be in [1, {timesteps}] frames, got {hop}")
    if mode not in ("centre", "average"):
        raise ValueError(f"unknown stitch mode {mode!r} (centre, average)")
    return hop, ((timesteps - hop) // 2 if mode == "centre" else 0)


def stitch_weights(timesteps: int, mode: str, hop: int | None = None) -> np.ndarray:
    """Per-frame weights of a window's outputs. `average`: all 1. `centre`: 1 on the `hop`
    centre frames (the default hop keeps the centre half), 1e-3 on the trimmed edges (they
    count only where no other window covers a frame: the piece's ends)."""
    hop, _ = resolve_hop(timesteps, mode, hop)
    if mode == "average":
        return np.ones(timesteps, np.float32)
    w = np.full(timesteps, 1e-3, np.float32)
    q = (timesteps - hop) // 2
    w[q : q + hop] = 1.0
    return w


class _Piece:
    """One piece in the stream: its input, its windows' starts and its running sums."""

    def __init__(self, x: np.ndarray, starts: np.ndarray) -> None:
        self.x = x
        self.n = len(x)
        self.starts = starts
        self.pending = len(starts)  # windows not yet run
        self.out: np.ndarray | None = None
        self.norm = np.zeros(self.n, np.float32)

    def add(self, s: int, y: np.ndarray, weights: np.ndarray) -> None:
        lo, hi = max(s, 0), min(s + len(weights), self.n)
        if self.out is None:
            self.out = np.zeros((self.n, *y.shape[1:]), np.float32)
        w = weights[lo - s : hi - s]
        self.out[lo:hi] += y[lo - s : hi - s] * w.reshape(-1, *([1] * (y.ndim - 1)))
        self.norm[lo:hi] += w
        self.pending -= 1

    def result(self) -> np.ndarray:
        """The stitched outputs, normalised in place (no second copy of a long piece's)."""
        out, self.out = self.out, None
        out /= np.maximum(self.norm, 1e-9).reshape(-1, *([1] * (out.ndim - 1)))
        return out


def predict_pieces(
    predict: Callable[[np.ndarray], np.ndarray],
    pieces: Iterable[np.ndarray],
    *,
    timesteps: int,
    batch_size: int,
    mode: str = "centre",
    hop: int | None = None,
) -> Iterator[np.ndarray]:
    """Stitched outputs (n_frames, C) float32 of each of `pieces` (each (n_frames, ...)), in
    order, through `predict` (batch of windows (B, timesteps, ...) -> (B, timesteps, C)).

    Every batch has exactly `batch_size` windows, taken from consecutive pieces; only the last
    batch of the stream is zero-padded, and its padding is dropped. `hop`: frames between
    window starts (default half a window)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    hop, front = resolve_hop(timesteps, mode, hop)
    weights = stitch_weights(timesteps, mode, hop)
    source = iter(pieces)
    queue: collections.deque[tuple[_Piece, int]] = collections.deque()  # windows not yet run
    open_pieces: collections.deque[_Piece] = collections.deque()  # not yet yielded, in order
    exhausted = False
    while True:
        while not exhausted and len(queue) < batch_size:  # read pieces until a batch is full
            x = next(source, None)
            if x is None:
                exhausted = True
                break
            piece = _Piece(x, window_starts(len(x), timesteps, hop, front))
            open_pieces.append(piece)
            queue.extend((piece, int(s)) for s in piece.starts)
        if not queue:
            break
        chunk = [queue.popleft() for _ in range(min(batch_size, len(queue)))]
        windows = np.zeros((batch_size, timesteps, *chunk[0][0].x.shape[1:]), np.float32)
        for i, (piece, s) in enumerate(chunk):
            lo, hi = max(s, 0), min(s + timesteps, piece.n)
            windows[i, lo - s : hi - s] = piece.x[lo:hi]
        y = np.asarray(predict(windows), np.float32)
        for i, (piece, s) in enumerate(chunk):  # rows past len(chunk) are padding: never read
            piece.add(s, y[i], weights)
        while open_pieces and open_pieces[0].pending == 0:
            yield open_pieces.popleft().result()


def predict_piece(
    predict: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    *,
    timesteps: int,
    batch_size: int,
    mode: str = "centre",
    hop: int | None = None,
) -> np.ndarray:
    """`predict_pieces` of one piece: windows `hop` frames apart (default: overlapping by
    half); its last batch zero-padded to `batch_size`. Returns (n_frames, C) float32."""
    gen = predict_pieces(
        predict, [x], timesteps=timesteps, batch_size=batch_size, mode=mode, hop=hop
    )
    return next(gen)


@dataclasses.dataclass
class Timings:
    """Where a transcription's seconds went: features, model calls, decode + write, and the
    files' audio seconds (`add_file`). `timed(predict)` records every model call; the first
    call of each batch shape includes its compilation (`compile_s`). A task that transcribes
    each file in one call adds its features, decode and write to `unsplit_s` instead of the
    two (one command transcribes with one task: they never mix)."""

    files: int = 0
    audio_s: float = 0.0  # seconds of audio (or music) transcribed; unknown lengths count 0
    features_s: float = 0.0
    write_s: float = 0.0
    # features, decode and write timed as one, where a task transcribes a file in one call
    unsplit_s: float = 0.0
    calls: dict = dataclasses.field(default_factory=dict)  # batch shape -> [seconds per call]

    def timed(self, predict: Callable[[np.ndarray], np.ndarray]) -> Callable:
        if getattr(predict, "timings", None) is self:
            return predict

        def timed_predict(windows: np.ndarray) -> np.ndarray:
            start = time.perf_counter()
            y = np.asarray(predict(windows))
            key = tuple(np.shape(windows))
            self.calls.setdefault(key, []).append(time.perf_counter() - start)
            return y

        timed_predict.timings = self
        timed_predict.__wrapped__ = predict  # `inspect.unwrap`: the model call itself
        return timed_predict

    def add_file(self, path: Path, seconds: float | None = None) -> None:
        """Count a file and its seconds (`seconds` when already known, else its header's)."""
        self.files += 1
        self.audio_s += (input_seconds(path) or 0.0) if seconds is None else seconds

    @property
    def compile_s(self) -> float:
        """Each shape's first call minus its typical call (the median of the others; the whole
        first call when it is the only one)."""
        total = 0.0
        for times in self.calls.values():
            typical = statistics.median(times[1:]) if len(times) > 1 else 0.0
            total += max(times[0] - typical, 0.0)
        return total

    @property
    def model_s(self) -> float:
        """Seconds in model calls, compilation excluded."""
        return sum(sum(t) for t in self.calls.values()) - self.compile_s

    @property
    def batches(self) -> int:
        return sum(len(t) for t in self.calls.values())


def input_seconds(path: Path) -> float | None:
    """The length of an input file in seconds: audio from its header (soundfile), MIDI from
    its last note's end; None when unknown."""
    path = Path(path)
    if path.suffix.lower() in (".mid", ".midi"):
        try:
            from jaxmir.data.datasets.midi import load_midi

            return float(load_midi(path).get_end_time())  # any tick resolution
        except Exception:
            return None
    try:
        import soundfile as sf

        return float(sf.info(str(path)).duration)
    except Exception:
        return None


class AudioProgress:
    """`transcribe`'s progress bar, in seconds of input audio (or music): it moves with every
    model call, so one long recording shows progress too, not only a folder of files.

    Each file's seconds (from its header) are spread evenly over its windows (`file_read`);
    a model call of n windows (`windows_done`) advances the bar by the seconds of the next n
    windows queued, never past the files read so far; a file written (`file_done`) or skipped
    (`file_skipped`) settles the bar at the seconds of the files done."""

    def __init__(self, paths: list[Path], enabled: bool) -> None:
        from tqdm import tqdm

        self.seconds = [input_seconds(p) or 0.0 for p in paths] if enabled else [0.0] * len(paths)
        self.bar = tqdm(
            total=sum(self.seconds),
            desc="Transcribe",
            unit="s",
            disable=not enabled,
            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}]",
        )
        self.queued: collections.deque[list[float]] = collections.deque()  # [windows, s each]
        self.read_s = 0.0  # seconds of the files read (their windows queued)
        self.done_s = 0.0  # seconds of the files written or skipped

    def known_seconds(self, index: int) -> float | None:
        """The file's seconds as read for the bar (None when the bar is off: not read)."""
        return None if self.bar.disable else self.seconds[index]

    def file_read(self, index: int, windows: int) -> None:
        self.queued.append([windows, self.seconds[index] / max(windows, 1)])
        self.read_s += self.seconds[index]

    def windows_done(self, n: int) -> None:
        step = 0.0
        while n > 0 and self.queued:
            head = self.queued[0]
            take = min(n, int(head[0]))
            step, n, head[0] = step + take * head[1], n - take, head[0] - take
            if head[0] <= 0:
                self.queued.popleft()
        self._advance(min(self.bar.n + step, self.read_s))

    def file_done(self, index: int) -> None:
        self.done_s += self.seconds[index]
        self._advance(max(self.bar.n, self.done_s))

    def file_skipped(self, index: int) -> None:
        self.read_s += self.seconds[index]
        self.file_done(index)

    def _advance(self, to: float) -> None:
        to = min(to, self.bar.total)
        if to > self.bar.n:
            self.bar.update(to - self.bar.n)

    def close(self) -> None:
        self.bar.close()
