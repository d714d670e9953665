"""Each callback's decisions, called as plain functions: no disk, no jit."""

import math

import jax
import jax.numpy as jnp
import pytest

from jaxmir.config import OptimConfig
from jaxmir.engine import callbacks as cb
from jaxmir.engine.actions import Log, Save, Stop
from jaxmir.engine.optim import make_optimizer
from jaxmir.engine.state import TrainState, learning_rate


def make_state(callbacks, lr=1e-3):
    return TrainState.create(
        apply_fn=None,
        variables={"params": {"w": jnp.zeros(2)}},
        tx=make_optimizer(OptimConfig(learning_rate=lr)),
        rng=jax.random.PRNGKey(0),
        callbacks=cb.init_callback_states(callbacks),
    )


def feed(callback, values, key="val_loss", state=None):
    """Run one callback over epochs with `key` taking `values`; return actions per epoch."""
    state = state or make_state([callback])
    out = []
    for epoch, v in enumerate(values, 1):
        state, actions = callback(state, {key: v, "epoch": epoch, "step": 10 * epoch})
        out.append(actions)
    return state, out


def test_monitor_mode_auto():
    assert cb.monitor_mode("val_loss") == "min"
    names = ("val_acc", "val_accuracy", "note_f1", "val_beat_f_measure", "precision", "recall")
    for name in (*names, "val_chord_majmin", "chord_root", "val_drum_f1"):
        assert cb.monitor_mode(name) == "max"
    assert cb.monitor_mode("val_acc", "min") == "min"


def test_early_stopping_patience_min_mode():
    es = cb.EarlyStopping("val_loss", patience=2)
    state, acts = feed(es, [1.0, 0.8, 0.9, 0.85, 0.7])
    stops = [any(isinstance(a, Stop) for a in a_) for a_ in acts]
    # 0.8 improves; 0.9 and 0.85 do not -> stop after the second non-improvement
    assert stops == [False, False, False, True, False]


def test_early_stopping_max_mode_and_min_delta():
    es = cb.EarlyStopping("val_beat_f_measure", patience=1, min_delta=0.05)
    _, acts = feed(es, [0.5, 0.53], key="val_beat_f_measure")
    assert isinstance(acts[1][0], Stop)  # +0.03 is below min_delta
    _, acts = feed(es, [0.5, 0.6], key="val_beat_f_measure")
    assert acts[1] == ()


def test_early_stopping_state_lives_in_train_state():
    es = cb.EarlyStopping("val_loss", patience=3)
    state, _ = feed(es, [1.0, 2.0])
    assert float(state.callbacks["early_stopping"]["best"]) == 1.0
    assert int(state.callbacks["early_stopping"]["wait"]) == 1


def test_monitor_missing_is_an_error_naming_it():
    es = cb.EarlyStopping("val_acc", patience=3)
    with pytest.raises(ValueError, match="train.monitor: metric 'val_acc' is not logged"):
        feed(es, [1.0], key="val_accuracy")


def test_model_checkpoint_saves_every_epoch_and_tracks_best():
    mc = cb.ModelCheckpoint("val_loss")
    state, acts = feed(mc, [0.9, 0.5, 0.7, 0.3])
    saves = [next(a for a in a_ if isinstance(a, Save)) for a_ in acts]
    assert [s.metrics["val_loss"] for s in saves] == [0.9, 0.5, 0.7, 0.3]
    improved = [any(isinstance(a, Log) for a in a_) for a_ in acts]
    assert improved == [True, True, False, True]
    assert float(state.callbacks["model_checkpoint"]["best"]) == pytest.approx(0.3)


def test_step_decay_like_omnizart_music():
    sd = cb.StepDecay(initial=1e-3, factor=0.25, every=3, min_lr=5e-8)
    state = make_state([sd])
    lrs = []
    for epoch in range(1, 8):
        state, _ = sd(state, {"epoch": epoch})
        lrs.append(learning_rate(state))
    expected = [1e-3, 1e-3, 2.5e-4, 2.5e-4, 2.5e-4, 6.25e-5, 6.25e-5]
    assert lrs == pytest.approx(expected, rel=1e-5)


def test_step_decay_floor():
    sd = cb.StepDecay(initial=1e-3, factor=0.1, every=1, min_lr=1e-5)
    state = make_state([sd])
    for epoch in range(1, 6):
        state, _ = sd(state, {"epoch": epoch})
    assert learning_rate(state) == pytest.approx(1e-5, rel=1e-5)


def test_exponential_decay():
    ed = cb.ExponentialDecay(initial=1e-4, rate=0.96)
    state = make_state([ed], lr=1e-4)
    state, acts = ed(state, {"epoch": 2})
    assert learning_rate(state) == pytest.approx(1e-4 * 0.96**2, rel=1e-5)
    assert isinstance(acts[0], Log)


def test_reduce_lr_on_plateau():
    rp = cb.ReduceLROnPlateau("val_loss", factor=0.5, patience=2, min_lr=2e-4)
    state = make_state([rp])
    lrs = []
    for v in [1.0, 1.1, 1.2, 1.3, 1.4, 0.5, 0.6, 0.7, 0.8, 0.9]:
        state, _ = rp(state, {"val_loss": v, "epoch": 1})
        lrs.append(learning_rate(state))
    assert lrs == pytest.approx(
        [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 2.5e-4, 2e-4, 2e-4, 2e-4], rel=1e-5
    )


def test_terminate_on_nan():
    tn = cb.TerminateOnNaN(every_steps=5)
    state = make_state([tn])
    _, acts = tn(state, {"loss": 0.3, "step": 5})
    assert acts == ()
    for bad in (math.nan, math.inf):
        _, acts = tn(state, {"loss": bad, "step": 10})
        assert isinstance(acts[0], Stop)


def test_run_callbacks_respects_when_each_runs():
    tn = cb.TerminateOnNaN(every_steps=5)
    es = cb.EarlyStopping("val_loss", patience=1)
    state = make_state([tn, es])
    logs = {"loss": math.nan, "val_loss": 1.0, "step": 5, "epoch": 1}
    _, acts = cb.run_callbacks([tn, es], state, logs, at_step=5)
    assert [type(a) for a in acts] == [Stop]  # only the step callback ran
    _, acts = cb.run_callbacks([tn, es], state, logs, at_step=3)
    assert acts == ()
    # epoch end: EarlyStopping, and the NaN check on the epoch's mean (a NaN after its last
    # step check must not be saved as the epoch's checkpoint)
    _, acts = cb.run_callbacks([tn, es], state, logs)
    assert [(type(a), a.failed) for a in acts] == [(Stop, True)]
    assert int(_.callbacks["early_stopping"]["wait"]) == 0
    _, acts = cb.run_callbacks([tn, es], state, {**logs, "loss": 1.0})
    assert acts == ()
    # after a failed stop no callback runs: the checkpoint callback said "val_loss improved"
    # of a state never saved
    mc = cb.ModelCheckpoint("val_loss")
    _, acts = cb.run_callbacks([tn, mc], make_state([tn, mc]), logs)
    assert [(type(a), a.failed) for a in acts] == [(Stop, True)]
