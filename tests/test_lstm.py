"""The fused bidirectional LSTM (jaxmir.nn.lstm) against autodiff and Flax's RNN (CPU, tiny)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxmir.nn.lstm import gate_activations, recurrence
from jaxmir.tasks.beat.model import BiLSTM


def _rel_err(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-12))


def test_gate_activations_are_sigmoid_and_tanh():
    z = jnp.linspace(-12.0, 12.0, 4 * 9).reshape(1, 36)
    i, f, g, o = jnp.split(gate_activations(z), 4, axis=-1)
    zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
    for got, want in (
        (i, nn.sigmoid(zi)),
        (f, nn.sigmoid(zf)),
        (g, jnp.tanh(zg)),
        (o, nn.sigmoid(zo)),
    ):
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("unroll", [1, 3])
def test_recurrence_gradient_equals_autodiff_of_the_scan(unroll):
    rng = np.random.default_rng(0)
    t, d, b, h = 7, 2, 3, 4
    z_in = jnp.asarray(rng.normal(size=(t, d, b, 4 * h)), jnp.float32)
    kernels_h = jnp.asarray(rng.normal(size=(d, h, 4 * h)) * 0.5, jnp.float32)
    weights = jnp.asarray(rng.normal(size=(t, d, b, h)), jnp.float32)

    def loss(fn):
        return lambda z, k: jnp.sum(jnp.sin(fn(z, k, unroll)) * weights)

    autodiff = jax.grad(loss(recurrence.fun), argnums=(0, 1))(z_in, kernels_h)
    custom = jax.grad(loss(recurrence), argnums=(0, 1))(z_in, kernels_h)
    np.testing.assert_allclose(
        recurrence(z_in, kernels_h, unroll), recurrence.fun(z_in, kernels_h, unroll)
    )
    for got, want in zip(custom, autodiff, strict=True):
        assert _rel_err(got, want) < 1e-5


def test_fused_bilstm_equals_flax_rnn_in_values_and_gradients():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 9, 5)), jnp.float32)
    fused, flax_rnn = BiLSTM(4, impl="fused"), BiLSTM(4, impl="flax")
    params = fused.init(jax.random.key(0), x)
    reference = flax_rnn.init(jax.random.key(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(reference)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference), strict=True):
        np.testing.assert_array_equal(a, b)  # same names, shapes, initialisers and values

    target = jnp.asarray(rng.normal(size=(3, 9, 8)), jnp.float32)

    def loss(model):
        return lambda p, x: jnp.sum((model.apply(p, x) - target) ** 2)

    np.testing.assert_allclose(fused.apply(params, x), flax_rnn.apply(params, x), atol=1e-6)
    got = jax.grad(loss(fused), argnums=(0, 1))(params, x)
    want = jax.grad(loss(flax_rnn), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert _rel_err(a, b) < 1e-5


def test_fused_bilstm_keeps_bfloat16():
    x = jnp.ones((2, 5, 3), jnp.bfloat16)
    model = BiLSTM(4)
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), model.init(jax.random.key(0), x))
    y, grads = jax.value_and_grad(lambda p: jnp.sum(model.apply(p, x).astype(jnp.float32)))(params)
    assert model.apply(params, x).dtype == jnp.bfloat16
    assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(grads))
    assert np.isfinite(float(y))


def test_unknown_impl_is_rejected():
    with pytest.raises(ValueError, match="unknown LSTM impl"):
        BiLSTM(4, impl="cudnn").init(jax.random.key(0), jnp.ones((1, 2, 3)))
