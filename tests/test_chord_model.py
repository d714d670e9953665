"""Tests for the Harmony Transformer (:mod:`jaxmir.tasks.chord.model`) on CPU.

Paper-size counts come from ``jax.eval_shape`` (nothing is materialised); everything that
computes uses a tiny model (hidden 16, ff 32, 2 heads, 8 steps of 5 frames x 6 dims). XLA:CPU
compilation dominates the run time, so parameters are drawn by numpy (shapes from
``eval_shape``) instead of compiling ``init``, every configuration is compiled once, without
XLA's expensive optimisation passes, and the optimiser works on one flat parameter vector.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from jaxmir.tasks.chord.model import (
    PAPER_PARAM_COUNT,
    HarmonyTransformer,
    SegmentEncoder,
    binary_round,
    chord_block_ids,
    chord_block_pool,
    hard_change,
    keras_param_count,
)

# omnizart's Keras layers, counted from models/chord_model.py (Dense/Conv1D with bias,
# LayerNorm gamma + beta):
#   MHA(n) = 4 * (n*n + n) + 2n; FeedForward([f, n]) = (n*f + f) + (f*n + n) + 2n
#   segment time:  MHA(24) 2,448 + FF([96, 24]) 4,776 + Dense(504->512) 258,560 + LN 1,024
#                                                                              =   266,808
#   encoder block: MHA(512) 1,051,648 + FF([2048, 512]) 2,100,736              = 3,152,384 (x2)
#   layer_weights 2, change Dense(1) 513
#   segment freq:  MHA(21) 1,890 + FF([84, 21]) 3,675 + Dense 258,560 + LN 1,024 =  265,149
#   decoder block: 2 x MHA(512) + FF                                           = 4,204,032 (x1)
#   chord Dense(26) 13,338                                       total        = 11,054,610
DECODER_BLOCK_COUNT = 4_204_032
# Learned relative tables: (2*4+1) x 12 x 2 (segment time) + (2*16+1) x 64 x 2 per decoder block.
SEGMENT_REL_TABLES = 216
DECODER_REL_TABLES = 4_224

TINY = dict(
    n_steps=8,
    segment_width=5,
    n_dims=6,
    hidden=16,
    n_heads=2,
    ff_hidden=32,
    num_classes=5,
    encoder_blocks=1,  # multi-block stacks are covered by the eval_shape tests; compiling
    decoder_blocks=1,  # one block of each halves the XLA:CPU compile time of the tests below
)
# XLA:CPU spends most of a tiny model's time compiling it: skip the expensive optimisation
# passes, and use the legacy elemental emitters for fusions, which compile ~3x faster than the
# default MLIR fusion emitters here (the training step: ~6 s -> ~2 s of CPU, same results).
FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}


def _count(tree) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))


def _shapes(model: HarmonyTransformer, batch: int = 2):
    x = jax.ShapeDtypeStruct(
        (batch, model.n_steps, model.segment_width * model.n_dims), jnp.float32
    )
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    outputs = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    return variables, outputs


def test_paper_param_count_and_shapes():
    model = HarmonyTransformer(decoder_blocks=1, num_classes=26)
    variables, (chord_logits, change_logits) = _shapes(model, batch=3)
    params = variables["params"]
    assert keras_param_count(params) == PAPER_PARAM_COUNT == 11_054_610
    assert _count(params) == 11_054_610 + SEGMENT_REL_TABLES + DECODER_REL_TABLES  # 11,059,050
    assert keras_param_count(params["segment_time"]) == 266_808
    assert keras_param_count(params["segment_frequency"]) == 265_149
    assert chord_logits.shape == (3, 100, 26)
    assert change_logits.shape == (3, 100)
    slope = variables["batch_stats"]["slope"]
    assert slope.shape == () and slope.dtype == jnp.float32


def test_default_adds_exactly_one_decoder_block():
    one, _ = _shapes(HarmonyTransformer(decoder_blocks=1, num_classes=26))
    two, _ = _shapes(HarmonyTransformer(num_classes=26))
    p1, p2 = one["params"], two["params"]
    block_1 = {k: v for k, v in p2.items() if k.startswith("decoder_") and k.endswith("_1")}
    assert sorted(block_1) == [
        "decoder_cross_attention_1",
        "decoder_feed_forward_1",
        "decoder_self_attention_1",
    ]
    assert keras_param_count(block_1) == DECODER_BLOCK_COUNT
    assert keras_param_count(p2) == 15_258_642
    assert keras_param_count(p2) - keras_param_count(p1) == DECODER_BLOCK_COUNT
    assert _count(p2) - _count(p1) == DECODER_BLOCK_COUNT + DECODER_REL_TABLES
    assert jax.tree_util.tree_map(lambda s: s.shape, block_1["decoder_self_attention_1"]) == (
        jax.tree_util.tree_map(lambda s: s.shape, p2["decoder_self_attention_0"])
    )
    assert _count(p2) == 15_267_306
    # With 25 classes (jaxmir's chord labels), one column less: 15,258,129 and 15,266,793.
    assert p2["chord_dense"]["kernel"].shape == (512, 26)


def test_straight_through_change():
    logits = jnp.asarray([-3.0, -0.4, -1e-3, 2e-3, 0.3, 1.0, 5.0])
    slope = 1.7
    hard = hard_change(logits, slope)
    np.testing.assert_array_equal(hard, (logits > 0).astype(np.float32))
    assert set(np.unique(np.asarray(hard))) <= {0.0, 1.0}
    # Elementwise, so the gradient of the sum is the derivative at every point.
    grad = jax.grad(lambda z: jnp.sum(hard_change(z, slope)))(logits)
    s = jax.nn.sigmoid(slope * logits)
    np.testing.assert_allclose(grad, slope * s * (1 - s), rtol=1e-6)
    assert np.all(np.asarray(grad) > 0)
    # binary_round itself: round forward (half to even, like tf.round), identity backward.
    p = jnp.asarray([0.1, 0.5, 0.51, 0.9])
    np.testing.assert_array_equal(binary_round(p), [0.0, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(jax.grad(lambda q: jnp.sum(binary_round(q) * 3.0))(p), 3.0)


@pytest.mark.parametrize("omnizart_view", [False, True])
@pytest.mark.parametrize("axis", ["time", "frequency"])
def test_segment_views(axis, omnizart_view):
    enc = SegmentEncoder(
        n_units=8,
        segment_width=3,
        n_dims=4,
        axis=axis,
        n_heads=1,
        relative_position=False,
        max_dist=1,
        omnizart_view=omnizart_view,
    )
    x = np.arange(2 * 12, dtype=np.float32).reshape(2, 12)  # step n, entry f * 4 + d
    view = np.asarray(enc._to_view(jnp.asarray(x)))
    assert view.shape == ((2, 3, 4) if axis == "time" else (2, 4, 3))
    np.testing.assert_array_equal(enc._from_view(jnp.asarray(view)), x)
    frames = x.reshape(2, 3, 4)  # the real layout: [n, frame, dim]
    real = frames if axis == "time" else frames.transpose(0, 2, 1)
    # omnizart's (24, 21) reshape does not follow the frame-major layout of its own features.
    assert np.array_equal(view, real) != omnizart_view


def _numpy_block_pool(hidden: np.ndarray, changes: np.ndarray) -> np.ndarray:
    out = np.empty_like(hidden)
    for b in range(hidden.shape[0]):
        start = 0
        bounds = [t for t in range(1, hidden.shape[1]) if changes[b, t]] + [hidden.shape[1]]
        for end in bounds:
            out[b, start:end] = hidden[b, start:end].mean(axis=0)
            start = end
    return out


def test_chord_block_pool_matches_numpy():
    changes = np.asarray(
        [
            [1, 0, 0, 1, 0, 1, 1],  # change at step 0 is ignored: blocks [0-2] [3-4] [5] [6]
            [0, 0, 1, 0, 0, 0, 0],  # blocks [0-1] [2-6]
            [0, 0, 0, 0, 0, 0, 0],  # one block
            [1, 1, 1, 1, 1, 1, 1],  # every step its own block
        ],
        np.float32,
    )
    np.testing.assert_array_equal(
        chord_block_ids(jnp.asarray(changes)),
        [
            [0, 0, 0, 1, 1, 2, 3],
            [0, 0, 1, 1, 1, 1, 1],
            [0] * 7,
            [0, 1, 2, 3, 4, 5, 6],
        ],
    )
    hidden = np.random.default_rng(0).normal(size=(4, 7, 3)).astype(np.float32)
    pool = jax.jit(chord_block_pool, compiler_options=FAST_COMPILE)
    pooled = pool(jnp.asarray(hidden), jnp.asarray(changes))
    expected = _numpy_block_pool(hidden, changes)
    np.testing.assert_allclose(pooled, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(expected[0, 0], hidden[0, :3].mean(0), rtol=1e-6)
    np.testing.assert_allclose(pooled[3], hidden[3], rtol=1e-6)
    # Gradients reach the hidden states (each step's share of its block), not the changes.
    weights = np.random.default_rng(1).normal(size=hidden.shape).astype(np.float32)
    g_hidden, g_changes = jax.grad(
        lambda h, c: jnp.sum(chord_block_pool(h, c) * weights), argnums=(0, 1)
    )(jnp.asarray(hidden), jnp.asarray(changes))
    block_mean_w = _numpy_block_pool(weights, changes)
    np.testing.assert_allclose(g_hidden, block_mean_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(g_changes, 0.0)


def _numpy_variables(model: HarmonyTransformer, batch: int, seed: int = 0):
    """Variables with ``model.init``'s layout and Keras-like values, drawn by numpy: Glorot-
    uniform kernels and relative tables, zero biases and layer weights, unit LayerNorm scales."""
    x = jax.ShapeDtypeStruct(
        (batch, model.n_steps, model.segment_width * model.n_dims), jnp.float32
    )
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name in ("bias", "layer_weights"):
            return jnp.zeros(leaf.shape, leaf.dtype)
        if name == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        limit = math.sqrt(6.0 / (leaf.shape[0] + leaf.shape[-1]))
        return jnp.asarray(rng.uniform(-limit, limit, size=leaf.shape), leaf.dtype)

    params = jax.tree_util.tree_map_with_path(draw, shapes["params"])
    return {"params": params, "batch_stats": {"slope": jnp.asarray(1.0, jnp.float32)}}


@pytest.fixture(scope="module")
def tiny():
    """A tiny model with dropout 0.5, its variables and a fixed input batch."""
    model = HarmonyTransformer(**TINY, dropout_rate=0.5)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 30)).astype(np.float32) + 0.5)
    return model, _numpy_variables(model, batch=2), x


@pytest.fixture(scope="module")
def tiny_eval(tiny):
    """The tiny model's eval-mode apply, (variables) -> (outputs, intermediates), compiled once."""
    model, _, x = tiny

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def run(variables):
        return model.apply(variables, x, train=False, mutable=["intermediates"])

    return run


def _with_slope(variables, slope: float):
    return {**variables, "batch_stats": {"slope": jnp.asarray(slope, jnp.float32)}}


def test_slope_is_read_from_the_variables(tiny, tiny_eval):
    _, variables, _ = tiny
    run = tiny_eval
    (chords_1, change_1), inter_1 = run(_with_slope(variables, 1.0))
    (chords_2, change_2), inter_2 = run(_with_slope(variables, 2.0))
    (chords_n, _), inter_n = run(_with_slope(variables, -1.0))
    prob_1 = inter_1["intermediates"]["change_prob"][0]
    prob_2 = inter_2["intermediates"]["change_prob"][0]
    # The soft change sigmoid(slope * z) follows the slope; the raw logits z do not.
    np.testing.assert_allclose(change_1, change_2)
    np.testing.assert_allclose(prob_2, jax.nn.sigmoid(2.0 * change_1), rtol=1e-6)
    assert not np.allclose(prob_1, prob_2)
    # round(sigmoid(s z)) = [z > 0] for every s > 0: a positive slope cannot move the hard
    # changes, so the chord logits agree; a negative one flips them and the chord blocks change.
    np.testing.assert_array_equal(
        inter_2["intermediates"]["change"][0], (np.asarray(change_1) > 0).astype(np.float32)
    )
    np.testing.assert_allclose(chords_1, chords_2, rtol=1e-6)
    np.testing.assert_array_equal(
        inter_n["intermediates"]["change"][0], (np.asarray(change_1) < 0).astype(np.float32)
    )
    assert not np.allclose(chords_1, chords_n)
    assert variables["batch_stats"]["slope"] == 1.0  # the initial value


def test_dropout_train_vs_eval(tiny, tiny_eval):
    model, variables, x = tiny
    train = jax.jit(
        lambda key: model.apply(variables, x, train=True, rngs={"dropout": key}),
        compiler_options=FAST_COMPILE,
    )
    chords_a, change_a = train(jax.random.key(1))
    chords_b, change_b = train(jax.random.key(2))
    assert not np.allclose(chords_a, chords_b)
    assert not np.allclose(change_a, change_b)
    (chords_e1, change_e1), _ = tiny_eval(variables)  # no rng needed
    (chords_e2, change_e2), _ = tiny_eval(variables)
    np.testing.assert_array_equal(chords_e1, chords_e2)
    np.testing.assert_array_equal(change_e1, change_e2)
    assert not np.allclose(chords_a, chords_e1)
    assert np.all(np.isfinite(chords_a)) and np.all(np.isfinite(chords_e1))


def test_tiny_model_overfits_a_batch():
    model = HarmonyTransformer(**TINY, dropout_rate=0.0)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 8, 30)).astype(np.float32))
    chords = jnp.asarray(rng.integers(0, TINY["num_classes"], size=(4, 8)))
    changes = jnp.asarray(rng.integers(0, 2, size=(4, 8)).astype(np.float32))
    variables = _numpy_variables(model, batch=4)
    flat, unravel = ravel_pytree(variables["params"])
    optimizer = optax.adam(1e-2)

    def loss_fn(flat_params):
        chord_logits, change_logits = model.apply(
            {"params": unravel(flat_params), "batch_stats": variables["batch_stats"]}, x
        )
        ce = optax.softmax_cross_entropy_with_integer_labels(chord_logits, chords).mean()
        bce = optax.sigmoid_binary_cross_entropy(change_logits, changes).mean()
        return ce + 3.0 * bce  # omnizart weighs the change loss by 3

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def step(flat_params, opt_state):
        loss, grad = jax.value_and_grad(loss_fn)(flat_params)
        updates, opt_state = optimizer.update(grad, opt_state, flat_params)
        return optax.apply_updates(flat_params, updates), opt_state, loss

    opt_state = optimizer.init(flat)
    losses = []
    for _ in range(101):  # the 101st step's loss is the loss after 100 updates
        flat, opt_state, loss = step(flat, opt_state)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])
