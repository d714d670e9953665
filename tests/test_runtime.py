"""jaxmir.runtime: the malloc tuning (environment merging, the re-exec itself), per-model XLA
flags and the worker processes of `-j`."""

import os
import subprocess
import sys

import pytest

from jaxmir import runtime


def test_tuned_env_keeps_the_users_tunables_last():
    env = runtime.tuned_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4", "X": "1"})
    assert env["GLIBC_TUNABLES"] == runtime.MALLOC_TUNABLES + ":glibc.malloc.arena_max=4"
    assert env["X"] == "1"
    assert not runtime.wants_tuning(env)  # marked: no second re-exec
    assert not runtime.wants_tuning({"JAXMIR_MALLOC": "system"})


@pytest.mark.skipif(not runtime.uses_glibc(), reason="glibc only")
def test_reexec_applies_the_tunables_in_the_same_process():
    code = (
        "import os, sys; from jaxmir.runtime import reexec_tuned; pid = os.getpid(); "
        "reexec_tuned(['-c', f'import os; print({pid} == os.getpid(), "
        'os.environ["GLIBC_TUNABLES"])\'])'
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXMIR_MALLOC")}
    env.pop("JAXMIR_MALLOC_TUNED", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", runtime.MALLOC_TUNABLES]
    off = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "JAXMIR_MALLOC": "system"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert off.returncode == 0 and off.stdout == ""  # not re-executed: nothing printed


def test_per_model_xla_flags_come_before_the_users():
    env = runtime.xla_flags_env({"XLA_FLAGS": "--xla_dump_to=/tmp/x"}, "patch_cnn")
    assert env["XLA_FLAGS"] == runtime.CPU_XLA_FLAGS["patch_cnn"] + " --xla_dump_to=/tmp/x"
    assert runtime.xla_flags_env({}, "beat") == {}  # no flags for beat
    from benchmarks.suite import lever_variants

    labels = [v[0] for v in lever_variants("patch_cnn", quick=True)]
    assert "without per-model XLA flags" in labels and "ynn fusion off" not in labels


PARENT = """
import os, sys, time
from jaxmir.runtime import WorkerPool

def work(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    with WorkerPool(1) as pool:
        pool.submit(work, sys.argv[1]).result()
"""


def _ended(pid: int, within_s: float) -> bool:
    """Whether process `pid` is gone (or a zombie no one has reaped yet) within `within_s`."""
    import time

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[-1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_a_worker_ends_with_its_parent_killed(tmp_path):
    """`jaxmir synth -j 2` / `features -j 2` killed by SIGKILL (or the out-of-memory killer)
    left their spawned workers running, hundreds of MB each, with no parent."""
    import signal
    import time

    script, pid_file = tmp_path / "parent.py", tmp_path / "worker.pid"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    if not _ended(worker, within_s=10):
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker outlived its parent by 10 s")


SLOW_IMPORT = """
import multiprocessing, os, sys, time

if multiprocessing.current_process().name != "MainProcess":  # a worker, unpickling `work`
    open(os.path.join(os.environ["PIDS"], str(os.getpid())), "w").close()
    time.sleep(120)

def work():
    return 1
"""

CTRL_C_PARENT = """
import sys
from jaxmir.runtime import WorkerPool
from slow_import import work

if __name__ == "__main__":
    try:
        with WorkerPool(2) as pool:
            for fut in [pool.submit(work) for _ in range(4)]:
                fut.result()
    except KeyboardInterrupt:
        print("interrupted")
        sys.exit(130)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups, /proc")
def test_ctrl_c_is_answered_by_the_parent_alone(tmp_path):
    """Ctrl-C reaches the whole process group: each worker of `features -j 2` printed its own
    KeyboardInterrupt traceback (from an import, here the one of the work's module) above the
    parent's one line. Now workers hold SIGINT back and the parent ends them at once."""
    import signal
    import time

    (tmp_path / "slow_import.py").write_text(SLOW_IMPORT)
    (tmp_path / "parent.py").write_text(CTRL_C_PARENT)
    pids = tmp_path / "pids"
    pids.mkdir()
    env = {
        **os.environ,
        "PIDS": str(pids),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
    }
    parent = subprocess.Popen(
        [sys.executable, str(tmp_path / "parent.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's job
    )
    deadline = time.monotonic() + 60
    while len(list(pids.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = [int(p.name) for p in pids.iterdir()]
    assert len(workers) == 2, "the workers did not start"
    os.killpg(parent.pid, signal.SIGINT)  # what Ctrl-C does
    out, err = parent.communicate(timeout=60)
    assert parent.returncode == 130 and out.strip() == "interrupted"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert all(_ended(pid, within_s=10) for pid in workers)  # not left importing for 2 min


def _blocked_signals() -> set[int]:
    import signal

    return {int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])}


@pytest.mark.skipif(not hasattr(__import__("signal"), "pthread_sigmask"), reason="POSIX")
def test_workers_hold_sigint_back_and_the_caller_keeps_its_mask():
    """What the Ctrl-C test above relies on, seen directly: a worker starts with SIGINT
    blocked, and the process that started it has its own mask back."""
    import signal

    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with runtime.WorkerPool(1) as pool:
        blocked = pool.submit(_blocked_signals).result(timeout=120)
    assert int(signal.SIGINT) in blocked
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
    assert signal.SIGINT not in before
