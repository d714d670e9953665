"""Dropout that draws 8 or 16 random bits per element instead of a 32-bit float.

flax's `nn.Dropout` draws one 32-bit uniform float per element (`jax.random.bernoulli`). On
XLA:CPU the threefry generator dominates: a mask of 1.5 M elements costs ~10 ms, a large part of
a small model's step. Here the mask comes from ``n * bits / 32`` 32-bit words reinterpreted as
8- or 16-bit integers (~4-5x fewer threefry calls), and an element is kept when its integer is
>= ``round(rate * 2**bits)``. 8 bits when ``rate * 256`` is a whole number (0.25, 0.5, ...: then
the keep probability is exactly ``1 - rate``), else 16 bits (keep probability within 2**-17 of
``1 - rate``; flax's float path is itself quantised to 2**-24). Kept values are scaled by
``1 / (1 - rate)`` as in flax. The masks differ from flax's draws; the distribution does not.

The 32-bit words are ``jax.random.bits(key, (n,), uint32)`` bit for bit, computed by
:func:`random_words`: JAX lowers threefry on CPU as a loop over its five groups of rounds (each
iteration a few passes over the whole array); written out as plain integer arithmetic, XLA fuses
all twenty rounds into one loop over the words (1.5 M words: 16 ms -> 3.5 ms on a 2-core CPU).
Whole training steps, in-process A/B: patch CNN 42.6 -> 38.0 ms, music paper 971 -> 928 ms.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KS_PARITY = 0x1BD11BDA


def _rotate_left(x: jax.Array, d: int) -> jax.Array:
    return (x << jnp.uint32(d)) | (x >> jnp.uint32(32 - d))


def threefry2x32(
    k0: jax.Array, k1: jax.Array, x0: jax.Array, x1: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), as JAX computes it, unrolled."""
    ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(_KS_PARITY))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ _rotate_left(x1, r)
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0, x1


def _threefry_key_data(key: jax.Array) -> jax.Array | None:
    """The two uint32 words of a threefry key (typed or raw), None for other generators or when
    JAX's bits would not come from the partitionable counter layout reproduced here."""
    if not jax.config.jax_threefry_partitionable:
        return None
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(key)) != "threefry2x32":
            return None
        return jax.random.key_data(key)
    if jax.config.jax_default_prng_impl != "threefry2x32" or key.shape != (2,):
        return None
    return key


def random_words(key: jax.Array, n: int) -> jax.Array:
    """``jax.random.bits(key, (n,), jnp.uint32)``, bit for bit, for threefry keys (other keys
    go through ``jax.random.bits``)."""
    data = _threefry_key_data(key)
    if data is None or n >= 1 << 32:
        return jax.random.bits(key, (n,), jnp.uint32)
    data = data.astype(jnp.uint32)

    def words(counter):
        bits0, bits1 = threefry2x32(data[0], data[1], jnp.zeros_like(counter), counter)
        return bits0 ^ bits1

    # Two halves through a loop: the words are materialised once instead of the hash being
    # fused into (and recomputed by) every consumer of the mask, forward and backward.
    half = -(-n // 2)
    counters = jax.lax.iota(jnp.uint32, 2 * half).reshape(2, half)
    return jax.lax.map(words, counters).reshape(-1)[:n]


def keep_bits(rate: float) -> int:
    """Random bits per element used for `rate` (8 when exact at 8 bits, else 16)."""
    return 8 if float(rate * 256).is_integer() else 16


def keep_mask(key: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
    """Boolean mask, True with probability ``1 - rate`` (see the module docstring)."""
    bits = keep_bits(rate)
    n = math.prod(shape)
    per_word = 32 // bits
    words = random_words(key, -(-n // per_word))
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
