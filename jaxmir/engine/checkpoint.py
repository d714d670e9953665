"""Orbax checkpoints of a run: the TrainState, the Grain data iterator and a JSON `meta`.

One `CheckpointManager` per workdir keeps the latest N checkpoints (resume) and the best K by the
monitored metric (evaluation). Saves are asynchronous: Orbax copies device arrays to host inside
`save()` before it returns, so the next (donating) train step cannot corrupt a save in flight;
the write to disk finishes in the background and is awaited before exit or restore.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import inspect
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from jaxmir.engine.callbacks import monitor_mode
from jaxmir.engine.sharding import is_primary, processes_without, sync


class CheckpointError(Exception):
    """No checkpoint of the run can be restored (the message names the steps and why)."""


class Checkpointer:
    """The run's checkpoint directory (`<workdir>/checkpoints`)."""

    def __init__(
        self,
        directory: Path,
        *,
        monitor: str = "val_loss",
        mode: str = "auto",
        keep_latest: int = 1,
        keep_best: int = 1,
        async_save: bool = True,
    ):
        self.directory = Path(directory).absolute()
        self.monitor = monitor
        self.mode = monitor_mode(monitor, mode)
        sign = 1.0 if self.mode == "max" else -1.0

        def score(metrics: dict) -> float:
            # Orbax keeps the highest scores; interrupt saves without metrics rank last.
            if not metrics or monitor not in metrics:
                return -float("inf")
            return sign * float(metrics[monitor])

        policy = ocp.checkpoint_managers.AnyPreservationPolicy(
            [
                ocp.checkpoint_managers.LatestN(keep_latest),
                ocp.checkpoint_managers.BestN(get_metric_fn=score, reverse=False, n=keep_best),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=score,
            best_mode="max",
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    # -- saving -------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        state: Any,
        data_iterator: Any | None,
        meta: dict,
        metrics: dict | None = None,
    ) -> None:
        items = {"state": ocp.args.StandardSave(_savable(state)), "meta": ocp.args.JsonSave(meta)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        if step in self.manager.all_steps():
            if not self._replaces_interrupt_save(step, metrics, meta):
                return  # already saved at this step (e.g. an interrupt right after an epoch save)
            # An interrupt save (no score) at the end of an epoch's steps, before its validation
            # finished: the resumed epoch's save holds the same state with its score and marks,
            # without which the best checkpoint would be chosen among the others. Orbax writes
            # no step twice, so the old one goes first and the new one is written at once: a
            # crash in those seconds resumes from the checkpoint before (the best kept, or the
            # start), to the same state, at the cost of the steps since.
            self.manager.wait_until_finished()
            self.manager.delete(step)
            self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics or {})
            self.manager.wait_until_finished()
            return
        self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics or {})

    def _replaces_interrupt_save(self, step: int, metrics: dict | None, meta: dict) -> bool:
        """Whether a save at `step`, which exists, brings what an interrupt save there lacks:
        the monitored score, or an early stop's mark."""
        if self._has_metric(step):
            return False
        return bool(metrics and self.monitor in metrics) or "status" in meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    # -- restoring ------------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """The best step by the monitored metric; the latest one when none has metrics."""
        steps = self.manager.all_steps()
        if not steps:
            return None
        ranked = [s for s in steps if self._has_metric(s)]
        return self.manager.best_step() if ranked else self.manager.latest_step()

    def _has_metric(self, step: int) -> bool:
        for info in self.manager._checkpoints:  # noqa: SLF001 - orbax keeps metrics only here
            if info.step == step:
                return bool(info.metrics) and self.monitor in info.metrics
        return False

    def restore(
        self,
        step: int,
        state_template: Any,
        data_iterator: Any | None = None,
    ) -> tuple[Any, dict]:
        """Restore `step` onto the shapes, dtypes and shardings of `state_template`.

        The data iterator, when given, is set to its saved position in place. A checkpoint
        written by another number of processes restores too: the position (global batches
        consumed) is the same for every process count (see `jaxmir.data.pipeline`).
        """
        self.wait()
        template = state_template
        saved = self._saved_callbacks(step)
        if saved is not None and set(template.callbacks) - saved:
            # a callback this run has and the saved one had not (early stopping switched on
            # by a resume of a run saved before it was always kept): it starts afresh
            template = template.replace(
                callbacks={k: v for k, v in template.callbacks.items() if k in saved}
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _savable(template))
        items = {"state": ocp.args.StandardRestore(abstract), "meta": ocp.args.JsonRestore()}
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if data_iterator is not None:
            # read here rather than by Orbax: a process's own file can fail where the others'
            # read, and inside Orbax's restore that failure skips a barrier the others wait at
            data_iterator.set_state(self._data_position(step))
        state = _merge(state_template, restored["state"])
        state = state.replace(callbacks={**state_template.callbacks, **state.callbacks})
        return state, dict(restored["meta"])

    def _saved_callbacks(self, step: int) -> set[str] | None:
        """The names of the callbacks whose state `step` holds, from its tree metadata; None
        where that cannot be read (the restore then says why)."""
        try:
            tree = json.loads((self.directory / str(step) / "state" / "_METADATA").read_text())
            paths = [ast.literal_eval(key) for key in tree["tree_metadata"]]
        except (OSError, ValueError, SyntaxError, KeyError, TypeError):
            return None
        return {p[1] for p in paths if isinstance(p, tuple) and len(p) > 1 and p[0] == "callbacks"}

    def _data_position(self, step: int) -> dict:
        """The data-iterator position this process saved at `step`; that of process 0 where
        the run had another number of processes."""
        folder = self.directory / str(step) / "data"
        mine = folder / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        if not mine.is_file():
            mine = next(iter(sorted(folder.glob("process_0-of-*.json"))), mine)
        position = json.loads(mine.read_text())
        if not isinstance(position, dict):
            raise ValueError(f"{mine}: not a data-iterator position")
        return position

    def restore_newest_intact(
        self,
        state_template: Any,
        data_iterator: Any | None,
        warn: Callable[[str], None],
    ) -> tuple[int, Any, dict] | None:
        """Restore the newest checkpoint that reads back whole: (step, state, meta), or None
        when there is none.

        A step that fails to read (a truncated array, `_METADATA` or meta, an empty iterator
        file) is moved aside to `<workdir>/corrupt-checkpoints/` with a warning naming it, and
        the next older one is tried. When no step restores, nothing is moved (the cause is then
        more likely the code than the files) and CheckpointError names the newest failure.
        """
        failed: list[tuple[int, str]] = []
        newest: Exception | None = None  # the only failure kept: the one raised when none restores
        restored = None
        with abandoned_reads_dropped() as handled:
            for step in sorted(self.manager.all_steps(), reverse=True):
                attempt, reason = None, ""
                try:
                    state, meta = self.restore(step, state_template, data_iterator)
                    resumable_meta(meta)
                    attempt = (step, state, meta)
                except Exception as e:  # noqa: BLE001 - Orbax, TensorStore and JSON raise many kinds
                    reason = first_line(e)
                    newest = newest or e
                    handled()
                # every process resumes from the same step (a process's own data-iterator
                # file may be the one that fails): a step any process cannot read is skipped
                failing = processes_without(attempt is not None)
                if not failing:
                    restored = attempt
                    break
                failed.append((step, reason or f"a read error on process {failing[0]}"))
            if restored is not None:
                newest = None  # the failed reads go with it, collected in the scope
        if restored is not None:
            for bad, reason in failed:
                moved = self._move_aside(bad)
                warn(
                    f"warning: checkpoint {bad} is unreadable ({reason}); "
                    f"moved to {moved}; resuming from step {restored[0]}"
                )
            return restored
        if failed:
            step, reason = failed[0]
            raise CheckpointError(
                f"{self.directory}: no checkpoint can be restored; the newest, {step}, fails "
                f"with: {reason}"
            ) from newest
        return None

    def _move_aside(self, step: int) -> Path:
        target = self.directory.parent / "corrupt-checkpoints" / str(step)
        n = 1
        while target.exists():
            n += 1
            target = target.with_name(f"{step}-{n}")
        if is_primary():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(self.directory / str(step), target)
        sync(f"jaxmir-move-aside-{step}")
        self.manager.reload()
        return target

    def restore_meta(self, step: int) -> dict:
        self.wait()
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])


def resumable_meta(meta: Any) -> None:
    """ValueError where a checkpoint's meta does not say where its run stands (valid JSON of
    other content: a resume failed on it with a KeyError, every time, the step kept)."""
    if not isinstance(meta, dict):
        raise ValueError(f"meta: not an object ({type(meta).__name__})")
    for key in ("epoch", "step_in_epoch"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"meta: {key} is {value!r}, not a count")


@contextlib.contextmanager
def abandoned_reads_dropped() -> Iterator[Callable[[], None]]:
    """Keep a failed restore from printing a hundred tracebacks after its one-line message.

    When one array of a step fails to read, Orbax abandons the reads of the others: their
    coroutines are finalised unawaited, each re-raising its own read error, and TensorStore's
    threads call back into the closed event loop ("Event loop is closed"). Python prints each
    through `sys.unraisablehook` (about 130 for a 4-array state), some during the restore and
    the rest whenever the failed read's exception is freed, and TensorStore's callbacks
    whenever its threads get to them. Inside this scope a hook drops those two kinds and
    passes on anything else (a callback into a closed loop can do nothing, an abandoned read
    was already reported). Call the value it yields after handling a failed restore, or let
    an exception leave the scope: the hook then stays for the rest of the process, since the
    callbacks come later on other threads; after a scope with no failure it is removed.
    """
    installed = sys.unraisablehook
    handled: list[bool] = []

    def hook(unraisable: Any) -> None:
        if not _is_abandoned_read(unraisable):
            installed(unraisable)

    sys.unraisablehook = hook
    try:
        yield lambda: handled.append(True)
    except BaseException:
        gc.collect()  # what nothing holds now; the rest goes with the exception, dropped too
        raise
    if handled:
        gc.collect()  # the handled failures' reads, finalised now
    elif sys.unraisablehook is hook:
        sys.unraisablehook = installed


def _is_abandoned_read(unraisable: Any) -> bool:
    """An Orbax read coroutine finalised unawaited, or a callback into its closed event loop."""
    error, thing = unraisable.exc_value, unraisable.object
    if isinstance(error, RuntimeError) and "Event loop is closed" in str(error):
        return True
    return inspect.iscoroutine(thing) and "orbax" in thing.cr_code.co_filename


def first_line(error: Exception) -> str:
    """The error's type and first line, without TensorStore's multi-line spec dump."""
    text = str(error).strip().splitlines()
    line = text[0].split(" See full TensorStore details")[0] if text else ""
    return f"{type(error).__name__}: {line}"[:300]


def _savable(state: Any) -> dict:
    """The array fields of a TrainState as a plain dict (apply_fn and tx are code, not data)."""
    return {
        "step": state.step,
        "epoch": state.epoch,
        "params": state.params,
        "batch_stats": state.batch_stats,
        "opt_state": state.opt_state,
        "rng": state.rng,
        "callbacks": state.callbacks,
    }


def _merge(template: Any, restored: dict) -> Any:
    return template.replace(**restored)
