"""ShakeDrop (Yamada et al. 2018) as omnizart's vocal PyramidNet uses it.

In training a residual branch ``x`` is scaled by one random factor forwards and another
backwards, sharing a Bernoulli gate ``b`` (1 with probability ``p_keep``):

    forward   y  = x * (b + alpha - b * alpha),   alpha ~ U[-1, 1]
    backward  dx = g * (b + beta  - b * beta),    beta  ~ U[0, 1]

so a kept branch (b = 1) passes unchanged both ways and a dropped one is shaken by ``alpha``
forwards and ``beta`` backwards. :func:`shake_drop` is that map for given ``b, alpha, beta`` (a
``jax.custom_vjp``); :func:`shake_drop_draw` draws them from an explicit key; :class:`ShakeDrop`
draws them from the Flax rng stream ``'shakedrop'``. In inference the branch is scaled by the
expected forward factor, ``p + E[alpha] - p E[alpha]`` (``= p_keep`` for alpha ~ U[-1, 1]), as
omnizart's ``ShakeDrop.call(is_training=False)`` (``models/pyramid_net.py`` L43-44).

What is drawn per what (omnizart ``models/pyramid_net.py`` L29-41): ``alpha`` and ``beta`` are
drawn once per example (shape (batch, 1, 1, 1), broadcast over H, W, C). The gate is drawn
**per element** of the input (``floor(p + U[0, 1))`` over the full input shape), unlike the
ShakeDrop paper and the TensorFlow research code omnizart cites, which draw one gate per example.
``gate="element"`` (the default) follows omnizart; ``gate="example"`` follows the paper.

All three come from one :func:`jaxmir.nn.dropout.random_words` call (``jax.random.bits`` bit for
bit): the gate as :func:`jaxmir.nn.dropout.keep_mask` builds it (8 or 16 bits per element: the
same Bernoulli law within 2**-17), alpha and beta as ``jax.random.uniform`` builds floats from
bits. On XLA:CPU each new shape of ``jax.random.bits`` costs seconds to compile (~3 s on a
loaded 2-core machine, against ~0.2 s here), and a model has one ShakeDrop shape per block.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxmir.nn.dropout import keep_bits, random_words

GATES = ("element", "example")


@jax.custom_vjp
def shake_drop(x: jax.Array, gate: jax.Array, alpha: jax.Array, beta: jax.Array) -> jax.Array:
    """``x * (gate + alpha - gate*alpha)`` forwards; the gradient w.r.t. ``x`` is
    ``g * (gate + beta - gate*beta)``. ``gate``, ``alpha``, ``beta`` broadcast against ``x``
    and get zero gradients (they are random draws, not parameters)."""
    return x * (gate + alpha - gate * alpha).astype(x.dtype)


def _fwd(x, gate, alpha, beta):
    backward = (gate + beta - gate * beta).astype(x.dtype)
    return shake_drop(x, gate, alpha, beta), backward


def _bwd(backward, g):
    return (g * backward).astype(g.dtype), None, None, None  # None: a zero cotangent


shake_drop.defvjp(_fwd, _bwd)


def _unit_floats(words: jax.Array) -> jax.Array:
    """U[0, 1) floats from 32-bit words, as ``jax.random.uniform`` (23 mantissa bits)."""
    one = jnp.uint32(0x3F800000)  # the bits of 1.0f: (bits >> 9) | one is a float in [1, 2)
    return jax.lax.bitcast_convert_type((words >> jnp.uint32(9)) | one, jnp.float32) - 1.0


def shake_drop_draw(
    key: jax.Array,
    shape: tuple[int, ...],
    p_keep: float,
    gate: str = "element",
    alpha_range: tuple[float, float] = (-1.0, 1.0),
    beta_range: tuple[float, float] = (0.0, 1.0),
    dtype=jnp.float32,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(gate, alpha, beta)`` for an input of ``shape`` (batch first): ``gate`` 0/1 floats of
    ``shape`` (``gate="element"``) or (batch, 1, ...) (``"example"``); ``alpha``, ``beta``
    uniform, one per example, (batch, 1, ...). The three come from disjoint words of one
    :func:`random_words` draw (one generator per call keeps compile time down)."""
    if gate not in GATES:
        raise ValueError(f"gate must be one of {', '.join(GATES)}, not {gate!r}")
    if not 0.0 <= p_keep <= 1.0:
        raise ValueError(f"p_keep must be in [0, 1], not {p_keep}")
    batch = shape[0]
    per_example = (batch,) + (1,) * (len(shape) - 1)
    gate_shape = tuple(shape) if gate == "element" else per_example
    n_gate = math.prod(gate_shape)
    rate = 1.0 - p_keep
    bits = keep_bits(rate)
    n_gate_words = -(-n_gate // (32 // bits))
    words = random_words(key, n_gate_words + 2 * batch)
    small = jax.lax.bitcast_convert_type(
        words[:n_gate_words], jnp.uint8 if bits == 8 else jnp.uint16
    )
    b = small.reshape(-1)[:n_gate] >= round(rate * (1 << bits))  # as dropout.keep_mask
    unit = _unit_floats(words[n_gate_words:]).reshape(2, *per_example)
    (lo_a, hi_a), (lo_b, hi_b) = alpha_range, beta_range
    alpha = jnp.maximum(lo_a, lo_a + (hi_a - lo_a) * unit[0])
    beta = jnp.maximum(lo_b, lo_b + (hi_b - lo_b) * unit[1])
    return b.reshape(gate_shape).astype(dtype), alpha.astype(dtype), beta.astype(dtype)


def shake_drop_expected(p_keep: float, alpha_range: tuple[float, float] = (-1.0, 1.0)) -> float:
    """The inference scale ``E[b + alpha - b alpha] = p + m - p m``, ``m`` the mean of alpha."""
    m = 0.5 * (alpha_range[0] + alpha_range[1])
    return p_keep + m - p_keep * m


class ShakeDrop(nn.Module):
    """ShakeDrop on a residual branch: random (rng stream ``rng_collection``) unless
    ``deterministic``, then scaled by :func:`shake_drop_expected`."""

    p_keep: float
    gate: str = "element"
    alpha_range: tuple[float, float] = (-1.0, 1.0)
    beta_range: tuple[float, float] = (0.0, 1.0)
    deterministic: bool | None = None
    rng_collection: str = "shakedrop"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if deterministic:
            return x * jnp.asarray(shake_drop_expected(self.p_keep, self.alpha_range), x.dtype)
        b, alpha, beta = shake_drop_draw(
            self.make_rng(self.rng_collection),
            x.shape,
            self.p_keep,
            self.gate,
            self.alpha_range,
            self.beta_range,
            x.dtype,
        )
        return shake_drop(x, b, alpha, beta)
