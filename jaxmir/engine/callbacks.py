"""Pure callbacks: `(state, logs) -> (state, actions)`.

A callback never touches disk or the clock. Its own state (best value, patience counter, ...) is
kept in `state.callbacks[name]`, so it is checkpointed and restored with the model, and a resumed
run makes the same decisions as an uninterrupted one. It returns actions (`Save`, `Stop`, `Log`)
that the driver carries out.

Each callback runs at epoch end (`every_steps is None`) or every N optimizer steps.
`logs` is a flat dict of floats: the epoch's training means, validation means prefixed `val_`,
plus `epoch` and `step`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Protocol

import jax.numpy as jnp

from jaxmir.config import ConfigError
from jaxmir.engine.actions import Action, Log, Save, Stop
from jaxmir.engine.state import TrainState, learning_rate, with_learning_rate

Logs = dict[str, float]

MAXIMISE_MARKERS = ("acc", "f1", "f_measure", "precision", "recall", "accuracy", "chord_")


def monitor_mode(monitor: str, mode: str = "auto") -> str:
    """ "max" for names with acc/f1/f_measure/precision/recall/accuracy and mir_eval's chord
    scores (chord_majmin, chord_root, ...: fractions of time right), else "min" (mode auto)."""
    if mode in ("min", "max"):
        return mode
    if mode != "auto":
        raise ValueError(f"mode must be auto, min or max, not {mode!r}")
    return "max" if any(m in monitor for m in MAXIMISE_MARKERS) else "min"


def monitored_value(logs: Logs, monitor: str) -> float:
    """`logs[monitor]`; ConfigError naming the logged metrics where it is not one (a name of
    the right form that the task does not log is known only once an epoch has logged)."""
    if monitor not in logs:
        raise ConfigError(
            f"train.monitor: metric {monitor!r} is not logged; logged metrics: "
            f"{', '.join(sorted(logs))}"
        )
    return float(logs[monitor])


def improved(value: float, best: float, mode: str, min_delta: float = 0.0) -> bool:
    if math.isnan(value):
        return False
    if mode == "max":
        return value > best + min_delta
    return value < best - min_delta


def _initial_best(mode: str) -> float:
    return -math.inf if mode == "max" else math.inf


def _scalar(x: float | int):
    return jnp.asarray(x, jnp.float32)


class Callback(Protocol):
    name: str
    every_steps: int | None

    def init_state(self) -> dict: ...

    def __call__(self, state: TrainState, logs: Logs) -> tuple[TrainState, tuple[Action, ...]]: ...


def _own(state: TrainState, name: str) -> dict:
    return state.callbacks[name]


def _with_own(state: TrainState, name: str, values: dict) -> TrainState:
    cbs = dict(state.callbacks)
    cbs[name] = {k: _scalar(v) for k, v in values.items()}
    return state.replace(callbacks=cbs)


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs.

    `patience=None` only keeps count, never stops: every run carries this state, so a resumed
    run may switch early stopping on or off (`train.early_stop_patience`) and still restore."""

    monitor: str = "val_loss"
    patience: int | None = 5
    min_delta: float = 0.0
    mode: str = "auto"
    name: str = "early_stopping"
    every_steps: int | None = None

    def init_state(self) -> dict:
        return {
            "best": _scalar(_initial_best(monitor_mode(self.monitor, self.mode))),
            "wait": _scalar(0),
        }

    def __call__(self, state, logs):
        mode = monitor_mode(self.monitor, self.mode)
        own = _own(state, self.name)
        value = monitored_value(logs, self.monitor)
        best, wait = float(own["best"]), int(own["wait"])
        if improved(value, best, mode, self.min_delta):
            best, wait = value, 0
        else:
            wait += 1
        state = _with_own(state, self.name, {"best": best, "wait": wait})
        if self.patience is not None and wait >= self.patience:
            return state, (Stop(f"{self.monitor} did not improve for {wait} epochs"),)
        return state, ()


@dataclasses.dataclass(frozen=True)
class ModelCheckpoint:
    """Ask for a checkpoint every epoch, ranked by `monitor`.

    Every epoch's save doubles as the "latest" checkpoint a run resumes from; the checkpointer's
    preservation policy keeps the best K by `monitor` and the latest N (N=1 with
    `save_best_only`). The callback's state tracks the best value for the log line.
    """

    monitor: str = "val_loss"
    mode: str = "auto"
    save_best_only: bool = False
    name: str = "model_checkpoint"
    every_steps: int | None = None

    def init_state(self) -> dict:
        return {"best": _scalar(_initial_best(monitor_mode(self.monitor, self.mode)))}

    def __call__(self, state, logs):
        mode = monitor_mode(self.monitor, self.mode)
        value = monitored_value(logs, self.monitor)
        best = float(_own(state, self.name)["best"])
        actions: list[Action] = []
        if improved(value, best, mode):
            actions.append(Log(f"{self.monitor} improved from {best:.5g} to {value:.5g}"))
            best = value
        state = _with_own(state, self.name, {"best": best})
        actions.append(Save(metrics={self.monitor: value}, reason="epoch"))
        return state, tuple(actions)


@dataclasses.dataclass(frozen=True)
class StepDecay:
    """LR = max(initial * factor ** (epochs_done // every), min_lr) (omnizart music: x0.25 / 3)."""

    initial: float
    factor: float = 0.25
    every: int = 3
    min_lr: float = 0.0
    name: str = "step_decay"
    every_steps: int | None = None

    def init_state(self) -> dict:
        return {}

    def __call__(self, state, logs):
        epochs_done = int(logs["epoch"])
        lr = max(self.initial * self.factor ** (epochs_done // self.every), self.min_lr)
        return _set_lr(state, lr)


@dataclasses.dataclass(frozen=True)
class ExponentialDecay:
    """LR = max(initial * rate ** epochs_done, min_lr) (omnizart chord: x0.96 per epoch)."""

    initial: float
    rate: float = 0.96
    min_lr: float = 0.0
    name: str = "exponential_decay"
    every_steps: int | None = None

    def init_state(self) -> dict:
        return {}

    def __call__(self, state, logs):
        lr = max(self.initial * self.rate ** int(logs["epoch"]), self.min_lr)
        return _set_lr(state, lr)


@dataclasses.dataclass(frozen=True)
class ReduceLROnPlateau:
    """Multiply the LR by `factor` after `patience` epochs without improvement of `monitor`."""

    monitor: str = "val_loss"
    factor: float = 0.5
    patience: int = 2
    min_lr: float = 0.0
    min_delta: float = 0.0
    mode: str = "auto"
    name: str = "reduce_lr_on_plateau"
    every_steps: int | None = None

    def init_state(self) -> dict:
        return {
            "best": _scalar(_initial_best(monitor_mode(self.monitor, self.mode))),
            "wait": _scalar(0),
        }

    def __call__(self, state, logs):
        mode = monitor_mode(self.monitor, self.mode)
        own = _own(state, self.name)
        value = monitored_value(logs, self.monitor)
        best, wait = float(own["best"]), int(own["wait"])
        actions: tuple[Action, ...] = ()
        if improved(value, best, mode, self.min_delta):
            best, wait = value, 0
        else:
            wait += 1
            if wait >= self.patience:
                old = learning_rate(state)
                new = max(old * self.factor, self.min_lr)
                if new < old:
                    state = with_learning_rate(state, new)
                    actions = (Log(f"learning rate reduced from {old:.3g} to {new:.3g}"),)
                wait = 0
        return _with_own(state, self.name, {"best": best, "wait": wait}), actions


@dataclasses.dataclass(frozen=True)
class TerminateOnNaN:
    """Stop as soon as the running training loss is NaN or infinite (checked every N steps,
    and on the epoch's mean at its end: an epoch of fewer steps than N, or a NaN after the last
    check, is not saved either)."""

    every_steps: int | None = 50
    name: str = "terminate_on_nan"
    at_epoch_end: bool = True

    def init_state(self) -> dict:
        return {}

    def __call__(self, state, logs):
        loss = float(logs.get("loss", 0.0))
        if not math.isfinite(loss):
            return state, (Stop(f"loss is {loss} at step {int(logs['step'])}", failed=True),)
        return state, ()


def _set_lr(state: TrainState, lr: float) -> tuple[TrainState, tuple[Action, ...]]:
    old = learning_rate(state)
    if math.isclose(old, lr, rel_tol=1e-6):
        return state, ()
    return with_learning_rate(state, lr), (Log(f"learning rate set to {lr:.3g}"),)


def init_callback_states(callbacks: Sequence[Callback]) -> dict:
    names = [cb.name for cb in callbacks]
    if len(set(names)) != len(names):
        raise ValueError(f"callback names must be unique, got {names}")
    return {cb.name: cb.init_state() for cb in callbacks}


def run_callbacks(
    callbacks: Sequence[Callback], state: TrainState, logs: Logs, *, at_step: int | None = None
) -> tuple[TrainState, tuple[Action, ...]]:
    """Run the callbacks due now: epoch-end ones when `at_step` is None, else step ones."""
    actions: list[Action] = []
    for cb in callbacks:
        if at_step is None:
            due = cb.every_steps is None or getattr(cb, "at_epoch_end", False)
        else:
            due = cb.every_steps is not None and at_step % cb.every_steps == 0
        if due:
            state, acts = cb(state, logs)
            actions.extend(acts)
            if any(isinstance(a, Stop) and a.failed for a in acts):
                break  # a failed run saves nothing more: no "improved" line for it either
    return state, tuple(actions)
