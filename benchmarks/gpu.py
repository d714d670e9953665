"""The accelerator run (``python -m benchmarks --gpu``, what ``benchmarks/gpu.sh`` calls).

Per model, jaxmir's training step in fp32 and in bf16 mixed precision (the two workers stepped in
alternation), at `GPU_BATCH` (batches that fill a card better than the presets': patch_cnn 256
where its preset trains at 32) and, for the models not there, the presets' training batches,
unless ``--batch`` says otherwise. MFU = achieved
FLOP/s (XLA's count of the step) / the card's dense peak from `GPU_PEAKS_TFLOPS` (bf16 runs
against the bf16 tensor-core peak; fp32 runs against both the fp32 CUDA-core peak and the TF32
tensor-core peak, since JAX's default fp32 matmul precision on these cards may use TF32).
Only jax, flax, optax and numpy are imported on this path; peers, the input pipeline, scaling
and features are skipped (their packages are not on the accelerator machines).
A time budget (``JAXMIR_BENCH_BUDGET_S``, default 420 s) skips the models that would not fit.
"""

from __future__ import annotations

import os
import time

from benchmarks.common import MODELS, Worker, WorkerError, fmt_s, gpu_peak_tflops, stats

GPU_BATCH = {"music": 8, "beat": 64, "patch_cnn": 256, "vocal_contour": 12}


def run_gpu(args, probe: dict, log, save=None) -> dict:
    """The accelerator rows of every model of `args.models`; `save(part)`, when given, is
    called with the rows so far after each model (a run killed by its hard timeout keeps the
    models it finished)."""
    t0 = time.perf_counter()
    budget = float(os.environ.get("JAXMIR_BENCH_BUDGET_S", "420"))
    kind = probe.get("device_kind", "?")
    backend = probe.get("jax_backend", "?")
    log(f"\naccelerator: {kind} ({backend}); precisions {args.precision}")
    if backend == "cpu":
        log("  (no accelerator: running the same path on the CPU, without MFU)")
    env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": str(round(0.9 / max(len(args.precision), 1), 2))}
    rows: dict = {}
    summary: dict = {}
    for model in args.models:
        elapsed = time.perf_counter() - t0
        if elapsed > budget:
            log(f"  {model}: skipped, {elapsed:.0f} s of the {budget:.0f} s budget used")
            rows[model] = {"skipped": "time budget"}
            continue
        batch = args.batch.get(model) or GPU_BATCH.get(model, MODELS[model]["paper_batch"])
        log(f"\n== {model}: {MODELS[model]['title']}, batch {batch} ==")
        workers = []
        for precision in args.precision:
            spec = {
                "model": model,
                "batch": batch,
                "warmup": 2,
                "preset": "paper",
                "precision": precision,
                "overrides": args.set.get(model, []),
            }
            w = Worker("jax", spec, env, precision)
            try:
                w.wait_ready()
                workers.append(w)
            except WorkerError as e:
                log(f"  {precision}: failed: {str(e).strip().splitlines()[0]}")
                rows.setdefault(model, {})[precision] = {"error": str(e)[-2000:]}
        per = {
            w.label: max(1, min(50, int(1.0 / max(w.ready["first_step_s"], 1e-4)))) for w in workers
        }
        for r in range(args.rounds or 5):
            for w in workers[r % max(len(workers), 1) :] + workers[: r % max(len(workers), 1)]:
                try:
                    w.run(per[w.label])
                except WorkerError as e:  # the worker is closed: out of the rounds
                    log(f"  {w.label}: failed while stepping: {str(e).splitlines()[0]}")
                    rows.setdefault(model, {})[w.label] = {"error": str(e)[-2000:]}
                    workers.remove(w)
        for w in workers:
            info = {**w.ready, **w.finish(), **stats(w.times)}
            med, flops = info.get("median_s"), info.get("flops_per_step")
            if med:
                info["samples_per_s"] = round(batch / med, 1)
            if med and flops:
                achieved = flops / med / 1e12
                info["tflops_per_s"] = round(achieved, 2)
                peaks = ("bf16",) if w.label == "bf16" else ("fp32", "tf32")
                for p in peaks:
                    got = gpu_peak_tflops(kind, p)
                    if got:
                        info[f"mfu_{p}_pct"] = round(100 * achieved / got[1], 2)
                        info["peak_table_entry"] = got[0]
            gemm = probe.get("jax_bfloat16_gflops" if w.label == "bf16" else "jax_gflops")
            if med and flops and gemm:
                info["pct_of_measured_gemm"] = round(100 * flops / med / 1e9 / gemm, 2)
            rows.setdefault(model, {})[w.label] = info
            mfu = {k: v for k, v in info.items() if k.startswith(("mfu_", "pct_of_measured"))}
            log(
                f"  {w.label:<5} compile {info.get('compile_s', 0):6.1f} s  median "
                f"{fmt_s(med):>9}  min {fmt_s(info.get('min_s')):>9}  "
                f"{info.get('samples_per_s', 0):>9.1f} samples/s  "
                f"{info.get('tflops_per_s', 0):6.2f} TFLOP/s  MFU {mfu or '-'}  "
                f"peak mem {info.get('device_peak_mb', info.get('peak_rss_mb'))} MB"
            )
            summary.setdefault(model, {})[w.label] = {
                "step_s": round(med, 5) if med else None,
                **{k: v for k, v in mfu.items()},
            }
        if save is not None:
            save(_gpu_part(kind, backend, rows, summary, t0))
    log("\nSkipped on this path: peers (torch/TF), input pipeline (grain), scaling, features.")
    return _gpu_part(kind, backend, rows, summary, t0)


def _gpu_part(kind: str, backend: str, rows: dict, summary: dict, t0: float) -> dict:
    return {
        "device_kind": kind,
        "backend": backend,
        "rows": rows,
        "summary": summary,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
