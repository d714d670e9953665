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
from jaxmir.engine.state import TrainState, eval_variables

LossFn = Callable[..., tuple[jax.Array, tuple[dict, dict]]]


PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16}


def _cast_floats(tree, dtype):
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x,
        tree,
    )


def mixed_precision(apply_fn: Callable, precision: str) -> Callable:
    """`apply_fn` computing in `precision` (params and inputs cast down, outputs back to fp32);
    parameters, gradients and optimizer state stay fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return apply_fn
    dtype = PRECISIONS[precision]

    def apply(variables, *args, **kwargs):
        args = _cast_floats(args, dtype)
        variables = dict(variables)
        variables["params"] = _cast_floats(variables["params"], dtype)
        return _cast_floats(apply_fn(variables, *args, **kwargs), jnp.float32)

    return apply


def _grads(loss_fn, state: TrainState, apply_fn, batch, rng):
    def objective(params, batch_stats, batch):
        variables = (
            {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
        )
        return loss_fn(apply_fn, variables, batch, rng, True)

    (loss, (metrics, model_state)), grads = jax.value_and_grad(objective, has_aux=True)(
        state.params, state.batch_stats, batch
    )
    return loss, metrics, model_state.get("batch_stats", state.batch_stats), grads


MIN_ORDERED = 1 << 20  # entries: 4 MB in float32


def after_whole_backward(grads):
    """`grads` unchanged in value, but each now depends on one entry of every gradient.

    An input gradient (``dy @ W.T``) reads a parameter, but nothing that the parameter's own
    update needs depends on it, so XLA cannot prove the read happens before the donated
    parameter is overwritten and copies the parameter first: two 200 MB copies per beat-BLSTM
    step. Subtracting ``|sum(nan_to_num(0 * g[0]))|`` over all leaves -- exactly +0.0 whatever
    the gradients hold, and ``g - (+0.0)`` is ``g`` bit for bit, -0.0 and NaN included -- orders
    the update of every parameter of at least `MIN_ORDERED` entries after the whole backward
    pass (smaller copies cost less than the compile time the ordering adds); the scalar fuses into
    the optimizer's loops, so it costs no pass over the gradients."""

    def floating(g) -> bool:
        return jnp.issubdtype(g.dtype, jnp.floating)

    leaves = [g for g in jax.tree.leaves(grads) if floating(g) and g.size]
    if not any(g.size >= MIN_ORDERED for g in leaves):
        return grads
    zero = jnp.abs(sum(jnp.nan_to_num(0.0 * g.reshape(-1)[0].astype(jnp.float32)) for g in leaves))
    return jax.tree.map(
        lambda g: g - zero.astype(g.dtype) if floating(g) and g.size >= MIN_ORDERED else g, grads
    )


def train_step(
    loss_fn: LossFn,
    state: TrainState,
    batch: dict,
    *,
    precision: str = "fp32",
    grad_accum: int = 1,
    grad_norm: bool = False,
) -> tuple[TrainState, dict]:
    """One optimizer update. Dropout rng is folded from (state.rng, state.step): a resumed run
    draws the same masks as an uninterrupted one. With `grad_accum` k the batch is split into k
    micro-batches whose gradients are averaged (a scan: memory of one micro-batch). `grad_norm`
    adds the gradients' global norm to the metrics: one more full pass over the gradients
    (~15% of a beat-BLSTM step on CPU), so it is off unless asked for."""
    rng = jax.random.fold_in(state.rng, state.step)
    apply_fn = mixed_precision(state.apply_fn, precision)
    if grad_accum == 1:
        loss, metrics, batch_stats, grads = _grads(loss_fn, state, apply_fn, batch, rng)
    else:
        micro = jax.tree.map(
            lambda x: x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:]), batch
        )

        # Each micro-batch's mean is weighted by its share of the valid (unmasked) frames, so
        # the result equals the full batch's masked mean.
        if "mask" in batch:
            counts = jnp.sum(micro["mask"].reshape(grad_accum, -1), axis=1)
            weights = grad_accum * counts / jnp.maximum(jnp.sum(counts), 1.0)
        else:
            weights = jnp.ones((grad_accum,))

        def body(carry, xs):
            stats, acc = carry
            i, w, mb = xs
            st = state.replace(batch_stats=stats)
            loss, metrics, stats, grads = _grads(
                loss_fn, st, apply_fn, mb, jax.random.fold_in(rng, i)
            )
            step_sums = jax.tree.map(lambda v: v * w, (grads, {"loss": loss, **metrics}))
            acc = jax.tree.map(jnp.add, acc, step_sums)
            return (stats, acc), None

        shapes = jax.eval_shape(
            lambda: _grads(loss_fn, state, apply_fn, jax.tree.map(lambda x: x[0], micro), rng)
        )
        zeros = jax.tree.map(
            lambda s: jnp.zeros(s.shape, s.dtype), (shapes[3], {"loss": shapes[0], **shapes[1]})
        )
        (batch_stats, (grads, sums)), _ = jax.lax.scan(
            body, (state.batch_stats, zeros), (jnp.arange(grad_accum), weights, micro)
        )
        grads = jax.tree.map(lambda g: g / grad_accum, grads)
        sums = jax.tree.map(lambda m: m / grad_accum, sums)
        loss, metrics = sums.pop("loss"), sums
    updates, opt_state = state.tx.update(after_whole_backward(grads), state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, batch_stats=batch_stats
    )
    metrics = {"loss": loss, **metrics}
    if grad_norm:
        metrics["grad_norm"] = optax.tree.norm(grads)
    return new_state, jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), metrics)


def eval_step(loss_fn: LossFn, state: TrainState, batch: dict, precision: str = "fp32") -> dict:
    apply_fn = mixed_precision(state.apply_fn, precision)
    loss, (metrics, _) = loss_fn(apply_fn, eval_variables(state), batch, state.rng, False)
    return jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), {"loss": loss, **metrics})


def make_train_step(
    loss_fn: LossFn,
    mesh: Mesh,
    *,
    precision: str = "fp32",
    grad_accum: int = 1,
    grad_norm: bool = False,
) -> Callable[[TrainState, dict], tuple]:
    """`train_step` jitted over `mesh`: state replicated and donated, batch split on `data`."""
    mixed_precision(lambda *a, **k: None, precision)  # validate early
    if grad_accum < 1:
        raise ValueError(f"train.grad_accum must be >= 1, got {grad_accum}")
    rep = replicated(mesh)
    return jax.jit(
        lambda state, batch: train_step(
            loss_fn, state, batch, precision=precision, grad_accum=grad_accum, grad_norm=grad_norm
        ),
        in_shardings=(rep, batch_sharding(mesh)),
        out_shardings=(rep, rep),
        donate_argnums=0,
    )


def make_eval_step(
    loss_fn: LossFn, mesh: Mesh, *, precision: str = "fp32"
) -> Callable[[TrainState, dict], dict]:
    rep = replicated(mesh)
    return jax.jit(
        lambda state, batch: eval_step(loss_fn, state, batch, precision),
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
