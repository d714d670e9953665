"""Inference speed of `jaxmir transcribe`: seconds of compute per minute of audio (s/min).

    python -m benchmarks.inference --workdir RUN --clips DIR [--name NAME] [--code DIR]
                                   [--repeats 3] [--sweep]

`RUN` is a trained run (e.g. the music task's `demo` preset), `DIR` a folder of audio clips
(e.g. twelve 30-s clips). Every measurement is a fresh `jaxmir transcribe` process, timed from
its start to its exit, `--repeats` times (medians reported):

* **one file**, alone in its command: with a cold compilation cache (a fresh, empty
  `$JAXMIR_CACHE` each time) and with a warm one (the same cache, filled by a first run);
* **all the clips in one command** (warm cache).

For each: the wall seconds of the process, and the one-off seconds (restore, compile) and the
compute s/min (everything else: features, model, decode and write) with its split. The code
under test prints them on its last stderr line; for code that does not (`--code` pointing at an
older checkout), the split comes from the same steps timed in a process of its own
(`--harness`): restore, then per file features -> `posteriors` -> decode -> write.

`--code DIR` runs the `jaxmir` package found in DIR (an older checkout, for a before/after
comparison; default: this repository). `--sweep` also measures, in one process of this
repository's code, the model's s/min for several inference batch sizes and window hops on the
clips, and the test split's note F1 for each hop/stitch scheme (the run's feature cache).

The results go to ``benchmarks/results/<name>.json`` (default name: ``inference``). The load
average is recorded: on a shared machine compare runs taken under the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Standard library only at import: `harness` runs from this file in a process whose `jaxmir`
# (and `benchmarks`) may be another checkout's.


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


LAUNCH = (
    "import sys; from jaxmir.cli import entry; sys.argv = ['jaxmir', *sys.argv[1:]]; "
    "sys.exit(entry())"
)
#: a rate per minute of audio, or "-" where under a second of audio gives none
_RATE = r"(?:[\d.]+|-)"
SUMMARY = re.compile(
    r"transcribed (?P<files>\d+) files?, (?P<minutes>[\d.]+) min of audio, in (?P<total_s>[\d.]+)"
    rf" s: (?P<compute_s_per_min>{_RATE}) s/min \((?:features (?P<features_s_per_min>{_RATE}), "
    rf"model (?P<model_s_per_min>{_RATE}), decode\+write (?P<write_s_per_min>{_RATE})"
    rf"|features\+decode\+write (?P<unsplit_s_per_min>{_RATE}), model (?P<model_alone>{_RATE}))\); "
    r"one-off: start-up (?P<startup_s>[\d.]+) s, restore (?P<restore_s>[\d.]+) s, "
    r"compile (?P<compile_s>[\d.]+) s"
)


def _env(code: Path, cache: Path | None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(code)  # also for `python -m jaxmir` when the command re-executes
    if cache is not None:
        env["JAXMIR_CACHE"] = str(cache)
    return env


def parse_summary(stderr: str) -> dict | None:
    """The numbers of `jaxmir transcribe`'s last stderr line (None: code that prints none). A
    rate printed as "-" (under a second of audio) is None."""
    found = list(SUMMARY.finditer(stderr))
    if not found:
        return None
    groups = {k: v for k, v in found[-1].groupdict().items() if v is not None}
    out = {k: None if v == "-" else float(v) for k, v in groups.items()}
    if "model_alone" in out:  # a task that times features, decode and write as one
        out["model_s_per_min"] = out.pop("model_alone")
    return out


def run_cli(code: Path, argv: list[str], cache: Path) -> dict:
    """One `jaxmir ARGV` process of the package in `code`: wall seconds and its summary."""
    before = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCH, *argv],
        cwd=tempfile.gettempdir(),
        env=_env(code, cache),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"jaxmir {' '.join(argv)}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
        )
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(_children_cpu() - before, 3),
        "loadavg": loadavg(),
        "summary": parse_summary(proc.stderr),
    }


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children (steadier than wall
    seconds on a shared machine; it counts every core)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_harness(code: Path, workdir: Path, files: list[Path], cache: Path) -> dict:
    """The phase split of one process of the code in `code` (see `harness`)."""
    return in_process(code, "harness", [str(workdir), [str(f) for f in files]], cache)


def in_process(code: Path, func: str, args: list, cache: Path | None, quiet: bool = True):
    """`func(*args)` of this file in a fresh process of the `jaxmir` in `code`, with the malloc
    tuning the `jaxmir` command runs with; its JSON result. `quiet`: keep its stderr (shown
    on failure), else let it through (progress lines)."""
    script = (  # this file loaded by path: `benchmarks` in sys.path may be the other checkout's
        "import sys, json, importlib.util as u; sys.path.insert(0, sys.argv[1]); "
        "spec = u.spec_from_file_location('bench_inference', sys.argv[2]); "
        "m = u.module_from_spec(spec); spec.loader.exec_module(m); "
        "r = getattr(m, sys.argv[3])(*json.loads(sys.argv[4])); print('@@RESULT ' + json.dumps(r))"
    )
    from jaxmir.runtime import tuned_env

    proc = subprocess.run(
        [sys.executable, "-c", script, str(code), __file__, func, json.dumps(args)],
        cwd=tempfile.gettempdir(),
        env=tuned_env(_env(code, cache)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if quiet else None,
        text=True,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT "):
            return json.loads(line[len("@@RESULT ") :])
    raise RuntimeError(f"{func} failed (exit {proc.returncode})\n{(proc.stderr or '')[-3000:]}")


def harness(workdir: str, files: list[str]) -> dict:
    """In this process: restore the run, then per file features -> posteriors -> decode ->
    write (what `jaxmir transcribe` did file by file before `transcribe_many`), each timed;
    model calls timed one by one (the first includes compilation)."""
    import numpy as np

    import jaxmir
    from jaxmir.cli import _enable_compilation_cache
    from jaxmir.engine.run import make_predict, restore_for_inference

    _enable_compilation_cache()  # as that code's `jaxmir transcribe` does

    written = tempfile.TemporaryDirectory(prefix="jaxmir-bench-out-")  # removed at exit
    out = Path(written.name)
    start = time.perf_counter()  # as `jaxmir transcribe`'s restore: task import + checkpoint
    from jaxmir.tasks.base import get_task

    cfg_path = Path(workdir) / "config.json"
    task = get_task(json.loads(cfg_path.read_text())["task"])
    cfg, mesh, state, _ = restore_for_inference(task, workdir)
    restore_s = time.perf_counter() - start
    raw = make_predict(mesh, state)
    calls: list[float] = []

    def predict(windows):
        t0 = time.perf_counter()
        y = np.asarray(raw(windows))
        calls.append(time.perf_counter() - t0)
        return y

    feats = write = 0.0
    audio_s = 0.0
    import soundfile as sf

    for f in map(Path, files):
        audio_s += sf.info(str(f)).duration
        t0 = time.perf_counter()
        x = task.input_features(f, cfg)
        t1 = time.perf_counter()
        probs = task.posteriors(predict, x, cfg, source=f)
        t2 = time.perf_counter()
        events = task.decode(probs, cfg)
        task.write(events, f.stem, out, cfg, x=x, posteriors=probs)
        t3 = time.perf_counter()
        feats += t1 - t0
        write += t3 - t2
    typical = statistics.median(calls[1:]) if len(calls) > 1 else 0.0
    compile_s = max(calls[0] - typical, 0.0)
    model = sum(calls) - compile_s
    minutes = audio_s / 60.0
    return {
        "jaxmir": str(Path(jaxmir.__file__).parent),
        "files": len(files),
        "minutes": round(minutes, 4),
        "restore_s": round(restore_s, 3),
        "compile_s": round(compile_s, 3),
        "batches": len(calls),
        "compute_s_per_min": round((feats + model + write) / minutes, 3),
        "features_s_per_min": round(feats / minutes, 3),
        "model_s_per_min": round(model / minutes, 3),
        "write_s_per_min": round(write / minutes, 3),
    }


def _median_of(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(vals), 3) if vals else None


def summarise(runs: list[dict], minutes: float) -> dict:
    """Medians over repeats: wall seconds and s/min of the whole process, and the summary's
    (or harness's) one-off seconds and compute s/min."""
    flat = []
    for r in runs:
        row = {"wall_s": r["wall_s"], "wall_s_per_min": r["wall_s"] / minutes}
        row.update(cpu_s=r["cpu_s"], cpu_s_per_min=r["cpu_s"] / minutes, load=r["loadavg"])
        row.update(r.get("summary") or r.get("harness") or {})
        flat.append(row)
    keys = [
        "wall_s",
        "wall_s_per_min",
        "cpu_s_per_min",
        "restore_s",
        "compile_s",
        "compute_s_per_min",
        "features_s_per_min",
        "model_s_per_min",
        "write_s_per_min",
        "unsplit_s_per_min",
    ]
    out = {k: _median_of(flat, k) for k in keys}
    out["split_from"] = "summary" if runs and runs[0].get("summary") else "harness"
    out["runs"] = flat
    return out


def measure(code: Path, workdir: Path, clips: list[Path], repeats: int, log) -> dict:
    """The transcription times of `code` (cold and warm compilation caches, one file and all
    in one command); every output and cache folder lies in one temporary folder, removed."""
    with tempfile.TemporaryDirectory(prefix="jaxmir-bench-") as root:
        return _measure(code, workdir, clips, repeats, log, Path(root))


def _measure(code: Path, workdir: Path, clips: list[Path], repeats: int, log, root: Path) -> dict:
    import soundfile as sf

    minutes_one = sf.info(str(clips[0])).duration / 60.0
    minutes_all = sum(sf.info(str(c)).duration for c in clips) / 60.0
    out_dir = Path(tempfile.mkdtemp(prefix="out-", dir=root))
    base = ["transcribe", "music", "--workdir", str(workdir), "-o", str(out_dir)]
    task = json.loads((workdir / "config.json").read_text())["task"]
    base[1] = task
    result: dict = {"minutes_one": round(minutes_one, 4), "minutes_all": round(minutes_all, 4)}

    warm_cache = Path(tempfile.mkdtemp(prefix="cache-", dir=root))
    cold, warm, many = [], [], []
    for i in range(repeats):
        cache = Path(tempfile.mkdtemp(prefix="cache-", dir=root))
        cold.append(run_cli(code, [*base, str(clips[0])], cache))
        log(f"one file, cold cache #{i + 1}: {cold[-1]}")
    run_cli(code, [*base, str(clips[0])], warm_cache)  # fills the warm cache
    for i in range(repeats):
        warm.append(run_cli(code, [*base, str(clips[0])], warm_cache))
        log(f"one file, warm cache #{i + 1}: {warm[-1]}")
    for i in range(repeats):
        many.append(run_cli(code, [*base, *map(str, clips)], warm_cache))
        log(f"{len(clips)} files in one command #{i + 1}: {many[-1]}")
    if many[0]["summary"] is None:  # older code: the split from the harness, as each ran
        for runs, files, fresh in ((cold, clips[:1], True), (warm, clips[:1], False)):
            for r in runs:
                cache = Path(tempfile.mkdtemp(prefix="cache-", dir=root)) if fresh else None
                r["harness"] = run_harness(code, workdir, files, cache or warm_cache)
                log(f"harness ({len(files)} files): {r['harness']}")
        for r in many:
            r["harness"] = run_harness(code, workdir, clips, warm_cache)
            log(f"harness ({len(clips)} files): {r['harness']}")
    result["one_file_cold"] = summarise(cold, minutes_one)
    result["one_file_warm"] = summarise(warm, minutes_one)
    result["all_files_one_command"] = summarise(many, minutes_all)
    return result


# -- batch size and hop sweep (this repository's code, one process) -----------------------------
def sweep(workdir: str, clips: list[str], repeats: int) -> dict:
    """The model's s/min on the clips' features for several batch sizes (default hop), and for
    several hops / stitch schemes (default batch), with the test split's note F1 of each (in
    this process: run it through `in_process`)."""
    from jaxmir.cli import _enable_compilation_cache

    _enable_compilation_cache()
    workdir, clips = Path(workdir), [Path(c) for c in clips]

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    import soundfile as sf

    from jaxmir.data.cache import FeatureCache
    from jaxmir.engine.run import make_predict, restore_for_inference
    from jaxmir.inference import default_batch_size
    from jaxmir.tasks.base import get_task

    task = get_task(json.loads((workdir / "config.json").read_text())["task"])
    cfg, mesh, state, _ = restore_for_inference(task, workdir)
    predict = make_predict(mesh, state)
    minutes = sum(sf.info(str(c)).duration for c in clips) / 60.0
    feats = []
    t0 = time.perf_counter()
    for c in clips:
        feats.append(task.input_features(c, cfg))
    features_s = time.perf_counter() - t0
    timesteps = task.timesteps(cfg)

    def probe(stitch: str, hop: int | None):
        attrs = {"stitch": stitch, "inference_hop": lambda self, cfg: hop}
        return type("Probe", (type(task),), attrs)()

    def model_s_per_min(t, batch: int) -> tuple[float, float]:
        first = time.perf_counter()
        list(t.window_logits(predict, feats[:1], cfg, batch))  # compile (if new) + warm
        first = time.perf_counter() - first
        times, cpus = [], []
        for _ in range(repeats):
            start, cpu = time.perf_counter(), time.process_time()
            for _ in t.window_logits(predict, feats, cfg, batch):
                pass
            times.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
        return statistics.median(times) / minutes, first, statistics.median(cpus) / minutes

    out: dict = {
        "minutes": round(minutes, 4),
        "features_s_per_min": round(features_s / minutes, 3),
        "batch": [],
        "hop": [],
    }
    default = probe(task.stitch, None)
    for b in (1, 2, 4, 8, 16, 32):
        spm, first, cpu = model_s_per_min(default, b)
        row = {"batch": b, "model_s_per_min": round(spm, 3), "model_cpu_s_per_min": round(cpu, 3)}
        out["batch"].append({**row, "first_s": round(first, 2), "loadavg": loadavg()})
        log(f"batch {b}: model {spm:.3f} s/min, CPU {cpu:.3f} s/min (first call {first:.1f} s)")
    data = json.loads((workdir / "run.json").read_text())["data"]
    cache = FeatureCache(data)
    best = min(out["batch"], key=lambda r: r["model_s_per_min"])["batch"]
    schemes = [
        ("average", timesteps // 2),
        ("average", timesteps * 3 // 4),
        ("centre", timesteps * 3 // 4),
        ("centre", timesteps * 7 // 8),
        ("average", timesteps),
    ]
    for stitch, hop in schemes:
        t = probe(stitch, hop)
        spm, _, cpu = model_s_per_min(t, best)
        scores = t.evaluate(predict, cfg, cache, "test")
        row = {
            "stitch": stitch,
            "hop": hop,
            "overlap": round(1 - hop / timesteps, 3),
            "batch": best,
            "model_s_per_min": round(spm, 3),
            "model_cpu_s_per_min": round(cpu, 3),
            "loadavg": loadavg(),
            **{k: round(v, 4) for k, v in scores.items() if not k.startswith("note_f1/")},
        }
        out["hop"].append(row)
        log(f"{stitch} hop {hop}: model {spm:.3f} s/min, note F1 {scores.get('note_f1'):.4f}")
    out["default_batch"] = default_batch_size()
    out["n_test_pieces"] = len(cache.names("test"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.inference", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--workdir",
        type=Path,
        required=True,
        help="a trained run or a model folder (--sweep: a run only)",
    )
    p.add_argument("--clips", type=Path, required=True, help="folder of audio clips")
    p.add_argument("--name", default="inference", help="results/<name>.json")
    p.add_argument("--code", type=Path, default=ROOT, help="checkout whose jaxmir runs")
    p.add_argument(
        "--repeats", type=int, default=3, help="runs of each measurement (medians; default 3)"
    )
    p.add_argument("--sweep", action="store_true", help="batch-size and hop sweep + note F1")
    p.add_argument("--no-cli", action="store_true", help="only the sweep")
    args = p.parse_args(argv)
    from benchmarks.common import host_info, require_folders, write_json
    from jaxmir.inference import AUDIO_SUFFIXES

    if args.repeats < 1:
        p.error(f"--repeats: 1 or more, got {args.repeats}")
    require_folders(p, clips=args.clips)
    clips = sorted(c for c in args.clips.iterdir() if c.suffix.lower() in AUDIO_SUFFIXES)
    if not clips:
        print(f"{args.clips}: no audio clips", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result: dict = {
        "benchmark": "inference",
        "name": args.name,
        "code": str(args.code.resolve()),
        "workdir": str(args.workdir.resolve()),
        "clips": [c.name for c in clips],
        "repeats": args.repeats,
        "host": host_info(),
        "loadavg_start": loadavg(),
    }
    if not args.no_cli:
        result.update(
            measure(args.code.resolve(), args.workdir.resolve(), clips, args.repeats, log)
        )
    if args.sweep:
        sweep_args = [str(args.workdir.resolve()), [str(c) for c in clips], args.repeats]
        result["sweep"] = in_process(ROOT, "sweep", sweep_args, None, quiet=False)
    result["loadavg_end"] = loadavg()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.name}.json"
    write_json(path, result, indent=1)
    for key in ("one_file_cold", "one_file_warm", "all_files_one_command"):
        r = result.get(key)
        if r:
            print(
                f"{key}: wall {r['wall_s']} s ({r['wall_s_per_min']} s/min), compute "
                f"{r['compute_s_per_min']} s/min (features {r['features_s_per_min']}, model "
                f"{r['model_s_per_min']}, write {r['write_s_per_min']}), restore "
                f"{r['restore_s']} s, compile {r['compile_s']} s"
            )
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
