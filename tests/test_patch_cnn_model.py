"""omnizart's patch CNN: parameter count, shapes, dropout, and the matmul-conv variant."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmir.tasks.patch_cnn.model import N_PARAMS, PatchCNN, abstract_params, count_params


def test_param_count_and_layout():
    params = abstract_params(PatchCNN())
    assert count_params(params) == N_PARAMS == 175_778
    shapes = jax.tree.map(lambda a: a.shape, params)
    assert shapes["Conv_0"]["kernel"] == (5, 5, 1, 8)
    assert shapes["Conv_1"]["kernel"] == (3, 3, 8, 16)
    assert shapes["Dense_0"]["kernel"] == (9 * 9 * 16, 128)
    assert shapes["Dense_2"]["kernel"] == (64, 2)


def test_forward_and_dropout():
    model = PatchCNN()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 25, 25, 1)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    y = model.apply(variables, x)
    assert y.shape == (3, 2) and y.dtype == jnp.float32
    np.testing.assert_array_equal(y, model.apply(variables, x, train=False))
    y_train = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    assert y_train.shape == (3, 2) and not np.allclose(y_train, y)
    with pytest.raises(ValueError, match="expected input"):
        model.apply(variables, jnp.zeros((3, 24, 24, 1)))


def test_matmul_conv_matches_native():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 25, 25, 1)), jnp.float32)
    native, matmul = PatchCNN(conv_impl="native"), PatchCNN(conv_impl="matmul")
    variables = native.init(jax.random.key(0), x)

    def loss(model):
        return lambda v: jnp.sum(jnp.sin(model.apply(v, x)))

    g_ref = jax.grad(loss(native))(variables)
    g = jax.grad(loss(matmul))(variables)
    np.testing.assert_allclose(matmul.apply(variables, x), native.apply(variables, x), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max()))


def test_max_pool_2x2_equals_flax_max_pool_in_values_and_training_gradients():
    """The reshape max-pool: same values as flax's; in the model (ReLU and dropout in front of
    it, so ties are zeros whose own gradient is zero) the same parameter gradients."""
    import flax.linen as nn

    from jaxmir.tasks.patch_cnn import model as m

    h = jnp.asarray(np.random.default_rng(2).standard_normal((3, 19, 19, 4)), jnp.float32)
    np.testing.assert_array_equal(
        m.max_pool_2x2(h), nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
    )
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 25, 25, 1)), jnp.float32)
    model = PatchCNN()
    variables = model.init(jax.random.key(0), x)

    def loss(v):
        out = model.apply(v, x, train=True, rngs={"dropout": jax.random.key(5)})
        return jnp.sum(jnp.sin(out))

    g = jax.grad(loss)(variables)
    pool = m.max_pool_2x2
    m.max_pool_2x2 = lambda y: nn.max_pool(y, (2, 2), strides=(2, 2), padding="VALID")
    try:
        g_ref = jax.grad(loss)(variables)
    finally:
        m.max_pool_2x2 = pool
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(jnp.abs(b).max()))
