"""The engine end to end on the tiny beat preset: devices, resume, async saves, outputs."""

import json

import jax
import numpy as np
import pytest

from jaxmir.config import apply_overrides
from jaxmir.data.cache import FeatureCache
from jaxmir.data.pipeline import batch_iterator
from jaxmir.engine import train
from jaxmir.engine.checkpoint import Checkpointer
from jaxmir.engine.loop import EpochPlan, Hooks, train_epochs
from jaxmir.engine.run import init_state, make_callbacks
from jaxmir.engine.sharding import make_mesh, put_batch
from jaxmir.engine.step import make_eval_step, make_train_step
from jaxmir.tasks.beat.task import TASK

# Adam divides each gradient by its own running RMS, so where a gradient is near zero, a float
# summation order (8 devices or 4 micro-batches against one batch) moves the parameter by a
# visible part of a step: 1.2e-5 after 3 steps at lr 1e-3 on one CPU, 1e-5 on another. A tenth
# of one step bounds it; the losses are compared tightly.
ADAM_ORDER_ATOL = 1e-4

ONE = jax.devices()[:1]


def tiny(*overrides):
    return apply_overrides(TASK.preset("tiny"), ["train.eval_pieces_each_epoch=false", *overrides])


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_one_vs_eight_devices_agree(beat_cache):
    cfg = tiny()
    cache = FeatureCache(beat_cache)
    it = batch_iterator(TASK.dataset(cfg, cache, "train", True), 8, 1)
    batches = [next(it) for _ in range(3)]
    results = []
    for devices in (jax.devices()[:1], jax.devices()[:8]):
        mesh = make_mesh(devices)
        state = init_state(TASK, cfg, mesh, make_callbacks(cfg))
        step = make_train_step(TASK.bind_loss(cfg), mesh)
        losses = []
        for b in batches:
            state, m = step(state, put_batch(b, mesh))
            losses.append(float(m["loss"]))
        results.append((losses, leaves(state.params)))
    assert len(jax.devices()) == 8
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(a, b, atol=ADAM_ORDER_ATOL)


def test_interrupt_and_resume_is_bit_identical(beat_cache, tmp_path):
    cfg = tiny("train.epochs=3")
    full = train(TASK, cfg, tmp_path / "full", beat_cache, devices=ONE, progress=False)
    assert full.status == "finished"

    work = tmp_path / "interrupted"
    cut = train(
        TASK,
        apply_overrides(cfg, ["train.interrupt_at_step=6"]),
        work,
        beat_cache,
        devices=ONE,
        progress=False,
    )
    assert cut.status.startswith("interrupted")
    assert int(cut.state.step) == 6  # inside epoch 2 (4 steps per epoch)
    # what a kill -9 after the checkpoint leaves: records past it, and a torn last line
    with open(work / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "step", "step": 7, "epoch": 2, "split": "train"}) + "\n")
        f.write('{"kind": "step", "st')
    resumed = train(TASK, cfg, work, beat_cache, devices=ONE, progress=False)
    assert resumed.status == "finished"
    assert int(resumed.state.step) == int(full.state.step) == 12
    for a, b in zip(leaves(full.state.params), leaves(resumed.state.params), strict=True):
        assert np.array_equal(a, b)
    for a, b in zip(leaves(full.state.opt_state), leaves(resumed.state.opt_state), strict=True):
        assert np.array_equal(a, b)

    # the resumed run's metrics.jsonl has the uninterrupted run's records, once each
    def keys(path):
        return [(r["kind"], r["step"], r["split"]) for r in map(json.loads, open(path))]

    assert keys(work / "metrics.jsonl") == keys(tmp_path / "full" / "metrics.jsonl")


def test_training_on_after_async_saves_equals_no_saves(beat_cache, tmp_path):
    cfg = tiny("train.epochs=2")
    cache = FeatureCache(beat_cache)
    mesh = make_mesh(ONE)
    finals = []
    for with_saves in (False, True):
        state = init_state(TASK, cfg, mesh, make_callbacks(cfg))
        it = batch_iterator(TASK.dataset(cfg, cache, "train", True), 8, 1)
        ckpt = Checkpointer(tmp_path / f"ck{with_saves}", keep_latest=10)

        def save(st, metrics, meta, ckpt=ckpt, it=it):
            ckpt.save(int(st.step), st, it, meta, metrics)

        hooks = Hooks(save=save if with_saves else None, log=lambda *_: None, progress=False)
        state, _, status = train_epochs(
            state,
            train_step=make_train_step(TASK.bind_loss(cfg), mesh),
            eval_step=make_eval_step(TASK.bind_loss(cfg), mesh),
            train_batches=it,
            val_batches=lambda: batch_iterator(TASK.dataset(cfg, cache, "val", False), 8, 1),
            put_batch=lambda b: put_batch(b, mesh),
            plan=EpochPlan(epochs=2, steps_per_epoch=4, val_steps=1, log_every=1),
            callbacks=make_callbacks(cfg),
            hooks=hooks,
        )
        ckpt.close()
        finals.append(leaves(state.params))
        if with_saves:
            assert ckpt.manager.all_steps() == [4, 8]
    for a, b in zip(*finals, strict=True):
        assert np.array_equal(a, b)


def test_an_epochs_save_replaces_the_interrupt_save_at_its_step(beat_cache, tmp_path):
    """A stop during an epoch's validation saves its last step unscored; the resumed epoch's
    save at that step then carries the score (it was skipped, so a worse later checkpoint was
    taken for the best and the better one pruned)."""
    cfg = tiny()
    mesh = make_mesh(ONE)
    state = init_state(TASK, cfg, mesh, make_callbacks(cfg))
    it = batch_iterator(TASK.dataset(cfg, FeatureCache(beat_cache), "train", True), 8, 1)
    ckpt = Checkpointer(tmp_path / "ck", monitor="val_loss", keep_latest=1, keep_best=1)
    ckpt.save(4, state, it, {"epoch": 0, "step_in_epoch": 4})  # the interrupt save
    ckpt.save(4, state, it, {"epoch": 1, "step_in_epoch": 0}, {"val_loss": 1.0})
    ckpt.save(8, state, it, {"epoch": 2, "step_in_epoch": 0}, {"val_loss": 2.0})
    ckpt.wait()
    assert ckpt.manager.all_steps() == [4, 8] and ckpt.best_step() == 4
    assert ckpt.restore(4, state)[1]["epoch"] == 1  # the epoch's marks, not the interrupt's
    # a save with nothing more (an interrupt right after an epoch's save) changes nothing
    ckpt.save(8, state, it, {"epoch": 2, "step_in_epoch": 0})
    ckpt.wait()
    assert ckpt.best_step() == 4 and ckpt._has_metric(8)
    ckpt.close()


def test_early_stopping_switched_on_or_off_by_a_resume_restores(beat_cache, tmp_path):
    """`train.early_stop_patience` may change on resume: null -> a number and back restored
    as unreadable checkpoints (the callbacks' state had another tree)."""
    run = tmp_path / "run"
    assert train(TASK, tiny("train.epochs=1"), run, beat_cache, devices=ONE, progress=False)
    for patience, epochs in ((3, 2), (None, 3)):
        cfg = tiny(f"train.epochs={epochs}", f"train.early_stop_patience={json.dumps(patience)}")
        result = train(TASK, cfg, run, beat_cache, devices=ONE, progress=False)
        assert result.status == "finished" and int(result.state.step) == 4 * epochs
    # a checkpoint saved without early stopping's state (as runs were saved before it was
    # always kept) restores, early stopping starting afresh
    cfg = tiny()
    mesh = make_mesh(ONE)
    state = init_state(TASK, cfg, mesh, make_callbacks(cfg))
    older = state.replace(
        callbacks={k: v for k, v in state.callbacks.items() if k != "early_stopping"}
    )
    ckpt = Checkpointer(tmp_path / "old")
    ckpt.save(1, older, None, {"epoch": 0, "step_in_epoch": 1})
    restored, _ = ckpt.restore(1, state)
    assert set(restored.callbacks) == set(state.callbacks)
    assert float(restored.callbacks["early_stopping"]["wait"]) == 0.0
    ckpt.close()


def test_grad_norm_switched_on_by_a_resume_mid_epoch(beat_cache, tmp_path):
    """`train.log_grad_norm` may change on resume: switched on inside an epoch, the restored
    sums had no grad_norm and the first step ended in a traceback (and every re-run after)."""
    from jaxmir.engine.loop import RunningMeans

    run = tmp_path / "run"
    cut = tiny("train.epochs=1", "train.interrupt_at_step=2")
    assert train(TASK, cut, run, beat_cache, devices=ONE, progress=False).status.startswith(
        "interrupted"
    )
    cfg = tiny("train.epochs=1", "train.log_grad_norm=true")
    assert train(TASK, cfg, run, beat_cache, devices=ONE, progress=False).status == "finished"
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_row = [r for r in epochs if r["kind"] == "epoch" and r["split"] == "train"][-1]
    assert train_row["grad_norm"] > 0 and np.isfinite(train_row["loss"])
    # the mean of a metric is over the steps that logged it, through a checkpoint's JSON too
    means = RunningMeans()
    for metrics in ({"loss": 1.0}, {"loss": 3.0, "g": 4.0}, {"loss": 5.0, "g": 6.0}, {"loss": 7.0}):
        means.add({k: np.float32(v) for k, v in metrics.items()})
        means = RunningMeans.from_json(means.to_json())
    assert means.read() == {"loss": 4.0, "g": 5.0}


def test_a_stop_while_watch_splits_are_scored_writes_each_row_once(
    beat_cache, tmp_path, monkeypatch
):
    """A SIGTERM while the second watch split was scored left the first one's row written;
    the resumed epoch wrote it again."""
    import signal

    fired = []
    scored = type(TASK).evaluate

    def evaluate(self, predict, cfg, cache, split, progress=False):
        if split == "train" and not fired:  # the second watch split
            fired.append(split)
            signal.raise_signal(signal.SIGTERM)
        return scored(self, predict, cfg, cache, split, progress=progress)

    monkeypatch.setattr(type(TASK), "evaluate", evaluate)
    watch = ["train.epochs=1", 'train.watch_splits=["test", "train"]']
    cfg = apply_overrides(TASK.preset("tiny"), watch)
    run = tmp_path / "run"
    first = train(TASK, cfg, run, beat_cache, devices=ONE, progress=False)
    assert first.status.startswith("interrupted")
    assert train(TASK, cfg, run, beat_cache, devices=ONE, progress=False).status == "finished"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "epoch" and r["split"] == "test"] == [4]


def test_workdir_outputs(beat_cache, tmp_path):
    cfg = apply_overrides(TASK.preset("tiny"), ["train.monitor=val_beat_f_measure"])
    run = train(TASK, cfg, tmp_path / "run", beat_cache, devices=ONE, progress=False)
    wd = run.workdir
    assert json.loads((wd / "config.json").read_text())["task"] == "beat"
    lines = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in lines}
    assert {"step", "epoch"} <= kinds
    val = [r for r in lines if r["kind"] == "epoch" and r["split"] == "val"]
    assert "val_beat_f_measure" in val[-1] and "val_loss" in val[-1]
    for r in lines:
        assert {"kind", "step", "epoch", "split", "time"} <= set(r)
    assert (wd / "curves.png").stat().st_size > 1000
    assert any((wd / "tensorboard").iterdir())
    assert len(run.history["train"]) == len(run.history["validate"]) == 2


def test_resume_refuses_changed_model(beat_cache, tmp_path):
    from jaxmir.config import ConfigError

    cfg = tiny("train.epochs=1")
    train(TASK, cfg, tmp_path / "r", beat_cache, devices=ONE, progress=False)
    with pytest.raises(ConfigError, match="model.hidden"):
        train(
            TASK,
            apply_overrides(cfg, ["model.hidden=8"]),
            tmp_path / "r",
            beat_cache,
            devices=ONE,
            progress=False,
        )
    # schedule keys may change: one more epoch
    more = train(
        TASK,
        apply_overrides(cfg, ["train.epochs=2"]),
        tmp_path / "r",
        beat_cache,
        devices=ONE,
        progress=False,
    )
    assert int(more.state.epoch) == 2


def test_early_stop_is_carried_out_and_not_resumed(beat_cache, tmp_path):
    # nothing is an improvement after the first epoch (from inf), so it stops after the second
    cfg = tiny("train.epochs=5", "train.early_stop_patience=1", "train.early_stop_min_delta=1e9")
    run = train(TASK, cfg, tmp_path / "es", beat_cache, devices=ONE, progress=False)
    assert run.status.startswith("stopped") and int(run.state.epoch) == 2
    again = train(TASK, cfg, tmp_path / "es", beat_cache, devices=ONE, progress=False)
    assert again.status == "stopped"
    # a resume with more patience trains on from the stop (it said "nothing to resume"); with
    # no more than the epochs it has waited, it would stop again: it stays stopped
    same = apply_overrides(cfg, ["train.early_stop_patience=1"])
    assert train(TASK, same, tmp_path / "es", beat_cache, devices=ONE, progress=False).status == (
        "stopped"
    )
    more = apply_overrides(cfg, ["train.early_stop_patience=null"])
    on = train(TASK, more, tmp_path / "es", beat_cache, devices=ONE, progress=False)
    assert on.status == "finished" and int(on.state.epoch) == 5


def test_nan_loss_stops_without_saving_the_nan_state(beat_cache, tmp_path):
    cfg_overrides = ("train.epochs=2", "train.log_every=1", "optim.learning_rate=1e38")
    cfg = tiny(*cfg_overrides)
    run = train(TASK, cfg, tmp_path / "nan", beat_cache, devices=ONE, progress=False)
    assert run.status.startswith("failed: loss is nan")
    steps = Checkpointer(tmp_path / "nan" / "checkpoints").manager.all_steps()
    assert int(run.state.step) not in steps
    assert not (tmp_path / "nan" / "decode.json").exists()  # nothing to calibrate: no checkpoint
    # the command exits 1, not 0 as a finished or early-stopped run: a launcher must not count
    # a diverged run as done
    from jaxmir.cli import main

    argv = ["train", "beat", "--preset", "tiny", "--workdir", str(tmp_path / "cli")]
    argv += ["--data", str(beat_cache), "--no-progress"]
    for setting in ("train.eval_pieces_each_epoch=false", *cfg_overrides):
        argv += ["--set", setting]
    assert main(argv) == 1
    # an epoch of fewer steps than the check's interval (4 steps, checked every 5): its mean
    # loss is checked at its end, and the NaN state is not saved
    cfg = tiny("train.epochs=2", "train.log_every=5", "optim.learning_rate=1e38")
    run = train(TASK, cfg, tmp_path / "epoch-end", beat_cache, devices=ONE, progress=False)
    assert run.status.startswith("failed: loss is nan")
    assert Checkpointer(tmp_path / "epoch-end" / "checkpoints").manager.all_steps() == []
