"""Pure training and evaluation steps, jitted with shardings here and only here.

A task's loss owns how its model is applied:
    loss_fn(apply_fn, variables, batch, rng, train) -> (loss, (metrics, new_model_state))
so VAT's extra forward passes or chord's L2 term live with the task, not the engine.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxmir.engine.sharding import batch_sharding, replicated
from jaxmir.engine.state import TrainState

LossFn = Callable[..., tuple[jax.Array, tuple[dict, dict]]]


def _variables(state: TrainState, params) -> dict:
    if state.batch_stats:
        return {"params": params, "batch_stats": state.batch_stats}
    return {"params": params}


def train_step(loss_fn: LossFn, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One optimizer update. Dropout rng is folded from (state.rng, state.step): a resumed run
    draws the same masks as an uninterrupted one."""
    rng = jax.random.fold_in(state.rng, state.step)

    def objective(params):
        return loss_fn(state.apply_fn, _variables(state, params), batch, rng, True)

    (loss, (metrics, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params
    )
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        batch_stats=model_state.get("batch_stats", state.batch_stats),
    )
    metrics = {"loss": loss, **metrics, "grad_norm": optax.tree.norm(grads)}
    return new_state, jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)


def eval_step(loss_fn: LossFn, state: TrainState, batch: dict) -> dict:
    loss, (metrics, _) = loss_fn(state.apply_fn, state.variables, batch, state.rng, False)
    return jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), {"loss": loss, **metrics})


def make_train_step(loss_fn: LossFn, mesh: Mesh) -> Callable[[TrainState, dict], tuple]:
    """`train_step` jitted over `mesh`: state replicated and donated, batch split on `data`."""
    rep = replicated(mesh)
    return jax.jit(
        lambda state, batch: train_step(loss_fn, state, batch),
        in_shardings=(rep, batch_sharding(mesh)),
        out_shardings=(rep, rep),
        donate_argnums=0,
    )


def make_eval_step(loss_fn: LossFn, mesh: Mesh) -> Callable[[TrainState, dict], dict]:
    rep = replicated(mesh)
    return jax.jit(
        lambda state, batch: eval_step(loss_fn, state, batch),
        in_shardings=(rep, batch_sharding(mesh)),
        out_shardings=rep,
    )


def make_predict_fn(apply_fn: Callable, mesh: Mesh) -> Callable:
    """`predict(variables, x)` -> model output in inference mode, jitted once per input shape."""
    rep = replicated(mesh)
    return jax.jit(
        lambda variables, x: apply_fn(variables, x, train=False),
        in_shardings=(rep, batch_sharding(mesh)),
        out_shardings=rep,
    )
