"""The optimizer, built from `OptimConfig` with its learning rate held in the optimizer state.

`optax.inject_hyperparams` puts the LR in `opt_state.hyperparams`, so LR callbacks change it
between steps without re-jitting, and it is checkpointed with the rest of the state. An optional
exponential moving average of the parameters lives in the optimizer state too
(`with_param_ema`), so it is checkpointed and sharded like everything else.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxmir.config import ConfigError, OptimConfig


def _chain(name: str, learning_rate, weight_decay: float, clip_norm, clip_value):
    parts = []
    if clip_value is not None:
        parts.append(optax.clip(clip_value))
    if clip_norm is not None:
        parts.append(optax.clip_by_global_norm(clip_norm))
    if name == "adam":
        parts.append(optax.adam(learning_rate))
    elif name == "adamw":
        parts.append(optax.adamw(learning_rate, weight_decay=weight_decay))
    elif name == "sgd":
        parts.append(optax.sgd(learning_rate, momentum=0.9))
    else:
        raise ConfigError(f"optim.name: unknown optimizer {name!r} (adam, adamw, sgd)")
    return optax.chain(*parts)


class ParamEmaState(NamedTuple):
    inner: Any
    ema: Any  # the moving average of the parameters, same tree as the params


def with_param_ema(tx: optax.GradientTransformation, decay: float) -> optax.GradientTransformation:
    """`tx`, plus an EMA of the parameters after each update: ema = d * ema + (1 - d) * params.

    The average starts from the initial parameters (no bias correction needed)."""
    if not 0.0 <= decay < 1.0:
        raise ConfigError(f"optim.ema_decay must be in [0, 1), got {decay}")

    def init(params):
        return ParamEmaState(tx.init(params), jax.tree.map(jnp.array, params))

    def update(grads, state, params=None):
        updates, inner = tx.update(grads, state.inner, params)
        new_params = optax.apply_updates(params, updates)
        ema = jax.tree.map(
            lambda e, p: (decay * e + (1.0 - decay) * p).astype(e.dtype), state.ema, new_params
        )
        return updates, ParamEmaState(inner, ema)

    return optax.GradientTransformation(init, update)


def ema_params(opt_state: Any) -> Any | None:
    """The parameter EMA held in `opt_state`, or None when EMA is off."""
    return opt_state.ema if isinstance(opt_state, ParamEmaState) else None


def hyperparams_state(opt_state: Any) -> Any:
    """The `inject_hyperparams` state inside `opt_state` (possibly wrapped by the EMA)."""
    if isinstance(opt_state, ParamEmaState):
        return hyperparams_state(opt_state.inner)
    return opt_state


def replace_hyperparams_state(opt_state: Any, new: Any) -> Any:
    if isinstance(opt_state, ParamEmaState):
        return opt_state._replace(inner=replace_hyperparams_state(opt_state.inner, new))
    return new


def learning_rate_schedule(cfg: OptimConfig) -> Any:
    """The LR the optimizer starts from: a constant (callbacks may change it between epochs),
    or for `exponential_steps` an optax schedule of the update count (x `decay_rate` every
    `decay_steps` updates, staircase, floored at `min_lr`), as Keras' `ExponentialDecay`; for
    `warmup_cosine` a linear warm-up over `warmup_steps` to `learning_rate`, then a cosine
    decay to `min_lr` at update `decay_steps` (the run's total), as optax's schedule."""
    if cfg.lr_schedule not in ("exponential_steps", "warmup_cosine"):
        return cfg.learning_rate
    if cfg.decay_steps < 1:
        raise ConfigError(f"optim.decay_steps must be >= 1, got {cfg.decay_steps}")
    if cfg.lr_schedule == "warmup_cosine":
        if not 0 <= cfg.warmup_steps < cfg.decay_steps:
            raise ConfigError(
                f"optim.warmup_steps must be in [0, decay_steps={cfg.decay_steps}), "
                f"got {cfg.warmup_steps}"
            )
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=cfg.learning_rate,
            warmup_steps=cfg.warmup_steps,
            decay_steps=cfg.decay_steps,
            end_value=cfg.min_lr,
        )
    return optax.exponential_decay(
        cfg.learning_rate,
        transition_steps=cfg.decay_steps,
        decay_rate=cfg.decay_rate,
        staircase=True,
        end_value=cfg.min_lr or None,
    )


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    _chain(cfg.name, cfg.learning_rate, cfg.weight_decay, None, None)  # validate the name early

    def build(learning_rate):
        return _chain(
            cfg.name, learning_rate, cfg.weight_decay, cfg.grad_clip_norm, cfg.grad_clip_value
        )

    tx = optax.inject_hyperparams(build)(learning_rate=learning_rate_schedule(cfg))
    if cfg.ema_decay is not None:
        tx = with_param_ema(tx, cfg.ema_decay)
    return tx
