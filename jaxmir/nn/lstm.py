"""A bidirectional LSTM layer as one scan, with a hand-written backward pass.

On CPU an LSTM over 1,000 frames is a chain of tiny operations, and each XLA operation inside a
loop costs microseconds whatever its size. :func:`bilstm` keeps that chain short:

* the input projection of every frame and both directions is one matrix product before the loop;
* the two directions advance together in one loop of T steps (the backward direction reads its
  projections in reverse time), each step one batched (2, batch, h) @ (2, h, 4h) product and one
  elementwise update;
* the gate nonlinearities are one ``tanh`` over all four gates (``sigmoid(x) = (1 + tanh(x/2)) / 2``);
* the backward pass (:func:`recurrence`'s custom VJP) runs one reverse loop that only propagates
  the cell and hidden-state gradients; the recurrent kernel's gradient is one product over all
  steps after it, instead of a product accumulated inside every step as autodiff of the scan
  would do.

Gates are in Keras' / Flax's i, f, g, o order; the cell is ``c' = f * c + i * g``,
``h' = o * tanh(c')`` with sigmoid i, f, o and tanh g (no peepholes), from zero initial states.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def gate_activations(z: jax.Array) -> jax.Array:
    """sigmoid on the i, f, o quarters of the last axis and tanh on the g quarter, as one tanh."""
    quarter = z.shape[-1] // 4
    is_g = (jnp.arange(4 * quarter) // quarter) == 2
    t = jnp.tanh(jnp.where(is_g, z, 0.5 * z))
    return jnp.where(is_g, t, 0.5 * t + 0.5)


def _cell(z: jax.Array, c: jax.Array) -> tuple[jax.Array, ...]:
    """(activations, new c, tanh(new c), new h) from pre-activations z and the previous c."""
    a = gate_activations(z)
    i, f, g, o = jnp.split(a, 4, axis=-1)
    c = f * c + i * g
    tanh_c = jnp.tanh(c)
    return a, c, tanh_c, o * tanh_c


def _zero_state(z_in: jax.Array, hidden: int) -> jax.Array:
    return jnp.zeros((*z_in.shape[1:-1], hidden), z_in.dtype)


def _recurrent(h: jax.Array, kernels_h: jax.Array) -> jax.Array:
    return jnp.einsum("dbh,dhn->dbn", h, kernels_h)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def recurrence(z_in: jax.Array, kernels_h: jax.Array, unroll: int = 1) -> jax.Array:
    """Hidden states (T, D, batch, h) of D independent LSTMs from their input pre-activations
    ``z_in`` (T, D, batch, 4h) (input projections plus biases) and recurrent kernels
    ``kernels_h`` (D, h, 4h), from zero initial states."""
    zero = _zero_state(z_in, kernels_h.shape[1])

    def step(carry, z_t):
        c, h = carry
        _, c, _, h = _cell(z_t + _recurrent(h, kernels_h), c)
        return (c, h), h

    return jax.lax.scan(step, (zero, zero), z_in, unroll=unroll)[1]


def _recurrence_fwd(z_in, kernels_h, unroll):
    hidden = kernels_h.shape[1]
    zero = _zero_state(z_in, hidden)

    def step(carry, z_t):
        c_prev, h_prev = carry
        a, c, tanh_c, h = _cell(z_t + _recurrent(h_prev, kernels_h), c_prev)
        return (c, h), (jnp.concatenate([a, c_prev, tanh_c, h_prev], axis=-1), h)

    _, (saved, hs) = jax.lax.scan(step, (zero, zero), z_in, unroll=unroll)
    return hs, (saved, kernels_h)


def _recurrence_bwd(unroll, residuals, d_hs):
    saved, kernels_h = residuals
    hidden = kernels_h.shape[1]
    zero = jnp.zeros(d_hs.shape[1:], d_hs.dtype)

    def step(carry, xs):
        dh_next, dc_next = carry
        dh_out, s = xs
        i, f, g, o = jnp.split(s[..., : 4 * hidden], 4, axis=-1)
        c_prev = s[..., 4 * hidden : 5 * hidden]
        tanh_c = s[..., 5 * hidden : 6 * hidden]
        dh = dh_out + dh_next
        dc = dc_next + dh * o * (1.0 - tanh_c * tanh_c)
        dz = jnp.concatenate(
            [
                dc * g * i * (1.0 - i),
                dc * c_prev * f * (1.0 - f),
                dc * i * (1.0 - g * g),
                dh * tanh_c * o * (1.0 - o),
            ],
            axis=-1,
        )
        return (jnp.einsum("dbn,dhn->dbh", dz, kernels_h), dc * f), dz

    _, dz = jax.lax.scan(step, (zero, zero), (d_hs, saved), reverse=True, unroll=unroll)
    d_kernels_h = jnp.einsum("tdbh,tdbn->dhn", saved[..., 6 * hidden :], dz)
    return dz, d_kernels_h


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def bilstm(
    x: jax.Array,
    kernels_i: jax.Array,
    kernels_h: jax.Array,
    biases: jax.Array,
    unroll: int = 1,
) -> jax.Array:
    """Keras ``Bidirectional(LSTM(h, return_sequences=True))`` over ``x`` (batch, T, in).

    ``kernels_i`` (2, in, 4h), ``kernels_h`` (2, h, 4h), ``biases`` (2, 4h), forward direction
    first, gates i, f, g, o. Returns (batch, T, 2h): forward outputs, then the backward
    direction's outputs re-aligned in time (``merge_mode="concat"``)."""
    z_in = jnp.einsum("bti,din->dtbn", x, kernels_i) + biases[:, None, None, :]
    z_in = jnp.stack([z_in[0], z_in[1, ::-1]], axis=1)  # (T, 2, batch, 4h)
    hs = recurrence(z_in, kernels_h, unroll)  # (T, 2, batch, h)
    return jnp.concatenate([hs[:, 0], hs[::-1, 1]], axis=-1).transpose(1, 0, 2)
