"""Tests for the music U-Nets and the local 2-D attention (CPU, tiny shapes).

Paper-size models are only shape-evaluated (``jax.eval_shape``), never materialised.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxmir.nn.local_attention import LocalMultiHeadAttention2D, local_attention_2d
from jaxmir.tasks.music.model import (
    SemanticSegmentation,
    SemanticSegmentationAttn,
    abstract_variables,
    build_model,
    param_counts,
)


def _keras_conv(k: int, cin: int, cout: int, bias: bool = True) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def _keras_aspp_count(ch_num: int, out_class: int) -> tuple[int, int]:
    """(trainable, BN statistics) of omnizart's ``semantic_segmentation`` with
    ``multi_grid_layer_n=1, multi_grid_n=5``, summed layer by layer from the Keras builder: a
    Conv2D has ``k*k*in*out + out`` weights, a BatchNorm ``2c`` trainable + ``2c`` statistics."""
    params = stats = 0

    def conv(k, cin, cout):
        nonlocal params
        params += _keras_conv(k, cin, cout)

    def bn(c):
        nonlocal params, stats
        params += 2 * c
        stats += 2 * c

    conv(7, ch_num, 128)  # stem
    c = 128
    for width, depth in ((128, 2), (128, 3), (128, 4), (256, 5)):  # conv_blocks
        for i in range(depth):
            bn(c), conv(3, c, width), bn(width), conv(3, width, width)
            if i == 0:
                conv(1, c, width)  # strided skip
            c = width
    bn(256), conv(1, 256, 512), bn(512)  # pyramid: input BN, 1x1 branch
    for _ in range(5):
        conv(3, 256, 512), bn(512)  # dilated branches 1, 2, 4, 8, 16
    conv(1, 6 * 512, 512), bn(512), conv(1, 512, 256)  # 3072 -> 512 -> BN -> 256
    c = 256
    for skip in (128, 128, 128, None):  # transpose_conv_blocks (+ merges)
        bn(c), conv(3, c, 128), bn(128), conv(3, 128, 128), conv(1, c, 128)
        c = 128
        if skip:
            bn(c), bn(skip), conv(1, c + skip, 128)
    bn(c), conv(1, c, out_class)  # head
    return params, stats


# ASPP derivation (the sum in _keras_aspp_count): stem 7*7*ch*128 + 128 (12,672 for 2 channels,
# 6,400 for 1) + encoder 8,354,432 + pyramid 7,744,768 (of which the 3072 -> 512 projection is
# 1,573,376) + decoder 1,513,088 + head 256 + 129 * out_class (3,223 for 23 classes, 514 for 2)
# = 17,628,183 for the music config (ch 2, 23 classes) and 17,619,202 for vocal_contour
# (ch 1, 2 classes). BatchNorm statistics: 21,248 for both.
# XLA:CPU spends most of a tiny forward pass' time optimising the compiled graph; skip that.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

ASPP_MUSIC = 17_628_183
ASPP_VOCAL = 17_619_202
ASPP_BN_STATS = 21_248


def test_attn_paper_param_count():
    model = build_model("attn", ch_num=2, out_class=23, timesteps=256, feature_num=352)
    assert param_counts(model) == (8_333_687, 10_880)
    x = jax.ShapeDtypeStruct((2, 256, 352, 2), jnp.float32)
    variables = abstract_variables(model, batch=2)
    assert jax.eval_shape(model.apply, variables, x).shape == (2, 256, 352, 23)


def test_aspp_param_counts():
    assert _keras_aspp_count(2, 23) == (ASPP_MUSIC, ASPP_BN_STATS)
    assert _keras_aspp_count(1, 2) == (ASPP_VOCAL, ASPP_BN_STATS)
    assert ASPP_MUSIC - ASPP_VOCAL == 49 * 128 + 21 * 129
    assert param_counts(build_model("aspp", ch_num=2, out_class=23)) == (ASPP_MUSIC, ASPP_BN_STATS)
    vocal = build_model(
        "aspp", feature_num=384, timesteps=128, ch_num=1, out_class=2, multi_grid_layer_n=1
    )
    assert param_counts(vocal) == (ASPP_VOCAL, ASPP_BN_STATS)
    x = jax.ShapeDtypeStruct((1, 128, 384, 1), jnp.float32)
    assert jax.eval_shape(vocal.apply, abstract_variables(vocal), x).shape == (1, 128, 384, 2)


def test_width_and_attention_param_counts():
    # base 16 halves every channel: each conv weight count shrinks ~4x.
    full, _ = param_counts(SemanticSegmentationAttn())
    half, half_stats = param_counts(SemanticSegmentationAttn(base=16))
    assert half_stats == 10_880 // 2
    assert 0.24 < half / full < 0.26
    attn = LocalMultiHeadAttention2D(out_channel=64, d_model=32, query_shape=(100, 32))
    x = jax.ShapeDtypeStruct((1, 16, 22, 256), jnp.float32)
    params = jax.eval_shape(attn.init, jax.random.key(0), x)["params"]
    assert sorted(params) == ["k_conv", "out_conv", "q_conv", "v_conv"]
    assert "bias" not in params["out_conv"]
    n = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
    assert n == 3 * _keras_conv(3, 256, 32) + _keras_conv(3, 32, 64, bias=False)


def test_build_model_rejects_unknown_and_bad_input():
    with pytest.raises(ValueError, match="unknown music model"):
        build_model("unet")
    model = SemanticSegmentationAttn(timesteps=32, feature_num=32, base=8)
    with pytest.raises(ValueError, match="expected input"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 48, 2)))


@pytest.mark.parametrize(
    "model",
    [
        SemanticSegmentationAttn(timesteps=32, feature_num=32, ch_num=2, out_class=3, base=8),
        SemanticSegmentation(timesteps=32, feature_num=32, ch_num=1, out_class=2, base=8),
    ],
    ids=["attn", "aspp"],
)
def test_tiny_forward_and_batchnorm_modes(model):
    x = jax.random.normal(jax.random.key(1), (2, *model.input_shape))
    # Another batch whose first example is the same: eval outputs for it must not change.
    x_alt = x.at[1].set(jax.random.normal(jax.random.key(4), model.input_shape))
    variables = _numpy_variables(model, x)
    assert set(variables) == {"params", "batch_stats"}

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(variables, x, rng):
        eval_out = model.apply(variables, x, train=False)  # no dropout rng needed
        train_out, updates = model.apply(
            variables, x, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
        )
        return eval_out, train_out, updates

    rng = jax.random.key(2, impl="unsafe_rbg")  # cheaper to compile than threefry on CPU
    eval_out, train_out, updates = run(variables, x, rng)
    assert eval_out.shape == train_out.shape == (2, 32, 32, model.out_class)
    assert np.isfinite(np.asarray(eval_out)).all() and np.isfinite(np.asarray(train_out)).all()
    assert not np.allclose(eval_out, train_out)
    # train=True updates the moving statistics; the first BatchNorm sees ReLU(stem(x)), and with
    # Keras' momentum its new moving mean is 0.99 * 0 + 0.01 * batch mean.
    stem = nn.Conv(model.base, (7, 7), padding="SAME").apply(
        {"params": variables["params"]["stem"]}, x
    )
    np.testing.assert_allclose(
        updates["batch_stats"]["en1_0"]["BatchNorm_0"]["mean"],
        0.01 * np.maximum(np.asarray(stem), 0).mean(axis=(0, 1, 2)),
        rtol=1e-4,
        atol=1e-6,
    )
    # eval normalises with the moving averages (per example); train with the batch's statistics.
    eval_alt, train_alt, _ = run(variables, x_alt, rng)
    np.testing.assert_allclose(eval_alt[0], eval_out[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(train_alt[0], train_out[0])


def _numpy_variables(model, x):
    """Variables with the shapes ``model.init`` would give, filled from NumPy (compiling
    ``init`` costs far more CPU time than the forward pass): Glorot-scaled normal kernels,
    small biases, unit BatchNorm scales and fresh moving statistics (mean 0, var 1)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan = np.prod(leaf.shape[:-2]) * (leaf.shape[-2] + leaf.shape[-1]) / 2
            value = rng.normal(0.0, fan**-0.5, leaf.shape)
        elif name in ("scale", "var"):
            value = np.ones(leaf.shape)
        elif name == "mean":
            value = np.zeros(leaf.shape)
        else:
            value = rng.normal(0.0, 0.01, leaf.shape)
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


# ---------------------------------------------------------------- local attention


def _naive_local_attention(q, k, v, query_shape, memory_flange):
    """Literal per-block loop: pad to whole blocks, pad k/v by the flange, attend each block to
    its window with out-of-map positions masked (float64 NumPy)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, n, h, w, _ = q.shape
    (qh, qw), (fh, fw) = query_shape, memory_flange
    hp, wp = -(-h // qh) * qh, -(-w // qw) * qw
    pad_q = np.zeros((b, n, hp, wp, q.shape[-1]))
    pad_q[:, :, :h, :w] = q
    pad_k = np.zeros((b, n, hp + 2 * fh, wp + 2 * fw, k.shape[-1]))
    pad_v = np.zeros((b, n, hp + 2 * fh, wp + 2 * fw, v.shape[-1]))
    pad_k[:, :, fh : fh + h, fw : fw + w] = k
    pad_v[:, :, fh : fh + h, fw : fw + w] = v
    valid = np.zeros((hp + 2 * fh, wp + 2 * fw), bool)
    valid[fh : fh + h, fw : fw + w] = True
    out = np.zeros((b, n, hp, wp, v.shape[-1]))
    for i in range(hp // qh):
        for j in range(wp // qw):
            rows = slice(i * qh, i * qh + qh + 2 * fh)
            cols = slice(j * qw, j * qw + qw + 2 * fw)
            qb = pad_q[:, :, i * qh : (i + 1) * qh, j * qw : (j + 1) * qw].reshape(
                b, n, qh * qw, -1
            )
            kb = pad_k[:, :, rows, cols].reshape(b, n, -1, k.shape[-1])
            vb = pad_v[:, :, rows, cols].reshape(b, n, -1, v.shape[-1])
            logits = np.where(valid[rows, cols].reshape(-1), qb @ kb.swapaxes(-1, -2), -np.inf)
            weights = np.exp(logits - logits.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            block = (weights @ vb).reshape(b, n, qh, qw, -1)
            out[:, :, i * qh : (i + 1) * qh, j * qw : (j + 1) * qw] = block
    return out[:, :, :h, :w]


def _qkv(shape, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return tuple(jax.random.normal(key, shape) for key in keys)


@pytest.mark.parametrize(
    ("shape", "query_shape", "flange"),
    [
        ((2, 2, 10, 13, 3), (4, 5), (2, 3)),  # several partial blocks on both axes
        ((1, 3, 5, 13, 2), (8, 5), (2, 2)),  # one block high: the exact shortcut
        ((1, 2, 6, 7, 4), (12, 10), (3, 3)),  # a single block: global attention
    ],
)
def test_local_attention_matches_naive_loop(shape, query_shape, flange):
    q, k, v = _qkv(shape)
    attend = jax.jit(local_attention_2d, static_argnums=(3, 4), compiler_options=FAST_COMPILE)
    got = attend(q, k, v, query_shape, flange)
    want = _naive_local_attention(q, k, v, query_shape, flange)
    assert got.shape == shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_local_attention_only_sees_block_and_flange():
    shape, query_shape, flange = (1, 2, 16, 20, 3), (4, 5), (2, 3)
    q, k, v = _qkv(shape, seed=1)
    # Query block (1, 2) covers rows 4..7, cols 10..14; its window rows 2..9, cols 7..17.
    inside = np.zeros(shape[2:4], bool)
    inside[2:10, 7:18] = True
    block = (slice(None), slice(None), slice(4, 8), slice(10, 15))
    noise = _qkv(shape, seed=2)
    outside = jnp.asarray(~inside)[None, None, :, :, None]
    qp, kp, vp = (a + 10.0 * n * outside for a, n in zip((q, k, v), noise, strict=True))
    attend = jax.jit(
        functools.partial(local_attention_2d, query_shape=query_shape, memory_flange=flange),
        compiler_options=FAST_COMPILE,
    )
    base = attend(q, k, v)
    moved = attend(qp, kp, vp)
    np.testing.assert_allclose(moved[block], base[block], rtol=1e-5, atol=1e-6)
    assert not np.allclose(moved, base)  # the perturbation does reach other blocks
    # ... and a change inside the flange (but outside the block) does reach this block.
    vf = v.at[:, :, 2, 7].add(10.0)
    assert not np.allclose(attend(q, k, vf)[block], base[block])
