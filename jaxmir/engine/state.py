"""The one immutable pytree a training run threads through its steps and callbacks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxmir.engine.optim import ema_params, hyperparams_state, replace_hyperparams_state


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue: model, optimizer, rng and callback state.

    `step` counts optimizer updates since the start of the run, `epoch` the completed epochs.
    `callbacks` maps each callback's name to its own state (a dict of scalar arrays), so early
    stopping's patience or a plateau scheduler's best value are checkpointed with the model.
    """

    step: jax.Array
    epoch: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    callbacks: Any
    apply_fn: Callable = flax.struct.field(pytree_node=False)
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)

    @classmethod
    def create(
        cls,
        *,
        apply_fn: Callable,
        variables: dict,
        tx: optax.GradientTransformation,
        rng: jax.Array,
        callbacks: dict | None = None,
    ) -> TrainState:
        params = variables["params"]
        return cls(
            step=jnp.zeros((), jnp.int32),
            epoch=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            rng=rng,
            callbacks=callbacks or {},
            apply_fn=apply_fn,
            tx=tx,
        )

    @property
    def variables(self) -> dict:
        """The model variables, as `apply_fn` takes them."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}


def learning_rate(state: TrainState) -> float:
    """The current learning rate, read from the injected optimizer hyperparameters."""
    return float(hyperparams_state(state.opt_state).hyperparams["learning_rate"])


def with_learning_rate(state: TrainState, lr: float) -> TrainState:
    """A copy of `state` whose optimizer uses learning rate `lr` from the next step on."""
    inner = hyperparams_state(state.opt_state)
    hp = dict(inner.hyperparams)
    hp["learning_rate"] = jnp.asarray(lr, dtype=jnp.asarray(hp["learning_rate"]).dtype)
    new = replace_hyperparams_state(state.opt_state, inner._replace(hyperparams=hp))
    return state.replace(opt_state=new)


def eval_variables(state: TrainState) -> dict:
    """The variables to evaluate with: the parameter EMA when it is on, else the parameters."""
    ema = ema_params(state.opt_state)
    variables = dict(state.variables)
    if ema is not None:
        variables["params"] = ema
    return variables


def count_params(params: Any) -> int:
    """Number of scalars in a pytree (works on arrays and on `jax.eval_shape` results)."""
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))
