"""Runs that survive: a stop signal at the last step of an epoch or during validation, a corrupt
newest checkpoint, and SIGKILL at random moments, each ending bit-identical to a run that was
never disturbed (final state and every metrics record)."""

import gc
import json
import shutil
import signal
import sys
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from benchmarks.killsoak import differences, soak
from jaxmir.cli import main
from jaxmir.config import apply_overrides
from jaxmir.engine import train
from jaxmir.engine.checkpoint import CheckpointError
from jaxmir.tasks.beat.task import TASK

ONE = jax.devices()[:1]


def tiny(*overrides):
    return apply_overrides(TASK.preset("tiny"), list(overrides))


def run(cfg, workdir, data, task=TASK, log=lambda *_: None):
    return train(task, cfg, workdir, data, devices=ONE, progress=False, log=log)


def assert_identical(a, b):
    assert differences(a.workdir, b.workdir) == []
    for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def full(beat_cache, tmp_path_factory):
    """An undisturbed 3-epoch run (4 steps an epoch), monitoring the train loss; trained
    through the Python API the README shows (`jaxmir.tasks.beat.train`)."""
    import jaxmir.tasks.beat as beat

    cfg = tiny("train.epochs=3", "train.monitor=loss")
    workdir = tmp_path_factory.mktemp("full") / "run"
    result = beat.train(cfg, workdir=workdir, data=beat_cache, devices=ONE, progress=False)
    assert result.workdir == workdir and result.status == "finished"
    return result


def test_every_task_module_has_the_train_entry_point(monkeypatch):
    """`jaxmir.tasks.<name>.train(cfg, ...)` trains that task (the engine gets its Task)."""
    import importlib

    import jaxmir.engine
    from jaxmir.tasks.base import TASK_MODULES

    calls = []
    monkeypatch.setattr(jaxmir.engine, "train", lambda *a, **k: calls.append((a, k)) or "run")
    for name in TASK_MODULES:
        assert importlib.import_module(f"jaxmir.tasks.{name}").train("cfg", "wd", seed=1) == "run"
        (task, cfg, workdir, data), kwargs = calls.pop()
        assert (task.name, cfg, workdir, data, kwargs) == (name, "cfg", "wd", None, {"seed": 1})


def test_stop_signal_at_the_last_step_of_an_epoch(full, beat_cache, tmp_path):
    cfg = tiny("train.epochs=3", "train.monitor=loss")
    cut = run(apply_overrides(cfg, ["train.interrupt_at_step=4"]), tmp_path / "run", beat_cache)
    assert cut.status.startswith("interrupted") and int(cut.state.step) == 4
    # the resumed epoch runs no step but reports the epoch's train loss (carried in the
    # checkpoint), so monitoring a train metric works, and equals the undisturbed run's
    resumed = run(cfg, tmp_path / "run", beat_cache)
    assert resumed.status == "finished"
    assert_identical(full, resumed)


def test_a_python_api_run_resumes_and_scores_on_the_cache_it_started_on(
    full, beat_cache, tmp_path, monkeypatch, capsys
):
    """run.json records the cache a run trained on, whoever started it (here the Python API):
    resuming with no `data`, and `jaxmir eval` with no --data, read that cache, never the
    embedded corpus."""
    from jaxmir.engine.run import run_data

    assert run_data(full.workdir) == beat_cache.resolve()
    cfg = tiny("train.epochs=3", "train.monitor=loss")
    run(apply_overrides(cfg, ["train.interrupt_at_step=6"]), tmp_path / "run", beat_cache)

    def no_corpus(*_args, **_kwargs):
        raise AssertionError("the embedded corpus was read")

    monkeypatch.setattr(type(TASK), "default_data", no_corpus)
    assert_identical(full, run(cfg, tmp_path / "run", None))
    capsys.readouterr()
    argv = ["eval", "beat", "--workdir", str(tmp_path / "run"), "--split", "val", "--no-progress"]
    assert main(argv) == 0
    assert "beat_f_measure" in capsys.readouterr().out


def test_run_json_names_its_cache_or_the_embedded_corpus(beat_cache, tmp_path, monkeypatch):
    """run.json: a recorded cache folder, or the embedded corpus (found or built again where
    the cache root now is: None; so is an older record under the cache root); a folder that
    is gone, or a broken file, names run.json."""
    from jaxmir.data.cache import CacheError, FeatureCache
    from jaxmir.engine.run import run_data, write_run_data

    assert run_data(tmp_path) is None  # no record
    write_run_data(tmp_path, FeatureCache(beat_cache), embedded=True)
    assert run_data(tmp_path) is None
    write_run_data(tmp_path, FeatureCache(beat_cache), embedded=False)
    assert run_data(tmp_path) == beat_cache.resolve()
    (tmp_path / "run.json").write_text(json.dumps({"data": str(tmp_path / "gone")}))
    with pytest.raises(CacheError, match=r"run\.json: the run's feature cache .*gone"):
        run_data(tmp_path)
    assert run_data(tmp_path, must_exist=False) == tmp_path / "gone"  # its name only
    monkeypatch.setenv("JAXMIR_CACHE", str(tmp_path / "root"))
    older = tmp_path / "root" / "beat" / "corpus-1234"  # written before `embedded` existed
    (tmp_path / "run.json").write_text(json.dumps({"data": str(older)}))
    assert run_data(tmp_path) is None
    (tmp_path / "run.json").write_text('{"data": ')  # cut off mid-write by an older version
    with pytest.raises(CacheError, match=r"run\.json: not JSON"):
        run_data(tmp_path)


def test_stop_signal_inside_an_epoch_keeps_the_epoch_means(full, beat_cache, tmp_path):
    cfg = tiny("train.epochs=3", "train.monitor=loss")
    run(apply_overrides(cfg, ["train.interrupt_at_step=6"]), tmp_path / "run", beat_cache)
    resumed = run(cfg, tmp_path / "run", beat_cache)
    assert_identical(full, resumed)  # epoch 2's train loss averages all 4 steps, not the last 2


class SignalDuringValidation:
    """The beat task, with SIGTERM arriving while the first epoch's pieces are validated."""

    def __init__(self):
        self.fired = False

    def __getattr__(self, name):
        return getattr(TASK, name)

    def evaluate(self, predict, cfg, cache, split, progress=False):
        if not self.fired:
            self.fired = True
            signal.raise_signal(signal.SIGTERM)
        return TASK.evaluate(predict, cfg, cache, split, progress)


def test_validation_stops_at_once_and_re_runs_on_resume(full, beat_cache, tmp_path):
    cfg = tiny("train.epochs=3", "train.monitor=loss")
    task = SignalDuringValidation()
    cut = run(cfg, tmp_path / "run", beat_cache, task=task)
    assert task.fired and cut.status == "interrupted: SIGTERM"
    assert cut.history["validate"] == []  # validation abandoned, not finished
    resumed = run(cfg, tmp_path / "run", beat_cache)
    assert_identical(full, resumed)


def corrupt(step_dir, kind: str) -> None:
    """The four ways a checkpoint step was found broken after crashes and full disks."""
    if kind == "state-array":
        arrays = sorted((step_dir / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
        data = arrays[-1].read_bytes()
        arrays[-1].write_bytes(data[: len(data) // 2])
    elif kind == "state-metadata":
        path = step_dir / "state" / "_METADATA"
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "meta":
        path = step_dir / "meta" / "metadata"
        path.write_bytes(path.read_bytes()[:50])
    elif kind == "data-iterator":
        next((step_dir / "data").glob("process_*.json")).write_text("")


@pytest.fixture(scope="module")
def two_epochs(beat_cache, tmp_path_factory):
    """The first 2 epochs of `full`, keeping both epochs' checkpoints (steps 4 and 8)."""
    cfg = tiny("train.epochs=2", "train.monitor=loss", "train.keep_latest=3")
    return run(cfg, tmp_path_factory.mktemp("two") / "run", beat_cache).workdir


@pytest.mark.parametrize("kind", ["state-array", "state-metadata", "meta", "data-iterator"])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(
    kind, full, two_epochs, beat_cache, tmp_path, monkeypatch
):
    wd = tmp_path / "run"
    shutil.copytree(two_epochs, wd)
    corrupt(wd / "checkpoints" / "8", kind)
    messages, unraisable = [], []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    cfg = tiny("train.epochs=3", "train.monitor=loss", "train.keep_latest=3")
    resumed = run(cfg, wd, beat_cache, log=messages.append)
    gc.collect()
    # the failed read's abandoned coroutines printed ~130 tracebacks after the warning
    # no abandoned read reached the hook (TensorStore's callbacks into the closed loop, object
    # None, come on its threads whenever they get to them, also an earlier test's: below)
    assert [u.object for u in unraisable if u.object is not None] == []
    # the filter stays for those callbacks, and passes on anything else
    unraisable.clear()
    closed = SimpleNamespace(exc_value=RuntimeError("Event loop is closed"), object=None)
    other = SimpleNamespace(exc_value=ValueError("mine"), object=None)
    sys.unraisablehook(closed)
    sys.unraisablehook(other)
    assert unraisable == [other]
    warning = next(m for m in messages if m.startswith("warning:"))
    assert "checkpoint 8" in warning and "resuming from step 4" in warning
    assert "\n" not in warning and "TensorStore" not in warning  # one line, no spec dump
    assert (wd / "corrupt-checkpoints" / "8").is_dir()  # moved aside, not deleted
    assert resumed.status == "finished"
    assert_identical(full, resumed)


def test_eval_of_an_unreadable_checkpoint_is_one_line(two_epochs, tmp_path, monkeypatch, capsys):
    wd = tmp_path / "run"
    shutil.copytree(two_epochs, wd)
    corrupt(wd / "checkpoints" / "8", "state-array")
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    assert main(["eval", "beat", "--workdir", str(wd), "--step", "8", "--split", "val"]) == 2
    gc.collect()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "8: cannot be read (Exception: Encountered error while reading" in err[0]
    assert (
        "saved steps: [4, 8] (eval --step N scores another" in err[0]
        and "TensorStore" not in err[0]
    )
    assert [u.object for u in unraisable if u.object is not None] == []  # as above


def test_when_no_checkpoint_restores_nothing_is_moved(
    two_epochs, beat_cache, tmp_path, monkeypatch
):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    wd = tmp_path / "run"
    shutil.copytree(two_epochs, wd)
    for step in ("4", "8"):
        corrupt(wd / "checkpoints" / step, "meta")
    config_before = (wd / "config.json").read_bytes()
    cfg = tiny("train.epochs=3", "train.monitor=loss", "train.keep_latest=3")
    with pytest.raises(CheckpointError, match="no checkpoint can be restored; the newest, 8"):
        run(cfg, wd, beat_cache)
    assert not (wd / "corrupt-checkpoints").exists()
    assert (wd / "config.json").read_bytes() == config_before  # not rewritten by a failed resume
    assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == ["4", "8"]
    gc.collect()
    # no abandoned read reached the hook; TensorStore's callbacks into a closed loop (object
    # None) come on its threads whenever they get to them, also from an earlier test's failed
    # read, so they are recorded here (not printed as warnings) but not asserted on
    assert [u for u in unraisable if u.object is not None] == []


def test_kill_loop_three_kills_end_bit_identical(beat_cache, tmp_path):
    """SIGKILL at 3 random moments of a `jaxmir train` (start-up, steps, validation, saves);
    `python -m benchmarks.killsoak --kills 20` is the longer soak."""
    result = soak(3, tmp_path, beat_cache, seed=1)
    assert result["kills"] == 3 and result["failures"] == []
    assert result["all_identical"], result["details"]


def test_the_command_exits_2_when_no_checkpoint_restores(two_epochs, beat_cache, tmp_path, capsys):
    wd = tmp_path / "run"
    shutil.copytree(two_epochs, wd)
    for step in ("4", "8"):
        corrupt(wd / "checkpoints" / step, "data-iterator")
    argv = ["train", "beat", "--workdir", str(wd), "--data", str(beat_cache), "--no-progress"]
    assert main([*argv, "--set", "train.epochs=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no checkpoint can be restored" in err[0]
