"""What the commands check about their arguments before any work, shared by `jaxmir.cli` and
the `synth` command."""

from __future__ import annotations

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
