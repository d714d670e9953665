"""Which files of a folder `jaxmir transcribe` wrote, so that a later transcription writes over
its own outputs and never over a user's file of the same name (a dataset's ground-truth
`piece.mid` beside `piece.wav`, a hand-made `song_beats.csv`).

The folder's `RECORD` file maps each name transcribe wrote there to its size and time of
change as written: a file of an output's name is written over only where the record holds it
unchanged. A file the record does not hold (a user's, an edited output, one of a run killed
between writing and recording) stops the command before any model runs, naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from jaxmir.usage import UsageError

RECORD = ".jaxmir-transcribed.json"


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def written_here(outdir: Path) -> dict[str, list[int]]:
    """The folder's record (empty where it has none, or one that cannot be read)."""
    try:
        record = json.loads((Path(outdir) / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def check_outputs_free(task, inputs: Sequence[Path], outdir: Path) -> None:
    """UsageError naming the first file transcribing `inputs` into `outdir` would write over
    that is not an earlier transcription's output as it wrote it. A task that does not name
    its outputs (`Task.output_names` empty: one of a user's own) is not checked."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        return
    ours = written_here(outdir)
    for path in inputs:
        for name in task.output_names(path.stem):
            target = outdir / name
            if not (target.exists() or target.is_symlink()):
                continue
            if target.is_file() and not target.is_symlink() and ours.get(name) == _stamp(target):
                continue
            raise UsageError(
                f"{target}: exists, and is no output of an earlier `jaxmir transcribe` here "
                f"(or was changed since); transcribing {path} would write over it: move it, "
                "or name another folder with -o"
            )


def record_written(task, source: Path, written: Iterable[Path], outdir: Path) -> None:
    """Add the files just written from `source` to `outdir`'s record (atomically: a kill
    leaves the old one). RuntimeError where the task wrote a file its `output_names` does not
    name: nothing would have kept a user's file of that name from being written over."""
    outdir = Path(outdir)
    written = [Path(p) for p in written]
    declared = set(task.output_names(Path(source).stem))
    stray = [p.name for p in written if declared and p.name not in declared]
    if stray:
        raise RuntimeError(f"task {task.name} wrote {stray}, not among its output_names")
    record = written_here(outdir)
    for path in written:
        if path.parent.resolve() == outdir.resolve() and path.is_file():
            record[path.name] = _stamp(path)
    tmp = outdir / f"{RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=0) + "\n")
    os.replace(tmp, outdir / RECORD)
