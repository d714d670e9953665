"""jaxmir's Dropout: flax's interface and scaling, the keep probability of 1 - rate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmir.nn.dropout import Dropout, keep_bits, keep_mask, random_words


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


@pytest.mark.parametrize(
    "key",
    [jax.random.key(0), jax.random.PRNGKey(42), jax.random.fold_in(jax.random.key(7), 3)],
    ids=["typed", "raw", "folded"],
)
@pytest.mark.parametrize("n", [1, 7, 12_345])
def test_random_words_equal_jax_random_bits(key, n):
    got = jax.jit(random_words, static_argnums=1)(key, n)
    want = jax.random.bits(key, (n,), jnp.uint32)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_random_words_take_the_unrolled_path_for_threefry_keys():
    for key in (jax.random.key(0), jax.random.PRNGKey(0)):
        jaxpr = str(jax.make_jaxpr(lambda k: random_words(k, 64))(key))
        assert "threefry2x32" not in jaxpr and "random_bits" not in jaxpr
    rbg = jax.random.key(0, impl="rbg")  # another generator: JAX's own bits
    np.testing.assert_array_equal(
        np.asarray(random_words(rbg, 9)), np.asarray(jax.random.bits(rbg, (9,), jnp.uint32))
    )
