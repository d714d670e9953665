"""Multi-process training for real: 2 processes x 4 CPU devices (jax.distributed over
localhost, gloo collectives) against 1 process x 8 devices on the same global batches, and a
checkpoint of the 2-process run resumed by a single process."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from benchmarks.killsoak import final_state, metric_records, train_argv
from jaxmir.cli import main

SETTINGS = ("train.batch_size=8", "train.val_batch_size=8")


# Gloo prints "[Gloo] Rank 1 is connected to 7 peer ranks. Expected number of connected peer
# ranks is : 7" from several threads at once, piece by piece, so its lines can come torn apart
# and glued together in any order; these are the pieces.
GLOO_PIECES = (
    "Expected number of connected peer ranks is :",
    "[Gloo] Rank",
    "is connected to",
    "peer ranks.",
)


def _own_lines(out: str) -> list[str]:
    """The lines of a process's stdout that are not Gloo's connection messages."""
    for piece in GLOO_PIECES:
        out = out.replace(piece, "")
    return [x.strip() for x in out.splitlines() if not re.fullmatch(r"[\d\s]*", x)]


def test_own_lines_drop_torn_gloo_messages_and_keep_the_rest():
    gloo = (
        "[Gloo] Rank 1 is connected to 7 peer ranks. Expected number of connected peer ranks is : 7"
    )
    torn = f"{gloo[:30]}{gloo}\n{gloo[30:]}\n\n7\n{gloo}\nbefore None\n"
    assert _own_lines(torn) == ["before None"]
    assert _own_lines(f"{gloo}\nRun finished\n") == ["Run finished"]


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        **extra,
    )
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_one_process(workdir, data, epochs: int) -> None:
    argv = train_argv(workdir, data, (*SETTINGS, f"train.epochs={epochs}"))
    done = subprocess.run(argv, env=_env(8), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _two_processes(
    argv: list[str], devices: int, timeout: float = 600, expected_exit: int = 0
) -> list[str]:
    """Run `argv` as processes 0 and 1 of one job (`devices` CPU devices each); their stdouts
    (their stderrs where they are expected to fail)."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            argv,
            env=_env(
                devices,
                JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == expected_exit, err[-3000:]
        outs.append(out if expected_exit == 0 else err)
    return outs


def _run_two_processes(workdir, data, epochs: int, *more: str, expected_exit: int = 0) -> list[str]:
    """Both processes of one training job; returns their stdouts (stderrs where they fail)."""
    argv = train_argv(workdir, data, (*SETTINGS, f"train.epochs={epochs}", *more))
    return _two_processes(argv, 4, timeout=300, expected_exit=expected_exit)


def _close(a: dict, b: dict, rtol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float):
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=1e-6, err_msg=k)
        else:
            assert a[k] == b[k], k


def _same_state(a: dict, b: dict) -> None:
    flat_a, tree_a = jax.tree.flatten(a)
    flat_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(flat_a, flat_b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_two_processes_match_one_and_resume_in_one(beat_cache, tmp_path):
    reference, multi = tmp_path / "one-process", tmp_path / "two-processes"
    _run_one_process(reference, beat_cache, epochs=3)
    outs = _run_two_processes(multi, beat_cache, epochs=2)

    # process 0 reports, process 1 is silent; one config, one metrics stream, one plot
    assert "Run finished" in outs[0]
    assert _own_lines(outs[1]) == []
    assert json.loads((multi / "config.json").read_text())["train"]["epochs"] == 2
    assert (multi / "curves.png").is_file()
    # the end-of-training calibration is left to one process (`jaxmir calibrate`), said so
    assert "Decoding not calibrated in a multi-process run" in outs[0]
    assert not (multi / "decode.json").exists()
    # every process saved its own data position, the same one (global batches consumed)
    positions = sorted((multi / "checkpoints" / "8" / "data").glob("process_*-of-2.json"))
    assert [json.loads(p.read_text()) for p in positions] == [{"next_index": 8}] * 2

    ref_records = metric_records(reference)
    multi_records = metric_records(multi)
    assert len(multi_records) == len([r for r in ref_records if r["step"] <= 8])
    for a, b in zip(ref_records, multi_records, strict=False):
        _close(a, b)

    # the 2-process checkpoint resumes in one process (8 devices) and ends where the
    # single-process run ends
    _run_one_process(multi, beat_cache, epochs=3)
    for a, b in zip(ref_records, metric_records(multi), strict=True):
        _close(a, b)
    _same_state(final_state(reference), final_state(multi))


def test_a_data_position_unreadable_on_one_process_is_skipped_by_every_process(
    beat_cache, tmp_path
):
    """Process 1's own data-iterator file of the newest step is empty: both processes resume
    from the step before (each deciding alone, process 0 trained on from the newest while
    process 1 waited at a barrier, for ever). With no step before, both stop with the error."""
    workdir = tmp_path / "run"
    _run_two_processes(workdir, beat_cache, 2, "train.keep_latest=2")
    checkpoints = workdir / "checkpoints"
    (checkpoints / "8" / "data" / "process_1-of-2.json").write_text("")
    outs = _run_two_processes(workdir, beat_cache, 3, "train.keep_latest=2")
    assert (
        "warning: checkpoint 8 is unreadable (a read error on process 1); moved to "
        f"{workdir / 'corrupt-checkpoints' / '8'}; resuming from step 4"
    ) in _own_lines(outs[0])
    assert _own_lines(outs[1]) == []
    assert sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) == [8, 12]

    (checkpoints / "12" / "data" / "process_1-of-2.json").write_text("")
    shutil.rmtree(checkpoints / "8")
    errs = _run_two_processes(workdir, beat_cache, 4, "train.keep_latest=2", expected_exit=2)
    assert (
        "no checkpoint can be restored; the newest, 12, fails with: a read error on process 1"
        in errs[0]
    )
    assert "the newest, 12, fails with: JSONDecodeError" in errs[1]


AGREE = """
import sys
import jax
from jaxmir.engine.sharding import maybe_initialize_distributed
from jaxmir.engine.loop import StopSignal

maybe_initialize_distributed()
stop = StopSignal()
print("before", stop.poll())
if jax.process_index() == 1:
    stop.requested = "SIGTERM"  # what the handler sets: a signal to process 1 only
print("after", stop.poll())
"""


def test_a_signal_to_one_process_stops_every_process(tmp_path):
    outs = _two_processes([sys.executable, "-c", AGREE], 1, timeout=120)
    for i, out in enumerate(outs):
        lines = _own_lines(out)
        expected = "SIGTERM" if i == 1 else "SIGTERM (another process)"
        assert lines == ["before None", f"after {expected}"], out


@pytest.mark.parametrize(
    "command",
    [
        ["info", "beat"],
        ["eval", "beat", "--workdir", "x"],
        ["transcribe", "beat", "x.mid", "-o", "out"],
        ["features", "beat", "--dataset", "midi", "--root", "x", "--out", "y"],
    ],
)
@pytest.mark.parametrize(
    "env", [("JAX_COORDINATOR_ADDRESS", "localhost:1"), ("JAXMIR_DISTRIBUTED", "1")]
)
def test_single_process_commands_refuse_a_multi_process_environment(
    command, env, monkeypatch, capsys
):
    monkeypatch.setenv(*env)
    assert main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs in one process" in err[0]
