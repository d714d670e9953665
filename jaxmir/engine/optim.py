"""The optimizer, built from `OptimConfig` with its learning rate held in the optimizer state.

`optax.inject_hyperparams` puts the LR in `opt_state.hyperparams`, so LR callbacks change it
between steps without re-jitting, and it is checkpointed with the rest of the state.
"""

from __future__ import annotations

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


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    _chain(cfg.name, cfg.learning_rate, cfg.weight_decay, None, None)  # validate the name early

    def build(learning_rate):
        return _chain(
            cfg.name, learning_rate, cfg.weight_decay, cfg.grad_clip_norm, cfg.grad_clip_value
        )

    return optax.inject_hyperparams(build)(learning_rate=cfg.learning_rate)
