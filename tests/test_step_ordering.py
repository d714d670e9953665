"""The train step's ordering of parameter updates after the whole backward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmir.engine.step import MIN_ORDERED, after_whole_backward


def test_values_are_unchanged_even_with_non_finite_gradients():
    big = np.linspace(-3.0, 3.0, MIN_ORDERED, dtype=np.float32)
    big[0] = -0.0
    grads = {
        "big": jnp.asarray(big),
        "small": jnp.asarray([np.nan, np.inf, -np.inf, 1.0], jnp.float32),
        "int": jnp.arange(3),
    }
    out = jax.jit(after_whole_backward)(grads)
    for key in grads:
        np.testing.assert_array_equal(np.asarray(out[key]), np.asarray(grads[key]))
        assert out[key].dtype == grads[key].dtype
    assert np.signbit(np.asarray(out["big"])[0])  # -0.0 stays -0.0


def _param_copies(order: bool) -> int:
    """Copies of the donated (1024, 1024) kernel in a compiled Adam step where the kernel's
    input gradient feeds another parameter's gradient but not its own update."""
    tx = optax.adam(1e-3)

    def step(params, opt_state, x):
        def loss(p):
            return jnp.sum((jnp.tanh(x @ p["v"]) @ p["w"]) ** 2)

        grads = jax.grad(loss)(params)
        if order:
            grads = after_whole_backward(grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params = {
        "w": jax.ShapeDtypeStruct((1024, 1024), jnp.float32),
        "v": jax.ShapeDtypeStruct((8, 1024), jnp.float32),
    }
    opt_state = jax.eval_shape(tx.init, params)
    x = jax.ShapeDtypeStruct((4, 8), jnp.float32)
    text = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, x).compile().as_text()
    entry = text.split("ENTRY", 1)[1]
    return sum(1 for line in entry.splitlines() if " copy(" in line and "[1024,1024]" in line)


def test_ordering_lets_xla_update_a_donated_kernel_in_place():
    assert _param_copies(order=False) == 1  # XLA copies the kernel first when unordered
    assert _param_copies(order=True) == 0
