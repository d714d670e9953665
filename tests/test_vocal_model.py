"""omnizart's vocal PyramidNet: parameter counts, ShakeDrop's two factors, a tiny training run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmir.nn.shakedrop import ShakeDrop, shake_drop, shake_drop_draw, shake_drop_expected
from jaxmir.tasks.vocal.model import (
    N_BATCH_STATS,
    N_PARAMS,
    PyramidNet,
    abstract_variables,
    param_counts,
    shortcut,
)

TINY = {"depth": 8, "alpha": 8, "stem_channels": 4}


def test_paper_param_counts_and_shapes():
    model = PyramidNet()
    variables = abstract_variables(model)
    sizes = {k: sum(a.size for a in jax.tree.leaves(v)) for k, v in variables.items()}
    assert sizes == {"params": N_PARAMS, "batch_stats": N_BATCH_STATS}
    assert (N_PARAMS, N_BATCH_STATS) == (28_529_666, 49_226)
    x = jax.ShapeDtypeStruct((1, 19, 174, 9), jnp.float32)
    assert jax.eval_shape(lambda v, x: model.apply(v, x), variables, x).shape == (1, 19, 6)
    shapes = jax.tree.map(lambda a: a.shape, variables["params"])
    assert shapes["conv_1"] == {"kernel": (7, 7, 9, 16)}
    assert shapes["block_0"]["conv_1"]["kernel"] == (3, 3, 16, 21)
    assert "bias" not in shapes["block_0"]["conv_2"]
    assert shapes["block_53"]["conv_2"]["kernel"] == (3, 3, 286, 286)
    assert shapes["dense_out"]["kernel"] == (286, 114)
    assert model.block_channels() == tuple(21 + 5 * k for k in range(54))
    assert param_counts(PyramidNet(depth=8, alpha=8, stem_channels=4)) == (7_450, 154)


def test_shortcut_pools_like_tf_and_pads_channels():
    x = jnp.ones((2, 3, 21, 5))
    y = shortcut(x, 8, strides=2)
    assert y.shape == (2, 2, 11, 8)
    np.testing.assert_array_equal(y[..., :5], 1.0)  # padded cells excluded from the mean
    np.testing.assert_array_equal(y[..., 5:], 0.0)


def test_shake_drop_forward_and_backward_with_fixed_draws():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 2, 4, 5)), jnp.float32)
    g = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    gate = jnp.asarray(rng.integers(0, 2, x.shape), jnp.float32)
    alpha = jnp.asarray([-0.7, 0.2, 0.9], jnp.float32).reshape(3, 1, 1, 1)
    beta = jnp.asarray([0.1, 0.5, 0.8], jnp.float32).reshape(3, 1, 1, 1)
    y, vjp = jax.vjp(lambda x: shake_drop(x, gate, alpha, beta), x)
    np.testing.assert_allclose(y, x * (gate + alpha - gate * alpha), rtol=1e-6)
    np.testing.assert_allclose(vjp(g)[0], g * (gate + beta - gate * beta), rtol=1e-6)
    dx = jax.grad(lambda x: jnp.sum(shake_drop(x, gate, alpha, beta) * g))(x)
    np.testing.assert_allclose(dx, g * (gate + beta - gate * beta), rtol=1e-6)


@pytest.mark.parametrize("gate", ["element", "example"])
def test_shake_drop_draws(gate):
    """Through the module: forward factors are {1, alpha_n} and backward ones {1, beta_n} on
    the same gate; alpha and beta are per-example draws, different from each other; the gate is
    per element or per example."""
    x = jnp.ones((16, 3, 4, 8))
    sd = ShakeDrop(0.6, gate=gate)
    rngs = {"shakedrop": jax.random.key(3)}
    fwd = np.asarray(sd.apply({}, x, deterministic=False, rngs=rngs))
    bwd = np.asarray(
        jax.grad(lambda x: jnp.sum(sd.apply({}, x, deterministic=False, rngs=rngs)))(x)
    )
    kept = fwd == 1.0
    np.testing.assert_array_equal(kept, bwd == 1.0)
    assert 0 < kept.mean() < 1
    alphas, betas = [], []
    for n in range(x.shape[0]):
        if kept[n].all():
            continue
        a, b = np.unique(fwd[n][~kept[n]]), np.unique(bwd[n][~kept[n]])
        assert a.size == b.size == 1 and -1 <= a[0] <= 1 and 0 <= b[0] <= 1
        alphas.append(a[0])
        betas.append(b[0])
    assert len(set(alphas)) > 1 and not np.allclose(alphas, betas)
    per_example = np.all(kept == kept[:, :1, :1, :1], axis=(1, 2, 3))
    assert per_example.all() if gate == "example" else not per_example.all()
    b, alpha, beta = shake_drop_draw(jax.random.key(0), x.shape, 0.6, gate)
    assert b.shape == (x.shape if gate == "element" else (16, 1, 1, 1))
    assert alpha.shape == beta.shape == (16, 1, 1, 1)


def test_shake_drop_gate_rate_and_inference_scale():
    b, _, _ = shake_drop_draw(jax.random.key(1), (64, 40, 50), 0.7, "element")
    assert abs(float(b.mean()) - 0.7) < 0.01
    x = jnp.arange(6.0).reshape(1, 1, 2, 3)
    np.testing.assert_allclose(ShakeDrop(0.7).apply({}, x, deterministic=True), 0.7 * x)
    assert shake_drop_expected(0.7) == pytest.approx(0.7)
    assert shake_drop_expected(0.5, (0.0, 1.0)) == pytest.approx(0.75)


def _quick_variables(model: PyramidNet, batch: int) -> dict:
    """Variables of the right shapes without the initialisers: each new shape of a random
    initialiser costs seconds of XLA:CPU compile time, here fan-in-scaled normal kernels from
    NumPy, unit BatchNorm scales and variances, zeros elsewhere."""
    rng = np.random.default_rng(0)

    def leaf(path, s):
        name = path[-1].key
        if name == "kernel":
            return jnp.asarray(
                rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1])), s.dtype
            )
        return jnp.full(s.shape, 1.0 if name in ("scale", "var") else 0.0, s.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract_variables(model, batch))


def test_tiny_pyramid_net_trains_without_nan():
    model = PyramidNet(**TINY, conv_impl="native")  # the matmul path is tested in test_conv
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 19, 174, 9)), jnp.float32)
    y = jnp.zeros((4, 19, 6))  # an easy target: the loss must fall despite ShakeDrop's noise
    variables = _quick_variables(model, 4)
    tx = optax.adam(1e-2)
    params, stats = variables["params"], variables["batch_stats"]
    opt = tx.init(params)

    @jax.jit
    def step(params, stats, opt, key):
        def loss_fn(p):
            logits, upd = model.apply(
                {"params": p, "batch_stats": stats},
                x,
                train=True,
                rngs={"shakedrop": key},
                mutable=["batch_stats"],
            )
            return optax.sigmoid_binary_cross_entropy(logits, y).mean(), upd["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), stats, opt, loss

    losses = []
    for i in range(5):
        params, stats, opt, loss = step(params, stats, opt, jax.random.key(i))
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, variables["batch_stats"])
    assert all(jax.tree.leaves(moved))  # training updated every BatchNorm's statistics
    with pytest.raises(ValueError, match="expected input"):
        model.apply({"params": params, "batch_stats": stats}, x[:, :, :170])
