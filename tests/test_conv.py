"""The matmul convolutions (im2col for few input channels, per-tap weight gradients otherwise,
transposed convs) equal XLA's native ones (outputs and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxmir.nn.conv import conv_fn, conv_general_dilated, resolve_conv_impl

DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize(
    "shape, k, stride, dilation, padding",
    [
        ((2, 16, 20, 3), 3, 1, 1, "SAME"),
        ((2, 16, 20, 3), 3, 2, 1, "SAME"),
        ((2, 17, 21, 4), 7, 1, 1, "SAME"),
        ((2, 16, 16, 4), 3, 1, 2, "SAME"),
        ((2, 16, 16, 3), 1, 2, 1, "SAME"),
        ((2, 15, 13, 2), 3, 1, 1, "VALID"),
        ((2, 15, 13, 2), 3, 2, 1, ((2, 1), (0, 3))),
        # more than IM2COL_MAX_CHANNELS input channels: the per-tap weight gradient
        ((2, 16, 20, 6), 3, 1, 1, "SAME"),
        ((2, 16, 20, 6), 3, 2, 1, "SAME"),
        ((2, 16, 16, 8), 3, 1, 2, "SAME"),
        ((2, 16, 16, 6), 1, 2, 1, "SAME"),
        ((2, 15, 13, 6), 3, 2, 1, ((2, 1), (0, 3))),
    ],
)
def test_matmul_conv_equals_native(shape, k, stride, dilation, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, shape[-1], 5)), jnp.float32)

    def loss(conv):
        def f(x, w):
            y = conv(
                x,
                w,
                (stride, stride),
                padding,
                rhs_dilation=(dilation, dilation),
                dimension_numbers=DN,
            )
            return jnp.sum(jnp.sin(y)), y

        return f

    (_, y_ref), g_ref = jax.value_and_grad(loss(lax.conv_general_dilated), (0, 1), has_aux=True)(
        x, w
    )
    (_, y), g = jax.value_and_grad(loss(conv_general_dilated), (0, 1), has_aux=True)(x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(g, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


def test_conv_impl_choice():
    assert resolve_conv_impl("native") == "native"
    assert resolve_conv_impl("auto") == ("matmul" if jax.default_backend() == "cpu" else "native")
    assert conv_fn("native") is lax.conv_general_dilated
    with pytest.raises(ValueError, match="conv_impl"):
        resolve_conv_impl("fast")


def _assert_block_same_with_matmul_conv(block_cls, x):
    """The conv implementation changes speed only: same parameters and gradients."""
    grads = []
    for impl in ("native", "matmul"):
        block = block_cls(8, strides=2, dropout=0.0, conv_impl=impl)
        v = block.init(jax.random.PRNGKey(0), x, train=False)

        def loss(p, block=block, v=v):
            out, _ = block.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
            return jnp.mean(jnp.sin(out))

        grads.append(jax.grad(loss)(v["params"]))
    assert jax.tree.structure(grads[0]) == jax.tree.structure(grads[1])
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * float(jnp.abs(a).max() + 1e-12))


def test_music_blocks_same_with_matmul_conv():
    from jaxmir.tasks.music.model import ConvBlock

    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 24, 4)), jnp.float32)
    _assert_block_same_with_matmul_conv(ConvBlock, x)


@pytest.mark.parametrize(
    "shape, k, stride, dilation, padding",
    [
        ((2, 8, 11, 6), 3, 2, 1, "SAME"),
        ((2, 8, 11, 6), 1, 2, 1, "SAME"),
        ((1, 6, 6, 3), 3, 1, 2, "SAME"),
        ((1, 5, 7, 4), 2, 2, 1, "VALID"),
        ((1, 5, 5, 2), 4, 3, 1, "SAME"),
    ],
)
@pytest.mark.parametrize("impl", ["native", "matmul"])
def test_conv_transpose_equals_flax(shape, k, stride, dilation, padding, impl):
    """jaxmir's ConvTranspose = flax's ConvTranspose(transpose_kernel=True): same parameter tree,
    outputs and gradients, whichever weight-gradient kernel runs."""
    import flax.linen as nn

    from jaxmir.nn.conv import ConvTranspose

    kw = dict(strides=(stride, stride), padding=padding, kernel_dilation=(dilation, dilation))
    ours = ConvTranspose(5, (k, k), impl=impl, **kw)
    ref = nn.ConvTranspose(5, (k, k), transpose_kernel=True, **kw)
    x = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)
    v_ref = ref.init(jax.random.PRNGKey(0), x)
    v = ours.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, v_ref)
    v = jax.tree.map(lambda a: a + 0.1, v_ref)  # non-zero bias too

    def loss(module):
        return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))

    np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=1e-5, atol=1e-5)
    g = jax.grad(loss(ours), (0, 1))(v, x)
    g_ref = jax.grad(loss(ref), (0, 1))(v, x)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


def test_music_decoder_block_same_with_matmul_conv():
    from jaxmir.tasks.music.model import TransposeConvBlock

    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 12, 4)), jnp.float32)
    _assert_block_same_with_matmul_conv(TransposeConvBlock, x)
