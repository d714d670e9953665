"""Dropout that draws 8 or 16 random bits per element instead of a 32-bit float.

flax's `nn.Dropout` draws one 32-bit uniform float per element (`jax.random.bernoulli`). On
XLA:CPU the threefry generator dominates: a mask of 1.5 M elements costs ~10 ms, a large part of
a small model's step. Here the mask comes from ``n * bits / 32`` 32-bit words reinterpreted as
8- or 16-bit integers (~4-5x fewer threefry calls), and an element is kept when its integer is
>= ``round(rate * 2**bits)``. 8 bits when ``rate * 256`` is a whole number (0.25, 0.5, ...: then
the keep probability is exactly ``1 - rate``), else 16 bits (keep probability within 2**-17 of
``1 - rate``; flax's float path is itself quantised to 2**-24). Kept values are scaled by
``1 / (1 - rate)`` as in flax. The masks differ from flax's draws; the distribution does not.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn


def keep_bits(rate: float) -> int:
    """Random bits per element used for `rate` (8 when exact at 8 bits, else 16)."""
    return 8 if float(rate * 256).is_integer() else 16


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """Boolean mask, True with probability ``1 - rate`` (see the module docstring)."""
    bits = keep_bits(rate)
    n = math.prod(shape)
    per_word = 32 // bits
    words = jax.random.bits(key, (-(-n // per_word),), jnp.uint32)
    small = jax.lax.bitcast_convert_type(words, jnp.uint8 if bits == 8 else jnp.uint16)
    threshold = round(rate * (1 << bits))
    return (small.reshape(-1)[:n] >= threshold).reshape(shape)


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout(rate, deterministic=...)`` (same rng collection, same scaling)."""

    rate: float
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.rate == 0.0 or deterministic:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep = keep_mask(self.make_rng(self.rng_collection), self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))
