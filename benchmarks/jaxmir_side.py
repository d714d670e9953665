"""The jaxmir side of the benchmarks: the real models, `make_train_step` (Adam, donated state).

`time_jaxmir(model, batch, preset=..., steps=...)` builds a task's model and loss the way
`jaxmir train` does (`get_task`, the preset, `apply_overrides`, `init_state`, `make_train_step`,
`put_batch`), compiles the step ahead of time (timed), reads XLA's cost and memory analyses, and
times `steps` training steps on one synthetic batch that stays on the device (the input pipeline
is measured on its own, in :mod:`benchmarks.pipeline`). `JaxBench` is the same as a protocol
worker (:mod:`benchmarks.common`).

Imports on this path: jax, flax, optax, numpy and the jaxmir modules that need only those. When
the task modules cannot be imported (the GPU machines have no grain, librosa, mir_eval, ...), the
models are built from their model modules with the presets' numbers (`LIGHT_PRESETS`), and
`jaxmir.engine`'s step/state/sharding/optim modules are loaded without the package's
``__init__`` (which imports the run driver: grain, orbax, tqdm). The result says which path ran.

Mixed precision (``precision="bf16"``): the engine's ``make_train_step(..., precision="bf16")``
(bf16 compute, fp32 parameters and optimizer state). With an engine that lacks the option, the
benchmark casts parameters, BatchNorm statistics and inputs to bfloat16 inside the model call
and outputs back to float32 (`bf16_apply`); ``precision_path`` in the result says which ran.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import sys
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks.common import LEARNING_RATES, MODELS, ROOT, peak_rss_mb, stats

NOTES: list[str] = []

# The presets' model numbers, used only when the task modules cannot be imported.
LIGHT_PRESETS: dict[str, dict[str, dict]] = {
    "music": {
        "paper": dict(name="attn", timesteps=256, base=32, dropout=0.4, ch_num=2, out_class=23),
        "demo": dict(name="attn", timesteps=128, base=8, dropout=0.1, ch_num=2, out_class=3),
        "tiny": dict(name="attn", timesteps=32, base=8, dropout=0.0, ch_num=2, out_class=3),
    },
    "beat": {
        "paper": dict(name="blstm", timesteps=1000, hidden=25, num_layers=2, attn_hidden=256),
        "demo": dict(name="blstm", timesteps=400, hidden=25, num_layers=2, attn_hidden=256),
        "tiny": dict(name="blstm", timesteps=64, hidden=4, num_layers=1, attn_hidden=8),
    },
    "vocal_contour": {  # jaxmir.tasks.vocal_contour.task's presets (conv_impl "auto")
        "paper": dict(name="aspp", timesteps=128, base=128, dropout=0.4, bn_momentum=0.99),
        "demo": dict(name="aspp", timesteps=128, base=16, dropout=0.1, bn_momentum=0.9),
        "tiny": dict(name="aspp", timesteps=32, base=4, dropout=0.0, bn_momentum=0.99),
    },
}
VOCAL_CONTOUR_BINS = 384  # jaxmir.tasks.vocal_contour.labels.N_BINS (352 CFP rows padded)


def _engine():
    """(make_optimizer, TrainState, make_mesh, put_batch, put_replicated, make_train_step,
    count_params), importing `jaxmir.engine` normally when its dependencies are there."""
    try:
        importlib.import_module("jaxmir.engine")
    except ImportError as e:
        for name in [m for m in sys.modules if m.split(".")[:2] == ["jaxmir", "engine"]]:
            del sys.modules[name]
        pkg = types.ModuleType("jaxmir.engine")
        pkg.__path__ = [str(ROOT / "jaxmir" / "engine")]
        sys.modules["jaxmir.engine"] = pkg
        NOTES.append(
            f"`import jaxmir.engine` fails here ({e}); its step/state/sharding/optim modules were "
            "loaded without the package __init__"
        )
    from jaxmir.engine.optim import make_optimizer
    from jaxmir.engine.sharding import make_mesh, put_batch, put_replicated
    from jaxmir.engine.state import TrainState, count_params
    from jaxmir.engine.step import make_train_step

    return (
        make_optimizer,
        TrainState,
        make_mesh,
        put_batch,
        put_replicated,
        make_train_step,
        count_params,
    )


def _parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    from jaxmir.config import parse_override

    return dict(parse_override(o) for o in overrides)


def patch_cnn_loss(apply_fn, variables, batch, rng, train):
    """Categorical cross-entropy on the 2 logits (omnizart trains the patch CNN with it)."""
    import jax.numpy as jnp
    import optax

    logits = apply_fn(variables, batch["x"], train=train, rngs={"dropout": rng})
    loss = jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), batch["y"]))
    acc = jnp.mean((jnp.argmax(logits, -1) == jnp.argmax(batch["y"], -1)).astype(jnp.float32))
    return loss, ({"accuracy": acc}, {})


def _beat_loss(downbeat_weight: float):
    try:
        from jaxmir.tasks.beat.task import weighted_bce
    except ImportError:  # same function; the task module needs grain and mir_eval
        import jax.numpy as jnp
        import optax

        NOTES.append(
            "beat loss: a copy of jaxmir.tasks.beat.task.weighted_bce (task not importable)"
        )

        def weighted_bce(logits, targets, mask, downbeat_weight):
            per = optax.sigmoid_binary_cross_entropy(logits, targets)
            w = jnp.asarray([1.0, downbeat_weight], per.dtype) * mask[..., None]
            loss = jnp.sum(per * w) / jnp.maximum(jnp.sum(mask) * 2.0, 1.0)
            return loss, {}

    def loss(apply_fn, variables, batch, rng, train):
        logits = apply_fn(variables, batch["x"], train=train, rngs={"dropout": rng})
        value, metrics = weighted_bce(logits, batch["y"], batch["mask"], downbeat_weight)
        return value, (metrics, {})

    return loss


def _vocal_contour_loss(alpha: float = 0.25, gamma: float = 2.0):
    """The vocal_contour task's focal loss (a copy of its `bind_loss`; the task module needs
    grain)."""
    from jaxmir.losses import apply_model, binary_accuracy
    from jaxmir.tasks.music.labels import focal_loss

    def loss(apply_fn, variables, batch, rng, train):
        logits, new_state = apply_model(apply_fn, variables, batch["x"], rng, train)
        mask = batch["mask"][:, :, None, None]
        value = focal_loss(logits, batch["y"], alpha=alpha, gamma=gamma, mask=mask)
        accuracy = binary_accuracy(logits, batch["y"], batch["mask"])
        return value, ({"accuracy": accuracy}, new_state)

    return loss


def _music_loss():
    """The music task's loss with its default ``smooth`` kind (the task module needs grain)."""
    import jax.numpy as jnp

    from jaxmir.tasks.music.labels import smooth_bce

    def loss(apply_fn, variables, batch, rng, train):
        if train:
            logits, new_state = apply_fn(
                variables, batch["x"], train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
            )
        else:
            logits, new_state = apply_fn(variables, batch["x"], train=False), {}
        mask = batch["mask"][:, :, None, None]
        value = smooth_bce(logits, batch["y"], mask=mask)
        correct = ((logits > 0) == (batch["y"] > 0.5)).astype(jnp.float32) * mask
        accuracy = jnp.sum(correct) / jnp.maximum(jnp.sum(mask) * logits[0, 0].size, 1.0)
        return value, ({"accuracy": accuracy}, dict(new_state))

    return loss


@dataclasses.dataclass
class Built:
    """A model, its loss and its optimizer settings, as `jaxmir train` would build them."""

    model: str
    preset: str
    module: Any
    loss_fn: Callable
    input_shape: tuple[int, ...]
    optim: Any  # jaxmir.config.OptimConfig
    path: str  # "task" (get_task + preset + overrides) or "light" (model modules)
    details: dict
    task: Any = None
    cfg: Any = None


def build(model: str, preset: str = "paper", overrides: Sequence[str] = ()) -> Built:
    """The jaxmir model called `model` ("music", "beat", "patch_cnn", "vocal_contour") at
    `preset`, with config `overrides` (``model.conv_impl=matmul``, ``model.unroll=4``, ...).
    Nothing is initialised or run (``jax.eval_shape(built.module.init, ...)`` sizes it)."""
    from jaxmir.config import OptimConfig

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r} ({', '.join(MODELS)})")
    if model == "patch_cnn":
        from jaxmir.tasks.patch_cnn.model import PatchCNN

        fields = {k.split(".", 1)[1]: v for k, v in _parse_overrides(overrides).items()}
        module = PatchCNN(**fields)
        return Built(
            model,
            "paper",
            module,
            patch_cnn_loss,
            (module.patch_size, module.patch_size, 1),
            OptimConfig(learning_rate=LEARNING_RATES[model]),
            "model",
            {"conv_impl": module.conv_impl},
        )
    try:
        from jaxmir.config import apply_overrides
        from jaxmir.tasks.base import get_task

        task = get_task(model)
    except ImportError as e:
        NOTES.append(f"{model}: task not importable ({e}); built from its model module")
        return _build_light(model, preset, overrides)
    cfg = apply_overrides(task.preset(preset), list(overrides))
    module = task.model(cfg)
    keys = ("name", "conv_impl", "unroll", "lstm_impl", "base", "timesteps")
    details = {k: getattr(cfg.model, k) for k in keys if hasattr(cfg.model, k)}
    return Built(
        model,
        preset,
        module,
        task.bind_loss(cfg),
        tuple(task.input_spec(cfg).shape),
        cfg.optim,
        "task",
        details,
        task,
        cfg,
    )


def _build_light(model: str, preset: str, overrides: Sequence[str]) -> Built:
    from jaxmir.config import OptimConfig

    p = dict(LIGHT_PRESETS[model][preset])
    extra = {k.split(".", 1)[1]: v for k, v in _parse_overrides(overrides).items()}
    name = p.pop("name")
    if model == "music":
        from jaxmir.tasks.music.labels import N_BINS
        from jaxmir.tasks.music.model import build_model

        kwargs = dict(feature_num=N_BINS, **p)
        kwargs.update({k: v for k, v in extra.items() if k in ("conv_impl", "base", "dropout")})
        if "timesteps" in extra:
            kwargs["timesteps"] = extra["timesteps"]
        module = build_model(name, **kwargs)
        shape = (kwargs["timesteps"], N_BINS, kwargs["ch_num"])
        loss = _music_loss()
    elif model == "vocal_contour":
        from jaxmir.tasks.music.model import SemanticSegmentation

        keys = ("conv_impl", "base", "dropout", "timesteps", "bn_momentum")
        p.update({k: v for k, v in extra.items() if k in keys})
        p.setdefault("conv_impl", "auto")
        module = SemanticSegmentation(
            feature_num=VOCAL_CONTOUR_BINS, multi_grid_layer_n=1, ch_num=1, out_class=2, **p
        )
        shape = (p["timesteps"], VOCAL_CONTOUR_BINS, 1)
        loss = _vocal_contour_loss()
    else:
        from jaxmir.tasks.beat.model import build_model

        module = build_model(name, **p)
        module = module.clone(**{k: extra[k] for k in ("unroll", "lstm_impl") if k in extra})
        shape = (p["timesteps"], 178)
        loss = _beat_loss(5.0)
    keys = ("conv_impl", "unroll", "lstm_impl", "base")
    details = {k: getattr(module, k) for k in keys if hasattr(module, k)}
    return Built(
        model,
        preset,
        module,
        loss,
        shape,
        OptimConfig(learning_rate=LEARNING_RATES[model]),
        "light",
        {"name": name, **details},
    )


def synthetic_batch(built: Built, batch: int, out_shape: tuple[int, ...], seed: int = 0) -> dict:
    """A batch of the model's shapes: normal inputs, uniform soft targets, full masks."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *built.input_shape), dtype=np.float32)
    if built.model == "patch_cnn":
        y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, batch)]
        return {"x": x, "y": y}
    if built.model == "chord":
        steps = built.input_shape[0]
        chord = rng.integers(0, 25, (batch, steps)).astype(np.int32)
        change = rng.integers(0, 2, (batch, steps)).astype(np.float32)
        return {"x": x, "chord": chord, "change": change, "valid": np.ones_like(change)}
    y = rng.uniform(0.0, 1.0, (batch, *out_shape)).astype(np.float32)
    return {"x": x, "y": y, "mask": np.ones((batch, built.input_shape[0]), np.float32)}


def bf16_apply(apply_fn: Callable) -> Callable:
    """`apply_fn` computing in bfloat16: float32 variables and inputs are cast on the way in,
    float outputs (logits, updated BatchNorm statistics) back to float32 on the way out."""
    import jax
    import jax.numpy as jnp

    def cast(tree, dtype):
        return jax.tree.map(
            lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree
        )

    def apply(variables, x, *args, **kwargs):
        out = apply_fn(cast(variables, jnp.bfloat16), cast(x, jnp.bfloat16), *args, **kwargs)
        return cast(out, jnp.float32)

    return apply


def cost_flops(compiled) -> float | None:
    """FLOPs of one call from XLA's cost analysis (None when the backend gives none)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def _step_factory(make_train_step, precision: str) -> tuple[Callable, str]:
    """`make_step(loss_fn, mesh)` for `precision`, and how bf16 is done: by the engine
    (`make_train_step(..., precision=)`, when it has the option) or by the benchmark's cast."""
    if precision == "fp32":
        return make_train_step, "fp32"
    if "precision" in inspect.signature(make_train_step).parameters:
        return functools.partial(make_train_step, precision=precision), "engine"
    return make_train_step, "benchmark cast"


def _scan_flops(built: Built, state, batch, make_step, precision_path: str) -> float:
    """FLOPs XLA's cost analysis misses in a model's time scans (beat's LSTMs): it counts a while
    loop's body once. With the step lowered at unroll 1 and 2 (cheap: no compile), one time step
    costs F(2) - F(1); the loop runs `timesteps` of them and its body (`unroll` steps) was
    counted, so (timesteps - unroll) are missing. 0 for models without an `unroll` attribute."""
    module = built.module
    if not (hasattr(module, "unroll") and hasattr(module, "timesteps")):
        return 0.0
    costs = []
    for unroll in (1, 2):
        apply = module.clone(unroll=unroll).apply
        st = state.replace(
            apply_fn=bf16_apply(apply) if precision_path == "benchmark cast" else apply
        )
        lowered = make_step(built.loss_fn, _mesh_of(batch)).lower(st, batch)
        cost = lowered.cost_analysis()
        if isinstance(cost, list | tuple):
            cost = cost[0] if cost else None
        if not cost or "flops" not in cost:
            return 0.0
        costs.append(float(cost["flops"]))
    return max(costs[1] - costs[0], 0.0) * max(module.timesteps - module.unroll, 0)


def _mesh_of(batch: dict):
    import jax

    return jax.tree.leaves(batch)[0].sharding.mesh


def memory_mb(compiled) -> dict:
    try:
        m = compiled.memory_analysis()
    except Exception:
        return {}
    if m is None:
        return {}
    mb = 1.0 / 2**20
    return {
        "xla_args_mb": round(m.argument_size_in_bytes * mb, 1),
        "xla_temp_mb": round(m.temp_size_in_bytes * mb, 1),
        "xla_output_mb": round(m.output_size_in_bytes * mb, 1),
        "xla_alias_mb": round(m.alias_size_in_bytes * mb, 1),
    }


class JaxBench:
    """A jaxmir training step at a fixed batch: setup() compiles and warms up, run(n) times n
    steps, finish() reports peak memory."""

    def __init__(
        self,
        model: str,
        batch: int,
        preset: str = "paper",
        overrides: Sequence[str] = (),
        precision: str = "fp32",
        devices: int | None = None,
        warmup: int = 1,
        seed: int = 0,
        **_: Any,
    ):
        self.model, self.batch_size, self.preset = model, batch, preset
        self.overrides, self.precision = list(overrides), precision
        self.n_devices, self.warmup, self.seed = devices, warmup, seed

    def setup(self) -> dict:
        import jax

        t_begin = time.perf_counter()
        rss0 = peak_rss_mb()
        engine = _engine()
        make_optimizer, TrainState, make_mesh, put_batch, put_replicated = engine[:5]
        make_train_step, count_params = engine[5:]
        built = build(self.model, self.preset, self.overrides)
        devices = jax.devices()[: self.n_devices] if self.n_devices else jax.devices()
        mesh = make_mesh(devices)
        if self.batch_size % len(devices):
            raise ValueError(f"batch {self.batch_size} is not divisible by {len(devices)} devices")

        t0 = time.perf_counter()
        x1 = jax.ShapeDtypeStruct((1, *built.input_shape), np.float32)
        if built.path == "task":
            from jaxmir.engine.run import init_state, make_callbacks

            state = init_state(built.task, built.cfg, mesh, make_callbacks(built.cfg))
        else:
            init_rng, state_rng = jax.random.split(jax.random.PRNGKey(self.seed))
            variables = jax.jit(lambda r, x: built.module.init(r, x, train=False))(
                init_rng, np.zeros(x1.shape, np.float32)
            )
            state = TrainState.create(
                apply_fn=built.module.apply,
                variables=dict(variables),
                tx=make_optimizer(built.optim),
                rng=state_rng,
            )
            state = put_replicated(state, mesh)
        out = jax.eval_shape(
            lambda v, x: built.module.apply(v, x, train=False), state.variables, x1
        )
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {self.precision!r}")
        make_step, precision_path = _step_factory(make_train_step, self.precision)
        if precision_path == "benchmark cast":
            state = state.replace(apply_fn=bf16_apply(state.apply_fn))
        batch = put_batch(synthetic_batch(built, self.batch_size, out.shape[1:], self.seed), mesh)
        jax.block_until_ready((state, batch))
        init_s = time.perf_counter() - t0

        step = make_step(built.loss_fn, mesh)
        t0 = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        flops_xla = cost_flops(compiled)
        scan_extra = _scan_flops(built, state, batch, make_step, precision_path)
        flops = flops_xla + scan_extra if flops_xla is not None else None

        first = []
        for _ in range(max(self.warmup, 1)):
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))
            first.append(time.perf_counter() - t0)
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(f"{self.model}: loss is {loss} after the warm-up step")
        self._compiled, self._state, self._batch = compiled, state, batch
        self._mesh, self._put_batch, self._loss_fn = mesh, put_batch, built.loss_fn

        dev = devices[0]
        return {
            "framework": "jaxmir",
            "model": self.model,
            "preset": self.preset,
            "build_path": built.path,
            "batch": self.batch_size,
            "input": [self.batch_size, *built.input_shape],
            "params": count_params(state.params),
            "model_state": count_params(state.batch_stats),
            "precision": self.precision,
            "precision_path": precision_path,
            "overrides": self.overrides,
            "details": built.details,
            "backend": jax.default_backend(),
            "device_kind": dev.device_kind,
            "n_devices": len(devices),
            "jax": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "init_s": round(init_s, 3),
            "compile_s": round(compile_s, 3),
            "first_step_s": round(first[0], 4),
            "flops_per_step": flops,
            "flops_xla": flops_xla,
            "flops_scan_correction": scan_extra,
            "loss": loss,
            "rss_before_mb": round(rss0, 1),
            "setup_s": round(time.perf_counter() - t_begin, 3),
            "notes": list(NOTES),
            **memory_mb(compiled),
        }

    def run(self, n: int) -> list[float]:
        import jax

        times = []
        state = self._state
        for _ in range(n):
            t0 = time.perf_counter()
            state, metrics = self._compiled(state, self._batch)
            jax.block_until_ready((state, metrics))
            times.append(time.perf_counter() - t0)
        self._state = state
        return times

    def pipeline(self, cache_dir: str, steps: int = 4, n_batches: int = 10) -> dict:
        """Grain read throughput alone, and the input-wait fraction of `steps` training steps
        fed by it (beat only: the task whose cache is cheap to build)."""
        from benchmarks.pipeline import input_wait, read_throughput

        if self.model != "beat":
            raise ValueError("the pipeline benchmark runs on the beat task")
        out = {"read": read_throughput(cache_dir, self.batch_size, n_batches, self.preset)}
        put = functools.partial(self._put_batch, mesh=self._mesh)
        self._state, out["train"] = input_wait(
            self._compiled, self._state, put, cache_dir, self.batch_size, steps, self.preset
        )
        return out

    def scaling(self, devices: Sequence[int], rounds: int = 3, steps: int = 2) -> dict:
        """This step at the same global batch on meshes over the first N of this process's
        devices, for each N in `devices` (all compiled first, then stepped in alternation)."""
        import jax

        engine = _engine()
        make_mesh, put_batch, put_replicated, make_train_step = (
            engine[2],
            engine[3],
            engine[4],
            engine[5],
        )
        make_step, _ = _step_factory(make_train_step, self.precision)
        host_state = jax.device_get(self._state)
        host_batch = jax.device_get(self._batch)
        runs, rows = {}, {}
        for n in devices:
            if n > len(jax.devices()) or self.batch_size % n:
                rows[n] = {"error": f"{n} devices: not available or batch not divisible"}
                continue
            mesh = make_mesh(jax.devices()[:n])
            state = put_replicated(host_state, mesh).replace(apply_fn=self._state.apply_fn)
            batch = put_batch(host_batch, mesh)
            t0 = time.perf_counter()
            compiled = make_step(self._loss_fn, mesh).lower(state, batch).compile()
            compile_s = time.perf_counter() - t0
            state, m = compiled(state, batch)
            jax.block_until_ready((state, m))
            runs[n] = [compiled, state, batch, []]
            rows[n] = {"n_devices": n, "compile_s": round(compile_s, 3)}
        for _ in range(rounds):
            for run in runs.values():
                compiled, state, batch, times = run
                for _ in range(steps):
                    t0 = time.perf_counter()
                    state, m = compiled(state, batch)
                    jax.block_until_ready((state, m))
                    times.append(time.perf_counter() - t0)
                run[1] = state
        for n, (_, _, _, times) in runs.items():
            rows[n].update(stats(times))
            rows[n]["times_s"] = [round(t, 5) for t in times]
        return {str(n): r for n, r in rows.items()}

    def finish(self) -> dict:
        import jax

        out = {"peak_rss_mb": round(peak_rss_mb(), 1)}
        try:
            ms = jax.devices()[0].memory_stats()
        except Exception:
            ms = None
        if ms and "peak_bytes_in_use" in ms:
            out["device_peak_mb"] = round(ms["peak_bytes_in_use"] / 2**20, 1)
        return out


def derive(info: dict, peak_gflops: float | None = None) -> dict:
    """samples/s, achieved GFLOP/s and % of `peak_gflops` from a result's median step time."""
    med, flops = info.get("median_s"), info.get("flops_per_step")
    out: dict = {}
    if med:
        out["samples_per_s"] = round(info["batch"] / med, 3)
        if flops:
            out["gflops_per_s"] = round(flops / med / 1e9, 2)
            if peak_gflops:
                out["pct_peak"] = round(100.0 * flops / med / 1e9 / peak_gflops, 2)
    return out


def time_jaxmir(
    model: str,
    batch: int | None = None,
    *,
    preset: str = "paper",
    steps: int = 3,
    overrides: Sequence[str] = (),
    precision: str = "fp32",
    devices: int | None = None,
    warmup: int = 1,
    peak_gflops: float | None = None,
) -> dict:
    """Time jaxmir's training step for `model` in this process; a dict with the setup info
    (compile_s, flops_per_step, ...), the step statistics (median_s, min_s, max_s, ...),
    samples_per_s, gflops_per_s and, given `peak_gflops`, pct_peak."""
    bench = JaxBench(
        model,
        batch or MODELS[model]["batch"],
        preset=preset,
        overrides=overrides,
        precision=precision,
        devices=devices,
        warmup=warmup,
    )
    info = bench.setup()
    times = bench.run(steps)
    info.update(bench.finish())
    info.update(stats(times))
    info["times_s"] = [round(t, 5) for t in times]
    info.update(derive(info, peak_gflops))
    return info


def matmul_peak(n: int = 2048, repeats: int = 5, dtypes: Sequence[str] = ("float32",)) -> dict:
    """Matmul throughput (GFLOP/s, best of `repeats`) of n x n products: numpy's BLAS in fp32,
    and JAX's default dot on its default backend for each of `dtypes`."""
    import jax
    import jax.numpy as jnp

    flops = 2.0 * n**3

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return round(flops / min(times) / 1e9, 1)

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    out: dict = {"n": n}
    if jax.default_backend() == "cpu":
        out["numpy_gflops"] = best(lambda: a @ a)
    f = jax.jit(lambda x: x @ x)
    for dtype in dtypes:
        x = jnp.asarray(a, dtype)
        g = best(lambda x=x: f(x).block_until_ready())
        out["jax_gflops" if dtype == "float32" else f"jax_{dtype}_gflops"] = g
    out["jax_backend"] = jax.default_backend()
    out["device_kind"] = jax.devices()[0].device_kind
    out["n_devices"] = len(jax.devices())
    out["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    return out
