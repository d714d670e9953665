"""`fit`: the engine for a model and data of your own, no Task subclass and no feature cache.

    result = fit(MyModel(), my_loss, train_ds, val_ds, workdir="runs/mine",
                 train=TrainConfig(epochs=3, steps_per_epoch=100, batch_size=32))

gives the same run as a built-in task: the sharded jitted step, pure callbacks (early stopping,
LR schedules, NaN stop, best/latest checkpoints), exact resume of a killed run by calling `fit`
again on the same workdir, metrics.jsonl, TensorBoard and curves.png.

What it expects:
- `model`: a Flax module called as `model.apply(variables, x, train=...)`; BatchNorm statistics
  and dropout are the loss's business (see `loss`).
- `loss(apply_fn, variables, batch, rng, train) -> (loss, (metrics, model_state))`: `variables`
  holds "params" (and "batch_stats" when the model has them); `metrics` a dict of scalars to log;
  `model_state` the updated collections (e.g. {"batch_stats": ...}) or {}.
- `train_data`, `val_data`: `grain.MapDataset`s of unbatched examples (dicts of arrays with an
  "x" entry, the model's input). The engine shards them by process, shuffles the training set
  with `train.seed` anew every pass and repeats both; the iterator's position is saved with
  every checkpoint.
  Validation reads `train.val_steps` batches of `train.val_batch_size` from the repeated
  validation set: each example once where their product is `len(val_data)` (said at the start
  where it is not: some examples then count more than others, or only the first are read).
  A "mask" entry is the tasks' label mask: with `train.grad_accum` > 1 the micro-batches'
  gradients are weighted by their mask sums.
- `evaluate(predict) -> dict`: optional scores of the validation data each epoch (monitorable
  as `val_<name>`); `predict(x_batch) -> outputs` runs the current weights (a batch of any
  size: it is padded to a multiple of the devices and the padding dropped).

Before the workdir is made, the model and loss are traced (not run) on a batch of the first
example: a collection the model cannot do without other than "params" and "batch_stats", a
loss of another shape, a metric of more than one number or one named `loss` are refused there
rather than after the first steps; an `evaluate` score may not take a metric's name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import flax.linen as nn
import grain
import jax
import numpy as np

from jaxmir.config import (
    Config,
    ConfigError,
    OptimConfig,
    TrainConfig,
    check_monitor_logged,
    checked_section,
)
from jaxmir.engine.checkpoint import first_line
from jaxmir.tasks.base import NoConfig, Task


class CustomTask(Task):
    """A Task made of a user's model, loss and datasets."""

    name = "custom"
    needs_cache = False

    def __init__(
        self,
        model: nn.Module,
        loss: Callable,
        train_data: grain.MapDataset,
        val_data: grain.MapDataset | None = None,
        evaluate: Callable[[Callable], dict[str, float]] | None = None,
    ):
        self._model, self._loss, self._evaluate = model, loss, evaluate
        self._data = {"train": train_data, "val": val_data if val_data is not None else train_data}
        self.batch_metrics: frozenset[str] = frozenset()  # the loss's, where known

    def model(self, cfg: Config) -> nn.Module:
        return self._model

    def input_spec(self, cfg: Config) -> jax.ShapeDtypeStruct:
        x = np.asarray(self._data["train"][0]["x"])
        return jax.ShapeDtypeStruct(x.shape, x.dtype)

    def bind_loss(self, cfg: Config) -> Callable:
        return self._loss

    def dataset(self, cfg: Config, cache, split: str, train: bool) -> grain.MapDataset:
        ds = self._data["train" if split == "train" else "val"]
        return ds.seed(cfg.train.seed).shuffle().repeat() if train else ds.repeat()

    def evaluate(self, predict, cfg, cache, split, progress=False) -> dict[str, float]:
        if self._evaluate is None:
            return {}
        return _scores(self._evaluate(predict), self.batch_metrics)


def _scores(scores, batch_metrics: frozenset[str] = frozenset()) -> dict[str, float]:
    """`evaluate`'s result as {name: float}; ConfigError naming what is not a number (it
    failed in the epoch's log line, after the epoch had trained and before it was saved), or
    a name the validation batches already log (`loss`, the loss's `batch_metrics`)."""
    if not isinstance(scores, Mapping):
        raise ConfigError(f"evaluate: returned {type(scores).__name__}, not a dict of numbers")
    out = {}
    if "loss" in scores:  # logged as val_loss, it would replace the validation loss unsaid
        raise ConfigError("evaluate: 'loss' names the validation loss; call the score otherwise")
    taken = sorted(set(map(str, scores)) & batch_metrics)
    if taken:  # logged as val_<name> too: one of the two would replace the other unsaid
        raise ConfigError(
            f"evaluate: {taken[0]!r} names a metric the loss returns (logged as val_{taken[0]} "
            "from the validation batches); call the score otherwise"
        )
    for name, value in scores.items():
        v = np.asarray(value)
        if v.ndim or not np.issubdtype(v.dtype, np.number):
            shape = f" of shape {v.shape}" if v.ndim else ""
            raise ConfigError(
                f"evaluate: {name!r} is {type(value).__name__}{shape}, expected a number"
            )
        out[str(name)] = float(v)
    return out


def _check_data(ds: grain.MapDataset, name: str, batch_size: int) -> None:
    """ConfigError for a dataset `fit` cannot train on (grain's own errors come from deep
    inside, after the workdir is made)."""
    if len(ds) == 0:
        raise ConfigError(f"{name}: the dataset has no examples")
    first = ds[0]
    if not isinstance(first, Mapping) or "x" not in first:
        what = f"keys {sorted(first)}" if isinstance(first, Mapping) else type(first).__name__
        raise ConfigError(
            f"{name}: examples must be dicts with an 'x' entry (the model's input); the "
            f"first has {what}"
        )
    if batch_size < 2:  # one example a batch: nothing to stack (whole pieces of any length)
        return
    # a batch stacks its examples: one of other entries or shapes failed inside the data
    # pipeline's threads, after the workdir was made (the last example, shorter, most often)
    form = _form(first)
    for i in sorted({len(ds) // 2, len(ds) - 1} - {0}):
        other = ds[i]
        if not isinstance(other, Mapping) or _form(other) != form:
            got = _form(other) if isinstance(other, Mapping) else type(other).__name__
            raise ConfigError(
                f"{name}: example {i} is {got}, example 0 {form}; a batch needs every "
                "example alike (pad or crop them to one shape)"
            )


def _form(example: Mapping) -> dict[str, tuple[int, ...]]:
    """An example's entries and their shapes."""
    return {str(k): np.shape(v) for k, v in sorted(example.items(), key=lambda kv: str(kv[0]))}


KEPT_COLLECTIONS = ("params", "batch_stats")  # what a TrainState holds of a model's variables


def _check_model_and_loss(
    model: nn.Module, loss: Callable, data: grain.MapDataset, batch_size: int
) -> frozenset[str]:
    """The names of the metrics `loss` returns, traced (not run) on a batch of the first
    example; ConfigError, before the workdir is made, for what would fail or mislead only
    once training runs: a collection the model needs that the state does not keep, a loss
    that is not `(scalar, (metrics, model_state))`, a metric that is not one number (it
    failed at the first log line, unnamed) or is named `loss`. A model or loss that does not
    trace here is left to training, which raises its own error as before (an empty set)."""
    key = jax.ShapeDtypeStruct((2,), np.uint32)

    def apply(variables, x):
        return model.apply(variables, x, train=False)

    try:
        example = {k: np.asarray(v) for k, v in data[0].items()}
        x = jax.ShapeDtypeStruct((1, *example["x"].shape), example["x"].dtype)
        batch = {
            k: jax.ShapeDtypeStruct((batch_size, *v.shape), v.dtype) for k, v in example.items()
        }
        variables = jax.eval_shape(lambda r, x: model.init(r, x, train=False), key, x)
    except Exception:  # noqa: BLE001 - the user's code: training reports it in its own words
        return frozenset()
    kept = {k: v for k, v in variables.items() if k in KEPT_COLLECTIONS}
    dropped = sorted(set(variables) - set(kept))
    if dropped and _traces(apply, variables, x):
        try:
            jax.eval_shape(apply, kept, x)
        except Exception as e:  # noqa: BLE001 - flax raises several kinds
            raise ConfigError(
                f"model: its variable collection(s) {dropped} are "
                f"not kept by fit (only {list(KEPT_COLLECTIONS)}), and it fails without them: "
                f"{first_line(e)}"
            ) from None
    try:
        out = jax.eval_shape(lambda v, b, r: loss(model.apply, v, b, r, True), kept, batch, key)
    except Exception:  # noqa: BLE001 - as above
        return frozenset()
    shape = "(loss, (metrics, model_state))"
    pair = (tuple, list)  # what the step unpacks
    if not (isinstance(out, pair) and len(out) == 2) or not (
        isinstance(out[1], pair) and len(out[1]) == 2 and isinstance(out[1][0], Mapping)
    ):
        raise ConfigError(f"loss: returned {type(out).__name__}, expected {shape}")
    value, (metrics, _model_state) = out
    if getattr(value, "shape", None) != ():
        raise ConfigError(f"loss: the loss has shape {getattr(value, 'shape', None)}, not a scalar")
    if "loss" in metrics:
        raise ConfigError("loss: a metric named 'loss' would replace the loss; call it otherwise")
    for name, v in metrics.items():
        shape = getattr(v, "shape", None)  # every traced leaf has one
        if shape is None or math.prod(shape) != 1:
            raise ConfigError(
                f"loss: metric {name!r} has shape {shape}, expected one number (its mean over "
                "the batch)"
            )
    return frozenset(map(str, metrics))


def _traces(fn: Callable, *args) -> bool:
    try:
        jax.eval_shape(fn, *args)
    except Exception:  # noqa: BLE001 - any failure: the check it guards is not run
        return False
    return True


def fit(
    model: nn.Module,
    loss: Callable,
    train_data: grain.MapDataset,
    val_data: grain.MapDataset | None = None,
    *,
    workdir: Path | str,
    train: TrainConfig | None = None,
    optim: OptimConfig | None = None,
    evaluate: Callable[[Callable], dict[str, float]] | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
    log=print,
):
    """Train `model` with `loss` on `train_data` in `workdir` (resuming it when it holds a
    checkpoint); returns a `RunResult` (workdir, state, history, status, seconds). Without
    `val_data` the training examples are also the validation ones."""
    from jaxmir.engine.run import train as run_train

    cfg = Config(
        task=CustomTask.name,
        preset="custom",
        model=NoConfig(),
        data=NoConfig(),
        decode=NoConfig(),
        # the types a --set would have been held to (a str, a float epoch count, a dict)
        train=checked_section(train if train is not None else TrainConfig(), "train"),
        optim=checked_section(optim if optim is not None else OptimConfig(), "optim"),
    )
    if cfg.train.watch_splits:  # the task would score val_data under each split's name
        raise ConfigError("train.watch_splits: fit has no splits but train_data and val_data")
    t = cfg.train
    _check_data(train_data, "train_data", t.batch_size)
    if val_data is not None:
        _check_data(val_data, "val_data", t.val_batch_size)
    check_monitor_logged(
        t.monitor, t.val_steps, "no evaluate is given" if evaluate is None else None
    )
    val_n = len(val_data if val_data is not None else train_data)
    read = t.val_steps * t.val_batch_size
    if t.val_steps and read != val_n:
        how = "some count more than others" if read > val_n else f"only the first {read}"
        log(
            f"Validation reads {t.val_steps} x {t.val_batch_size} = {read} examples of the "
            f"{val_n} in {'val_data' if val_data is not None else 'train_data'}: {how} "
            "(train.val_steps x train.val_batch_size = their number reads each once)"
        )
    task = CustomTask(model, loss, train_data, val_data, evaluate)
    metrics = _check_model_and_loss(model, loss, train_data, t.batch_size)
    task.batch_metrics = metrics if t.val_steps > 0 else frozenset()  # none logged from val
    return run_train(task, cfg, workdir, devices=devices, progress=progress, log=log)


def load_fitted(
    model: nn.Module, workdir: Path | str, example: Mapping, *, step: int | None = None
) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """(predict, step) of a `fit` run in `workdir`: its best checkpoint by `train.monitor` (the
    latest where none is ranked), or `step`, on one device. `predict(x_batch) -> numpy
    outputs` runs those weights in inference mode on a batch of any size; `example` is one
    example as the run's data held them (a dict with "x"), for the input's shape."""
    from jaxmir.engine.run import make_predict, restore_for_inference

    def no_loss(*args):
        raise RuntimeError("load_fitted restores weights for inference; it does not train")

    task = CustomTask(model, no_loss, grain.MapDataset.source([dict(example)]))
    _, mesh, state, step = restore_for_inference(task, workdir, step)
    return make_predict(mesh, state), step
