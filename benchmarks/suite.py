"""The benchmark suite: jaxmir side by side with PyTorch and TF-Keras, levers, scaling.

    python -m benchmarks [--quick] [--models music,beat,patch_cnn] [--peers torch,tf]
                         [--devices 1,2,4,8] [--out benchmarks/results] [--levers] [--gpu]
    python -m benchmarks --quick --models vocal_contour --peers none --name quick-vocal-contour

Default mode, per model: one worker subprocess per framework (jaxmir, torch, tf; each sets its
own threads and XLA flags before its framework starts), all alive at once and stepped in
alternation (A/B/C, A/B/C, ..., the order rotating each round) so the machine's load drifts hit
every framework alike. Same per-sample shapes and parameter counts on every side, same batch.
Models (``--models``, default ``music,beat,patch_cnn``): the music attention U-Net, the beat
BLSTM and the patch CNN, each with PyTorch and TF peers, and ``vocal_contour`` (omnizart's ASPP
U-Net, 17.6 M parameters, paper preset), selected only on request (``--models vocal_contour``):
it has no torch or TF peer, so its rows give jaxmir's step time, samples/s, GFLOP/s and % of
peak, and "no peer" for each requested peer (a peer needs to be installed only where a chosen
model has it).
Reported per framework: compile (first call) time, median/min/max step time, samples/s, achieved
GFLOP/s (XLA's FLOP count of jaxmir's step, the same network for the peers) and its % of the
machine's fp32 matmul peak measured in the same run, peak RSS. Headline: speedup = peer median
step time / jaxmir median step time (> 1: jaxmir is faster). Then: the input pipeline (Grain
over a real beat feature cache: samples/s alone, the fraction of a training step spent waiting
for input), scaling over 1/2/4/8 simulated CPU devices at a fixed global batch, and CFP feature
throughput (:mod:`benchmarks.features`).

``--levers``: before/after tables of jaxmir's speed levers, each variant a jaxmir worker, all
variants of a model alternated: XLA's YNNPACK fusion off (``--xla_cpu_experimental_ynn_fusion_type=``)
vs on, the matmul weight-gradient convolution (``model.conv_impl``) vs native, the LSTM scan's
``unroll``, bf16 mixed precision.

``--quick`` (under 5 minutes on an idle 2-core CPU, with the default models): fewer rounds; the
music model runs at batch 1 (jaxmir and peers alike), and so does vocal_contour when selected;
the workers of one model set up at the same time (their compile times then overlap, which the
output says); scaling runs the patch CNN in one process; a 10 s clip and three methods for
features; scaling and features are skipped, with a message, when they would end past
``--budget-s`` (285 s; a loaded machine). vocal_contour is not a default model because it would
break that: at batch 1 it adds about 70 s on a 2-core CPU (about 37 s compile, 2.8 s a step).

Outputs: a table on stdout, ``<out>/<name>.json``, ``<out>/<name>.png`` (speedup bars), and the
last stdout line is one JSON object ``{"speedups": {model: {peer: x}}, ...}``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    ALL_PEERS,
    LEARNING_RATES,
    MODELS,
    RESULTS,
    Worker,
    WorkerError,
    fmt_s,
    gpu_peak_tflops,
    host_info,
    loadavg,
    model_peers,
    run_one,
    stats,
    write_json,
)

PEERS = ALL_PEERS
YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type="
DEFAULT_MODELS = "music,beat,patch_cnn"  # vocal_contour, vocal: on request (--models ...)
# The big U-Nets: two alternation rounds in --quick, no scaling run in full mode.
HEAVY = ("music", "vocal_contour", "vocal", "drum")


def log(msg: str = "") -> None:
    print(msg, flush=True)


def _peer_available(peer: str) -> tuple[bool, str]:
    module = {"torch": "torch", "tf": "tensorflow"}[peer]
    if importlib.util.find_spec(module) is None:
        how = 'pip install -e ".[bench]"'
        return False, f"{peer}: skipped, `import {module}` fails here ({how} to include it)"
    return True, ""


MALLOC = {"mode": "tuned"}  # --malloc: the process environment of every worker


def _malloc_env(mode: str | None = None) -> dict:
    """jaxmir's glibc malloc tuning (jaxmir.runtime), given to every worker -- jaxmir and its
    peers alike -- unless ``--malloc system``."""
    if (mode or MALLOC["mode"]) != "tuned":
        return {"JAXMIR_MALLOC": "system"}
    from jaxmir.runtime import tuned_env, uses_glibc

    if not uses_glibc():
        return {}
    env = tuned_env(os.environ)
    return {k: env[k] for k in ("GLIBC_TUNABLES", "JAXMIR_MALLOC_TUNED")}


def _model_flags(model: str, extra: str = "") -> str:
    """jaxmir's CPU XLA flags for `model` (jaxmir.runtime.CPU_XLA_FLAGS, what the `jaxmir`
    command sets for its task), then `extra`; none on an accelerator run."""
    from jaxmir.runtime import CPU_XLA_FLAGS

    flags = "" if ACCELERATOR["on"] else CPU_XLA_FLAGS.get(model, "")
    return " ".join(f for f in (flags, extra) if f)


ACCELERATOR = {"on": False}  # --gpu


def _xla_env(extra_flags: str = "", devices: int | None = None, malloc: str | None = None) -> dict:
    flags = os.environ.get("XLA_FLAGS", "")
    if devices:
        flags += f" --xla_force_host_platform_device_count={devices}"
    if extra_flags:
        flags += " " + extra_flags
    return {"XLA_FLAGS": flags.strip(), **_malloc_env(malloc)}


def start_group(specs: list[tuple[str, str, dict, dict]], concurrency: int) -> list[Worker]:
    """Start (label, framework, spec, env) workers, `concurrency` setting up at a time; return
    the ones that came up (errors are logged and recorded on `failed`)."""
    pending, running, ready = list(specs), [], []
    start_group.failed = {}  # type: ignore[attr-defined]
    while pending or running:
        while pending and len(running) < concurrency:
            label, fw, spec, env = pending.pop(0)
            running.append(Worker(fw, spec, env, label))
        w = running.pop(0)
        try:
            w.wait_ready()
            ready.append(w)
        except WorkerError as e:
            msg = str(e).strip().splitlines()
            log(f"  {w.label}: failed: {msg[0] if msg else e}")
            start_group.failed[w.label] = str(e)[-2000:]  # type: ignore[attr-defined]
    return ready


def alternate(workers: list[Worker], rounds: int, round_s: float) -> None:
    """A/B/A/B: `rounds` rounds, each worker running ~`round_s` seconds of steps (at least one)
    per round, the order rotated every round."""
    if not workers:
        return
    per = {
        w.label: max(1, min(20, int(round_s / max(w.ready.get("first_step_s", 1.0), 1e-3))))
        for w in workers
    }
    alive = list(workers)
    for r in range(rounds):
        k = r % len(alive) if alive else 0
        for w in alive[k:] + alive[:k]:
            try:
                w.run(per[w.label])
            except WorkerError as e:
                log(f"  {w.label}: failed while stepping: {str(e).strip().splitlines()[0]}")
                w.ready = {**(w.ready or {}), "error": str(e)[-2000:]}
                alive.remove(w)


def _summary(w: Worker, final: dict) -> dict:
    info = dict(w.ready or {})
    info.update(final)
    info.update(stats(w.times))
    info["times_s"] = [round(t, 5) for t in w.times]
    info["env"] = w.env
    return info


def _derive(info: dict, flops: float | None, peak_gflops: float | None) -> None:
    med = info.get("median_s")
    if not med:
        return
    info["samples_per_s"] = round(info["batch"] / med, 3)
    if flops:
        info["gflops_per_s"] = round(flops / med / 1e9, 2)
        if peak_gflops:
            info["pct_peak"] = round(100.0 * flops / med / 1e9 / peak_gflops, 2)


# -- side by side ------------------------------------------------------------------------------
def side_by_side(model: str, args, peers: list[str], peak: float | None) -> dict:
    spec = MODELS[model]
    batch = args.batch.get(model) or (spec["quick_batch"] if args.quick else spec["batch"])
    lr = LEARNING_RATES[model]
    common = {"model": model, "batch": batch, "warmup": 1, "lr": lr}
    jax_spec = {**common, "preset": "paper", "overrides": args.set.get(model, [])}
    specs = [("jaxmir", "jax", jax_spec, _xla_env(_model_flags(model, args.xla_flags)))]
    peers, no_peer = split_peers(model, peers, args.peers)
    for p in peers:
        specs.append((p, p, {**common, "threads": args.threads}, _malloc_env()))
        if "GLIBC_TUNABLES" in _malloc_env():  # the peer as its users run it, too
            specs.append((f"{p}/sysmalloc", p, {**common, "threads": args.threads}, {}))
    log(
        f"\n== {model}: {spec['title']}, input [{batch}, {', '.join(map(str, spec['input']))}], "
        f"{spec['params']:,} params =="
    )
    if not model_peers(model):
        log(f"  no peer: there is no torch or TF {model} model (jaxmir's numbers only)")
    for p in no_peer:
        log(f"  {p:<7} no peer (no {p} {model} model)")
    workers = start_group(specs, args.concurrency)
    failed = dict(start_group.failed)  # type: ignore[attr-defined]
    for w in workers:
        r = w.ready
        first = r.get("compile_s", r.get("first_step_s"))
        log(f"  {w.label:<7} ready in {r['startup_s']:.1f} s (compile/first call {first} s)")
    rounds = args.rounds or (2 if (args.quick and model in HEAVY) else (3 if args.quick else 7))
    alternate(workers, rounds, args.round_s)
    out: dict = {
        "title": spec["title"],
        "batch": batch,
        "input": [batch, *spec["input"]],
        "params": spec["params"],
        "rounds": rounds,
        "frameworks": {},
        "failed": failed,
        "no_peer": no_peer,
    }
    pipeline = None
    for w in workers:
        if w.label == "jaxmir" and model == "beat" and args.pipeline:
            pipeline = _pipeline_in(w, args)
        out["frameworks"][w.label] = _summary(w, w.finish())
    jax_info = out["frameworks"].get("jaxmir", {})
    flops = jax_info.get("flops_per_step")
    for info in out["frameworks"].values():
        _derive(info, flops, peak)
    jmed = jax_info.get("median_s")
    out["row_speedups"] = {
        label: round(info["median_s"] / jmed, 3)
        for label, info in out["frameworks"].items()
        if label != "jaxmir" and jmed and info.get("median_s")
    }
    # headline: each peer in its faster environment (jaxmir's malloc tuning or glibc's default)
    out["speedups"] = {}
    for p in peers:
        rows = {k: v for k, v in out["row_speedups"].items() if k.split("/")[0] == p}
        if rows:
            best = min(rows, key=rows.get)
            out["speedups"][p] = rows[best]
            out.setdefault("peer_env", {})[p] = "sysmalloc" if "/" in best else "tuned malloc"
    if pipeline is not None:
        out["pipeline"] = pipeline
    return out


def split_peers(model: str, available: list[str], requested: list[str]) -> tuple[list, list]:
    """(the `available` peers that have `model`, the `requested` peers that have no `model`):
    the first run and are required as for every model, the second are shown as "no peer"."""
    have = model_peers(model)
    return [p for p in available if p in have], [p for p in requested if p not in have]


def _pipeline_in(w: Worker, args) -> dict:
    """Grain throughput and the input-wait fraction, in the beat jaxmir worker (its compiled step
    is reused)."""
    if importlib.util.find_spec("grain") is None:
        return {"skipped": "grain is not installed"}
    try:
        from benchmarks.pipeline import build_beat_cache
    except ImportError as e:
        return {"skipped": f"pipeline: {e}"}
    with tempfile.TemporaryDirectory(prefix="jaxmir-bench-cache-") as tmp:
        t0 = time.perf_counter()
        try:
            build_beat_cache(tmp, pieces=6 if args.quick else 16, seconds=60.0)
        except ImportError as e:
            return {"skipped": f"pipeline: {e}"}
        built_s = time.perf_counter() - t0
        steps, batches = (3, 8) if args.quick else (8, 30)
        res = w.call("pipeline", cache_dir=tmp, steps=steps, n_batches=batches)
    res["cache_build_s"] = round(built_s, 2)
    res["cache"] = "6 synthetic pieces x 60 s" if args.quick else "16 synthetic pieces x 60 s"
    return res


# -- levers ------------------------------------------------------------------------------------
def lever_variants(model: str, quick: bool) -> list[tuple]:
    """(label, overrides, extra XLA flags, precision[, malloc mode]); the first is the baseline
    (jaxmir's defaults)."""
    v: list[tuple] = [("default", [], "", "fp32")]
    v.append(("malloc system (untuned)", [], "", "fp32", "system"))
    if _has_model_flags(model):
        v.append(("without per-model XLA flags", [], NO_MODEL_FLAGS, "fp32"))
    else:
        v.append(("ynn fusion off", [], YNN_OFF, "fp32"))
    if model in ("music", "patch_cnn", "vocal_contour", "vocal"):
        default = _default_conv_impl(model)
        for impl in ("native", "matmul"):
            if impl != default:  # the default row already is this one
                v.append((f"conv_impl={impl}", [f"model.conv_impl={impl}"], "", "fp32"))
        v.append(("conv_impl=matmul + ynn off", ["model.conv_impl=matmul"], YNN_OFF, "fp32"))
    if model == "beat":
        v.append(("lstm_impl=flax (two flax RNNs)", ["model.lstm_impl=flax"], "", "fp32"))
        for u in (4,) if quick else (2, 4, 8):
            v.append((f"unroll={u}", [f"model.unroll={u}"], "", "fp32"))
    v.append(("bf16 mixed precision", [], "", "bf16"))
    return v


NO_MODEL_FLAGS = "<none>"  # a lever row run without jaxmir.runtime.CPU_XLA_FLAGS[model]


def _has_model_flags(model: str) -> bool:
    try:
        from jaxmir.runtime import CPU_XLA_FLAGS
    except ImportError:
        return False
    return bool(CPU_XLA_FLAGS.get(model))


def _default_conv_impl(model: str) -> str | None:
    """jaxmir's default `conv_impl` for `model` ("native", "matmul", "auto"), None if unknown.
    Importing the task here does not start JAX's backend, so the workers' flags are unaffected."""
    try:
        if model == "patch_cnn":
            from jaxmir.tasks.patch_cnn.model import PatchCNN

            return PatchCNN.conv_impl
        from jaxmir.tasks.base import get_task

        return getattr(get_task(model).preset("paper").model, "conv_impl", None)
    except Exception:
        return None


def levers(model: str, args, peak: float | None) -> dict:
    spec = MODELS[model]
    batch = args.batch.get(model) or (spec["quick_batch"] if args.quick else spec["batch"])
    base = {"model": model, "batch": batch, "warmup": 1, "preset": "paper"}
    specs = []
    for label, overrides, flags, precision, *malloc in lever_variants(model, args.quick):
        overrides = [*args.set.get(model, []), *overrides]
        s = {**base, "overrides": overrides, "precision": precision}
        if flags == NO_MODEL_FLAGS:
            flags = args.xla_flags
        else:
            flags = _model_flags(model, " ".join(f for f in (args.xla_flags, flags) if f))
        specs.append((label, "jax", s, _xla_env(flags, malloc=(malloc or [None])[0])))
    log(f"\n== levers: {model}, batch {batch} ==")
    workers = start_group(specs, args.concurrency)
    failed = dict(start_group.failed)  # type: ignore[attr-defined]
    rounds = args.rounds or (2 if (args.quick and model in HEAVY) else (3 if args.quick else 5))
    alternate(workers, rounds, args.round_s)
    rows = {w.label: _summary(w, w.finish()) for w in workers}
    base_med = rows.get("default", {}).get("median_s")
    flops = rows.get("default", {}).get("flops_per_step")
    log(
        f"  {'variant':<28}{'compile':>9}{'median':>10}{'min':>10}{'vs default':>11}"
        f"{'%peak':>7}  details"
    )
    for label, info in rows.items():
        _derive(info, flops, peak)
        if base_med and info.get("median_s"):
            info["speedup_vs_default"] = round(base_med / info["median_s"], 3)
        d = info.get("details", {})
        det = ", ".join(
            f"{k}={v}" for k, v in d.items() if k in ("conv_impl", "unroll", "lstm_impl")
        )
        det += f", xla_flags={info['env'].get('XLA_FLAGS') or '-'}"
        det += ", malloc=" + ("tuned" if "GLIBC_TUNABLES" in info["env"] else "system")
        log(
            f"  {label:<28}{info.get('compile_s', 0):>8.1f}s{fmt_s(info.get('median_s')):>10}"
            f"{fmt_s(info.get('min_s')):>10}{info.get('speedup_vs_default', 0):>10.2f}x"
            f"{info.get('pct_peak', 0):>7.1f}  {det}"
        )
    for label, err in failed.items():
        log(f"  {label:<28} failed: {err.splitlines()[0] if err else ''}")
    return {"batch": batch, "rounds": rounds, "variants": rows, "failed": failed}


# -- scaling -----------------------------------------------------------------------------------
def scaling(model: str, devices: list[int], args) -> dict:
    """The sharded step at a fixed global batch on 1, 2, 4, 8 simulated CPU devices. Full mode:
    one subprocess per N with ``--xla_force_host_platform_device_count=N``. --quick: one
    subprocess with max(N) devices and a mesh over the first N of them for each N (one start-up
    and one JAX initialisation instead of four)."""
    batch = args.batch.get(model) or MODELS[model]["batch"]
    n_max = max(devices)
    if batch % n_max:
        batch = (batch // n_max + 1) * n_max
    how = "one process, meshes over the first N" if args.quick else "one process per N"
    log(f"\n== scaling: {model}, global batch {batch}, simulated CPU devices {devices} ({how}) ==")
    base = {"model": model, "batch": batch, "warmup": 1, "preset": "paper"}
    base["overrides"] = args.set.get(model, [])
    rows: dict = {}
    if args.quick:
        env = _xla_env(_model_flags(model, args.xla_flags), devices=n_max)
        w = Worker("jax", {**base, "devices": 1}, env, "scaling")
        try:
            w.wait_ready()
            res = w.call("scaling", devices=devices, rounds=args.rounds or 3, steps=3)
        except WorkerError as e:
            res = {"error": str(e)[-2000:]}
        finally:
            w.finish()
        if "error" in res:
            log(f"  failed: {res['error'].strip().splitlines()[0]}")
            return {"model": model, "global_batch": batch, "error": res["error"]}
        rows = {f"{n} dev": {**r, "env": env} for n, r in res.items()}
    else:
        specs = []
        for n in devices:
            s = {**base, "devices": n}
            specs.append(
                (f"{n} dev", "jax", s, _xla_env(_model_flags(model, args.xla_flags), devices=n))
            )
        workers = start_group(specs, args.concurrency)
        alternate(workers, args.rounds or 5, args.round_s)
        rows = {w.label: _summary(w, w.finish()) for w in workers}
    one = rows.get(f"{devices[0]} dev", {}).get("median_s")
    for label, info in rows.items():
        if one and info.get("median_s"):
            info["relative_to_first"] = round(info["median_s"] / one, 3)
        log(
            f"  {label:<7} compile {info.get('compile_s', 0):5.1f} s   median "
            f"{fmt_s(info.get('median_s')):>9}   step time x{info.get('relative_to_first', 0):.2f}"
            f" of {devices[0]} device(s)'"
        )
    return {"model": model, "global_batch": batch, "mode": how, "rows": rows}


# -- features ----------------------------------------------------------------------------------
def features(args) -> dict:
    missing = [m for m in ("librosa", "soundfile", "scipy") if importlib.util.find_spec(m) is None]
    if missing:
        msg = f"features: skipped, missing {', '.join(missing)}"
        log("\n" + msg)
        return {"skipped": msg}
    from benchmarks import features as feat

    out = Path(args.out) / f"{args.name}-features.json"  # features.json: the full benchmark
    seconds = 10.0 if args.quick else 60.0
    methods = "numpy-f64,numpy-f32,jax-f32" if args.quick else ",".join(feat.METHODS)
    log("")
    feat.main(
        [
            "--seconds",
            str(seconds),
            "--repeats",
            "1" if args.quick else "3",
            "--methods",
            methods,
            "--out",
            str(out),
        ]
    )
    data = json.loads(out.read_text())
    rows = {
        r["method"]: round(60.0 / r["s_per_min"], 1) for r in data["results"] if r.get("s_per_min")
    }
    log(
        "CFP feature throughput, seconds of audio per second: "
        + ", ".join(f"{k} {v:g}" for k, v in rows.items())
    )
    return {"seconds": seconds, "audio_s_per_s": rows, "json": str(out)}


# -- output ------------------------------------------------------------------------------------
def print_table(results: dict, peak: dict) -> None:
    log("\n" + "=" * 116)
    pk = peak.get("peak_gflops")
    log(
        f"Step times (forward + backward + Adam), median of the alternated rounds; % of peak = "
        f"achieved / {pk} GFLOP/s (fp32 matmul peak measured in this run)"
    )
    log(
        f"{'model':<14}{'framework':<16}{'batch':>6}{'compile':>10}{'median':>10}{'min':>10}"
        f"{'max':>10}{'samples/s':>11}{'GFLOP/s':>9}{'%peak':>7}{'RSS MB':>8}{'speedup':>9}"
    )
    for model, r in results.items():
        for fw, info in r["frameworks"].items():
            comp = info.get("compile_s")
            sp = "" if fw == "jaxmir" else f"{r.get('row_speedups', {}).get(fw, 0):.2f}x"
            log(
                f"{model:<14}{fw:<16}{info.get('batch', r['batch']):>6}"
                f"{(f'{comp:.1f} s' if comp is not None else 'eager'):>10}"
                f"{fmt_s(info.get('median_s')):>10}{fmt_s(info.get('min_s')):>10}"
                f"{fmt_s(info.get('max_s')):>10}{info.get('samples_per_s', 0):>11.2f}"
                f"{info.get('gflops_per_s', 0):>9.1f}{info.get('pct_peak', 0):>7.1f}"
                f"{info.get('peak_rss_mb', 0):>8.0f}{sp:>9}"
            )
        for fw in r.get("no_peer", []):
            log(f"{model:<14}{fw:<16}{'':>6}  no peer (no {fw} {model} model)")
        for fw, err in r.get("failed", {}).items():
            log(f"{model:<14}{fw:<16} failed: {err.strip().splitlines()[0] if err else ''}")
    log(
        "speedup = peer median / jaxmir median (> 1: jaxmir faster); the headline takes each "
        "peer in its faster environment (PEER/sysmalloc: glibc's default malloc, PEER: the "
        "malloc tuning jaxmir runs with). jaxmir's FLOPs (XLA cost "
        "analysis, LSTM scans counted per time step) are used for every framework. compile: "
        "jaxmir's AOT compile, TF's first call (tracing; XLA when jit_compile), torch is eager."
    )


def plot(results: dict, path: Path, subtitle: str = "") -> str | None:
    """Bars of the speedups (peer step / jaxmir step) per model and peer; "n/a" where a peer
    did not run."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    models = [m for m in results if results[m].get("speedups")]
    peers = [p for p in PEERS if any(p in results[m]["speedups"] for m in models)]
    if not models or not peers:
        return None
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(models), 3.8))
    width = 0.8 / len(peers)
    for i, p in enumerate(peers):
        xs = [j + (i - (len(peers) - 1) / 2) * width for j in range(len(models))]
        ys = [results[m]["speedups"].get(p) for m in models]
        ax.bar(xs, [y or 0.0 for y in ys], width, label=f"vs {p}")
        for x, y in zip(xs, ys, strict=True):
            text = f"{y:.2f}x" if y else "n/a"
            ax.annotate(text, (x, y or 0.0), ha="center", va="bottom", fontsize=8)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("peer step time / jaxmir step time")
    ax.set_title(
        "jaxmir training-step speedup (> 1: jaxmir faster)" + (f"\n{subtitle}" if subtitle else ""),
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _parse_kv_list(items: list[str]) -> dict[str, list[str]]:
    """["music:model.conv_impl=matmul", ...] -> {"music": ["model.conv_impl=matmul"]}."""
    out: dict[str, list[str]] = {}
    for item in items:
        model, _, ov = item.partition(":")
        if not ov or model not in MODELS:
            raise SystemExit(f"--set expects MODEL:key=value with MODEL in {list(MODELS)}")
        out.setdefault(model, []).append(ov)
    return out


def peers_needed(models: list[str], peers: list[str]) -> list[str]:
    """The peers of `peers` that one of `models` has: only these must be installed (a run of
    vocal_contour, chord, drum or vocal, which no peer has, needs neither torch nor TF)."""
    return [p for p in peers if any(p in model_peers(m) for m in models)]


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="under 5 minutes on a 2-core CPU")
    ap.add_argument(
        "--models",
        default=DEFAULT_MODELS,
        help=f"comma-separated, of {','.join(MODELS)} (default {DEFAULT_MODELS}; "
        "vocal_contour, vocal, chord, drum only on request, e.g. --models music,vocal)",
    )
    ap.add_argument("--peers", default="torch,tf", help="torch,tf or none")
    ap.add_argument("--devices", default="1,2,4,8", help="simulated CPU devices for scaling")
    ap.add_argument("--out", default=str(RESULTS), help="directory for JSON and PNG")
    ap.add_argument("--name", help="result file name (default: quick, full, levers, gpu)")
    ap.add_argument("--levers", action="store_true", help="before/after of each speed lever")
    ap.add_argument("--gpu", action="store_true", help="accelerator run: MFU, fp32 and bf16")
    ap.add_argument(
        "--precision", default="fp32", help="jaxmir precision(s) of --gpu: fp32, bf16 or fp32,bf16"
    )
    ap.add_argument("--batch", action="append", default=[], help="MODEL=N (repeatable)")
    ap.add_argument("--paper-batch", action="store_true", help="the presets' training batches")
    ap.add_argument("--set", action="append", default=[], help="MODEL:key=value jaxmir override")
    ap.add_argument("--xla-flags", default="", help="extra XLA_FLAGS for every jaxmir worker")
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="peer threads (torch, TF; default: every CPU, as XLA uses for jaxmir)",
    )
    ap.add_argument(
        "--malloc",
        choices=("tuned", "system"),
        default="tuned",
        help="glibc malloc tuning of jaxmir.runtime for every worker, peers included "
        "(what the jaxmir command runs with); system: glibc's defaults",
    )
    ap.add_argument("--rounds", type=int, help="alternation rounds (default by mode)")
    ap.add_argument("--round-s", type=float, help="seconds of steps per worker per round")
    ap.add_argument("--concurrency", type=int, help="workers setting up at once")
    ap.add_argument(
        "--budget-s",
        type=float,
        help="skip scaling/features when they would end past this many seconds (--quick: 285)",
    )
    ap.add_argument("--no-pipeline", dest="pipeline", action="store_false")
    ap.add_argument("--no-scaling", dest="scaling", action="store_false")
    ap.add_argument("--no-features", dest="features", action="store_false")
    args = ap.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        ap.error(f"unknown model(s) {bad}; choose from {list(MODELS)}")
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip() and p != "none"]
    bad = [p for p in args.peers if p not in PEERS]
    if bad:
        ap.error(f"unknown peer(s) {bad}; choose from {list(PEERS)} or none")
    try:
        args.devices = sorted({int(d) for d in args.devices.split(",") if d.strip()})
    except ValueError:
        ap.error(f"--devices expects whole numbers such as 1,2,4,8, got {args.devices!r}")
    if any(d < 1 for d in args.devices):
        ap.error(f"--devices: each count is 1 or more, got {args.devices}")
    args.precision = [p.strip() for p in args.precision.split(",") if p.strip()]
    bad = [p for p in args.precision if p not in ("fp32", "bf16")]
    if bad or not args.precision:
        ap.error(f"--precision: fp32, bf16 or fp32,bf16, got {bad or 'nothing'}")
    if args.precision != ["fp32"] and not args.gpu:
        ap.error("--precision is for --gpu runs (the CPU side by side runs fp32, as its peers)")
    if args.threads < 1:
        ap.error(f"--threads: 1 or more, got {args.threads}")
    batches = {}
    for item in args.batch:
        k, _, v = item.partition("=")
        if k not in MODELS or not v.isdigit():
            ap.error("--batch expects MODEL=N")
        batches[k] = int(v)
    if args.paper_batch:
        batches = {m: MODELS[m]["paper_batch"] for m in MODELS} | batches
    args.batch = batches
    args.set = _parse_kv_list(args.set)
    if args.round_s is None:
        args.round_s = 1.0 if args.quick else 3.0
    if args.budget_s is None:
        args.budget_s = 285.0 if args.quick else 0.0
    if args.concurrency is None:
        args.concurrency = 3 if args.quick else 1
    args.name = args.name or (
        "gpu" if args.gpu else ("levers" if args.levers else ("quick" if args.quick else "full"))
    )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.levers or args.gpu):
        needed = peers_needed(args.models, args.peers)
        missing = [msg for ok, msg in map(_peer_available, needed) if not ok]
        if missing:  # a side-by-side run that silently drops a peer would mislead
            for msg in missing:
                log(msg.replace(": skipped,", ": missing,"))
            log('Install the peers (pip install -e ".[bench]") or leave them out (--peers).')
            return 3
    MALLOC["mode"] = args.malloc
    ACCELERATOR["on"] = bool(args.gpu)
    t_start = time.perf_counter()
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log(f"python -m benchmarks: error: --out {args.out}: {e.strerror}")
        return 2
    host = host_info()
    log(
        f"jaxmir benchmarks ({args.name}): {host['cpu']}, {host['cpus']} CPUs, "
        f"load average {host['loadavg']}"
    )
    if args.quick:
        small = ", ".join(
            f"{m} at batch {args.batch.get(m, MODELS[m]['quick_batch'])}"
            for m in HEAVY
            if m in args.models
        )
        small = f"; {small}" if small else ""
        log(
            f"--quick: fewer rounds{small} (the same shapes for jaxmir and its peers); "
            "workers of a model set up at once (compile times overlap)."
        )
    command = list(sys.argv[1:] if argv is None else argv)  # how to run this again
    payload: dict = {"name": args.name, "quick": args.quick, "host": host, "argv": command}
    payload["malloc"] = _malloc_env()
    log(
        f"malloc: {args.malloc} for every worker, jaxmir and peers alike"
        + (
            f" (GLIBC_TUNABLES={payload['malloc']['GLIBC_TUNABLES']})"
            if "GLIBC_TUNABLES" in payload["malloc"]
            else ""
        )
    )
    skipped: list[str] = []

    log("\nmatmul peak probe (GEMM: 2048^2 fp32 on CPU; 8192^2 fp32 and bf16 on accelerators)")
    try:
        probe = run_one("probe", {}, 0, env=_xla_env(args.xla_flags))
    except WorkerError as e:
        probe = {"error": str(e)}
        log(f"  failed: {e}")
    peak = max(probe.get("numpy_gflops", 0), probe.get("jax_gflops", 0)) or None
    probe["peak_gflops"] = peak
    if probe.get("jax_backend") not in (None, "cpu"):
        kind = probe.get("device_kind", "")
        probe["gpu_peaks"] = {p: gpu_peak_tflops(kind, p) for p in ("fp32", "tf32", "bf16")}
        if not any(probe["gpu_peaks"].values()):
            log(f"  {kind}: no data-sheet peak in GPU_PEAKS_TFLOPS (benchmarks/common.py): no MFU")
    payload["peak"] = probe
    log(
        f"  numpy {probe.get('numpy_gflops')} GFLOP/s, JAX {probe.get('jax_gflops')} GFLOP/s"
        + (f", JAX bf16 {probe['jax_bfloat16_gflops']}" if "jax_bfloat16_gflops" in probe else "")
        + f" ({probe.get('jax_backend')}, {probe.get('device_kind')})"
    )

    if args.gpu:
        from benchmarks.gpu import run_gpu

        def save(part: dict) -> None:  # after each model: a hard timeout keeps what ran
            partial = {**payload, "gpu": part, "partial": "written after each model"}
            write_json(out_dir / f"{args.name}.json", partial, indent=1, default=str)

        payload["gpu"] = run_gpu(args, probe, log, save=save)
        return _finish(payload, args, t_start, out_dir, {}, skipped)

    if args.levers:
        payload["levers"] = {m: levers(m, args, peak) for m in args.models}
        return _finish(payload, args, t_start, out_dir, {}, skipped)

    peers = []
    for p in args.peers:
        ok, msg = _peer_available(p)
        if ok:
            peers.append(p)
        else:
            skipped.append(msg)
            log(msg)
    results = {m: side_by_side(m, args, peers, peak) for m in args.models}
    payload["models"] = results
    print_table(results, probe)

    pipe = results.get("beat", {}).get("pipeline")
    if pipe and "read" in pipe:
        rd, tr = pipe["read"], pipe["train"]
        log(
            f"\nInput pipeline (beat, Grain, {rd['threads']} threads, {pipe['cache']}): "
            f"{rd['samples_per_s']} samples/s alone ({rd['ms_per_batch']} ms per batch of "
            f"{rd['batch']}); training fed by it: {tr['step_s_with_input']} s/step, "
            f"{100 * tr['input_wait_fraction']:.1f}% of the step time waiting for input"
        )
    elif pipe:
        log(f"\nInput pipeline: {pipe.get('skipped') or pipe.get('error')}")
        skipped.append(f"pipeline: {pipe.get('skipped') or pipe.get('error')}")
    elif "beat" not in args.models:
        log("\nInput pipeline: measured with the beat model (not selected)")
    payload["pipeline"] = pipe

    def over_budget(section: str, needs_s: float) -> bool:
        elapsed = time.perf_counter() - t_start
        if args.budget_s and elapsed + needs_s > args.budget_s:
            msg = (
                f"{section}: skipped to keep within the {args.budget_s:.0f} s budget "
                f"({elapsed:.0f} s used; run it alone or with --budget-s 0)"
            )
            log("\n" + msg)
            skipped.append(msg)
            return True
        return False

    if args.scaling and not over_budget("scaling", 30):
        models = ["patch_cnn"] if args.quick else [m for m in args.models if m not in HEAVY]
        models = [m for m in models if m in args.models] or ["patch_cnn"]
        payload["scaling"] = {m: scaling(m, args.devices, args) for m in models}
    if args.features and not over_budget("features", 20):
        payload["features"] = features(args)
        if "skipped" in payload["features"]:
            skipped.append(payload["features"]["skipped"])
    return _finish(payload, args, t_start, out_dir, results, skipped)


def _finish(payload, args, t_start, out_dir: Path, results: dict, skipped: list[str]) -> int:
    payload["skipped"] = skipped
    payload["wall_s"] = round(time.perf_counter() - t_start, 1)
    payload["loadavg_end"] = loadavg()
    json_path = out_dir / f"{args.name}.json"
    sub = f"{args.name}, {payload['host']['cpu']}, load average {payload['loadavg_end']}"
    png = plot(results, out_dir / f"{args.name}.png", sub) if results else None
    payload["png"] = png
    write_json(json_path, payload, indent=1, default=str)
    log(f"\nwrote {json_path}" + (f" and {png}" if png else ""))
    log(f"total wall time {payload['wall_s']} s, load average at the end {payload['loadavg_end']}")
    last = {
        "speedups": {m: r.get("speedups", {}) for m, r in results.items()},
        "step_s": {
            m: {fw: round(i["median_s"], 5) for fw, i in r["frameworks"].items() if "median_s" in i}
            for m, r in results.items()
        },
        "pct_peak": {
            m: {fw: i.get("pct_peak") for fw, i in r["frameworks"].items()}
            for m, r in results.items()
        },
        "mode": args.name,
        "quick": args.quick,
        "wall_s": payload["wall_s"],
        "loadavg": payload["loadavg_end"],
        "json": str(json_path),
    }
    if "levers" in payload:
        last["levers"] = {
            m: {k: v.get("speedup_vs_default") for k, v in lv["variants"].items()}
            for m, lv in payload["levers"].items()
        }
    if "gpu" in payload:
        last["gpu"] = payload["gpu"].get("summary", {})
    print(json.dumps(last), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
