"""Grain pipelines: (piece, offset) windows over a feature cache -> shuffled, sharded batches.

The source indexes windows; reading happens after shuffle and repeat, so each epoch draws a new
order and (for training) a new random shift of every window. Every process sees the same global
example stream and reads only its own slice of each global batch (`ProcessSlice`), so a run on
P processes trains on exactly the batches of a run on one, and the iterator's checkpointed
position (Grain state: global batches consumed) means the same for any process count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import grain
import jax
import numpy as np

from jaxmir.data.cache import FeatureCache


def window_index(
    cache: FeatureCache, split: str, timesteps: int, hop: int
) -> tuple[np.ndarray, list[str]]:
    """Rows (piece, start) of the windows that tile each piece of `split` every `hop` frames."""
    names = cache.names(split)
    if not names:
        raise cache.no_split(split)
    rows = []
    for i, name in enumerate(names):
        n = cache.entry(name)["shape"][0]
        starts = np.arange(0, max(n - timesteps // 2, 1), hop)
        rows.append(np.stack([np.full_like(starts, i), starts], axis=1))
    return np.concatenate(rows).astype(np.int64), names


@dataclasses.dataclass
class PieceReader(grain.transforms.RandomMap):
    """Base of the transforms that read examples of cached pieces: the cache is opened lazily
    (in each worker) and each piece's label arrays are loaded once."""

    root: str
    names: list[str]

    def __post_init__(self):
        self._cache: FeatureCache | None = None
        self._labels: dict[str, dict[str, np.ndarray]] = {}

    def __getstate__(self):  # picklable for Grain worker processes: drop open memory maps
        d = dict(self.__dict__)
        d["_cache"], d["_labels"] = None, {}
        return d

    def arrays(self, piece: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(features, label arrays) of piece number `piece` of `names`."""
        if self._cache is None:
            self._cache = FeatureCache(self.root)
        name = self.names[piece]
        if name not in self._labels:
            self._labels[name] = self._cache.labels(name)
        return self._cache.features(name), self._labels[name]


@dataclasses.dataclass
class WindowReader(PieceReader):
    """(piece, start) -> {"x": (timesteps, ...), "mask": (timesteps,), **targets}.

    `view(x[lo:hi])` turns cached frames into the model's input (channel choice, padding);
    `labels(piece_labels, start, mask)` gives the window's targets from the piece's cached label
    arrays. With `jitter`, the start moves by a random number of frames in [-jitter, jitter];
    frames past a piece's ends are zero with mask 0 (the loss ignores them). `augment(x, rng)`,
    where given (training), changes the window's input after that, labels untouched.
    """

    timesteps: int
    jitter: int
    view: Callable[[np.ndarray], np.ndarray]
    labels: Callable[[dict, int, np.ndarray], dict]
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None

    def random_map(self, element, rng: np.random.Generator) -> dict:
        piece, start = int(element[0]), int(element[1])
        if self.jitter:
            start += int(rng.integers(-self.jitter, self.jitter + 1))
        x_all, labels = self.arrays(piece)
        x, mask = read_frames(x_all, start, self.timesteps, self.view)
        if self.augment is not None:
            x = self.augment(x, rng)
        return {"x": x, "mask": mask, **self.labels(labels, start, mask)}


def read_frames(
    x: np.ndarray, start: int, timesteps: int, view: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(view of frames [start, start+timesteps) of x, zero outside the piece; mask)."""
    n = len(x)
    lo, hi = max(start, 0), min(start + timesteps, n)
    part = view(x[lo : max(hi, lo)])
    out = np.zeros((timesteps, *part.shape[1:]), np.float32)
    mask = np.zeros((timesteps,), np.float32)
    if hi > lo:
        out[lo - start : hi - start] = part
        mask[lo - start : hi - start] = 1.0
    return out, mask


def frames_window(y: np.ndarray, start: int, timesteps: int) -> np.ndarray:
    """Frames [start, start+timesteps) of a per-frame array, zero outside it (float32)."""
    lo, hi = max(start, 0), min(start + timesteps, len(y))
    out = np.zeros((timesteps, *y.shape[1:]), np.float32)
    if hi > lo:
        out[lo - start : hi - start] = y[lo:hi]
    return out


def windows_dataset(
    cache: FeatureCache,
    split: str,
    *,
    timesteps: int,
    hop: int,
    seed: int,
    make_reader: Callable[[list[str]], grain.transforms.RandomMap],
) -> grain.MapDataset:
    """An endless, shuffled MapDataset of this process's windows of `split` (unbatched).

    `make_reader(piece_names)` builds the transform that turns (piece, start) rows into examples
    (e.g. a `WindowReader`)."""
    index, names = window_index(cache, split, timesteps, hop)
    return shuffled_examples(index, seed, make_reader(names))


def shuffled_examples(
    index: np.ndarray, seed: int, reader: grain.transforms.RandomMap
) -> grain.MapDataset:
    """The `index` rows shuffled anew every pass, endless, read by `reader` after the shuffle
    (so a jittered reader draws new shifts every epoch). The same on every process."""
    return grain.MapDataset.source(index).seed(seed).shuffle().repeat().random_map(reader)


class ProcessSlice(grain.MapDataset):
    """Process `process`'s rows of every global batch of `parent` (`local` rows of each batch
    of `local * processes`): local row j is global row (j // local) * global + process * local
    + j % local. Only those rows are ever read, and local batch b is a slice of global batch b."""

    def __init__(self, parent: grain.MapDataset, process: int, processes: int, local: int):
        super().__init__(parent)
        self._process, self._processes, self._local = process, processes, local

    def __len__(self) -> int:
        return len(self._parent) // self._processes

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        batch, row = divmod(index, self._local)
        global_batch = self._local * self._processes
        return self._parent[batch * global_batch + self._process * self._local + row]

    def __str__(self) -> str:
        return f"ProcessSlice(process={self._process}/{self._processes}, local={self._local})"


def batch_iterator(ds: grain.MapDataset, global_batch: int, threads: int = 2):
    """A checkpointable iterator of this process's slices of global batches of `global_batch`
    examples of `ds` (the whole batch in a single-process run)."""
    processes = jax.process_count()
    if global_batch % processes:
        raise ValueError(f"a batch of {global_batch} cannot be split over {processes} processes")
    local = global_batch // processes
    if processes > 1:
        ds = ProcessSlice(ds, jax.process_index(), processes, local)
    batched = ds.batch(local, drop_remainder=True)
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2 * threads, 2))
    return iter(batched.to_iter_dataset(options))
