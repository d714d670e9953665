"""Training, storing and running the downbeat tagger (:class:`jaxmir.tasks.beat.bars.BarTagger`).

The tagger is the beat run's second stage. Once the frame model is trained and its beat
decoding calibrated, the tagger trains through the engine (`jaxmir.engine.fitting`) in the run's
``tagger/run`` folder on the training pieces' beat sequences, twice over: the true beats, and
the beats the frame model tracks (so it learns to place bars on the beats it will be given,
errors included). Its weights are then stored as ``tagger/variables.msgpack`` beside
``tagger/tagger.json`` (its size), which is also the folder a shipped model carries.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmir.config import Config, OptimConfig, TrainConfig
from jaxmir.data.cache import atomic_write_bytes, atomic_write_text
from jaxmir.engine.fitting import CustomTask
from jaxmir.shipped import HELPER_RUN
from jaxmir.tasks.base import NoConfig
from jaxmir.tasks.beat.bars import (
    N_BAR_FEATURES,
    SUBDIVISIONS,
    WINDOW,
    BarTagger,
    TaggerEnsemble,
    bar_features,
    downbeat_targets,
    ensemble_probs,
    subdivided,
    transpose,
    windows,
)

TAGGER_DIR = "tagger"
"""The tagger's folder inside a run's workdir or a shipped model folder."""

LEVEL_DIR = "level"
"""The level tagger's folder (beats or sub-beats, `jaxmir.tasks.beat.decode.slower_level`),
beside `TAGGER_DIR`."""

TAGGER_VARIABLES = "variables.msgpack"
TAGGER_SIZE_FILE = "tagger.json"

POSITIVE_WEIGHT = 3.0
"""Loss weight of a downbeat against another beat (about one beat in three is a downbeat)."""


@dataclasses.dataclass(frozen=True)
class TaggerSize:
    hidden: int = 32
    num_layers: int = 2
    members: int = 1  # > 1: a `TaggerEnsemble` of that many taggers

    def module(self) -> BarTagger | TaggerEnsemble:
        if self.members > 1:
            return TaggerEnsemble(self.members, self.hidden, self.num_layers)
        return BarTagger(hidden=self.hidden, num_layers=self.num_layers)

    def param_count(self) -> int:
        shapes = jax.eval_shape(
            lambda: self.module().init(jax.random.PRNGKey(0), jnp.zeros((1, 2, N_BAR_FEATURES)))
        )
        return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))


def tagger_loss(apply_fn, variables, batch, rng, train):
    """Masked BCE over the beats of each window, downbeats weighted `POSITIVE_WEIGHT`; an
    ensemble's members each by their own logits (the mean of their losses, so each member's
    gradient is that of its own loss, scaled by 1 / members). Accuracy: of the mean
    probability."""
    logits = apply_fn(variables, batch["x"], train=train)
    y, mask = batch["y"], batch["mask"]
    weight = mask * (1.0 + (POSITIVE_WEIGHT - 1.0) * y)
    members = 1 if logits.ndim == 2 else logits.shape[0]
    bce = optax.sigmoid_binary_cross_entropy(logits, jnp.broadcast_to(y, logits.shape))
    loss = jnp.sum(bce * weight) / jnp.maximum(members * jnp.sum(weight), 1.0)
    hits = ((ensemble_probs(logits) > 0.5) == (y > 0.5)) * mask
    return loss, ({"accuracy": jnp.sum(hits) / jnp.maximum(jnp.sum(mask), 1.0)}, {})


@dataclasses.dataclass
class RandomTranspose(grain.transforms.RandomMap):
    """Each training window moved by a random 0-11 semitones (pitch classes only)."""

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        return {**element, "x": transpose(element["x"], int(rng.integers(12)))}


class TaggerTask(CustomTask):
    """`CustomTask` whose training windows are transposed anew on every pass."""

    name = "beat-tagger"

    def dataset(self, cfg: Config, cache, split: str, train: bool) -> grain.MapDataset:
        ds = super().dataset(cfg, cache, split, train)
        return ds.random_map(RandomTranspose()) if train else ds


def piece_examples(
    notes: np.ndarray, beat_lists: Iterable[np.ndarray], downbeats: np.ndarray
) -> list[dict[str, np.ndarray]]:
    """The tagger's training windows of one piece, for each list of beats given."""
    out = []
    for beats in beat_lists:
        beats = np.asarray(beats, np.float64)
        if len(beats) >= 2:
            out += windows(bar_features(notes, beats), downbeat_targets(beats, downbeats))
    return out


def level_examples(
    notes: np.ndarray, true_beats: np.ndarray, tracked: np.ndarray
) -> list[dict[str, np.ndarray]]:
    """The level tagger's training windows of one piece, targets 1 at beats and 0 elsewhere:
    its true beats (all beats), the same with each interval cut into 2 and into 3 steps
    (`subdivided`), and the beats the frame model tracks there (a beat where it lies within
    70 ms of a true one: the sequences it will be given, errors included)."""
    true_beats = np.asarray(true_beats, np.float64)
    if len(true_beats) < 2:
        return []
    sequences = [(true_beats, np.ones(len(true_beats), np.float32))]
    sequences += [subdivided(true_beats, k) for k in SUBDIVISIONS]
    tracked = np.asarray(tracked, np.float64)
    if len(tracked) >= 2:  # the targets mark the tracked beat nearest each true beat
        sequences.append((tracked, downbeat_targets(tracked, true_beats)))
    out = []
    for beats, targets in sequences:
        out += windows(bar_features(notes, beats), targets)
    return out


def train_tagger(
    train_examples: list[dict],
    val_examples: list[dict],
    folder: Path,
    size: TaggerSize,
    steps: int,
    seed: int = 0,
    *,
    progress: bool = False,
    log=print,
) -> Path:
    """Train a tagger on the examples through the engine (in ``folder/run``, started afresh)
    and store its final weights in `folder`; returns `folder`. A stop signal caught while it
    trains raises `Interrupted` (the signal's name), with no weights stored."""
    from jaxmir.engine.loop import Interrupted
    from jaxmir.engine.run import train as run_train

    if not train_examples:
        raise ValueError("no training pieces with two or more beats for the downbeat tagger")
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)  # derived from the frame model: never resumed
    epochs = 4
    train_cfg = TrainConfig(
        epochs=epochs,
        steps_per_epoch=max(1, steps // epochs),
        val_steps=max(1, min(10, len(val_examples) // 32)),
        batch_size=32,
        val_batch_size=32,
        seed=seed,
        log_every=50,
        early_stop_patience=None,
        eval_pieces_each_epoch=False,
        data_threads=1,
    )
    optim = OptimConfig(
        learning_rate=2e-3,
        lr_schedule="warmup_cosine",
        warmup_steps=min(100, steps // 10),
        decay_steps=train_cfg.epochs * train_cfg.steps_per_epoch,
        min_lr=1e-5,
    )
    cfg = Config(
        task=TaggerTask.name,
        preset="tagger",
        model=size,
        data=NoConfig(),
        decode=NoConfig(),
        train=train_cfg,
        optim=optim,
    )
    source = grain.MapDataset.source
    task = TaggerTask(
        size.module(), tagger_loss, source(train_examples), source(val_examples or train_examples)
    )
    result = run_train(task, cfg, folder / HELPER_RUN, progress=progress, log=log)
    if result.status.startswith("interrupted"):  # its own stop handler caught a signal
        raise Interrupted(result.status.removeprefix("interrupted: "))  # no half-trained tagger
    save_tagger(folder, jax.device_get({"params": result.state.params}), size)
    return folder


def save_tagger(folder: Path, variables: dict, size: TaggerSize) -> None:
    """Write a tagger's weights and size into `folder`, each file replaced atomically (a new
    file, so `load_tagger` sees a new version even within one timestamp tick)."""
    from flax import serialization

    atomic_write_bytes(Path(folder) / TAGGER_VARIABLES, serialization.to_bytes(variables))
    atomic_write_text(Path(folder) / TAGGER_SIZE_FILE, json.dumps(dataclasses.asdict(size)) + "\n")


CANDIDATE_SUFFIX = ".new"
"""`TAGGER_DIR` + this: a re-trained tagger waits here until it has scored."""
ASIDE_SUFFIX = ".old"
"""`TAGGER_DIR` + this: the tagger set aside while a better one takes its name."""


def replace_folder(new: Path, old: Path) -> None:
    """Put the tagger folder `new` in the place of `old`. `old` moves aside first and is
    deleted only once `new` is in place, so a crash between the steps leaves a whole tagger
    under one of the two names (`recover_folder` puts it back)."""
    new, old = Path(new), Path(old)
    aside = old.with_name(old.name + ASIDE_SUFFIX)
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(old, aside)
    os.replace(new, old)
    shutil.rmtree(aside)


def recover_folder(home: Path) -> None:
    """Undo what a crash left beside the tagger folder `home`: the tagger set aside by
    `replace_folder` goes back under its name if `home` has none, and neither that nor a
    half-trained candidate is left behind."""
    home = Path(home)
    aside = home.with_name(home.name + ASIDE_SUFFIX)
    if (aside / TAGGER_VARIABLES).is_file() and not (home / TAGGER_VARIABLES).is_file():
        shutil.rmtree(home, ignore_errors=True)
        os.replace(aside, home)
    shutil.rmtree(aside, ignore_errors=True)
    shutil.rmtree(home.with_name(home.name + CANDIDATE_SUFFIX), ignore_errors=True)


def stored_size(folder: Path) -> TaggerSize:
    """The size of the tagger stored in `folder` (its `TAGGER_SIZE_FILE`)."""
    return TaggerSize(**json.loads((Path(folder) / TAGGER_SIZE_FILE).read_text()))


def stored_tagger_problem(folder: Path, size: TaggerSize) -> str | None:
    """Why the tagger stored in `folder` cannot stand for a tagger of `size` (unreadable, or
    of another size); None where it can (then it is loaded, as `load_tagger` keeps it)."""
    try:
        stored = stored_size(folder)
        load_tagger(str(folder))
    except (OSError, ValueError, TypeError) as e:
        return f"cannot be read ({e})"
    return None if stored == size else f"is {stored}, not the config's"


def load_tagger(folder: str) -> Callable[[np.ndarray], np.ndarray]:
    """`tag(features (beats, N_BAR_FEATURES)) -> downbeat probabilities (beats,)` of the tagger
    stored in `folder`. Sequences are padded to a multiple of `WINDOW` beats, so a handful of
    shapes compile however many pieces are tagged. Loaded once per process and version of the
    weights: a tagger re-trained in the same folder (`jaxmir calibrate beat`) is read again."""
    path = Path(folder)
    weights, size_file = path / TAGGER_VARIABLES, path / TAGGER_SIZE_FILE
    for f in (weights, size_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: no downbeat tagger here (decode.tagger)")
    stamps = [f.stat() for f in (weights, size_file)]
    stamp = tuple((st.st_ino, st.st_mtime_ns, st.st_size) for st in stamps)
    return _load_tagger(str(path), stamp)


@functools.lru_cache(maxsize=4)
def _load_tagger(folder: str, stamp: tuple) -> Callable[[np.ndarray], np.ndarray]:
    from flax import serialization

    path = Path(folder)
    weights = path / TAGGER_VARIABLES
    size = stored_size(path)
    model = size.module()
    target = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, WINDOW, N_BAR_FEATURES)))
    )
    target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), target)
    try:
        variables = serialization.from_bytes(target, weights.read_bytes())
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{weights}: does not fit a tagger of {size} ({e})") from None
    apply = jax.jit(lambda x: ensemble_probs(model.apply(variables, x)))

    def tag(features: np.ndarray) -> np.ndarray:
        n = len(features)
        if n == 0:
            return np.zeros(0, np.float32)
        padded = np.zeros((-(-n // WINDOW) * WINDOW, N_BAR_FEATURES), np.float32)
        padded[:n] = features
        return np.asarray(apply(padded[None]))[0, :n]

    return tag


def tagger_probs(folder: str, notes: np.ndarray, beats: np.ndarray) -> np.ndarray:
    """The probability the tagger in `folder` gives each beat: that it starts a bar (a
    downbeat tagger) or that it is a beat (a level tagger); 0 for fewer than 2 beats: a lone
    beat has no span to describe."""
    beats = np.asarray(beats, np.float64)
    if len(beats) < 2:
        return np.zeros(len(beats), np.float32)
    return load_tagger(str(folder))(bar_features(notes, beats))


def marked_downbeats(beats: np.ndarray, probs: np.ndarray, threshold: float) -> np.ndarray:
    """The beats whose downbeat probability (`tagger_probs`) is >= `threshold`; none of
    fewer than 2 beats, whatever the threshold."""
    beats = np.asarray(beats, np.float64)
    return beats[probs >= threshold] if len(beats) >= 2 else beats[:0]
