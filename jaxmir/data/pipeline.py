"""Grain pipelines: (piece, offset) windows over a feature cache -> shuffled, sharded batches.

The source indexes windows; reading happens after shuffle and repeat, so each epoch draws a new
order and (for training) a new random shift of every window. Each process reads only its own
shard of the windows; the iterator's position is checkpointed with the model (Grain state).
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
        raise ValueError(f"{cache.root}: no pieces in split {split!r}")
    rows = []
    for i, name in enumerate(names):
        n = cache.entry(name)["shape"][0]
        starts = np.arange(0, max(n - timesteps // 2, 1), hop)
        rows.append(np.stack([np.full_like(starts, i), starts], axis=1))
    return np.concatenate(rows).astype(np.int64), names


@dataclasses.dataclass
class ReadWindow(grain.transforms.RandomMap):
    """(piece, start) -> {"x": (timesteps, ...), "y": (timesteps, C), "mask": (timesteps,)}.

    With `jitter`, the start moves by a random number of frames in [-jitter, jitter]; frames
    past a piece's end are zero with mask 0 (the loss ignores them).
    """

    root: str
    names: list[str]
    timesteps: int
    jitter: int = 0
    label_key: str = "y"

    def __post_init__(self):
        self._cache: FeatureCache | None = None
        self._labels: dict[str, np.ndarray] = {}

    def __getstate__(self):  # picklable for Grain worker processes: drop open memory maps
        d = dict(self.__dict__)
        d["_cache"], d["_labels"] = None, {}
        return d

    def _arrays(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is None:
            self._cache = FeatureCache(self.root)
        if name not in self._labels:
            self._labels[name] = self._cache.labels(name)[self.label_key]
        return self._cache.features(name), self._labels[name]

    def random_map(self, element, rng: np.random.Generator) -> dict:
        piece, start = int(element[0]), int(element[1])
        if self.jitter:
            start += int(rng.integers(-self.jitter, self.jitter + 1))
        return read_window(*self._arrays(self.names[piece]), start, self.timesteps)


def read_window(x: np.ndarray, y: np.ndarray, start: int, timesteps: int) -> dict:
    """Frames [start, start+timesteps) of x and y, zero-padded outside the piece."""
    n = min(len(x), len(y))
    lo, hi = max(start, 0), min(start + timesteps, n)
    out_x = np.zeros((timesteps, *x.shape[1:]), np.float32)
    out_y = np.zeros((timesteps, *y.shape[1:]), np.float32)
    mask = np.zeros((timesteps,), np.float32)
    if hi > lo:
        out_x[lo - start : hi - start] = x[lo:hi]
        out_y[lo - start : hi - start] = y[lo:hi]
        mask[lo - start : hi - start] = 1.0
    return {"x": out_x, "y": out_y, "mask": mask}


def windows_dataset(
    cache: FeatureCache,
    split: str,
    *,
    timesteps: int,
    hop: int,
    seed: int,
    jitter: int = 0,
    label_key: str = "y",
    make_reader: Callable[[list[str]], grain.transforms.RandomMap] | None = None,
) -> grain.MapDataset:
    """An endless, shuffled MapDataset of this process's windows of `split` (unbatched).

    `make_reader(piece_names)` builds the transform that turns (piece, start) rows into examples
    (default: `ReadWindow` of the cached features and their `label_key` array)."""
    index, names = window_index(cache, split, timesteps, hop)
    ds = grain.MapDataset.source(index)
    if jax.process_count() > 1:
        ds = ds[jax.process_index() :: jax.process_count()]
    if make_reader is None:
        reader = ReadWindow(str(cache.root), names, timesteps, jitter, label_key)
    else:
        reader = make_reader(names)
    return ds.seed(seed).shuffle().repeat().random_map(reader)


def batch_iterator(ds: grain.MapDataset, batch_size: int, threads: int = 2):
    """A checkpointable iterator of local batches of `batch_size` examples."""
    batched = ds.batch(batch_size, drop_remainder=True)
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2 * threads, 2))
    return iter(batched.to_iter_dataset(options))
