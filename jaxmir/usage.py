"""What the commands check about their arguments before any work, shared by `jaxmir.cli` and
the `synth` command."""

from __future__ import annotations

import os
from pathlib import Path


class UsageError(Exception):
    """A command's arguments cannot work (exit 2, one line)."""


def check_output_folder(path: Path | str | None, flag: str) -> None:
    """UsageError where `path` (a folder the command will write) is a file or lies under one:
    said before any work, not as an OS error after it."""
    if path is None:
        return
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise UsageError(f"{flag} {path}: must be a folder ({p} is a file)")
            return


def worker_count(asked: int, cpus: int | None = None) -> tuple[int, str | None]:
    """The worker processes to start for `-j asked`: at most one per CPU (each renders or
    featurises a piece in its own memory, so more only queue for the CPUs and add memory), and
    a line saying so when `asked` was more. UsageError below 1."""
    if asked < 1:
        raise UsageError(f"-j: must be >= 1, got {asked}")
    cpus = cpus or os.cpu_count() or 1
    if asked <= cpus:
        return asked, None
    return cpus, f"-j {asked}: this machine has {cpus} CPUs, so {cpus} workers run"
