"""The README's `demo` runs, as a newcomer types them: train, then score on the test split.

    python -m benchmarks.demos [--tasks music,beat,chord,drum,vocal] [--root DIR]
                               [--cache DIR] [--preset demo] [--name NAME]

Each task's commands run as separate `jaxmir` processes, in order; every command's wall time,
peak memory (the kernel's for the finished command: its largest single process, as
`/usr/bin/time` reports it, not the sum over its rendering workers) and exit status are
recorded, and each `eval`'s scores. The vocal demo's notes take their pitch from a
`vocal_contour` demo run, so its rows are that run, the vocal run, and the vocal run scored with
the contour run's pitch and with its built-in pitch. By default the commands use a fresh, empty
cache folder (`$JAXMIR_CACHE`), so the times include rendering the corpus and its features, as
the README's times do; the chord, drum and vocal demos share one corpus, which the first of them
in a run renders (about 45 s on a 2-core CPU) and the others find rendered. `--cache` reuses
one. Runs that exist already are refused, not
resumed. Written to ``benchmarks/results/<name>.json`` (default ``demos``); the run folders
stay under `--root` (default a temporary folder).
`--preset tiny` runs the same commands in seconds (a check that they work, not a result).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import host_info, save_result

TASKS = ("music", "beat", "chord", "drum", "vocal")


def commands(task: str, root: Path, preset: str = "demo") -> list[tuple[str, list[str]]]:
    """(label, jaxmir arguments) of one task's demo (or `preset`), in the order they run."""

    def run(t: str) -> str:
        return str(root / f"{t}-{preset}")

    def train(t: str) -> list[str]:
        return ["train", t, "--preset", preset, "--workdir", run(t), "--no-progress"]

    def score(t: str, *extra: str) -> list[str]:
        return ["eval", t, "--workdir", run(t), "--split", "test", "--no-progress", *extra]

    if task == "vocal":
        contour = f"decode.contour_workdir={run('vocal_contour')}"
        return [
            ("train vocal_contour", train("vocal_contour")),
            ("train vocal", train("vocal")),
            ("eval vocal (contour pitch)", score("vocal", "--set", contour)),
            ("eval vocal (built-in pitch)", score("vocal")),
        ]
    return [(f"train {task}", train(task)), (f"eval {task}", score(task))]


def run_command(args: list[str], env: dict[str, str], log: Path) -> dict:
    """Run `jaxmir ARGS` with stdout and stderr in `log`; its wall seconds, peak RSS (MB), exit
    status and, for an eval, the scores it printed."""
    exe = [sys.executable, "-m", "jaxmir", *args]
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(exe, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # its rusage, which Popen.wait drops
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    seconds = time.perf_counter() - t0
    row = {
        "command": "jaxmir " + " ".join(args),
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024.0, 1),
        "exit": proc.returncode,
        "log": str(log),
    }
    if args[0] == "eval" and row["exit"] == 0:
        row["scores"] = last_json_line(log.read_text())
    return row


def last_json_line(text: str) -> dict | None:
    """The last line of `text` that is a JSON object (what `jaxmir eval` prints)."""
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def run_folders(task: str, root: Path, preset: str) -> list[Path]:
    """The workdirs that `task`'s demo trains."""
    return [
        Path(cmd[cmd.index("--workdir") + 1])
        for _, cmd in commands(task, root, preset)
        if cmd[0] == "train"
    ]


def log_name(label: str, preset: str) -> str:
    """ "eval_vocal_contour_pitch-demo.log" from "eval vocal (contour pitch)"."""
    words = "".join(c if c.isalnum() or c == "_" else " " for c in label).split()
    return f"{'_'.join(words)}-{preset}.log"


def parse_tasks(text: str) -> list[str]:
    """["chord", "drum"] from "chord,drum"; an unknown task is an argparse error."""
    tasks = [t for t in text.split(",") if t]
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise argparse.ArgumentTypeError(f"{text!r}: tasks are {', '.join(TASKS)}")
    return tasks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.demos", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--tasks", type=parse_tasks, default=list(TASKS), help="comma-separated")
    p.add_argument("--root", type=Path, help="where the runs go (default: a temporary folder)")
    p.add_argument("--cache", type=Path, help="cache folder to use (default: a fresh empty one)")
    p.add_argument("--preset", default="demo", help="demo (default); tiny: a quick check")
    p.add_argument(
        "--name", help="results/<name>.json (default demos, or demos-TASK-... for some tasks)"
    )
    args = p.parse_args(argv)
    if args.name is None:  # some tasks' run must not replace the file of every task's
        args.name = "demos" if list(args.tasks) == list(TASKS) else "-".join(["demos", *args.tasks])
    root = args.root or Path(tempfile.mkdtemp(prefix="jaxmir-demos-"))
    root.mkdir(parents=True, exist_ok=True)
    runs = [run for task in args.tasks for run in run_folders(task, root, args.preset)]
    existing = [str(r) for r in runs if r.exists()]
    if existing:  # `jaxmir train` would resume them: no demo's time
        p.error(f"{', '.join(existing)}: exists already (use another --root)")
    cache = args.cache or root / "cache"
    fresh = not cache.exists() or not any(cache.iterdir())
    env = {**os.environ, "JAXMIR_CACHE": str(cache)}
    result = {
        "host": host_info(),
        "preset": args.preset,
        "root": str(root),
        "fresh_cache": fresh,
    }
    failed = False
    for task in args.tasks:
        rows = []
        for label, cmd in commands(task, root, args.preset):
            print(f"{label}: jaxmir {' '.join(cmd)}", flush=True)
            row = run_command(cmd, env, root / log_name(label, args.preset))
            print(
                f"  {row['seconds']:.0f} s, peak RSS {row['peak_rss_mb']:.0f} MB, "
                f"exit {row['exit']}",
                flush=True,
            )
            rows.append({"step": label, **row})
            if row["exit"] != 0:
                failed = True
                break
        result[task] = {
            "seconds": round(sum(r["seconds"] for r in rows), 1),
            "commands": rows,
        }
        save_result(args.name, result)  # after every task: a long run keeps what it measured
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
