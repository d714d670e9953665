"""The epoch driver: steps inside epochs, validation, callbacks and their actions.

`train_steps` runs N jitted steps and keeps the running means on device, reading them back only
when the bar refreshes; `train_epochs` threads one TrainState through epochs, validation and the
pure callbacks, and carries out the actions they return through a `Checkpointer`. Everything
with a side effect (bar, writer, checkpoints, signals) is passed in, so the loop is easy to test.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmir.engine.actions import Log, Save, Stop
from jaxmir.engine.callbacks import Callback, run_callbacks
from jaxmir.engine.report import bar_postfix, progress_bar
from jaxmir.engine.state import TrainState, learning_rate


class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps (installed as a context).

    `requested` is this process's flag; `poll()` is where the processes agree: in a
    multi-process run they stop together, at the same step, when any of them got a signal."""

    def __init__(self):
        self.requested: str | None = None
        self.agreed: str | None = None
        self._previous: dict = {}

    def poll(self) -> str | None:
        """The signal to stop on, agreed by every process (a collective: all processes call it
        at the same points)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            flags = multihost_utils.process_allgather(np.int32(self.requested is not None))
            if np.any(flags):
                self.agreed = self.requested or "SIGTERM (another process)"
        else:
            self.agreed = self.requested
        return self.agreed

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals can't be caught here
                continue
            # a stop around this one (calibration around beat's tagger run) caught a signal
            # before this one was installed: this one's loop must stop on it too (it trained
            # the whole tagger first)
            outer = getattr(self._previous[sig], "__self__", None)
            if isinstance(outer, StopSignal) and outer.requested and not self.requested:
                self.requested = outer.requested
        return self

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


class Interrupted(Exception):
    """Validation cut short by a stop signal: the epoch's steps are saved, validation re-runs
    on resume (so a pre-emption grace period is never spent validating)."""


@dataclasses.dataclass
class RunningMeans:
    """Sums of per-step metrics, kept on device until read.

    `to_json()` / `from_json()` carry the sums of an epoch cut by an interrupt into its
    checkpoint, so the resumed epoch reports the same means, to the bit, as an uninterrupted
    one (float32 sums survive the trip through JSON's float64 exactly).

    A metric logged on only some of the epoch's steps (`train.log_grad_norm` switched by a
    resume mid-epoch) is the mean over the steps that logged it (`counts`)."""

    sums: dict | None = None
    count: int = 0
    counts: dict = dataclasses.field(default_factory=dict)  # only where not `count`

    def add(self, metrics: dict) -> None:
        if self.sums is None:
            self.sums = metrics
        elif metrics.keys() == self.sums.keys():
            self.sums = jax.tree.map(jnp.add, self.sums, metrics)
            for k in self.counts:
                self.counts[k] += 1
        else:
            for k in set(self.sums) - set(metrics):  # not logged on this step
                self.counts.setdefault(k, self.count)
            for k in set(metrics) - set(self.sums):  # logged from this step on
                self.counts[k] = 0
            self.sums = {
                **self.sums,
                **{k: self.sums[k] + v if k in self.sums else v for k, v in metrics.items()},
            }
            for k in metrics:
                if k in self.counts:
                    self.counts[k] += 1
        self.count += 1

    def read(self) -> dict[str, float]:
        if self.sums is None:
            return {}
        host = jax.device_get(self.sums)
        return {k: float(v) / self.counts.get(k, self.count) for k, v in host.items()}

    def to_json(self) -> dict:
        host = jax.device_get(self.sums) if self.sums is not None else {}
        out = {
            "count": self.count,
            "sums": {k: [float(v), str(np.asarray(v).dtype)] for k, v in host.items()},
        }
        return out | ({"counts": dict(self.counts)} if self.counts else {})

    @classmethod
    def from_json(cls, saved: dict | None) -> RunningMeans:
        if not saved or not saved.get("count"):
            return cls()
        sums = {k: jnp.asarray(np.asarray(v, dtype)) for k, (v, dtype) in saved["sums"].items()}
        return cls(sums, int(saved["count"]), dict(saved.get("counts", {})))


@dataclasses.dataclass
class Hooks:
    """The driver's effects, all optional: where it reports and how it saves."""

    write: Callable[[str, int, int, str, dict], None] | None = None  # (kind, step, epoch, split, m)
    save: Callable[[TrainState, dict | None, dict], None] | None = None  # (state, metrics, meta)
    log: Callable[[str], None] = print
    stop_signal: StopSignal | None = None
    interrupt_at_step: int | None = None  # test hook: raise SIGTERM after this global step
    progress: bool = True
    place: Callable[[TrainState], TrainState] | None = None  # state back onto the mesh


def train_steps(
    state: TrainState,
    step_fn: Callable,
    batches: Iterator[dict],
    n_steps: int,
    *,
    put_batch: Callable[[dict], dict],
    callbacks: Sequence[Callback] = (),
    log_every: int = 50,
    hooks: Hooks | None = None,
    epoch: int = 0,
    title: str = "Train   ",
    means: RunningMeans | None = None,
    offset: int = 0,
) -> tuple[TrainState, RunningMeans, tuple, int]:
    """Run up to `n_steps` steps. Returns (state, running means, actions, steps done).

    `means` and `offset` continue an epoch resumed after `offset` steps (sums carried from
    its checkpoint), so logging and step callbacks fall on the same steps as without a break.
    Stops early when a step callback returns Stop or the processes agree on a stop signal."""
    hooks = hooks or Hooks()
    means = means if means is not None else RunningMeans()
    actions: list = []
    bar = progress_bar(offset + n_steps, title, hooks.progress)
    bar.update(offset)
    done = 0
    try:
        for done in range(1, n_steps + 1):  # noqa: B007 - `done` is read after the loop
            state, metrics = step_fn(state, put_batch(next(batches)))
            means.add(metrics)
            bar.update(1)
            in_epoch = offset + done
            if in_epoch % log_every == 0:
                global_step = int(state.step)
                logs = means.read()
                bar.set_postfix_str(bar_postfix(logs), refresh=False)
                if hooks.write:  # numbered from 1, as the epoch's own record is
                    hooks.write("step", global_step, epoch + 1, "train", logs)
                state, acts = run_callbacks(
                    callbacks,
                    state,
                    {**logs, "step": global_step, "epoch": epoch},
                    at_step=in_epoch,
                )
                state = hooks.place(state) if hooks.place else state
                actions.extend(acts)
            if hooks.interrupt_at_step is not None and int(state.step) == hooks.interrupt_at_step:
                signal.raise_signal(signal.SIGTERM)
            if any(isinstance(a, Stop) for a in actions) or (
                hooks.stop_signal is not None and hooks.stop_signal.poll()
            ):
                break
        else:
            done = n_steps
    finally:
        bar.set_postfix_str(bar_postfix(means.read()), refresh=True)
        bar.close()
    return state, means, tuple(actions), done


def evaluate_batches(
    state: TrainState,
    eval_fn: Callable,
    batches: Iterator[dict],
    n_steps: int,
    *,
    put_batch: Callable[[dict], dict],
    progress: bool = True,
    stop_signal: StopSignal | None = None,
) -> dict[str, float]:
    """Mean of `eval_fn` metrics over `n_steps` batches; raises `Interrupted` when the
    processes agree on a stop signal."""
    means = RunningMeans()
    bar = progress_bar(n_steps, "Validate", progress)
    for _ in range(n_steps):
        if stop_signal is not None and stop_signal.poll():
            bar.close()
            raise Interrupted(stop_signal.agreed)
        means.add(eval_fn(state, put_batch(next(batches))))
        bar.update(1)
    logs = means.read()
    bar.set_postfix_str(bar_postfix(logs), refresh=True)
    bar.close()
    return logs


@dataclasses.dataclass
class EpochPlan:
    epochs: int
    steps_per_epoch: int
    val_steps: int
    log_every: int = 50
    start_epoch: int = 0  # completed epochs (resume)
    start_step_in_epoch: int = 0  # steps already done in the current epoch (resume)
    start_means: dict | None = None  # that epoch's metric sums so far (RunningMeans.to_json)


def train_epochs(
    state: TrainState,
    *,
    train_step: Callable,
    eval_step: Callable | None,
    train_batches: Iterator[dict],
    val_batches: Callable[[], Iterator[dict]] | None,
    put_batch: Callable[[dict], dict],
    plan: EpochPlan,
    callbacks: Sequence[Callback] = (),
    piece_metrics: Callable[[TrainState], dict[str, float]] | None = None,
    hooks: Hooks | None = None,
) -> tuple[TrainState, dict[str, list], str]:
    """Epochs x steps with validation and callbacks.

    Returns (state, history {"train": [...], "validate": [...]}, status) where status is
    "finished", "stopped: <reason>", "failed: <reason>" (a `Stop(failed=True)`: a NaN loss)
    or "interrupted: <signal>".
    """
    hooks = hooks or Hooks()
    history: dict[str, list] = {"train": [], "validate": []}
    step_in_epoch = plan.start_step_in_epoch
    means = RunningMeans.from_json(plan.start_means)
    stop_signal = hooks.stop_signal
    for epoch in range(plan.start_epoch, plan.epochs):
        hooks.log(f"Epoch: {epoch + 1}/{plan.epochs}")
        state, means, actions, done = train_steps(
            state,
            train_step,
            train_batches,
            plan.steps_per_epoch - step_in_epoch,
            put_batch=put_batch,
            callbacks=callbacks,
            log_every=plan.log_every,
            hooks=hooks,
            epoch=epoch,
            means=means,
            offset=step_in_epoch,
        )
        step_in_epoch += done
        train_logs = means.read()
        _log_actions(actions, hooks)
        if stop_signal is not None and stop_signal.agreed:
            _save_interrupted(hooks, state, epoch, step_in_epoch, means)
            return state, history, f"interrupted: {stop_signal.agreed}"
        stop = _first_stop(actions)
        if stop is not None:
            # A step-level stop (e.g. NaN loss): keep the last good checkpoint, save nothing.
            return state, history, _stopped(stop)

        val_logs: dict[str, float] = {}
        try:
            if eval_step is not None and val_batches is not None and plan.val_steps > 0:
                val_logs = evaluate_batches(
                    state,
                    eval_step,
                    val_batches(),
                    plan.val_steps,
                    put_batch=put_batch,
                    progress=hooks.progress,
                    stop_signal=stop_signal,
                )
            if piece_metrics is not None:
                val_logs.update(piece_metrics(state))
        except Interrupted as e:
            _save_interrupted(hooks, state, epoch, step_in_epoch, means)
            return state, history, f"interrupted: {e}"
        state = state.replace(epoch=state.epoch + 1)
        step = int(state.step)
        train_logs = {**train_logs, "lr": learning_rate(state)}
        history["train"].append(train_logs)
        history["validate"].append(val_logs)
        if hooks.write:
            hooks.write("epoch", step, epoch + 1, "train", train_logs)
            hooks.write(
                "epoch", step, epoch + 1, "val", {f"val_{k}": v for k, v in val_logs.items()}
            )
        if val_logs:
            hooks.log("Validate: " + ", ".join(f"{k}: {v:.4f}" for k, v in val_logs.items()))
        logs = {
            **train_logs,
            **{f"val_{k}": v for k, v in val_logs.items()},
            "epoch": epoch + 1,
            "step": step,
        }
        state, actions = run_callbacks(callbacks, state, logs)
        state = hooks.place(state) if hooks.place else state
        _log_actions(actions, hooks)
        step_in_epoch = 0
        means = RunningMeans()
        meta = {"epoch": epoch + 1, "step_in_epoch": 0, "logs": _jsonable(logs)}
        saves = [a for a in actions if isinstance(a, Save)]
        stop = _first_stop(actions)
        if stop is not None and stop.failed:  # a NaN state is not saved
            return state, history, _stopped(stop)
        if stop is not None:
            meta["status"] = "stopped"
        if hooks.save and (saves or stop is not None or epoch + 1 == plan.epochs):
            hooks.save(state, saves[0].metrics if saves else None, meta)
        if stop is not None:
            return state, history, _stopped(stop)
        if stop_signal is not None and stop_signal.poll():
            if hooks.save and not saves:
                hooks.save(state, None, meta)
            return state, history, f"interrupted: {stop_signal.agreed}"
    return state, history, "finished"


def _first_stop(actions) -> Stop | None:
    """The stop to act on: a failed one (NaN) before an ordinary one; None without any."""
    stops = [a for a in actions if isinstance(a, Stop)]
    return next((a for a in stops if a.failed), stops[0] if stops else None)


def _stopped(stop: Stop) -> str:
    return f"{'failed' if stop.failed else 'stopped'}: {stop.reason}"


def _save_interrupted(
    hooks: Hooks, state: TrainState, epoch: int, step_in_epoch: int, means: RunningMeans
) -> None:
    """Save a step inside an epoch (or before its validation) with the epoch's running sums."""
    if hooks.save:
        meta = {
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "reason": "interrupt",
            "running_means": means.to_json(),
        }
        hooks.save(state, None, meta)


def _log_actions(actions, hooks: Hooks) -> None:
    for a in actions:
        if isinstance(a, Log):
            hooks.log(a.message)
        elif isinstance(a, Stop):
            hooks.log(f"Stopping: {a.reason}")


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, float | np.floating) else v) for k, v in d.items()}
