"""Which files of a folder `jaxmir transcribe` wrote, so that a later transcription writes over
its own outputs and never over a user's file of the same name (a dataset's ground-truth
`piece.mid` beside `piece.wav`, a hand-made `song_beats.csv`).

An input's outputs that exist are taken as an earlier transcription's where the folder's
`RECORD` holds them as they are (name, size, time of change; recorded as each input's files
are written, under a lock: several transcriptions may write into one folder), or where every
output of that input is there (a transcription writes them all; a user's own file is one of
them: a folder of an earlier version, which kept no record). Anything else stops the command
before any model runs, naming the file.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
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
    that is no earlier transcription's output (see the module's docstring). A task that does
    not name its outputs (`Task.output_names` empty: one of a user's own) is not checked."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        return
    ours = written_here(outdir)
    for path in inputs:
        names = task.output_names(path.stem)
        targets = [outdir / name for name in names]
        there = [t for t in targets if t.exists() or t.is_symlink()]
        if not there:
            continue
        files = [t for t in there if t.is_file() and not t.is_symlink()]
        if len(files) == len(targets):  # an earlier transcription's whole set
            continue
        for target in there:
            if target in files and ours.get(target.name) == _stamp(target):
                continue
            raise UsageError(
                f"{target}: exists, and is no output of an earlier `jaxmir transcribe` here; "
                f"transcribing {path} would write over it: move it, or name another folder "
                "with -o"
            )


@contextmanager
def _locked(outdir: Path):
    """An exclusive lock on the folder's record (two transcriptions into one folder)."""
    with open(outdir / f"{RECORD}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def record_written(task, source: Path, written: Iterable[Path], outdir: Path) -> None:
    """Add the files just written from `source` to `outdir`'s record (under the folder's lock,
    through a temporary file: a kill leaves the old record). RuntimeError where the task wrote
    a file its `output_names` does not name: nothing would have kept a user's file of that
    name from being written over."""
    outdir = Path(outdir)
    written = [Path(p) for p in written]
    declared = set(task.output_names(Path(source).stem))
    stray = [p.name for p in written if declared and p.name not in declared]
    if stray:
        raise RuntimeError(f"task {task.name} wrote {stray}, not among its output_names")
    with _locked(outdir):
        record = written_here(outdir)
        for path in written:
            if path.parent.resolve() == outdir.resolve() and path.is_file():
                record[path.name] = _stamp(path)
        fd, tmp = tempfile.mkstemp(prefix=f"{RECORD}.", dir=outdir)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record, indent=0) + "\n")
        os.replace(tmp, outdir / RECORD)
