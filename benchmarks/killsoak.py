"""Kill soak: a tiny `jaxmir train` killed with SIGKILL at random moments (start-up, steps,
validation, checkpoint saves), re-run after each kill, must end bit-identical to a run that
was never killed: every array of the final state, and every record of `metrics.jsonl`.

    python -m benchmarks.killsoak --kills 20            # N kills; prints one JSON line
    python -m benchmarks.killsoak --kills 20 --name killsoak   # and results/killsoak.json
    python -m benchmarks.killsoak --kills 5 --keep runs/soak

Exit status 0 when every run matched, 1 otherwise. A trial is one workdir: it is killed at
random moments until it finishes by itself; trials repeat until `--kills` kills have landed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import require_folders
from benchmarks.pipeline import build_beat_cache

SOAK_SETTINGS = ("train.epochs=6", "train.keep_latest=2")


def train_argv(workdir: Path, data: Path, settings=SOAK_SETTINGS) -> list[str]:
    """The command line of the soaked run: the tiny beat preset on `data`."""
    argv = [sys.executable, "-m", "jaxmir", "train", "beat", "--preset", "tiny"]
    argv += ["--data", str(data), "--workdir", str(workdir), "--no-progress"]
    for s in settings:
        argv += ["--set", s]
    return argv


def read_state(step_dir: Path) -> dict:
    """The `state` item of one checkpoint step as numpy arrays (no template, any mesh)."""
    import logging

    import jax
    import orbax.checkpoint as ocp

    logging.getLogger("absl").setLevel(logging.ERROR)  # "no _CHECKPOINT_METADATA" per item

    path = Path(step_dir).absolute() / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))


def final_state(workdir: Path) -> dict:
    steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    return read_state(workdir / "checkpoints" / str(max(steps)))


def metric_records(workdir: Path) -> list[dict]:
    """metrics.jsonl without its wall-clock field."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "time"} for x in lines]


def differences(a: Path, b: Path) -> list[str]:
    """What differs between the outcomes of two finished runs (empty when bit-identical)."""
    import jax

    out = []
    flat_a = jax.tree_util.tree_flatten_with_path(final_state(a))[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(final_state(b))[0])
    for path, x in flat_a:
        y = flat_b.get(path)
        if y is None or x.shape != y.shape or not np.array_equal(x, y):
            out.append(f"state{jax.tree_util.keystr(path)}")
    if len(flat_a) != len(flat_b):
        out.append(f"state has {len(flat_a)} vs {len(flat_b)} arrays")
    if metric_records(a) != metric_records(b):
        out.append("metrics.jsonl records")
    return out


def soak(kills: int, root: Path, data: Path | None = None, seed: int = 0, log=print) -> dict:
    """Run trials until `kills` SIGKILLs have landed; compare each trial with a reference."""
    rng = np.random.default_rng(seed)
    if data is None:
        data = root / "cache"
        build_beat_cache(data, pieces=8, seconds=12.0, seed=0, held_out=True)
    reference = root / "reference"
    t0 = time.monotonic()
    subprocess.run(train_argv(reference, data), check=True, capture_output=True, timeout=900)
    span = time.monotonic() - t0
    log(f"reference run: {span:.1f} s")
    landed, trials, failures = 0, [], []
    while landed < kills:
        workdir = root / f"trial{len(trials)}"
        kill_times, exits = [], []
        while True:
            proc = subprocess.Popen(
                train_argv(workdir, data), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            at = float(rng.uniform(0.05, 0.8)) * span if landed < kills else None
            try:
                _, err = proc.communicate(timeout=at if at is not None else 900)
            except subprocess.TimeoutExpired:
                proc.kill()  # SIGKILL: no handler, no save
                if at is None:
                    raise
                proc.communicate()
                landed += 1
                kill_times.append(round(at, 2))
                continue
            exits.append(proc.returncode)
            if proc.returncode != 0:
                failures.append(f"{workdir}: exit {proc.returncode}: {err.decode()[-400:]}")
            break
        diff = differences(reference, workdir) if exits[-1] == 0 else ["did not finish"]
        trials.append({"workdir": str(workdir), "kills_at_s": kill_times, "differences": diff})
        log(f"trial {len(trials)}: killed at {kill_times} s -> {'identical' if not diff else diff}")
    identical = sum(not t["differences"] for t in trials)
    return {
        "kills": landed,
        "trials": len(trials),
        "identical_trials": identical,
        "all_identical": identical == len(trials) and not failures,
        "reference_seconds": round(span, 1),
        "failures": failures,
        "details": trials,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.killsoak", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs to land (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    p.add_argument("--data", type=Path, default=None, help="a beat feature cache to train on")
    p.add_argument("--keep", type=Path, default=None, help="keep the workdirs in this folder")
    p.add_argument("--name", default=None, help="also write results/NAME.json")
    args = p.parse_args(argv)
    if args.kills < 1:
        p.error(f"--kills: 1 or more (a soak with no kill proves nothing), got {args.kills}")
    require_folders(p, data=args.data)
    with contextlib.ExitStack() as stack:
        if not os.environ.get("JAXMIR_CACHE"):  # a cache of its own, removed afterwards
            cache = stack.enter_context(tempfile.TemporaryDirectory(prefix="jaxmir-soak-cache-"))
            os.environ["JAXMIR_CACHE"] = cache
            stack.callback(os.environ.pop, "JAXMIR_CACHE", None)
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            result = soak(args.kills, args.keep, args.data, args.seed, log=_err)
        else:
            with tempfile.TemporaryDirectory(prefix="jaxmir-soak-") as tmp:
                result = soak(args.kills, Path(tmp), args.data, args.seed, log=_err)
    print(json.dumps(result))
    if args.name:
        from benchmarks.common import host_info, save_result

        save_result(args.name, {"host": host_info(), "kills_asked": args.kills} | result)
    return 0 if result["all_identical"] else 1


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
