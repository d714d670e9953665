"""Tests for the beat models and the relative multi-head attention (CPU, tiny shapes).

Paper-size parameter counts are taken from ``jax.eval_shape`` so that the ~100M/512M
parameters are never materialised. XLA compilation dominates the run time on CPU, so most tests
fill parameters from numpy (shapes via ``eval_shape``) instead of compiling ``init``, and jit
each apply configuration once.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmir.nn.relative_attention import (
    MultiHeadAttention,
    omnizart_param_count,
    relative_position_index,
)
from jaxmir.tasks.beat.model import (
    BLSTM,
    BiLSTM,
    BLSTMAttn,
    KerasLSTMCell,
    build_model,
    count_params,
)

N_FEATURES = 178


def _shapes(model, x_shape):
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def _numpy_params(init_fn, *args, seed=0):
    """Parameters with the layout ``init_fn(key, *args)`` would create, drawn by numpy."""
    shapes = jax.eval_shape(init_fn, jax.random.key(0), *args)["params"]
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.uniform(-0.5, 0.5, size=s.shape), s.dtype), shapes
    )


def test_blstm_paper_param_count():
    params = _shapes(BLSTM(timesteps=1000), (1, 1000, N_FEATURES))
    assert count_params(params) == 100_058_356
    assert count_params(params["input_norm"]) == 2 * N_FEATURES  # 356
    assert count_params(params["blstm_0"]) == 40_800
    assert count_params(params["blstm_1"]) == 15_200
    heads = count_params(params["beat_head"]) + count_params(params["downbeat_head"])
    assert heads == 100_002_000


@pytest.mark.parametrize("n_in,hidden", [(178, 25), (50, 25), (7, 3)])
def test_lstm_count_per_direction_equals_keras(n_in, hidden):
    params = _shapes(BiLSTM(hidden), (1, 5, n_in))
    keras_per_direction = 4 * (hidden * (n_in + hidden) + hidden)
    assert count_params(params["forward"]) == keras_per_direction
    assert count_params(params["backward"]) == keras_per_direction


# omnizart's blstm_attn(timesteps=1000, input_dim=178, lstm_hidden_dim=25, num_lstm_layers=2,
# attn_hidden_dim=256), counted from its Keras code:
#   LayerNormalization on 178 features (gamma, beta)           2 * 178              =         356
#   Bidirectional(LSTM(25)) on 178 inputs: 2 * 4 * (25 * (178 + 25) + 25)           =      40,800
#   Bidirectional(LSTM(25)) on 50 inputs:  2 * 4 * (25 * (50 + 25) + 25)            =      15,200
#   Conv1D(256, 1) on 50 channels: 1 * 50 * 256 + 256                               =      13,056
#   MultiHeadAttention(n_units=256): q/k/v/out Dense(256) with bias 4 * (256*256 + 256)
#                                    + LayerNormalization(256) 2 * 256              =     263,680
#     (its relative-position vectors are drawn by an initializer inside call(): not weights)
#   Flatten -> 1000 * 256 = 256,000; two Dense(1000): 2 * (256,000 * 1000 + 1000)   = 512,002,000
#   total                                                                          = 512,335,092
# jaxmir adds two learned relative tables of (2 * 800 + 1) x (256 / 8) = 1601 x 32 each.
OMNIZART_BLSTM_ATTN_COUNT = 512_335_092
RELATIVE_TABLES_COUNT = 2 * 1601 * 32  # 102,464


def test_blstm_attn_paper_param_count():
    params = _shapes(BLSTMAttn(timesteps=1000), (1, 1000, N_FEATURES))
    assert omnizart_param_count(params) == OMNIZART_BLSTM_ATTN_COUNT
    assert count_params(params) == OMNIZART_BLSTM_ATTN_COUNT + RELATIVE_TABLES_COUNT
    assert count_params(params["attn_in"]) == 13_056
    assert omnizart_param_count(params["attention"]) == 263_680
    assert params["attention"]["rel_k_emb"].shape == (1601, 32)
    assert params["attention"]["rel_v_emb"].shape == (1601, 32)


TINY = dict(timesteps=16, hidden=4, num_layers=2, attn_hidden=8)


@pytest.fixture(scope="module")
def tiny():
    """name -> (params, jitted apply, input) for the tiny models."""
    x = jax.random.normal(jax.random.key(1), (2, 16, N_FEATURES))
    out = {}
    for name in ("blstm", "blstm_attn"):
        model = build_model(name, **TINY)
        params = _numpy_params(model.init, x)
        out[name] = (params, jax.jit(model.apply, static_argnames="train"), x)
    return out


@pytest.mark.parametrize("name", ["blstm", "blstm_attn"])
def test_tiny_forward_shape_and_finite(tiny, name):
    params, apply, x = tiny[name]
    y = apply({"params": params}, x, train=False)
    assert y.shape == (2, 16, 2)
    assert bool(jnp.all(jnp.isfinite(y)))


def test_dropout_only_when_training(tiny):
    params, apply, x = tiny["blstm_attn"]
    variables = {"params": params}
    # evaluation needs no dropout rng
    e = apply(variables, x, train=False)
    # training: masks come from the 'dropout' rng; outputs differ between keys and from evaluation
    t1 = apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    t2 = apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert t1.shape == (2, 16, 2) and bool(jnp.all(jnp.isfinite(t1)))
    assert not np.allclose(t1, t2)
    assert not np.allclose(t1, e)
    # BLSTM has no dropout: train is accepted and changes nothing
    bparams, bapply, _ = tiny["blstm"]
    np.testing.assert_array_equal(
        bapply({"params": bparams}, x, train=True), bapply({"params": bparams}, x, train=False)
    )


def test_keras_lstm_cell_init():
    """A real init of the cell: finite values, Keras' unit_forget_bias (1 for f, 0 elsewhere)."""
    carry = (jnp.zeros((1, 4)), jnp.zeros((1, 4)))
    params = KerasLSTMCell(4).init(jax.random.key(0), carry, jnp.zeros((1, 5)))["params"]
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree_util.tree_leaves(params))
    np.testing.assert_array_equal(params["hf"]["bias"], np.ones(4))
    for gate in "igo":
        np.testing.assert_array_equal(params[f"h{gate}"]["bias"], np.zeros(4))
    limit = np.sqrt(6.0 / (5 + 4 * 4))  # Glorot over Keras' fused (5, 4 * 4) input kernel
    assert float(jnp.abs(params["ii"]["kernel"]).max()) <= limit


def test_build_model_names():
    assert isinstance(build_model("blstm", **TINY), BLSTM)
    attn = build_model("blstm_attn", **TINY)
    assert isinstance(attn, BLSTMAttn)
    assert (attn.dropout_rate, attn.max_dist, attn.n_heads) == (0.1, 800, 8)
    with pytest.raises(ValueError, match="blstm, blstm_attn"):
        build_model("transformer", **TINY)


def _lstm_reference(x, cell):
    """Keras LSTM equations, one direction, numpy loop over time."""
    w_i = np.concatenate([cell[f"i{g}"]["kernel"] for g in "ifgo"], axis=-1)
    w_h = np.concatenate([cell[f"h{g}"]["kernel"] for g in "ifgo"], axis=-1)
    b = np.concatenate([cell[f"h{g}"]["bias"] for g in "ifgo"])
    hidden = b.shape[0] // 4
    h = np.zeros((x.shape[0], hidden))
    c = np.zeros_like(h)
    outs = []
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    for t in range(x.shape[1]):
        z = x[:, t] @ w_i + h @ w_h + b
        i, f, g, o = np.split(z, 4, axis=-1)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        outs.append(h)
    return np.stack(outs, axis=1)


@pytest.mark.parametrize("impl", ["fused", "flax"])
def test_bilstm_matches_keras_bidirectional_reference(impl):
    x = np.random.default_rng(3).normal(size=(2, 6, 5))
    x32 = jnp.asarray(x, jnp.float32)
    model = BiLSTM(3, unroll=2, impl=impl)
    params = _numpy_params(model.init, x32)
    y = np.asarray(jax.jit(model.apply)({"params": params}, x32))
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    fwd = _lstm_reference(x, p["forward"])
    bwd = _lstm_reference(x[:, ::-1], p["backward"])[:, ::-1]  # Keras re-aligns in time
    np.testing.assert_allclose(y, np.concatenate([fwd, bwd], axis=-1), atol=1e-5)


def _omnizart_style_relative_table(table, n_steps, max_dist):
    """(n_steps, n_steps, d) built as omnizart does: window of neighbours, edge rows repeated."""
    center = max_dist
    rows = []
    for idx in range(n_steps):
        n_left = min(max_dist, idx)
        n_right = min(max_dist, n_steps - 1 - idx)
        mix = np.concatenate(
            [
                table[center - n_left : center],
                table[center : center + 1],
                table[center + 1 : center + n_right + 1],
            ]
        )
        left_pad = idx - n_left
        right_pad = n_steps - idx - n_right - 1
        mix = np.concatenate(
            [np.repeat(mix[:1], left_pad, 0), mix, np.repeat(mix[-1:], right_pad, 0)]
        )
        rows.append(mix)
    return np.stack(rows)


def _attention_reference(x, p, n_heads, max_dist, causal):
    """omnizart's layer in numpy, heads stacked on the batch axis as in its code."""
    relu = lambda z: np.maximum(z, 0.0)  # noqa: E731
    dense = lambda z, name: z @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
    q, k, v = (relu(dense(x, n)) for n in ("q_dense", "k_dense", "v_dense"))
    split = lambda z: np.concatenate(np.split(z, n_heads, axis=2), axis=0)  # noqa: E731
    qh, kh, vh = split(q), split(k), split(v)
    steps, d = kh.shape[1:]
    logits = qh @ kh.transpose(0, 2, 1)
    rel_k = _omnizart_style_relative_table(p["rel_k_emb"], steps, max_dist)
    logits = logits + np.einsum("nid,ijd->nij", qh, rel_k)
    logits = logits / d**0.5
    if causal:
        logits = np.where(np.tril(np.ones((steps, steps))) == 0, -(2.0**32) + 1, logits)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    out = w @ vh
    rel_v = _omnizart_style_relative_table(p["rel_v_emb"], steps, max_dist)
    out = out + np.einsum("nij,ijd->nid", w, rel_v)
    out = np.concatenate(np.split(out, n_heads, axis=0), axis=2)
    out = relu(dense(out, "out_dense")) + x
    mean = out.mean(-1, keepdims=True)
    var = out.var(-1, keepdims=True)
    return (out - mean) / np.sqrt(var + 1e-3) * p["layer_norm"]["scale"] + p["layer_norm"]["bias"]


def test_relative_index_clips():
    idx = relative_position_index(5, 5, 2)
    assert idx[0].tolist() == [2, 3, 4, 4, 4]
    assert idx[4].tolist() == [0, 0, 0, 1, 2]
    assert np.all(np.diag(idx) == 2)


ATTN = dict(n_units=8, n_heads=2, relative_position=True, max_dist=3)


@functools.cache
def _attention(causal):
    """(jitted self-attention apply, numpy-filled params), shared by the attention tests."""
    layer = MultiHeadAttention(**ATTN, causal=causal)
    x = jnp.zeros((4, 10, 8))
    init = functools.partial(layer.init, deterministic=True)
    params = _numpy_params(lambda key, x: init(key, x, x, x), x)
    apply = jax.jit(lambda p, x: layer.apply({"params": p}, x, x, x, deterministic=True))
    return apply, params


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_omnizart_reference(causal):
    apply, params = _attention(causal)
    x = np.random.default_rng(4).normal(size=(4, 10, 8))
    y = np.asarray(apply(params, jnp.asarray(x, jnp.float32)))
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    ref = _attention_reference(x, p, ATTN["n_heads"], ATTN["max_dist"], causal)
    np.testing.assert_allclose(y, ref, atol=1e-4)


def test_attention_is_causal():
    x = jax.random.normal(jax.random.key(5), (2, 10, 8))
    t = 6
    x2 = x.at[:, t].add(5.0 * jax.random.normal(jax.random.key(6), (2, 8)))
    both = jnp.concatenate([x, x2])  # one call for the original and the perturbed input
    apply, params = _attention(True)
    y = apply(params, both)
    np.testing.assert_allclose(y[:2, :t], y[2:, :t], atol=1e-6)
    assert not np.allclose(y[:2, t:], y[2:, t:])
    # without the mask the past does see the future
    apply, params = _attention(False)
    z = apply(params, both)
    assert not np.allclose(z[:2, :t], z[2:, :t])


def test_quality_preset_is_the_wide_data_trained_longer_with_frame_heads_cosine_and_ema():
    from jaxmir.tasks.beat.task import TASK

    wide, quality = TASK.preset("wide"), TASK.preset("quality")
    # the wide data, half the training renderings of scores thinned to some of their parts,
    # training textures whose phrases change meter with probability 0.5
    changed = dataclasses.replace(wide.data, corpus_part_subsets=0.5, corpus_meter_changes=0.5)
    assert quality.data == changed
    m = quality.model
    assert (m.name, m.heads, m.timesteps, m.hidden, m.num_layers) == ("blstm", "frame", 800, 32, 3)
    spec = TASK.input_spec(quality)
    params = _shapes(TASK.model(quality), (1, *spec.shape))
    assert count_params(params) == 104_166  # the flat heads' wide model: 16,057,156
    steps = quality.train.epochs * quality.train.steps_per_epoch
    assert steps == 3000 and steps == 2.5 * wide.train.epochs * wide.train.steps_per_epoch
    # the same frames per step as the wide preset's 32 windows of 400
    assert quality.train.batch_size * m.timesteps == wide.train.batch_size * wide.model.timesteps
    o = quality.optim
    assert o.lr_schedule == "warmup_cosine" and o.decay_steps == steps and o.ema_decay == 0.99
    assert quality.train.monitor == "val_beat_f_measure"
    assert quality.train.early_stop_patience is None


def test_frame_heads_read_out_each_frame_with_weights_that_do_not_grow_with_the_window():
    counts = {}
    for t in (400, 1600):
        params = _shapes(BLSTM(timesteps=t, hidden=32, num_layers=3, heads="frame"), (1, t, 178))
        assert set(params) == {"input_norm", "blstm_0", "blstm_1", "blstm_2", "frame_head"}
        assert params["frame_head"]["kernel"].shape == (64, 2)
        counts[t] = count_params(params)
    assert counts[400] == counts[1600]
    # the frame heads are one Dense(2) over each frame's state: a frame's logits depend on the
    # other frames only through the BiLSTM (checked with the LSTMs' outputs replaced by x)
    import flax.linen as nn

    from jaxmir.tasks.beat.model import _heads

    class Heads(nn.Module):
        timesteps: int

        @nn.compact
        def __call__(self, x):
            return _heads(x, self.timesteps, "frame")

    x = jax.random.normal(jax.random.key(0), (1, 8, 6))
    model = Heads(timesteps=8)
    variables = model.init(jax.random.key(1), x)
    y = model.apply(variables, x)
    k, b = variables["params"]["frame_head"]["kernel"], variables["params"]["frame_head"]["bias"]
    np.testing.assert_allclose(y, x @ k + b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="flat, frame"):
        _heads(x, 8, "pooled")
