"""Process settings that must be in place before the process starts: glibc's malloc tuning
and per-model XLA:CPU flags.

XLA:CPU allocates each step's temporaries (hundreds of MB for the paper models) and glibc
serves every allocation above 32 MB with a fresh ``mmap`` that is unmapped again on free: every
step then touches brand-new pages, ~290,000 minor page faults per beat-BLSTM step (1.2 GB
zeroed by the kernel), about a third of its time. With one malloc arena, no ``mmap`` and no
trimming (``GLIBC_TUNABLES`` below) the freed blocks stay in the heap and the next step reuses
them: no faults, the beat step 0.96 s -> 0.65 s and the music step 1.27 s -> 1.11 s on a
2-core CPU (``python -m benchmarks --levers``). The price: the process keeps its peak heap
until it exits, which a training process does anyway.

XLA reads XLA_FLAGS once too. `CPU_XLA_FLAGS` holds the flags measured to speed a model up on
XLA:CPU (``python -m benchmarks --levers``): turning YNNPACK fusion off makes the patch CNN's
step 1.3x faster but slows music (0.80x) and beat (0.86x), so it is per model. CPU-only flags
are ignored by the other backends.

glibc reads the tunables once, at start-up, so the `jaxmir` command re-executes itself with
them (same PID, so signals and exit codes are unchanged). ``JAXMIR_MALLOC=system`` turns this
off; Python scripts that import jaxmir can export the same variable themselves
(``GLIBC_TUNABLES=$(python -c "import jaxmir.runtime as r; print(r.MALLOC_TUNABLES)")``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import platform
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence

MALLOC_TUNABLES = (
    "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"
)
_MARK = "JAXMIR_MALLOC_TUNED"

CPU_XLA_FLAGS: dict[str, str] = {"patch_cnn": "--xla_cpu_experimental_ynn_fusion_type="}
"""Per model (task name): XLA flags that make its step faster on XLA:CPU."""


def xla_flags_env(environ: Mapping[str, str], model: str | None) -> dict[str, str]:
    """`environ` with `model`'s CPU_XLA_FLAGS put before the user's XLA_FLAGS (theirs win)."""
    env = dict(environ)
    flags = CPU_XLA_FLAGS.get(model or "")
    if flags:
        user = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} {user}".strip()
    return env


def uses_glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def tuned_env(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` plus the malloc tunables (kept after any the user set: theirs win)."""
    env = dict(environ)
    user = env.get("GLIBC_TUNABLES", "")
    env["GLIBC_TUNABLES"] = f"{MALLOC_TUNABLES}:{user}" if user else MALLOC_TUNABLES
    env[_MARK] = "1"
    return env


def wants_tuning(environ: Mapping[str, str]) -> bool:
    return (
        uses_glibc()
        and environ.get(_MARK) != "1"
        and environ.get("JAXMIR_MALLOC", "tuned").lower() != "system"
    )


def reexec_tuned(interpreter_args: Sequence[str], model: str | None = None) -> None:
    """Replace this process by ``python INTERPRETER_ARGS`` (e.g. ``-m jaxmir train ...``) with
    the tunables, unless they are already in place or turned off. Returns only when nothing
    was done. `model` adds its CPU_XLA_FLAGS."""
    if not wants_tuning(os.environ):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *interpreter_args], tuned_env(os.environ))
    except OSError:  # no exec permission, odd interpreter: run untuned rather than fail
        return


def die_with_parent(parent: int) -> None:
    """A worker process's initializer (`jaxmir synth -j`, `jaxmir features -j`): the kernel
    ends the worker when its parent dies. A parent killed by SIGKILL or the out-of-memory
    killer left its spawned workers running, some hundreds of MB each, for ever. Linux only
    (prctl PR_SET_PDEATHSIG); elsewhere a no-op. `parent`: the parent's PID, to catch a parent
    that died before this ran."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # the parent was gone already
        os._exit(1)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT held back from this thread, and from any process it starts meanwhile (a blocked
    signal stays blocked across exec); one that arrives meanwhile is delivered at the end."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class WorkerPool(concurrent.futures.ProcessPoolExecutor):
    """The worker processes of `jaxmir synth -j` and `jaxmir features -j`: spawned, ended with
    their parent (`die_with_parent`), and deaf to Ctrl-C, which the parent answers alone.

    Ctrl-C reaches every process of the terminal's process group: each worker printed its own
    KeyboardInterrupt traceback (often from inside an import) above the parent's one-line
    "interrupted". Workers now start with SIGINT blocked, and leaving the pool by an exception
    (Ctrl-C, a full disk) ends them at once rather than waiting for their pieces."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(
            max_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        )

    def submit(self, fn, /, *args, **kwargs):  # noqa: ANN001, ANN201 - the base's signature
        with _sigint_blocked():  # workers start on demand, inside submit
            return super().submit(fn, *args, **kwargs)

    def __exit__(self, exc_type, exc, tb):  # noqa: ANN001, ANN204
        if exc_type is not None:
            for process in list((getattr(self, "_processes", None) or {}).values()):
                process.terminate()
            self.shutdown(wait=True, cancel_futures=True)
            return False
        return super().__exit__(exc_type, exc, tb)
