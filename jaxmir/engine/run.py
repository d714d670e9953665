"""A training run at the edge: workdir, data, state, checkpoints, signals, reports.

`train(task, cfg)` builds everything from the config, resumes the workdir's latest checkpoint
when there is one, runs the epoch driver and leaves config.json, metrics.jsonl, TensorBoard
events, checkpoints and curves.png in the workdir.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from jaxmir.config import Config, ConfigError, check_resume_compatible, save_config, validate
from jaxmir.data.cache import FeatureCache
from jaxmir.data.pipeline import batch_iterator
from jaxmir.engine import callbacks as cb
from jaxmir.engine.checkpoint import Checkpointer
from jaxmir.engine.loop import EpochPlan, Hooks, StopSignal, train_epochs
from jaxmir.engine.optim import make_optimizer
from jaxmir.engine.report import MetricsWriter, plot_curves
from jaxmir.engine.sharding import (
    check_batch_size,
    local_batch_size,
    make_mesh,
    put_batch,
    put_replicated,
)
from jaxmir.engine.state import TrainState, eval_variables
from jaxmir.engine.step import make_eval_step, make_predict_fn, make_train_step


def cache_root() -> Path:
    return Path(os.environ.get("JAXMIR_CACHE", Path.home() / ".cache" / "jaxmir"))


def default_workdir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.task}-{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve_data(task, cfg: Config, data: Path | str | None, progress: bool = True) -> FeatureCache:
    """The run's feature cache: `--data DIR`, else the embedded corpus (built once)."""
    if data is None:
        data = task.default_data(cfg, cache_root(), progress=progress)
    cache = FeatureCache(data)
    if cache.task != task.name:
        raise ValueError(
            f"{cache.root}: a feature cache for task {cache.task!r}, not {task.name!r}"
        )
    return cache


def make_callbacks(cfg: Config) -> list:
    t, o = cfg.train, cfg.optim
    out: list = []
    if t.terminate_on_nan:
        out.append(cb.TerminateOnNaN(every_steps=t.log_every))
    if o.lr_schedule == "step":
        out.append(cb.StepDecay(o.learning_rate, o.decay_rate, o.decay_every, o.min_lr))
    elif o.lr_schedule == "exponential":
        out.append(cb.ExponentialDecay(o.learning_rate, o.decay_rate, o.min_lr))
    elif o.lr_schedule == "plateau":
        out.append(cb.ReduceLROnPlateau(t.monitor, o.decay_rate, o.plateau_patience, o.min_lr))
    elif o.lr_schedule != "constant":
        raise ValueError(
            f"optim.lr_schedule: unknown schedule {o.lr_schedule!r} "
            "(constant, step, exponential, plateau)"
        )
    if t.early_stop_patience is not None:
        out.append(cb.EarlyStopping(t.monitor, t.early_stop_patience, t.early_stop_min_delta))
    out.append(cb.ModelCheckpoint(t.monitor))
    return out


def init_state(task, cfg: Config, mesh, callbacks: Sequence) -> TrainState:
    """A fresh TrainState, replicated over `mesh`."""
    model = task.model(cfg)
    spec = task.input_spec(cfg)
    rng = jax.random.PRNGKey(cfg.train.seed)
    init_rng, state_rng = jax.random.split(rng)
    dummy = np.zeros((1, *spec.shape), spec.dtype)
    variables = jax.jit(lambda r, x: model.init(r, x, train=False))(init_rng, dummy)
    state = TrainState.create(
        apply_fn=model.apply,
        variables=dict(variables),
        tx=make_optimizer(cfg.optim),
        rng=state_rng,
        callbacks=cb.init_callback_states(callbacks),
    )
    return put_replicated(state, mesh)


def make_predict(mesh, state: TrainState, fn=None):
    """`predict(windows) -> numpy outputs` for the state's current weights.

    Pass `fn` (from `make_predict_fn`) to reuse one compiled function across calls."""
    fn = fn or make_predict_fn(state.apply_fn, mesh)
    variables = eval_variables(state)

    def predict(windows: np.ndarray) -> np.ndarray:
        return np.asarray(jax.device_get(fn(variables, windows)))

    return predict


@dataclasses.dataclass
class RunResult:
    workdir: Path
    state: TrainState
    history: dict
    status: str
    seconds: float


def train(
    task,
    cfg: Config,
    workdir: Path | str | None = None,
    data: Path | str | None = None,
    *,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = True,
    log=print,
) -> RunResult:
    """Train `task` with `cfg` in `workdir` (resuming it when it holds a checkpoint).

    One run per workdir at a time: a second one gets ConfigError naming the holder's PID."""
    validate(cfg)
    workdir = Path(workdir) if workdir is not None else default_workdir(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    with WorkdirLock(workdir):
        return _train(task, cfg, workdir, data, devices=devices, progress=progress, log=log)


class WorkdirLock:
    """An exclusive `flock` on `workdir/.lock` (released by the kernel if the process dies),
    taken by process 0 only (the others share its workdir on a cluster)."""

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / ".lock"
        self._fd: int | None = None

    def __enter__(self):
        if jax.process_index() != 0:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"{self.path.parent}: another run (PID {holder}) is training in this workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None
        return False


def _config_in_checkpoint(config_path: Path, checkpointer, step: int) -> dict:
    """The run's config when config.json is gone: the one saved with the checkpoint."""
    saved = checkpointer.restore_meta(step).get("config")
    if saved is None:
        raise ConfigError(
            f"{config_path}: missing, and checkpoint {step} carries no config to resume with"
        )
    return saved


def _train(task, cfg: Config, workdir: Path, data, *, devices, progress, log) -> RunResult:
    t0 = time.time()
    ckpt_dir = workdir / "checkpoints"
    config_path = workdir / "config.json"
    resuming = ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())
    if resuming and config_path.is_file():  # refuse a changed config before any work
        check_resume_compatible(json.loads(config_path.read_text()), cfg)

    cache = resolve_data(task, cfg, data, progress) if task.needs_cache else None
    mesh = make_mesh(devices)
    check_batch_size(cfg.train.batch_size, mesh)
    check_batch_size(cfg.train.val_batch_size, mesh, "train.val_batch_size")
    callbacks = make_callbacks(cfg)
    state = init_state(task, cfg, mesh, callbacks)

    train_ds = task.dataset(cfg, cache, "train", True)
    train_iter = batch_iterator(
        train_ds, local_batch_size(cfg.train.batch_size), cfg.train.data_threads
    )

    def val_batches():
        ds = task.dataset(cfg, cache, "val", False)
        return batch_iterator(ds, local_batch_size(cfg.train.val_batch_size), 1)

    checkpointer = Checkpointer(
        ckpt_dir,
        monitor=cfg.train.monitor,
        keep_latest=cfg.train.keep_latest,
        keep_best=cfg.train.keep_best,
    )
    plan = EpochPlan(
        epochs=cfg.train.epochs,
        steps_per_epoch=cfg.train.steps_per_epoch,
        val_steps=cfg.train.val_steps,
        log_every=cfg.train.log_every,
    )
    latest = checkpointer.latest_step()
    if latest is not None:
        if not config_path.is_file():
            check_resume_compatible(_config_in_checkpoint(config_path, checkpointer, latest), cfg)
        state, meta = checkpointer.restore(latest, state, train_iter)
        plan = dataclasses.replace(
            plan, start_epoch=int(meta["epoch"]), start_step_in_epoch=int(meta["step_in_epoch"])
        )
        if meta.get("status") == "stopped":
            checkpointer.close()
            log(f"{workdir}: this run was stopped early at step {latest}; nothing to resume")
            return RunResult(workdir, state, {"train": [], "validate": []}, "stopped", 0.0)
        log(f"Resuming {workdir} from step {latest} (epoch {plan.start_epoch + 1})")
    else:
        log(f"Training {task.name} ({cfg.preset}) in {workdir}")
    save_config(cfg, config_path)  # only once a resume has succeeded

    writer = MetricsWriter(workdir, resume_step=latest or 0)

    def save(st: TrainState, metrics, meta):
        meta = {**meta, "step": int(st.step), "config": cfg.to_dict()}
        checkpointer.save(int(st.step), st, train_iter, meta, metrics)

    predict_fn = make_predict_fn(state.apply_fn, mesh)

    def piece_metrics(st: TrainState) -> dict[str, float]:
        return task.evaluate(make_predict(mesh, st, predict_fn), cfg, cache, "val")

    loss_fn = task.bind_loss(cfg)
    try:
        with StopSignal() as stop_signal:
            hooks = Hooks(
                write=writer.write,
                save=save,
                log=log,
                stop_signal=stop_signal,
                interrupt_at_step=cfg.train.interrupt_at_step,
                progress=progress,
            )
            state, history, status = train_epochs(
                state,
                train_step=make_train_step(
                    loss_fn,
                    mesh,
                    precision=cfg.train.precision,
                    grad_accum=cfg.train.grad_accum,
                    grad_norm=cfg.train.log_grad_norm,
                ),
                eval_step=make_eval_step(loss_fn, mesh, precision=cfg.train.precision),
                train_batches=train_iter,
                val_batches=val_batches,
                put_batch=lambda b: put_batch(b, mesh),
                plan=plan,
                callbacks=callbacks,
                piece_metrics=piece_metrics if cfg.train.eval_pieces_each_epoch else None,
                hooks=hooks,
            )
    finally:
        checkpointer.close()
        writer.close()
    plot_curves(workdir / "metrics.jsonl", workdir / "curves.png")
    seconds = time.time() - t0
    log(f"Run {status} after {seconds:.1f} s; outputs in {workdir}")
    return RunResult(workdir, state, history, status, seconds)
