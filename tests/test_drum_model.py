"""omnizart's drum network: paper parameter count, spectral-norm state, output layout, the
attention's gamma, and a small model overfitting one batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmir.tasks.base import get_task
from jaxmir.tasks.drum.model import (
    N_BATCH_STATS,
    N_PARAMS,
    N_PARAMS_OMNIZART,
    DrumNet,
    abstract_variables,
    omnizart_output,
    param_counts,
    stack_difference,
)

# native convs: on XLA:CPU they compile and run faster than the matmul weight gradient at this
# size (jaxmir.nn.conv, tested in test_conv.py, is the same maths either way)
SMALL = DrumNet(frames=32, bins=32, channels=16, dense_width=64, conv_impl="native")
BATCH = 8


def _bce(out: jax.Array, y: jax.Array) -> jax.Array:
    return optax.sigmoid_binary_cross_entropy(out, y).mean()


def _loss(params, batch_stats, x, y):
    out, state = SMALL.apply(
        {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    return _bce(out, y), state["batch_stats"]


# One compiled train-mode forward+backward (it also returns the updated batch_stats) and one
# eval-mode forward, shared by all the tests below.
_grad = jax.jit(jax.value_and_grad(_loss, has_aux=True))
_eval = jax.jit(lambda v, x: SMALL.apply(v, x, train=False, mutable=["batch_stats"]))
_tx = optax.adam(3e-3)


@jax.jit
def _update(params, opt_state, grads):
    updates, opt_state = _tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _maxabs(tree) -> list[float]:
    return [float(np.abs(np.asarray(a)).max()) for a in jax.tree.leaves(tree)]


def _numpy_init(model: DrumNet, seed: int = 0) -> dict:
    """Variables with the structure of ``model.init`` (traced by ``jax.eval_shape``) and values
    drawn by NumPy from ``init``'s distributions (Glorot-uniform kernels, zero biases and gamma,
    normal ``u``, unit ``sigma``; ``init`` also pre-divides each SN kernel by a sigma estimate):
    compiling ``model.init`` itself costs 10-20 s on a 2-core XLA:CPU (~40 random
    initialisers), the tests' whole budget."""
    rng = np.random.default_rng(seed)
    shapes = abstract_variables(model)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("['kernel']"):
            receptive = np.prod(leaf.shape[:-2])  # 1 for Dense kernels
            fan_in, fan_out = receptive * leaf.shape[-2], receptive * leaf.shape[-1]
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            value = rng.uniform(-limit, limit, leaf.shape)
        elif name.endswith("/u']"):
            value = rng.standard_normal(leaf.shape)
        elif name.endswith("/sigma']"):
            value = np.ones(leaf.shape)
        else:  # biases, gamma
            value = np.zeros(leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def small():
    """(variables, x, y): the small model's variables and a fixed batch with binary targets."""
    rng = np.random.default_rng(1)
    # blocky 8 x 8 patterns at the CQT's scale (~0.1): i.i.d. pixel noise averages out in the
    # pooled features, making the 8 examples nearly indistinguishable to the head (the fit then
    # stalls at the class marginals for a seed-dependent number of steps)
    x = np.repeat(np.repeat(0.2 * rng.random((BATCH, 4, 4, 4)), 8, axis=1), 8, axis=2)
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(rng.random((BATCH, 4, 13)) < 0.3, jnp.float32)
    return _numpy_init(SMALL), x, y


def test_paper_param_count_and_output_shape():
    model = DrumNet()
    variables = abstract_variables(model, batch=2)
    sizes = {k: sum(a.size for a in jax.tree.leaves(v)) for k, v in variables.items()}
    assert sizes == {"params": N_PARAMS, "batch_stats": N_BATCH_STATS}
    assert (N_PARAMS, N_PARAMS_OMNIZART, N_BATCH_STATS) == (7_752_741, 7_752_740, 1_026)
    assert param_counts(model) == (N_PARAMS, N_BATCH_STATS)
    assert get_task("drum").omnizart_params({"net": variables["params"]})[0] == N_PARAMS_OMNIZART
    x = jax.ShapeDtypeStruct((2, 120, 120, 4), jnp.float32)
    assert jax.eval_shape(lambda v, x: model.apply(v, x), variables, x).shape == (2, 4, 13)
    p = jax.tree.map(lambda a: a.shape, variables["params"])
    assert p["init_resbk"]["res1"]["conv"]["kernel"] == (3, 3, 8, 64)  # x and its difference
    assert p["init_resbk"]["shortcut"]["conv"]["kernel"] == (1, 1, 8, 64)
    assert p["self_attn"]["gamma"] == (1,)
    assert p["self_attn"]["h_attn_conv"]["conv"]["kernel"] == (1, 1, 64, 32)
    assert "shortcut" not in p["md_resbk_2"] and "shortcut" in p["md_resbk_1"]
    assert p["mdl_nn_mlp_o1"]["kernel"] == (8 * 8 * 64, 1024)
    assert p["mdl_nn_mlp_of3"]["kernel"] == (1024, 52)


def test_stack_difference_and_head_scale():
    x = jnp.arange(2 * 3 * 4 * 1, dtype=jnp.float32).reshape(2, 3, 4, 1) ** 2
    y = stack_difference(x, axis=2)
    assert y.shape == (2, 3, 4, 2)
    np.testing.assert_array_equal(y[..., 0], x[..., 0])
    np.testing.assert_array_equal(y[:, :, 0, 1], 0.0)
    np.testing.assert_array_equal(y[:, :, 1:, 1], np.diff(np.asarray(x[..., 0]), axis=2))
    y1 = stack_difference(x, axis=1)
    np.testing.assert_array_equal(y1[:, 1:, :, 1], np.diff(np.asarray(x[..., 0]), axis=1))
    np.testing.assert_allclose(omnizart_output(jnp.array([-1e3, 0.0, 1e3])), [-20, 50, 120])


def test_spectral_norm_vectors_update_only_in_training(small):
    variables, x, y = small
    stats = variables["batch_stats"]
    assert set(stats["init_resbk"]["res1"]["sn"]) == {"conv/kernel/u", "conv/kernel/sigma"}
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(stats)]
    assert sum(n.endswith("/u']") for n in names) == 18  # one per spectral-norm conv
    assert sum(n.endswith("/sigma']") for n in names) == 18 and len(names) == 36
    params = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(variables)]
    assert not any("/u'" in n for n in params if n.startswith("['params']"))

    _, eval_state = _eval(variables, x)
    jax.tree.map(np.testing.assert_array_equal, eval_state["batch_stats"], stats)

    (_, new_stats), _ = _grad(variables["params"], stats, x, y)
    assert jax.tree.structure(new_stats) == jax.tree.structure(stats)
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), new_stats, stats)
    assert all(jax.tree.leaves(changed))
    # one power-iteration step on the (k*k*c_in, c_out) kernel from the stored u
    for block, conv in (("md_resbk_0", "res2"), ("self_attn", "g_attn_conv")):
        w = np.asarray(variables["params"][block][conv]["conv"]["kernel"], np.float64)
        w = w.reshape(-1, w.shape[-1])
        old, new = stats[block][conv]["sn"], new_stats[block][conv]["sn"]
        v = np.asarray(old["conv/kernel/u"], np.float64) @ w.T
        v /= np.linalg.norm(v)
        u = v @ w
        sigma = np.linalg.norm(u)
        np.testing.assert_allclose(new["conv/kernel/u"], u / sigma, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(new["conv/kernel/sigma"], sigma, rtol=1e-4)
        assert sigma <= np.linalg.svd(w, compute_uv=False)[0] * (1 + 1e-6)  # a lower bound


def test_output_is_class_major_then_transposed(small):
    variables, x, _ = small
    params = jax.tree.map(lambda a: a, variables["params"])  # shallow copy of the dicts
    head = dict(params["mdl_nn_mlp_of3"])
    head["kernel"] = jnp.zeros_like(head["kernel"])
    head["bias"] = jnp.arange(52, dtype=jnp.float32)  # unit j lights up with value j
    params = {**params, "mdl_nn_mlp_of3": head}
    out, _ = _eval({"params": params, "batch_stats": variables["batch_stats"]}, x)
    assert out.shape == (BATCH, 4, 13)
    m, c = np.meshgrid(np.arange(4), np.arange(13), indexing="ij")
    np.testing.assert_array_equal(out[0], c * 4 + m)  # out[b, m, c] = z[b, c * 4 + m]
    np.testing.assert_array_equal(out, np.broadcast_to(c * 4 + m, out.shape))


def test_gamma_is_trained(small):
    variables, x, y = small
    params = variables["params"]
    np.testing.assert_array_equal(params["self_attn"]["gamma"], [0.0])
    (_, _), grads = _grad(params, variables["batch_stats"], x, y)
    assert abs(float(grads["self_attn"]["gamma"][0])) > 0
    # with gamma = 0 the attention branch is cut off: its convs get no gradient yet
    attn = {k: v for k, v in grads["self_attn"].items() if k != "gamma"}
    assert _maxabs(attn) == [0.0] * 8

    stepped, _ = _update(params, _tx.init(params), grads)
    assert float(stepped["self_attn"]["gamma"][0]) != 0
    (_, _), grads = _grad(stepped, variables["batch_stats"], x, y)
    attn = {k: v for k, v in grads["self_attn"].items() if k != "gamma"}
    assert min(_maxabs(attn)) > 0


def test_small_model_overfits_a_batch(small):
    variables, x, y = small
    params, stats = variables["params"], variables["batch_stats"]
    opt_state = _tx.init(params)
    losses = []
    for _ in range(100):
        (loss, stats), grads = _grad(params, stats, x, y)
        params, opt_state = _update(params, opt_state, grads)
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.2 * losses[0], losses[::10]
    assert float(params["self_attn"]["gamma"][0]) != 0


def test_info_gives_omnizart_count(capsys):
    """`jaxmir info drum --preset paper`: omnizart's count leaves out the untracked gamma."""
    import json

    from jaxmir.cli import main

    assert main(["info", "drum", "--preset", "paper"]) == 0
    line, record = capsys.readouterr().out.strip().splitlines()[-2:]
    info = json.loads(record)
    assert (info["params"], info["omnizart_params"]) == (N_PARAMS, N_PARAMS_OMNIZART)
    assert "1 is the self-attention's gamma" in line
