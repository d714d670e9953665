"""Multi-head attention with optional clipped relative positions (Shaw et al., 2018).

A Flax Linen re-implementation of the attention layer omnizart uses in its beat model
(``blstm_attn``) and its chord model (Harmony Transformer). The computation, per head of width
``d = n_units // n_heads``:

1. ``q, k, v = act(Dense(q_in)), act(Dense(k_in)), act(Dense(v_in))`` (``act`` is ReLU, and every
   projection has a bias), then split the feature axis into ``n_heads`` contiguous chunks;
2. ``logits[i, j] = (q_i . k_j + q_i . a_K[r(i, j)]) / sqrt(d)`` where
   ``r(i, j) = clip(j - i, -max_dist, max_dist)`` indexes a table of ``2 * max_dist + 1`` vectors
   of width ``d`` shared by all heads (the second term only with ``relative_position``);
3. with ``causal``, logits of keys after the query (``j > i``) are replaced by ``-(2**32) + 1``;
4. ``w = dropout(softmax(logits))`` -- dropout acts on the attention weights;
5. ``o_i = sum_j w[i, j] (v_j + a_V[r(i, j)])`` (the table term only with ``relative_position``);
6. heads are concatenated, ``out = LayerNorm(act(Dense(o)) + q_in)`` (a residual onto the *raw*
   query input, so ``q_in`` must already have ``n_units`` features).

Relative-position tables -- a deliberate deviation from omnizart. omnizart builds ``a_K`` and
``a_V`` inside the layer's ``call`` by invoking a fresh (unseeded) Glorot-uniform initializer on
a ``(2 * max_dist + 1, d)`` shape. They are plain tensors, not ``tf.Variable`` s: they are not
trainable, are not saved in checkpoints, are not part of Keras' parameter count, and under
TensorFlow 2.5 (omnizart's pin) a new random draw happens on every forward pass, in training and
at inference alike. This holds for ``blstm_attn`` (beat) exactly as for the chord model, so the
relative-position term there is noise. jaxmir does the evidently intended thing (as in the
Shaw et al. and tensor2tensor designs omnizart cites): ``a_K`` and ``a_V`` are learned
parameters, ``rel_k_emb`` and ``rel_v_emb``, initialised with the same Glorot-uniform
distribution. Each adds ``(2 * max_dist + 1) * d`` parameters over the Keras count (for the beat
setting ``max_dist=800, d=256 // 8 = 32``: ``2 * 1601 * 32 = 102,464``). :func:`omnizart_param_count`
counts a parameter tree the way Keras counts omnizart's model, i.e. without these tables.

Other choices, all mirroring omnizart/Keras: Glorot-uniform kernels and zero biases (Keras'
``Dense`` defaults, where Flax would use LeCun-normal), LayerNorm ``epsilon=1e-3`` (Keras' default),
and a mask value of ``-(2**32) + 1`` rather than ``-inf``. omnizart's ``self_mask`` option (which
sets the diagonal logits to 0, and is never enabled there) is not reproduced.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxmir.nn.dropout import Dropout

RELATIVE_EMBEDDING_NAMES: tuple[str, str] = ("rel_k_emb", "rel_v_emb")
"""Names of the learned relative-position tables (absent from omnizart's parameter count)."""

MASK_VALUE: float = -(2.0**32) + 1.0
"""The logit given to masked (future) keys; omnizart's constant."""


def relative_position_index(q_len: int, k_len: int, max_dist: int) -> np.ndarray:
    """Table row for every (query ``i``, key ``j``) pair: ``clip(j - i, -max_dist, max_dist) + max_dist``.

    Returns an int32 array of shape ``(q_len, k_len)`` with values in ``[0, 2 * max_dist]``; row
    ``max_dist`` of the table is the "same position" vector. This is the same pairing omnizart's
    ``relative_positional_encoding`` builds by concatenation and edge padding.
    """
    dist = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    return (np.clip(dist, -max_dist, max_dist) + max_dist).astype(np.int32)


def omnizart_param_count(params: Mapping[str, Any]) -> int:
    """Number of parameters as Keras counts the equivalent omnizart model.

    Sums the sizes of all leaves of ``params`` except the relative-position tables
    (:data:`RELATIVE_EMBEDDING_NAMES`), which are not trainable weights in omnizart. Works on
    concrete arrays and on ``jax.ShapeDtypeStruct`` leaves (from ``jax.eval_shape``).
    """
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = [getattr(p, "key", getattr(p, "name", None)) for p in path]
        if any(k in RELATIVE_EMBEDDING_NAMES for k in keys):
            continue
        total += math.prod(leaf.shape)
    return total


class MultiHeadAttention(nn.Module):
    """omnizart's multi-head attention (see module docstring), with learned relative tables.

    Attributes:
        n_units: width of every projection and of the output; must equal the query's feature size
            (residual connection) and be divisible by ``n_heads``.
        n_heads: number of attention heads.
        dropout_rate: dropout on the attention weights (uses the ``'dropout'`` rng collection).
        activation: applied after the q/k/v projections and the output projection.
        causal: if True, query ``i`` attends only to keys ``j <= i``.
        relative_position: add learned clipped relative-position vectors to keys and values.
        max_dist: clipping distance of the relative positions.
        dtype: computation dtype (None: inferred from inputs and parameters).
        param_dtype: dtype of the parameters.
    """

    n_units: int
    n_heads: int = 8
    dropout_rate: float = 0.0
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    causal: bool = False
    relative_position: bool = False
    max_dist: int = 16
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self, q: jax.Array, k: jax.Array, v: jax.Array, *, deterministic: bool
    ) -> jax.Array:
        """Attend from ``q`` (batch, Tq, n_units) over ``k``/``v`` (batch, Tk, ·).

        Returns an array of shape (batch, Tq, n_units). ``deterministic=False`` enables dropout
        and then needs a ``'dropout'`` rng.
        """
        if self.n_units % self.n_heads:
            raise ValueError(f"n_units={self.n_units} is not divisible by n_heads={self.n_heads}")
        if q.shape[-1] != self.n_units:
            raise ValueError(
                f"query feature size {q.shape[-1]} must equal n_units={self.n_units} "
                "(residual connection)"
            )
        head_dim = self.n_units // self.n_heads
        glorot = nn.initializers.xavier_uniform()

        def dense(name: str) -> nn.Dense:
            return nn.Dense(
                self.n_units,
                kernel_init=glorot,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                name=name,
            )

        def heads(x: jax.Array) -> jax.Array:  # (B, T, n_units) -> (B, T, H, d)
            return x.reshape(*x.shape[:-1], self.n_heads, head_dim)

        q_h = heads(self.activation(dense("q_dense")(q)))
        k_h = heads(self.activation(dense("k_dense")(k)))
        v_h = heads(self.activation(dense("v_dense")(v)))
        q_len, k_len = q.shape[-2], k.shape[-2]

        logits = jnp.einsum("bqhd,bkhd->bhqk", q_h, k_h)
        if self.relative_position:
            n_vectors = 2 * self.max_dist + 1
            rel_k_table = self.param(
                "rel_k_emb", glorot, (n_vectors, head_dim), self.param_dtype
            ).astype(q_h.dtype)
            rel_v_table = self.param(
                "rel_v_emb", glorot, (n_vectors, head_dim), self.param_dtype
            ).astype(v_h.dtype)
            index = jnp.asarray(relative_position_index(q_len, k_len, self.max_dist))
            logits = logits + jnp.einsum("bqhd,qkd->bhqk", q_h, rel_k_table[index])
        logits = logits / jnp.sqrt(jnp.asarray(head_dim, logits.dtype))

        if self.causal:
            allowed = np.tril(np.ones((q_len, k_len), dtype=bool))
            logits = jnp.where(allowed, logits, jnp.asarray(MASK_VALUE, logits.dtype))

        weights = jax.nn.softmax(logits, axis=-1)
        weights = Dropout(rate=self.dropout_rate)(weights, deterministic=deterministic)

        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v_h)
        if self.relative_position:
            out = out + jnp.einsum("bhqk,qkd->bqhd", weights, rel_v_table[index])

        out = out.reshape(*out.shape[:-2], self.n_units)
        out = self.activation(dense("out_dense")(out)) + q
        return nn.LayerNorm(
            epsilon=1e-3, dtype=self.dtype, param_dtype=self.param_dtype, name="layer_norm"
        )(out)
