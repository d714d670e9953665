"""The feature cache: one `.npy` per piece (memory-mapped at training time), its labels as `.npz`,
and a `manifest.json` at the root listing every finished piece.

Every file is written to a temporary name and renamed into place, and a piece enters the
manifest only after both of its files are complete, so a crash or a kill never leaves a
half-written piece that looks finished: a re-run rebuilds exactly the missing or broken pieces.
No pickle: `np.load(..., allow_pickle=False)` everywhere.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
#: The error numbers of a full disk or quota: no file after it can be written either.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class CacheError(ValueError):
    """A missing, unreadable or mismatched cache (the message names the path and the reason)."""


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_process_umask()
"""What `open(path, "w")` would give a new file. Read once, at import: reading the umask means
setting it, which is not safe once threads write files."""


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as e:  # name the file being written, not the temporary one
        raise type(e)(e.errno, e.strerror, str(path)) from None
    try:
        # mkstemp creates the file private (0600); a cache or a model folder shared with other
        # users must stay readable as any other file written there would be
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write_bytes(path, lambda f: f.write(data))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)


class FeatureCache:
    """A cache directory. Open an existing one with `FeatureCache(root)`, start one with
    `FeatureCache.create(root, task, params)`."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        if not self.root.is_dir():  # a mistyped --data says so, not "no manifest.json"
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise CacheError(f"{self.root}: {what} (expected a feature cache folder)")
        path = self.root / MANIFEST
        if not path.is_file():
            raise CacheError(f"{path}: no manifest.json (not a feature cache written by jaxmir)")
        try:
            self.manifest = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CacheError(f"{path}: unreadable manifest ({e})") from e
        if not isinstance(self.manifest, dict) or not isinstance(self.manifest.get("pieces"), list):
            raise CacheError(f"{path}: not a feature cache's manifest (no list of pieces)")
        if self.manifest.get("version") != FORMAT_VERSION:
            raise CacheError(f"{path}: cache format {self.manifest.get('version')!r}, expected 1")
        self._by_name = {p["name"]: p for p in self.manifest["pieces"]}
        self._x_cache: dict[str, np.ndarray] = {}

    @classmethod
    def create(cls, root: Path | str, task: str, params: dict[str, Any]) -> FeatureCache:
        """Open `root`, creating an empty cache; refuse one made for another task or params."""
        root = Path(root)
        path = root / MANIFEST
        if path.is_file():
            cache = cls(root)
            # compared as JSON: the manifest holds lists where the params may hold tuples
            canonical = json.loads(json.dumps(params))
            if cache.manifest["task"] != task or cache.manifest["params"] != canonical:
                raise CacheError(
                    f"{path}: cache was built for task {cache.manifest['task']!r} with params "
                    f"{cache.manifest['params']}, not {task!r} with {params}"
                )
            return cache
        root.mkdir(parents=True, exist_ok=True)
        manifest = {"version": FORMAT_VERSION, "task": task, "params": params, "pieces": []}
        atomic_write_text(path, json.dumps(manifest, indent=1))
        return cls(root)

    @contextlib.contextmanager
    def writing(self) -> Iterator[FeatureCache]:
        """Hold the cache's write lock (an exclusive `flock` on `.lock`, which the kernel
        releases if the process dies), waiting for another command that holds it, and read
        the manifest again under it. Two commands featurising into one cache each saved their
        own copy of the manifest, and the later one dropped the other's pieces."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                tqdm.write(f"{self.root}: waiting for another command writing this cache")
                fcntl.flock(fd, fcntl.LOCK_EX)
            fresh = FeatureCache(self.root)
            self.manifest, self._by_name = fresh.manifest, fresh._by_name
            self._x_cache.clear()
            yield self
        finally:
            os.close(fd)

    # -- reading --------------------------------------------------------------------------------
    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def params(self) -> dict:
        return self.manifest["params"]

    def pieces(self, split: str | None = None) -> list[dict]:
        return [p for p in self.manifest["pieces"] if split is None or p["split"] == split]

    def names(self, split: str | None = None) -> list[str]:
        return [p["name"] for p in self.pieces(split)]

    def splits(self) -> list[str]:
        """The splits this cache holds pieces of, sorted."""
        return sorted({p["split"] for p in self.pieces()})

    def no_split(self, split: str) -> CacheError:
        """The error for a split this cache holds no pieces of, naming the ones it holds."""
        held = self.splits()
        return CacheError(
            f"{self.root}: no pieces in split {split!r} (it holds {', '.join(held) or 'none'})"
        )

    def entry(self, name: str) -> dict:
        try:
            return self._by_name[name]
        except KeyError:
            raise CacheError(f"{self.root}: no piece named {name!r}") from None

    def features(self, name: str) -> np.ndarray:
        """The piece's feature array, memory-mapped read-only (opened once per process)."""
        if name not in self._x_cache:
            path = self.root / self.entry(name)["x"]
            try:
                self._x_cache[name] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise CacheError(f"{path}: unreadable feature file ({e})") from e
        return self._x_cache[name]

    def labels(self, name: str) -> dict[str, np.ndarray]:
        path = self.root / self.entry(name)["labels"]
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise CacheError(f"{path}: unreadable label file ({e})") from e

    def is_complete(self, name: str, source: str | None = None) -> bool:
        """Whether `name` is in the manifest and both of its files are intact; with `source`
        (`featurize.source_fingerprint`), also made from that source (an entry written before
        entries recorded one is taken as it is)."""
        entry = self._by_name.get(name)
        if entry is None:
            return False
        if source is not None and entry.get("made_from", source) != source:
            return False
        try:
            x = np.load(self.root / entry["x"], mmap_mode="r", allow_pickle=False)
            if list(x.shape) != entry["shape"]:
                return False
            with np.load(self.root / entry["labels"], allow_pickle=False) as z:
                z.files  # noqa: B018 - reads the zip directory
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return False
        return True

    # -- writing --------------------------------------------------------------------------------
    def write_piece(
        self,
        name: str,
        split: str,
        x: np.ndarray,
        labels: dict[str, np.ndarray],
        extra: dict[str, Any] | None = None,
    ) -> dict:
        """Write one piece's arrays, then add it to the manifest (atomically, in that order)."""
        safe = _safe_name(name)
        taken = {p["x"] for p in self.manifest["pieces"] if p["name"] != name}
        if f"x/{safe}.npy" in taken:  # "a b" and "a_b" are both a_b: the later one's files
            safe += "-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]  # its own
        x_rel, y_rel = f"x/{safe}.npy", f"labels/{safe}.npz"
        x_path, y_path = self.root / x_rel, self.root / y_rel
        _atomic_write_bytes(x_path, lambda f: np.save(f, np.ascontiguousarray(x)))
        _atomic_write_bytes(y_path, lambda f: np.savez(f, **labels))
        entry = {
            "name": name,
            "split": split,
            "shape": list(x.shape),
            "dtype": str(x.dtype),
            "x": x_rel,
            "labels": y_rel,
            "sha256": _sha256(x_path),
            **(extra or {}),
        }
        self._by_name[name] = entry
        self._x_cache.pop(name, None)
        self.manifest["pieces"] = [p for p in self.manifest["pieces"] if p["name"] != name]
        self.manifest["pieces"].append(entry)
        self.save_manifest()
        return entry

    def failures(self) -> list[tuple[str, str]]:
        """The (path, reason) of each file left out, as the last featurising recorded them."""
        return [(f["path"], f["reason"]) for f in self.manifest.get("failures", [])]

    def record_failures(self, failures: list[tuple[str, str]]) -> None:
        self.manifest["failures"] = [{"path": p, "reason": r} for p, r in failures]
        self.save_manifest()

    def save_manifest(self) -> None:
        atomic_write_text(self.root / MANIFEST, json.dumps(self.manifest, indent=1))
