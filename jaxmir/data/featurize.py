"""Fill a feature cache from piece records: parallel, incremental, and robust to bad inputs.

`featurize(pieces, compute, cache)` runs `compute(piece) -> (features, labels)` for every piece
not already complete in the cache from the same source (`source_fingerprint`), in worker processes when `workers > 1`, and writes each
result from the main process in the pieces' order (so a kill loses only the pieces in flight,
at most `2 * workers`, and the cache's order, which is a training run's data order, does not
depend on which worker finishes first).
A piece whose input is bad (unreadable, empty, NaN, truncated) is reported by name and skipped;
the rest continue, and the summary lists the failures. A piece whose audio ends more than
`LABEL_SLACK_S` before its last label (a truncated download: one MAESTRO wav of 2 s against notes
up to 704 s) is still written, with a warning naming both durations: the labels past the audio's
end have no audio under them.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from jaxmir.data.audio import InputWarning
from jaxmir.data.cache import FeatureCache
from jaxmir.runtime import WorkerPool

Compute = Callable[[Any], tuple[np.ndarray, dict[str, np.ndarray]]]
LABEL_SLACK_S = 1.0  # annotations may run a little past the audio (last f0 frame, release)


def _safe_compute(compute: Compute, piece) -> tuple[str, Any]:
    try:
        return "ok", compute(piece)
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the others
        return "error", f"{type(e).__name__}: {e}"


def _source(piece) -> str:
    return str(getattr(piece, "audio", None) or piece.name)


def skip_line(source: str, reason: str) -> str:
    """ "skipped SOURCE: REASON", without the copy of the path a reader's error often starts
    with ("PATH: ...", "PATH:LINE: ...")."""
    reason = str(reason).replace(f"{source}: ", "", 1).replace(f"{source}:", "line ", 1)
    return f"skipped {source}: {reason}"


def source_fingerprint(piece) -> str:
    """A digest of what a piece record was made from: its labels as read, its split, and each
    file it names (path, size and modification time). The cache keeps a piece only where its
    fingerprint is the same, so a corrected annotation, replaced audio or another file that
    now takes the piece's name is featurised again (by name alone the old one was kept). A
    file counts by its name, size and modification time, so a dataset given by another path
    to the same folder, or moved with its times kept, is not featurised again."""
    h = hashlib.sha256()

    def add(value) -> None:
        if value is None:
            h.update(b"\0")
        elif isinstance(value, np.ndarray):
            h.update(f"{value.dtype}{value.shape}".encode())
            h.update(np.ascontiguousarray(value).tobytes())
        elif isinstance(value, Path):  # its content by size and time, not its spelling
            try:
                st = value.stat()
                h.update(f"{value.name}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"{value.name}|?".encode())
        elif isinstance(value, dict):
            for k in sorted(value):
                h.update(str(k).encode())
                add(value[k])
        elif isinstance(value, (tuple, list)):
            h.update(f"[{len(value)}".encode())
            for v in value:
                add(v)
        else:
            h.update(repr(value).encode())

    fields = dataclasses.fields(piece) if dataclasses.is_dataclass(piece) else ()
    for name in [f.name for f in fields] or sorted(vars(piece)):
        h.update(name.encode())
        add(getattr(piece, name))
    return h.hexdigest()[:16]


def label_end(piece) -> float | None:
    """Time of the last label of an audio piece record (note offset, f0 frame, beat, chord end,
    drum hit), None when it has none."""
    ends = []
    for key, column in (("notes", 1), ("f0", 0), ("chords", 1), ("drum_hits", 0)):
        value = getattr(piece, key, None)
        if value is not None and len(value):
            ends.append(float(np.max(np.asarray(value)[:, column])))
    for key in ("beats", "downbeats"):
        value = getattr(piece, key, None)
        if value is not None and len(value):
            ends.append(float(np.max(value)))
    return max(ends) if ends else None


def audio_seconds(path) -> float | None:
    """Duration from the audio file's header; None when the header cannot tell."""
    try:
        import soundfile as sf

        return float(sf.info(str(path)).duration)
    except Exception:  # noqa: BLE001 - formats libsndfile lacks (m4a, ...) are not checked
        return None


def check_audio_covers_labels(piece) -> str | None:
    """A warning when the piece's audio ends more than LABEL_SLACK_S before its last label."""
    audio = getattr(piece, "audio", None)
    end = label_end(piece) if audio is not None else None
    seconds = audio_seconds(audio) if end is not None else None
    if seconds is None or end <= seconds + LABEL_SLACK_S:
        return None
    return (
        f"{piece.name}: audio {audio} is {seconds:.1f} s long but its labels run to {end:.1f} s "
        "(truncated audio? the labels past its end have no audio under them)"
    )


def featurize(
    pieces: Sequence[Any],
    compute: Compute,
    cache: FeatureCache,
    *,
    workers: int = 1,
    progress: bool = True,
    split_of: Callable[[Any], str] = lambda p: p.split,
    extra_of: Callable[[Any], dict] | None = None,
    failures: Sequence[tuple[str, str]] = (),
) -> dict:
    """Featurise `pieces` into `cache`. Returns {"written", "skipped", "failed", "out"}.

    `compute` must be a picklable module-level function when `workers > 1`. `failures`:
    (path, reason) of files the dataset's reader already left out, recorded with the pieces
    that fail here. Everything is written under the cache's lock (`FeatureCache.writing`); a
    cache with nothing to do and the same failures recorded is left untouched (it may be
    read-only).
    """
    sources = {p.name: source_fingerprint(p) for p in pieces}
    todo = [p for p in pieces if not cache.is_complete(p.name, sources[p.name])]
    if not todo and cache.failures() == list(failures):
        return {
            "written": 0,
            "skipped": len(pieces),
            "failed": list(failures),
            "out": str(cache.root),
        }
    with cache.writing():  # another command may have written some since: read again
        todo = [p for p in todo if not cache.is_complete(p.name, sources[p.name])]
        return _featurize(
            pieces, todo, sources, compute, cache, workers, progress, split_of, extra_of, failures
        )


def _featurize(
    pieces, todo, sources, compute, cache, workers, progress, split_of, extra_of, failures
):
    skipped = len(pieces) - len(todo)
    failures = list(failures)
    written = 0
    bar = tqdm(total=len(todo), desc="features", disable=not progress)

    def finish(piece, status, result):
        nonlocal written
        if status == "ok":
            short = check_audio_covers_labels(piece)
            if short:
                warnings.warn(short, stacklevel=2)
            x, labels = result
            extra = {**(extra_of(piece) if extra_of else {}), "made_from": sources[piece.name]}
            cache.write_piece(piece.name, split_of(piece), x, labels, extra)
            written += 1
        else:
            failures.append((_source(piece), result))
            warnings.warn(InputWarning(skip_line(_source(piece), result)), stacklevel=2)
        bar.update(1)

    try:
        if workers <= 1 or len(todo) <= 1:
            for piece in todo:
                finish(piece, *_safe_compute(compute, piece))
        else:
            with WorkerPool(workers) as pool:
                queue = iter(todo)
                in_flight = collections.deque(
                    (p, pool.submit(_safe_compute, compute, p))
                    for p in itertools.islice(queue, 2 * workers)
                )
                while in_flight:
                    piece, fut = in_flight.popleft()
                    result = fut.result()
                    nxt = next(queue, None)
                    if nxt is not None:
                        in_flight.append((nxt, pool.submit(_safe_compute, compute, nxt)))
                    finish(piece, *result)
    finally:
        bar.close()
        cache.record_failures(failures)
    return {"written": written, "skipped": skipped, "failed": failures, "out": str(cache.root)}
