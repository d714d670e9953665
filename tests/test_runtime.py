"""The malloc tuning of jaxmir.runtime: environment merging and the re-exec itself."""

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
import concurrent.futures, multiprocessing, os, sys, time
from jaxmir.runtime import die_with_parent

def work(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        1, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),)
    ) as pool:
        pool.submit(work, sys.argv[1]).result()
"""


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
    for _ in range(100):
        try:
            with open(f"/proc/{worker}/stat") as f:
                state = f.read().rsplit(")", 1)[-1].split()[0]
        except FileNotFoundError:
            return  # gone
        if state == "Z":
            return  # ended; its new parent has not reaped it yet
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    pytest.fail("the worker outlived its parent by 10 s")
