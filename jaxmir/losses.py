"""Losses and training metrics shared by several tasks (pure jax; a task's own loss lives in it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def binary_accuracy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """Share of outputs on the right side of 0.5, over the frames where `mask` (batch, time) is
    1. `logits` and `targets` are (batch, time, ...)."""
    frame_mask = mask.reshape(*mask.shape, *([1] * (logits.ndim - mask.ndim)))
    correct = ((logits > 0) == (targets > 0.5)).astype(jnp.float32) * frame_mask
    per_frame = logits[0, 0].size
    return jnp.sum(correct) / jnp.maximum(jnp.sum(mask) * per_frame, 1.0)


def apply_model(apply_fn, variables, x: jax.Array, rng: jax.Array, train: bool):
    """(outputs, updated model state) of a model with BatchNorm and dropout: batch statistics
    are used and updated in training, the moving averages otherwise."""
    if not train:
        return apply_fn(variables, x, train=False), {}
    out, new_state = apply_fn(
        variables, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
    )
    return out, dict(new_state)
