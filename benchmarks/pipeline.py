"""The input pipeline on its own, and how much of a training step waits for it.

* `build_beat_cache`: a small real feature cache for the beat task, written with
  `jaxmir.tasks.beat.task.write_piece` from synthetic metrical pieces (steady tempo, chords on
  the beats), as the tests do.
* `read_throughput`: samples/s of the task's Grain dataset (`task.dataset` + `batch_iterator`,
  the training iterator of `jaxmir train`), pulled as fast as possible.
* `input_wait`: the training loop's pattern (next batch -> `put_batch` -> the compiled step,
  dispatched asynchronously, no host sync) over `steps` steps; the fraction of the wall time
  spent inside ``next()`` is the time the step waits for input.

Needs grain (and the beat task's dependencies); the suite skips it with a message without them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def metrical_piece(name: str, rng: np.random.Generator, seconds: float = 12.0):
    """A piece with a steady tempo, chords on beats and some notes between them."""
    from jaxmir.data.symbolic import SymbolicPiece

    period = 60.0 / rng.uniform(80, 140)
    meter = int(rng.choice([3, 4]))
    beats = np.arange(0.2, seconds, period)
    notes = []
    for i, b in enumerate(beats):
        accent = i % meter == 0
        for p in rng.choice(np.arange(40, 80), size=4 if accent else 2, replace=False):
            notes.append((b, b + period * 0.9, p, 100 if accent else 70))
        if rng.random() < 0.5:
            notes.append((b + period / 2, b + period * 0.9, int(rng.integers(60, 84)), 60))
    return SymbolicPiece(name, np.array(sorted(notes), np.float64), beats, beats[::meter])


def build_beat_cache(
    root: Path | str,
    pieces: int = 8,
    seconds: float = 60.0,
    seed: int = 0,
    held_out: bool = False,
):
    """A beat feature cache of `pieces` synthetic pieces, all in the train split, or with
    `held_out` the last two in val and test."""
    from jaxmir.data.cache import FeatureCache
    from jaxmir.tasks.beat.task import write_piece

    cache = FeatureCache.create(Path(root), "beat", {"benchmark": True, "seed": seed})
    rng = np.random.default_rng(seed)
    for i in range(pieces):
        split = {pieces - 2: "val", pieces - 1: "test"}.get(i, "train") if held_out else "train"
        write_piece(cache, metrical_piece(f"piece{i}", rng, seconds), split)
    return cache


def _iterator(cache_dir: Path | str, preset: str, batch: int, threads: int | None):
    from jaxmir.data.cache import FeatureCache
    from jaxmir.data.pipeline import batch_iterator
    from jaxmir.tasks.base import get_task

    task = get_task("beat")
    cfg = task.preset(preset)
    threads = cfg.train.data_threads if threads is None else threads
    ds = task.dataset(cfg, FeatureCache(cache_dir), "train", True)
    return batch_iterator(ds, batch, threads), threads


def read_throughput(
    cache_dir: Path | str,
    batch: int,
    n_batches: int = 20,
    preset: str = "paper",
    threads: int | None = None,
) -> dict:
    """Samples/s of the beat training iterator alone (after 2 warm-up batches)."""
    it, threads = _iterator(cache_dir, preset, batch, threads)
    for _ in range(2):
        next(it)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        b = next(it)
    dt = time.perf_counter() - t0
    return {
        "batch": batch,
        "threads": threads,
        "batches": n_batches,
        "batch_shape": list(b["x"].shape),
        "samples_per_s": round(batch * n_batches / dt, 1),
        "ms_per_batch": round(1000 * dt / n_batches, 2),
    }


def input_wait(step, state, put_batch, cache_dir, batch: int, steps: int, preset: str = "paper"):
    """(new state, result): `steps` training steps fed by the Grain iterator, as the engine's
    loop runs them (asynchronous dispatch, one host sync at the end)."""
    import jax

    it, threads = _iterator(cache_dir, preset, batch, None)
    b = put_batch(next(it))  # warm-up: the first batch starts the reader threads
    state, metrics = step(state, b)
    jax.block_until_ready((state, metrics))
    wait = 0.0
    t_start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        b = next(it)
        wait += time.perf_counter() - t0
        state, metrics = step(state, put_batch(b))
    jax.block_until_ready((state, metrics))
    total = time.perf_counter() - t_start
    return state, {
        "steps": steps,
        "threads": threads,
        "step_s_with_input": round(total / steps, 4),
        "input_wait_s_per_step": round(wait / steps, 5),
        "input_wait_fraction": round(wait / total, 4),
    }
