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

from jaxmir.config import (
    Config,
    ConfigError,
    check_resume_compatible,
    flatten,
    read_json,
    save_config,
    validate,
)
from jaxmir.data.cache import CacheError, FeatureCache
from jaxmir.data.pipeline import batch_iterator
from jaxmir.engine import callbacks as cb
from jaxmir.engine.checkpoint import Checkpointer, abandoned_reads_dropped, first_line
from jaxmir.engine.loop import EpochPlan, Hooks, Interrupted, StopSignal, train_epochs
from jaxmir.engine.optim import make_optimizer
from jaxmir.engine.report import MetricsWriter, plot_curves
from jaxmir.engine.sharding import (
    batch_sharding,
    check_batch_sizes,
    is_primary,
    make_mesh,
    maybe_initialize_distributed,
    onto_mesh,
    primary_first,
    put_batch,
    put_replicated,
)
from jaxmir.engine.state import TrainState, eval_variables
from jaxmir.engine.step import make_eval_step, make_predict_fn, make_train_step


def cache_root() -> Path:
    return Path(os.environ.get("JAXMIR_CACHE", Path.home() / ".cache" / "jaxmir"))


def default_workdir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.task}-{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"


def resolve_data(
    task, cfg: Config, data: Path | str | None, progress: bool = True, split: str | None = None
) -> FeatureCache:
    """The run's feature cache: `--data DIR`, else the embedded corpus (built once). With
    `split`, a split the embedded corpus cannot hold is a CacheError before it is built."""
    if data is None:
        splits = task.embedded_splits(cfg) if split is not None else None
        if splits is not None and split not in splits:
            how = (
                "; its test_sf_* splits are rendered with another soundfont: `jaxmir eval "
                "--test-soundfont FILE.sf2` (data.corpus_test_soundfont)"
                if split.startswith("test_sf_") and hasattr(cfg.data, "corpus_test_soundfont")
                else ""
            )
            raise CacheError(
                f"the embedded {task.name} corpus of this config has no split {split!r} "
                f"(it has {', '.join(splits)}){how}"
            )
        data = task.default_data(cfg, cache_root(), progress=progress)
    cache = FeatureCache(data)
    if cache.task != task.name:
        raise CacheError(
            f"{cache.root}: a feature cache for task {cache.task!r}, not {task.name!r}"
        )
    return cache


RUN_FILE = "run.json"


def run_data(workdir: Path | str, must_exist: bool = True) -> Path | None:
    """The feature cache a run in `workdir` trained on, as its run.json records it; None for
    the task's embedded corpus (found, or built again, where the cache root now is) and for a
    run with no record. A recorded folder that is gone is a CacheError naming both, unless
    not `must_exist` (only its name is wanted). A record written before run.json marked the
    embedded corpus counts as embedded where it lies under the cache root."""
    path = Path(workdir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except ConfigError as e:
        raise CacheError(f"{e}; name the cache with --data (Python: data=)") from None
    if not isinstance(record, dict):
        raise CacheError(f"{path}: not a record of the run's data; name the cache with --data")
    if record.get("embedded") or not record.get("data"):
        return None
    data = Path(record["data"])
    if "embedded" not in record and data.resolve().is_relative_to(cache_root().resolve()):
        return None
    if must_exist and not data.is_dir():
        raise CacheError(
            f"{path}: the run's feature cache {data} no longer exists; name another with "
            "--data (Python: data=)"
        )
    return data


def check_same_data(workdir: Path, data: Path | str) -> None:
    """ConfigError where a run being resumed is given other data (`data`) than run.json
    records: its checkpoints' data order and its scores belong to the data it started on."""
    if not (Path(workdir) / RUN_FILE).is_file():
        return
    try:
        own = run_data(workdir, must_exist=False)
    except CacheError:  # run.json torn: `data` is what its error asked for, recorded anew
        return
    if own is None or Path(own).resolve() != Path(data).resolve():
        began = own or "the embedded corpus"
        raise ConfigError(
            f"{workdir}: the run began on {began}, not {data}; resume it without --data (or "
            "with its own), or train in a new workdir"
        )


def write_run_data(workdir: Path, cache: FeatureCache, embedded: bool) -> None:
    """Record in run.json the cache a run trains on (atomically: a kill leaves the old one)."""
    record = {"data": str(cache.root.resolve()), "embedded": embedded}
    _write_json(Path(workdir) / RUN_FILE, record)


def _write_json(path: Path, record: dict, indent: int | None = None) -> None:
    """Write `record` to `path` through a temporary file, so a kill leaves the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=indent) + "\n")
    os.replace(tmp, path)


def make_callbacks(cfg: Config, task=None) -> list:
    """The run's callbacks: the task's own first (e.g. chord's slope annealing, so the state a
    checkpoint saves has them applied), then NaN check, LR control, early stopping, saving."""
    t, o = cfg.train, cfg.optim
    out: list = list(task.callbacks(cfg)) if task is not None else []
    if t.terminate_on_nan:
        out.append(cb.TerminateOnNaN(every_steps=t.log_every))
    if o.lr_schedule == "step":
        out.append(cb.StepDecay(o.learning_rate, o.decay_rate, o.decay_every, o.min_lr))
    elif o.lr_schedule == "exponential":
        out.append(cb.ExponentialDecay(o.learning_rate, o.decay_rate, o.min_lr))
    elif o.lr_schedule == "plateau":
        out.append(
            cb.ReduceLROnPlateau(
                t.monitor, o.decay_rate, o.plateau_patience, o.min_lr, mode=t.monitor_mode
            )
        )
    elif o.lr_schedule not in ("constant", "exponential_steps", "warmup_cosine"):
        raise ValueError(
            f"optim.lr_schedule: unknown schedule {o.lr_schedule!r} "
            "(constant, step, exponential, plateau, exponential_steps, warmup_cosine)"
        )
    # always present (patience None: counting only), so a resume may switch it on or off
    out.append(
        cb.EarlyStopping(
            t.monitor, t.early_stop_patience, t.early_stop_min_delta, mode=t.monitor_mode
        )
    )
    out.append(cb.ModelCheckpoint(t.monitor, mode=t.monitor_mode))
    return out


def init_state(task, cfg: Config, mesh, callbacks: Sequence) -> TrainState:
    """A fresh TrainState, replicated over `mesh`."""
    model = task.model(cfg)
    spec = task.input_spec(cfg)
    rng = jax.random.PRNGKey(cfg.train.seed)
    init_rng, state_rng = jax.random.split(rng)
    impl = getattr(task, "init_rng_impl", None)
    if impl is not None:  # e.g. "rbg": compiles a deep net's initialisers in seconds, not minutes
        init_rng = jax.random.key(cfg.train.seed, impl=impl)
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


def abstract_state(task, cfg: Config, mesh) -> TrainState:
    """The shapes, dtypes and shardings of `init_state`'s state, computed without running (or
    compiling) the model's initialisers: a restore target in 3 s instead of 40 on a CPU."""
    return jax.eval_shape(lambda: init_state(task, cfg, mesh, make_callbacks(cfg, task)))


def make_predict(mesh, state: TrainState, fn=None):
    """`predict(windows) -> numpy outputs` for the state's current weights.

    Pass `fn` (from `make_predict_fn`) to reuse one compiled function across calls."""
    fn = fn or make_predict_fn(state.apply_fn, mesh)
    variables = eval_variables(state)

    sharding = batch_sharding(mesh)
    devices = mesh.devices.size

    def predict(windows: np.ndarray) -> np.ndarray:
        n = len(windows)
        extra = -n % devices  # a batch splits over the devices: pad it, drop the padding
        if extra:
            windows = np.concatenate([windows, np.repeat(windows[-1:], extra, axis=0)])
        # placed explicitly: a multi-process job refuses implicit placement of numpy inputs
        out = jax.device_get(fn(variables, jax.device_put(windows, sharding)))
        return np.asarray(jax.tree.map(lambda a: a[:n], out) if extra else out)

    return predict


class RestoreError(ValueError):
    """A run directory that holds no usable checkpoint (the message names the path)."""


def restore_for_inference(
    task, workdir: Path | str, step: int | None = None, *, calibrated: bool = True
):
    """(cfg, mesh, state, step) of a trained run: its config (with the decoding settings of
    its decode.json, when `calibrated` and it has one) and the checkpoint at `step` (default:
    the best one, the latest when none is best) on one device."""
    workdir = Path(workdir)
    cfg_path = workdir / "config.json"
    if not cfg_path.is_file():
        what = "a folder, not a file" if cfg_path.is_dir() else "not found"
        raise RestoreError(f"{cfg_path}: {what} (is {workdir} a jaxmir run directory?)")
    cfg = task.config_from_dict(read_json(cfg_path), cfg_path)
    if calibrated:
        cfg = calibrated_config(cfg, workdir)
    cfg = task.locate(cfg, workdir)
    ckpt_dir = workdir / "checkpoints"
    if not has_checkpoints(workdir):
        from jaxmir.shipped import is_model_folder

        exported = " (an exported model folder has none)" if is_model_folder(workdir) else ""
        raise RestoreError(f"{ckpt_dir}: no checkpoint to restore{exported}")
    ckpt = Checkpointer(ckpt_dir, monitor=cfg.train.monitor, mode=cfg.train.monitor_mode)
    mesh = make_mesh(jax.devices()[:1])
    try:
        state, step = _restore_best_or(ckpt, step, abstract_state(task, cfg, mesh))
    finally:
        ckpt.close()
    return cfg, mesh, state, step


def _restore_best_or(ckpt: Checkpointer, step: int | None, template, tries: int = 3):
    """(state, step) of checkpoint `step`, or of the best one. A training run beside this one
    (eval while it trains) may prune the best step between its choice and its read: the step
    then no longer exists, and the best is chosen again among those now saved."""
    attempt = 1
    while True:
        steps = ckpt.manager.all_steps()
        chosen = step if step is not None else ckpt.best_step()
        if chosen not in steps:
            raise RestoreError(
                f"{ckpt.directory}: no checkpoint at step {chosen} (saved: {list(steps)})"
            )
        try:
            with abandoned_reads_dropped():
                state, _ = ckpt.restore(chosen, template)
            return state, chosen
        except Exception as e:  # noqa: BLE001 - Orbax, TensorStore and JSON raise many kinds
            pruned = not (ckpt.directory / str(chosen)).exists()
            if step is None and pruned and attempt < tries:
                attempt += 1
                ckpt.manager.reload()
                continue
            gone = " (removed while it was read: a training run beside this one pruned it)"
            raise RestoreError(
                f"{ckpt.directory / str(chosen)}: cannot be read ({first_line(e)})"
                f"{gone if pruned else ''}; saved steps: {list(ckpt.manager.all_steps())} "
                f"(eval --step N scores another; move this one out of {ckpt.directory} to "
                "use the best of the others)"
            ) from None


@dataclasses.dataclass
class RunResult:
    workdir: Path
    state: TrainState
    history: dict
    status: str
    seconds: float


def check_watch_splits(cfg: Config, cache: FeatureCache) -> None:
    """ConfigError naming the splits training reads that `cache` holds no pieces of: train,
    val (where validation runs) and `train.watch_splits`; before anything is written."""
    t = cfg.train
    needed = ["train"] + (["val"] if t.val_steps > 0 or t.eval_pieces_each_epoch else [])
    lacking = [s for s in needed if not cache.names(s)]
    if lacking:
        failed = cache.manifest.get("failures") or []
        why = (  # the pieces that failed may be the ones missing
            f"; {len(failed)} of its pieces failed, the first: {failed[0]['path']}: "
            f"{failed[0]['reason']}"
            if failed
            else ""
        )
        raise ConfigError(
            f"{cache.root}: no pieces in split(s) {lacking}, which training reads (a corpus too "
            f"small to fill them, or a cache of other splits: it holds {cache.splits()}){why}"
        )
    missing = [s for s in cfg.train.watch_splits if not cache.names(s)]
    if missing:
        raise ConfigError(f"train.watch_splits: no pieces in split(s) {missing} of {cache.root}")


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
    """Train `task` with `cfg` in `workdir` (resuming it when it holds a checkpoint) on the
    feature cache `data` (default: the one the run started on, as its run.json records, else
    the task's embedded corpus), which run.json then records.

    One run per workdir at a time: a second one gets ConfigError naming the holder's PID.
    In a multi-process job (see `maybe_initialize_distributed`) every process calls this with
    the same arguments and a shared workdir; process 0 alone writes reports and shows progress.
    """
    from jaxmir.tasks.base import NoConfig, abstract_variables

    maybe_initialize_distributed()
    if cfg.task != task.name:  # a music config given to beat's train: an AttributeError deep in
        raise ConfigError(
            f"the config is task {cfg.task!r}'s, not {task.name!r}'s: build it from that "
            f"task's presets ({task.name}'s TASK.preset)"
        )
    validate(cfg)
    if isinstance(cfg.model, NoConfig):  # a model of one's own (`fit`): its errors as they are
        task.model(cfg)
    else:  # a task's model: settings it cannot be built from, in one line
        abstract_variables(task, cfg)
    task.bind_loss(cfg), make_optimizer(cfg.optim)  # their config errors, before anything is
    # read or written
    task.check_training(cfg)
    task.check_decode(cfg)
    check_batch_sizes(cfg, make_mesh(devices))
    if not is_primary():
        progress, log = False, _quiet
    if workdir is None and jax.process_count() > 1:
        raise ConfigError("a multi-process run needs a workdir every process shares")
    workdir = Path(workdir) if workdir is not None else default_workdir(cfg)
    check_not_model_folder(workdir)
    config_path = workdir / "config.json"
    if has_checkpoints(workdir):  # a changed config (another task's run): before any work
        saved = read_json(config_path) if config_path.is_file() else checkpoint_config(workdir)
        if saved is None:
            raise ConfigError(
                f"{config_path}: missing, and no checkpoint carries a config to resume with"
            )
        check_resume_compatible(saved, cfg)
    data, cache = training_data(task, cfg, workdir, data, progress)  # before anything is written
    workdir.mkdir(parents=True, exist_ok=True)
    with WorkdirLock(workdir):
        return _train(task, cfg, workdir, data, cache, devices=devices, progress=progress, log=log)


def training_data(
    task, cfg: Config, workdir: Path, data: Path | str | None, progress: bool = True
) -> tuple[Path | str | None, FeatureCache | None]:
    """(data as run.json will record it, its feature cache) for training in `workdir`: `data`,
    else the cache the run began on, else the embedded corpus (None: built where the cache
    root is). ConfigError for a resumed run given other data, or a cache without the splits
    training reads; (None, None) for a task that reads no cache."""
    if not task.needs_cache:
        return None, None
    if data is not None and has_checkpoints(workdir):
        check_same_data(workdir, data)
    data = data if data is not None else run_data(workdir)  # a resumed run: its own cache
    cache = primary_first(lambda: resolve_data(task, cfg, data, progress), "jaxmir-data")
    check_watch_splits(cfg, cache)
    return data, cache


def has_checkpoints(workdir: Path) -> bool:
    """Whether `workdir` holds a saved step (a run to resume)."""
    ckpt_dir = Path(workdir) / "checkpoints"
    return ckpt_dir.is_dir() and any(p.name.isdigit() for p in ckpt_dir.iterdir())


def _quiet(*_args, **_kwargs) -> None:
    pass


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


def checkpoint_config(workdir: Path) -> dict | None:
    """The config saved with the newest readable checkpoint of the run in `workdir` (a run whose
    config.json is gone); None when it has no checkpoint that carries one."""
    ckpt_dir = Path(workdir) / "checkpoints"
    if not has_checkpoints(workdir):
        return None
    checkpointer = Checkpointer(ckpt_dir)
    try:
        return _config_in_checkpoint(Path(workdir) / "config.json", checkpointer)
    except ConfigError:
        return None
    finally:
        checkpointer.close()


#: What decides an early stop: a resume that changes one trains on past it.
STOP_SETTINGS = ("train.early_stop_patience",)


def stop_settings_changed(saved: dict | None, cfg: Config) -> list[str]:
    """`key=new` for each of `STOP_SETTINGS` that `cfg` sets otherwise than the config `saved`
    with a checkpoint (none where that config is not known)."""
    if not saved:
        return []
    old = flatten(saved)
    new = flatten(json.loads(cfg.to_json()))
    return [f"{k}={json.dumps(new[k])}" for k in STOP_SETTINGS if k in old and old[k] != new[k]]


def check_not_model_folder(workdir: Path) -> None:
    """ConfigError where `workdir` is a model folder (`jaxmir export`'s, or one that ships with
    jaxmir): training there rewrote its config.json beside its parameters, and every command
    reading the folder then failed."""
    from jaxmir.shipped import in_package, is_model_folder

    if in_package(workdir):
        kind = "a model that ships with jaxmir"
    elif is_model_folder(workdir):
        kind = "an exported model"
    else:
        return
    raise ConfigError(
        f"{workdir}: the folder of {kind}, not a training run: train in another --workdir"
    )


def _config_in_checkpoint(config_path: Path, checkpointer) -> dict:
    """The run's config when config.json is gone: the one saved with the newest checkpoint
    whose meta reads back."""
    for step in sorted(checkpointer.manager.all_steps(), reverse=True):
        try:
            saved = checkpointer.restore_meta(step).get("config")
        except Exception:  # noqa: BLE001 - unreadable meta: try the step before
            continue
        if saved is not None:
            return saved
    raise ConfigError(f"{config_path}: missing, and no checkpoint carries a config to resume with")


def _train(task, cfg: Config, workdir: Path, data, cache, *, devices, progress, log) -> RunResult:
    t0 = time.time()
    ckpt_dir = workdir / "checkpoints"
    config_path = workdir / "config.json"
    # the training examples before run.json: a run whose data cannot be read (vocal's
    # `data.unlabelled` folder, say) refuses to start without leaving a record behind
    train_ds = task.dataset(cfg, cache, "train", True)
    if cache is not None and is_primary():  # eval, calibrate and export read it from here
        write_run_data(workdir, cache, embedded=data is None)
    mesh = make_mesh(devices)
    callbacks = make_callbacks(cfg, task)
    state = init_state(task, cfg, mesh, callbacks)

    train_iter = batch_iterator(train_ds, cfg.train.batch_size, cfg.train.data_threads)

    def val_batches():
        ds = task.dataset(cfg, cache, "val", False)
        return batch_iterator(ds, cfg.train.val_batch_size, 1)

    checkpointer = Checkpointer(
        ckpt_dir,
        monitor=cfg.train.monitor,
        mode=cfg.train.monitor_mode,
        keep_latest=cfg.train.keep_latest,
        keep_best=cfg.train.keep_best,
    )
    plan = EpochPlan(
        epochs=cfg.train.epochs,
        steps_per_epoch=cfg.train.steps_per_epoch,
        val_steps=cfg.train.val_steps,
        log_every=cfg.train.log_every,
    )
    restored = checkpointer.restore_newest_intact(state, train_iter, warn=log)
    latest = None
    if restored is not None:
        latest, state, meta = restored
        plan = dataclasses.replace(
            plan,
            start_epoch=int(meta["epoch"]),
            start_step_in_epoch=int(meta["step_in_epoch"]),
            start_means=meta.get("running_means"),
        )
        changed = stop_settings_changed(meta.get("config"), cfg)
        waited = int(jax.device_get(state.callbacks.get("early_stopping", {}).get("wait", 0)))
        patience = cfg.train.early_stop_patience
        if changed and patience is not None and patience <= waited:  # it would stop again
            changed = []
        if meta.get("status") == "stopped" and not changed:
            checkpointer.close()
            log(
                f"{workdir}: this run was stopped early at step {latest}; nothing to resume "
                f"(to train on: train.early_stop_patience above {waited}, or null)"
            )
            status = "stopped"
            if is_primary():  # its calibration cut short before: the same command does it
                status = _decoding_at_end(task, cfg, workdir, cache, False, progress, log, status)
            history = run_history(workdir / "metrics.jsonl") if is_primary() else None
            return RunResult(workdir, state, history or {"train": [], "validate": []}, status, 0.0)
        if meta.get("status") == "stopped":
            log(f"{workdir}: stopped early at step {latest}; training on with {', '.join(changed)}")
        if plan.start_epoch >= plan.epochs:  # not "epoch 3" of a finished 2-epoch run
            log(f"{workdir}: all {plan.epochs} epochs trained (step {latest})")
        else:
            log(f"Resuming {workdir} from step {latest} (epoch {plan.start_epoch + 1})")
    else:
        log(f"Training {task.name} ({cfg.preset}) in {workdir}")
    monitor = cfg.train.monitor
    if (
        cfg.train.monitor_mode == "auto"
        and cb.monitor_mode(monitor) == "min"
        and "loss" not in monitor
    ):
        log(  # a score of one's own (mAP, AUC, SDR, ...) minimised unsaid picks the worst model
            f"train.monitor {monitor}: lower is taken as better (the name has none of "
            f"{', '.join(cb.MAXIMISE_MARKERS)}); train.monitor_mode=max if higher is"
        )
    if is_primary():
        save_config(cfg, config_path)  # only once a resume has succeeded
    writer = MetricsWriter(workdir, resume_step=latest or 0) if is_primary() else None

    def save(st: TrainState, metrics, meta):
        meta = {**meta, "step": int(st.step), "config": cfg.to_dict()}
        checkpointer.save(int(st.step), st, train_iter, meta, metrics)

    # Whole-piece validation runs on every process, over every piece, on the process's own
    # devices: each process then takes the same callback decisions (best checkpoint, early
    # stop, LR) without another collective. The batch-level val loss is sharded like training.
    local_mesh = mesh if jax.process_count() == 1 else make_mesh(jax.local_devices())
    predict_fn = make_predict_fn(state.apply_fn, local_mesh)
    stop_signal = StopSignal()

    def piece_metrics(st: TrainState) -> dict[str, float]:
        if jax.process_count() > 1:
            st = put_replicated(jax.device_get(st), local_mesh)
        interruptible = stopping(make_predict(local_mesh, st, predict_fn), stop_signal)
        scores = task.evaluate(interruptible, cfg, cache, "val")
        rows = {}  # written once every split is scored: a stop in between re-runs them all
        for split in cfg.train.watch_splits:  # curves only: the loop's callbacks see val alone
            row = task.evaluate(interruptible, cfg, cache, split)
            rows[split] = {f"{split}_{k}": v for k, v in row.items()}
        for split, row in rows.items():
            if writer is not None:
                writer.write("epoch", int(st.step), int(st.epoch) + 1, split, row)
        return scores

    loss_fn = task.bind_loss(cfg)
    try:
        with stop_signal:
            hooks = Hooks(
                write=writer.write if writer is not None else None,
                save=save,
                log=log,
                stop_signal=stop_signal,
                interrupt_at_step=cfg.train.interrupt_at_step,
                progress=progress,
                place=(lambda st: onto_mesh(st, mesh)) if jax.process_count() > 1 else None,
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
            # the last save is written while a signal is still a flag: one now (a second
            # Ctrl-C, a pre-emption) must not abandon it half-way
            checkpointer.wait()
        if stop_signal.requested and status == "finished":  # a signal after the last poll
            status = f"interrupted: {stop_signal.requested} after the last step"  # not lost
    finally:
        checkpointer.close()
        if writer is not None:
            writer.close()
    trained = latest is None or int(jax.device_get(state.step)) > latest  # steps this call
    if is_primary():
        plot_curves(workdir / "metrics.jsonl", workdir / "curves.png")
        status = _decoding_at_end(task, cfg, workdir, cache, trained, progress, log, status)
    seconds = time.time() - t0
    log(f"Run {status} after {seconds:.1f} s; outputs in {workdir}")
    if latest is not None and is_primary():  # resumed: the whole run's epochs, not this call's
        history = run_history(workdir / "metrics.jsonl")
    return RunResult(workdir, state, history, status, seconds)


def _decoding_at_end(task, cfg: Config, workdir: Path, cache, trained: bool, progress, log, status):
    """Calibrate the run's decoding once its training is over (`status` not interrupted: the
    best checkpoint of a run that finished, stopped early or failed on a NaN; `trained`: this
    call took steps), unless its decode.json is of the checkpoint eval
    restores already; returns the run's status ("interrupted: ... while calibrating" where a
    signal cut it short: the same command calibrates it)."""
    if status.startswith("interrupted") or cache is None:
        return status
    if jax.process_count() > 1:  # restoring on one process alone is not collective
        log("Decoding not calibrated in a multi-process run (defaults stay in use)")
        return status
    if not trained and decoding_is_current(workdir, cfg):
        log(
            f"Nothing left to train; decoding stays as {workdir / DECODE_FILE} holds it "
            "(`jaxmir calibrate` chooses it again)"
        )
        return status
    with StopSignal() as calibration_stop:  # a stop is honoured at the next model call
        try:
            calibrate_decoding(
                task, workdir, cache, progress=progress, log=log, stop=calibration_stop
            )
        except Interrupted as e:  # here, or in a run of its own (beat's taggers)
            signal_name = calibration_stop.agreed or (e.args[0] if e.args else "a signal")
            log(
                f"Stopped by {signal_name} while calibrating decoding: the training is saved; "
                "the same command calibrates it"
            )
            return f"interrupted: {signal_name} while calibrating"
    return status


def run_history(path: Path) -> dict[str, list[dict]]:
    """{"train": [...], "validate": [...]} of every epoch in a run's metrics.jsonl, as
    `train_epochs` returns them for its own epochs (validation's keys without "val_")."""
    history: dict[str, list[dict]] = {"train": [], "validate": []}
    skip = {"kind", "step", "epoch", "split", "time"}
    for line in Path(path).read_text().splitlines() if Path(path).is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill
            continue
        if record.get("kind") != "epoch" or record.get("split") not in ("train", "val"):
            continue
        row = {k: v for k, v in record.items() if k not in skip}
        if record["split"] == "train":
            history["train"].append(row)
        else:
            history["validate"].append({k.removeprefix("val_"): v for k, v in row.items()})
    return history


DECODE_FILE = "decode.json"
"""Decoding settings chosen after training (`calibrate_decoding`); eval and transcribe use them
unless `--set decode.*` says otherwise."""


def calibrate_decoding(
    task,
    workdir: Path,
    cache,
    *,
    progress: bool = False,
    log=print,
    raise_errors: bool = False,
    stop: StopSignal | None = None,
) -> dict:
    """Let the task choose its decoding settings on the validation pieces with the run's best
    checkpoint (as `eval` restores it), and store them in `workdir/decode.json`. A task without
    `calibrate`, or a config that turns it off, writes nothing; returns what was written. A
    RestoreError (no checkpoint) is logged, or raised with `raise_errors`. With `stop`, a
    signal it caught raises `Interrupted` at the next model call, before anything is written."""
    calibrate = getattr(task, "calibrate", None)
    if calibrate is None:
        return {}
    try:
        cfg, mesh, state, step = restore_for_inference(task, workdir, calibrated=False)
    except RestoreError as e:  # e.g. a run stopped on a NaN loss before its first save
        if raise_errors:
            raise
        log(f"Decoding not calibrated: {e}")
        return {}
    predict = make_predict(mesh, state)
    if stop is not None:
        predict = stopping(predict, stop)
    result = calibrate(predict, cfg, cache, progress=progress, workdir=workdir)
    if stop is not None and stop.poll():  # caught after the last model call
        raise Interrupted(stop.agreed)
    if not result:
        return {}
    result = {"step": step, **result}
    path = Path(workdir) / DECODE_FILE
    _write_json(path, result, indent=1)
    pieces = result.get("val_pieces", "?")
    log(f"Decoding calibrated on {pieces} validation pieces: {result['decode']} -> {path}")
    return result


def decoding_is_current(workdir: Path, cfg: Config) -> bool:
    """Whether the run's decode.json was calibrated on the checkpoint `eval` restores (its best
    one): a calibration cut short after more epochs left the older step's choice behind."""
    path = Path(workdir) / DECODE_FILE
    if not path.is_file():
        return False
    try:
        step = read_json(path).get("step")
    except (ConfigError, AttributeError):  # unreadable, or not an object: calibrate again
        return False
    ckpt = Checkpointer(
        Path(workdir) / "checkpoints", monitor=cfg.train.monitor, mode=cfg.train.monitor_mode
    )
    try:
        return step == ckpt.best_step()
    finally:
        ckpt.close()


def stopping(predict, stop: StopSignal):
    """`predict` that first polls `stop` and raises `Interrupted` on a signal it caught;
    `inspect.unwrap` gives the model call itself (no poll)."""

    def interruptible(windows):
        if stop.poll():
            raise Interrupted(stop.agreed)
        return predict(windows)

    interruptible.__wrapped__ = predict
    return interruptible


def calibrated_config(cfg: Config, workdir: Path) -> Config:
    """`cfg` with the decode values of `workdir/decode.json`, when it exists."""
    path = Path(workdir) / DECODE_FILE
    if not path.is_file():
        return cfg
    try:
        values = read_json(path)["decode"]
    except (ValueError, KeyError, TypeError) as e:
        raise RestoreError(f"{path}: not a decode calibration ({e})") from None
    bad = [k for k in values if not hasattr(cfg.decode, k)]
    if bad:
        raise RestoreError(f"{path}: unknown decode keys {bad}")
    return dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, **values))
