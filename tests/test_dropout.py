"""jaxmir's Dropout: flax's interface and scaling, the keep probability of 1 - rate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmir.nn.dropout import Dropout, keep_bits, keep_mask


@pytest.mark.parametrize("rate", [0.25, 0.5, 0.4, 0.1])
def test_keep_fraction_is_one_minus_rate(rate):
    n = 400_000
    keep = np.asarray(keep_mask(jax.random.key(0), rate, (n,)))
    # binomial standard error ~ 8e-4 at n = 4e5; 5 sigma
    assert abs(keep.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
    assert keep_bits(rate) == (8 if rate in (0.25, 0.5) else 16)


def test_masks_are_independent_of_position_and_key():
    a = np.asarray(keep_mask(jax.random.key(0), 0.5, (1000, 64)))
    b = np.asarray(keep_mask(jax.random.key(1), 0.5, (1000, 64)))
    assert 0.45 < (a == b).mean() < 0.55  # different keys: unrelated masks
    # neighbouring elements (which share a 32-bit word) are not correlated
    assert abs(np.corrcoef(a[:, 0::2].ravel(), a[:, 1::2].ravel())[0, 1]) < 0.02


def test_dropout_scales_kept_values_and_is_identity_when_deterministic():
    x = jnp.ones((64, 33))
    d = Dropout(0.25)
    y = d.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1 / 0.75], rtol=1e-6)
    np.testing.assert_array_equal(d.apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(Dropout(0.0).apply({}, x, deterministic=False), x)
    np.testing.assert_array_equal(
        Dropout(1.0).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}), 0 * x
    )
    # the same rng gives the same mask (resume determinism)
    y2 = d.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    np.testing.assert_array_equal(y, y2)
