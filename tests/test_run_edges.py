"""A run's edges that lost work or gave a wrong result: a SIGTERM while the last checkpoint is
written, decoding calibrated on an older step, a checkpoint meta of other content, a SIGTERM to
another command than train, and a checkpoint writer's full disk."""

from __future__ import annotations

import json
import signal

from jaxmir.cli import main
from jaxmir.engine.checkpoint import Checkpointer


def train_argv(workdir, beat_cache, *sets):
    argv = ["train", "beat", "--preset", "tiny", "--workdir", str(workdir)]
    argv += ["--data", str(beat_cache), "--no-progress"]
    return argv + [x for s in sets for x in ("--set", s)]


def steps(workdir) -> list[str]:
    return sorted(p.name for p in (workdir / "checkpoints").iterdir())


def test_a_sigterm_while_the_last_checkpoint_is_written_keeps_it(
    beat_cache, tmp_path, monkeypatch, capsys
):
    """The save of the last step was abandoned half-way (a tmp folder left, the epoch lost):
    the wait for it ran after the loop's stop handler was gone, and the signal raised inside
    it. Now the save completes, the run says it was stopped (exit 75) and the same command
    then calibrates what it had trained."""
    wd = tmp_path / "run"
    wait = Checkpointer.wait
    sent = []

    def wait_signalled(self):
        if self.directory == wd / "checkpoints" and not sent:
            sent.append(1)
            signal.raise_signal(signal.SIGTERM)  # a pre-emption just after the last step
        return wait(self)

    monkeypatch.setattr(Checkpointer, "wait", wait_signalled)
    assert main(train_argv(wd, beat_cache)) == 75
    assert sent and "Interrupted; checkpoint saved" in capsys.readouterr().out
    saved = steps(wd)
    assert saved and not any("tmp" in s for s in saved) and not (wd / "decode.json").exists()
    monkeypatch.setattr(Checkpointer, "wait", wait)
    assert main(train_argv(wd, beat_cache)) == 0
    assert steps(wd) == saved and (wd / "decode.json").is_file()


def test_decoding_of_an_older_step_is_calibrated_again(beat_cache, tmp_path, capsys):
    """A calibration cut short after a run was extended kept the older step's decode.json,
    and the same command said "decoding stays as decode.json holds it"."""
    wd = tmp_path / "run"
    assert main(train_argv(wd, beat_cache)) == 0
    decode = json.loads((wd / "decode.json").read_text())
    capsys.readouterr()
    assert main(train_argv(wd, beat_cache)) == 0  # current: kept
    assert "decoding stays as" in capsys.readouterr().out
    (wd / "decode.json").write_text(json.dumps({**decode, "step": decode["step"] - 1}))
    assert main(train_argv(wd, beat_cache)) == 0
    out = capsys.readouterr().out
    assert "decoding stays as" not in out and "Decoding calibrated" in out
    assert json.loads((wd / "decode.json").read_text())["step"] == decode["step"]


def test_a_checkpoint_whose_meta_says_nothing_of_the_run_is_moved_aside(
    beat_cache, tmp_path, capsys
):
    """Valid JSON of other content in the newest meta: a KeyError on every resume, the step
    kept. Now it is unreadable like any corrupt checkpoint: moved aside, resumed before it."""
    wd = tmp_path / "run"
    keep = "train.keep_latest=2"
    assert main(train_argv(wd, beat_cache, keep)) == 0
    first, newest = steps(wd)[0], steps(wd)[-1]
    (wd / "checkpoints" / newest / "meta" / "metadata").write_text("{}")
    assert main(train_argv(wd, beat_cache, keep, "train.epochs=3")) == 0
    said = capsys.readouterr()
    said = said.out + said.err
    assert (
        f"checkpoint {newest} is unreadable (ValueError: meta: epoch is None, not a count)" in said
    )
    assert f"resuming from step {first}" in said
    assert (wd / "corrupt-checkpoints" / newest).is_dir()


def test_sigterm_to_another_command_exits_75(beat_cache, tmp_path, monkeypatch, capsys):
    """`--help` says SIGTERM exits 75 for any command; eval and export ended with 143."""
    import jaxmir.engine.run

    wd = tmp_path / "run"
    assert main(train_argv(wd, beat_cache, "train.epochs=1")) == 0
    capsys.readouterr()

    def restore(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop eval")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(jaxmir.engine.run, "restore_for_inference", restore)
    assert main(["eval", "beat", "--workdir", str(wd), "--no-progress"]) == 75
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "jaxmir eval: stopped by SIGTERM; what was written is kept: run the same command again"
    ]
    assert signal.getsignal(signal.SIGTERM) == before


def test_a_full_disk_under_the_checkpoint_writer_is_one_line(
    beat_cache, tmp_path, monkeypatch, capsys
):
    import jaxmir.engine.run

    def full(*args, **kwargs):
        raise ValueError(
            "RESOURCE_EXHAUSTED: Error writing local file /x/d/abc: Failed writing "
            "[OS error 28: No space left on device]"
        )

    monkeypatch.setattr(jaxmir.engine.run, "train", full)
    assert main(train_argv(tmp_path / "run", beat_cache)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on the device (ValueError: RESOURCE_EXHAUSTED" in err[0]
    assert err[0].endswith("free some space and run the same command again")

    def other(*args, **kwargs):
        raise ValueError("a bug of ours")

    monkeypatch.setattr(jaxmir.engine.run, "train", other)
    try:
        main(train_argv(tmp_path / "run", beat_cache))
    except ValueError as e:  # not a full disk: its traceback stays
        assert str(e) == "a bug of ours"
    else:
        raise AssertionError("a ValueError that is no full disk was swallowed")


def test_a_torn_run_json_is_resumed_and_scored_with_the_data_its_error_asks_for(
    beat_cache, tmp_path, capsys
):
    """run.json cut short by a power loss: `train` and `eval` said "name the cache with
    --data", then refused that too (train) or failed after scoring the whole split (eval)."""
    wd = tmp_path / "run"
    assert main(train_argv(wd, beat_cache, "train.epochs=1")) == 0
    record = (wd / "run.json").read_text()
    (wd / "run.json").write_text(record[:10])
    capsys.readouterr()
    assert main(["eval", "beat", "--workdir", str(wd), "--no-progress"]) == 2
    assert "name the cache with --data" in capsys.readouterr().err
    argv = ["eval", "beat", "--workdir", str(wd), "--no-progress", "--data", str(beat_cache)]
    assert main([*argv, "--split", "val"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["split"] == "val"
    assert main(train_argv(wd, beat_cache, "train.epochs=2")) == 0
    assert json.loads((wd / "run.json").read_text()) == json.loads(record)  # recorded anew


def test_a_stop_inside_another_sees_the_signal_the_outer_one_caught():
    """A SIGTERM while beat's tagger run started (caught by the calibration's stop) was acted
    on only after the whole tagger had trained: the tagger run's own stop, installed later,
    never saw it."""
    import os

    from jaxmir.engine.loop import StopSignal

    before = signal.getsignal(signal.SIGTERM)
    with StopSignal() as outer:
        os.kill(os.getpid(), signal.SIGTERM)
        assert outer.requested == "SIGTERM"
        with StopSignal() as inner:
            assert inner.requested == "SIGTERM" and inner.poll() == "SIGTERM"
    with StopSignal() as outer, StopSignal() as inner:  # no signal: neither stops
        assert outer.requested is None and inner.requested is None
    assert signal.getsignal(signal.SIGTERM) == before


def test_eval_prints_its_scores_before_recording_them(beat_cache, tmp_path, capsys):
    """A run folder eval could not write (read-only; here `eval` is a file) lost the scores of a
    whole split: they were printed after the record. Now they are printed, the record's
    failure named, exit 1."""
    wd = tmp_path / "run"
    assert main(train_argv(wd, beat_cache, "train.epochs=1")) == 0
    (wd / "eval").write_text("not a folder")
    capsys.readouterr()
    assert main(["eval", "beat", "--workdir", str(wd), "--no-progress", "--split", "val"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["split"] == "val"
    assert f"warning: scores not recorded in {wd / 'eval' / 'val.json'}" in err


def test_a_run_stopped_early_is_calibrated_by_the_same_command(beat_cache, tmp_path, capsys):
    """An early-stopped run whose calibration was cut short: the same command said "nothing
    to resume" and returned before calibrating, so eval decoded with the defaults."""
    wd = tmp_path / "run"
    # beat_at_level stays 0 on the tiny model: epoch 2 does not improve, patience 1 stops it
    sets = ("train.epochs=4", "train.monitor=val_beat_at_level", "train.early_stop_patience=1")
    assert main(train_argv(wd, beat_cache, *sets)) == 0
    assert "stopped" in capsys.readouterr().out
    (wd / "decode.json").unlink()  # as a signal during its calibration leaves it
    assert main(train_argv(wd, beat_cache, *sets)) == 0
    out = capsys.readouterr().out
    assert "nothing to resume" in out and "Decoding calibrated" in out
    assert (wd / "decode.json").is_file()


def test_eval_beside_a_training_run_that_prunes_the_best_step_restores_the_new_best(
    beat_cache, tmp_path, monkeypatch
):
    """A train beside an eval pruned the step eval had chosen as best before eval read it:
    eval failed, naming a checkpoint that no longer existed. Now it chooses again."""
    import shutil

    from jaxmir.engine.run import restore_for_inference
    from jaxmir.tasks.beat.task import TASK

    wd = tmp_path / "run"
    assert main(train_argv(wd, beat_cache, "train.keep_latest=3", "train.epochs=3")) == 0
    saved = steps(wd)
    assert len(saved) >= 2
    restore, tried = Checkpointer.restore, []

    def restore_after_a_prune(self, step, *args, **kwargs):
        if not tried:  # the train beside it prunes this step now
            shutil.rmtree(self.directory / str(step))
        tried.append(step)
        return restore(self, step, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "restore", restore_after_a_prune)
    _cfg, _mesh, _state, step = restore_for_inference(TASK, wd)
    assert len(tried) == 2 and step == tried[1] != tried[0]
    assert str(step) in steps(wd) and str(tried[0]) not in steps(wd)


def test_ctrl_c_in_train_saves_the_step_and_exits_75(beat_cache, tmp_path, monkeypatch, capsys):
    """SIGINT, as SIGTERM: the current step saved, exit 75, the same command goes on."""
    raise_signal = signal.raise_signal
    # the loop's test hook sends SIGTERM at a step; Ctrl-C instead
    monkeypatch.setattr(signal, "raise_signal", lambda sig: raise_signal(signal.SIGINT))
    wd = tmp_path / "run"
    once = ("train.interrupt_at_step=5", "train.eval_pieces_each_epoch=false")
    assert main(train_argv(wd, beat_cache, *once)) == 75
    assert "Interrupted; checkpoint saved" in capsys.readouterr().out
    assert "5" in steps(wd)
    monkeypatch.undo()
    assert main(train_argv(wd, beat_cache, "train.eval_pieces_each_epoch=false")) == 0
    assert "from step 5" in capsys.readouterr().out
