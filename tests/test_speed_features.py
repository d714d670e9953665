"""Engine speed features, each off by default: bf16 mixed precision, gradient accumulation,
parameter EMA (in the optimizer state, checkpointed, used for evaluation)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmir.config import OptimConfig, apply_overrides
from jaxmir.data.cache import FeatureCache
from jaxmir.data.pipeline import batch_iterator
from jaxmir.engine import train
from jaxmir.engine.optim import ema_params, make_optimizer
from jaxmir.engine.run import init_state, make_callbacks
from jaxmir.engine.sharding import make_mesh, put_batch
from jaxmir.engine.state import TrainState, eval_variables, learning_rate, with_learning_rate
from jaxmir.engine.step import make_train_step
from jaxmir.tasks.beat.task import TASK

# Adam divides each gradient by its own running RMS, so where a gradient is near zero, a float
# summation order (8 devices or 4 micro-batches against one batch) moves the parameter by a
# visible part of a step: 1.2e-5 after 3 steps at lr 1e-3 on one CPU, 1e-5 on another. A tenth
# of one step bounds it; the losses are compared tightly.
ADAM_ORDER_ATOL = 1e-4

ONE = jax.devices()[:1]


def run_steps(cfg, batches, mesh, **step_kw):
    state = init_state(TASK, cfg, mesh, make_callbacks(cfg))
    step = make_train_step(TASK.bind_loss(cfg), mesh, **step_kw)
    losses = []
    for b in batches:
        state, m = step(state, put_batch(b, mesh))
        losses.append(float(m["loss"]))
    return state, losses


@pytest.fixture(scope="module")
def setup(beat_cache):
    cfg = apply_overrides(TASK.preset("tiny"), ["train.eval_pieces_each_epoch=false"])
    it = batch_iterator(TASK.dataset(cfg, FeatureCache(beat_cache), "train", True), 8, 1)
    return cfg, [next(it) for _ in range(3)], make_mesh(ONE)


def test_grad_accumulation_equals_one_big_step(setup):
    cfg, batches, mesh = setup
    big, big_losses = run_steps(cfg, batches, mesh)
    acc, acc_losses = run_steps(cfg, batches, mesh, grad_accum=4)
    np.testing.assert_allclose(acc_losses, big_losses, rtol=1e-5)
    # Adam divides each gradient by its own running RMS, so float-order differences in
    # near-zero gradients reach the parameters amplified (`ADAM_ORDER_ATOL`).
    for a, b in zip(jax.tree.leaves(big.params), jax.tree.leaves(acc.params), strict=True):
        np.testing.assert_allclose(a, b, atol=ADAM_ORDER_ATOL, rtol=1e-4)


def test_bf16_mixed_precision_keeps_fp32_state_and_tracks_fp32(setup):
    cfg, batches, mesh = setup
    ref, ref_losses = run_steps(cfg, batches, mesh)
    mp, mp_losses = run_steps(cfg, batches, mesh, precision="bf16")
    for leaf in jax.tree.leaves((mp.params, mp.opt_state)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32
    np.testing.assert_allclose(mp_losses, ref_losses, rtol=2e-2)
    assert not np.array_equal(
        np.asarray(jax.tree.leaves(ref.params)[0]), np.asarray(jax.tree.leaves(mp.params)[0])
    )  # it really ran in bf16


def test_unknown_precision_is_refused(setup):
    cfg, _, mesh = setup
    with pytest.raises(ValueError, match="precision"):
        make_train_step(TASK.bind_loss(cfg), mesh, precision="fp8")


def test_param_ema_math_and_lr_control():
    tx = make_optimizer(OptimConfig(learning_rate=0.1, name="sgd", ema_decay=0.5))
    params = {"w": jnp.ones(2)}
    state = TrainState.create(
        apply_fn=None, variables={"params": params}, tx=tx, rng=jax.random.PRNGKey(0)
    )
    grads = {"w": jnp.ones(2)}
    updates, opt_state = tx.update(grads, state.opt_state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(ema_params(opt_state)["w"], 0.5 * 1.0 + 0.5 * new["w"])
    # the LR callbacks still find the learning rate inside the EMA wrapper
    state = with_learning_rate(state, 0.01)
    assert learning_rate(state) == pytest.approx(0.01)
    assert eval_variables(state.replace(opt_state=opt_state))["params"] is ema_params(opt_state)


def test_ema_is_checkpointed_and_used_by_eval(beat_cache, tmp_path):
    cfg = apply_overrides(TASK.preset("tiny"), ["optim.ema_decay=0.9", "train.epochs=1"])
    run = train(TASK, cfg, tmp_path / "ema", beat_cache, devices=ONE, progress=False)
    ema = ema_params(run.state.opt_state)
    assert ema is not None
    assert not np.array_equal(
        np.asarray(jax.tree.leaves(ema)[0]), np.asarray(jax.tree.leaves(run.state.params)[0])
    )
    from jaxmir.engine.checkpoint import Checkpointer

    ck = Checkpointer(tmp_path / "ema" / "checkpoints")
    fresh = init_state(TASK, cfg, make_mesh(ONE), make_callbacks(cfg))
    restored, _ = ck.restore(ck.latest_step(), fresh)
    ck.close()
    for a, b in zip(
        jax.tree.leaves(ema), jax.tree.leaves(ema_params(restored.opt_state)), strict=True
    ):
        assert np.array_equal(a, b)


def test_grad_norm_metric_is_opt_in(setup):
    cfg, batches, mesh = setup
    state = init_state(TASK, cfg, mesh, make_callbacks(cfg))
    grads = jax.grad(
        lambda p: TASK.bind_loss(cfg)(
            state.apply_fn,
            {"params": p},
            jax.tree.map(jnp.asarray, batches[0]),
            jax.random.fold_in(state.rng, state.step),
            True,
        )[0]
    )(state.params)
    _, m = make_train_step(TASK.bind_loss(cfg), mesh, grad_norm=True)(
        state, put_batch(batches[0], mesh)
    )
    np.testing.assert_allclose(float(m["grad_norm"]), float(optax.tree.norm(grads)), rtol=1e-4)
    state = init_state(TASK, cfg, mesh, make_callbacks(cfg))
    _, m = make_train_step(TASK.bind_loss(cfg), mesh)(state, put_batch(batches[0], mesh))
    assert "grad_norm" not in m
