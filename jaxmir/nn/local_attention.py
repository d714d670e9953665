"""2-D local (blocked) multi-head self-attention, as in the Image Transformer.

A Flax Linen re-implementation of the attention omnizart puts in the bottleneck of its music
transcription U-Net (``semantic_segmentation_attn``): omnizart's ``MultiHeadAttention`` layer in
``models/u_net.py`` built on ``local_attention_2d`` in ``models/t2t.py``, itself a TF2 port of
tensor2tensor's ``local_attention_2d`` (Parmar et al., "Image Transformer", ICML 2018).

The computation on a (batch, H, W, C) feature map:

1. ``q, k, v`` = three 3x3 "same" convolutions (with bias) to ``d_model`` channels each; the
   channel axis is split into ``n_heads`` contiguous chunks of ``d = d_model // n_heads``, and
   ``q`` is scaled by ``d ** -0.5``;
2. the (H, W) plane is cut into non-overlapping query blocks of ``query_shape = (qh, qw)``
   (zero-padded at the bottom/right up to a multiple of the block);
3. every query in a block attends, per head, to the keys/values of its *memory block*: the same
   block grown by ``memory_flange = (fh, fw)`` positions on every side, i.e. a window of
   ``(qh + 2 fh, qw + 2 fw)`` positions; windows of neighbouring blocks overlap. Memory positions
   that lie outside the feature map are masked out of the softmax. There is no causal mask;
4. the heads are concatenated back to ``d_model`` channels and a 3x3 "same" convolution *without
   bias* maps them to ``out_channel`` channels. There is no residual connection or normalisation
   inside the layer.

Parameters, exactly as omnizart's layer: ``3 * (9 * C * d_model + d_model) + 9 * d_model *
out_channel``. Kernels are Glorot-uniform and biases zero (Keras' ``Conv2D`` defaults).

Everything is vectorised: query blocks come from a reshape, memory blocks from one gather with
index tables computed (in NumPy) from the static shapes, and the attention itself is two einsums.

Differences from omnizart, and why:

* **Which keys are masked.** omnizart masks a memory position when its per-head key vector is all
  zeros (tensor2tensor's ``embedding_to_padding`` trick). That covers the zero padding, but it
  would also mask a genuine position whose key happens to be exactly zero (e.g. a zero input with
  zero-initialised biases), and a query whose keys were all zero would then attend uniformly to
  padding as well. jaxmir masks exactly the positions outside the feature map, computed from the
  shapes. For any key that is not exactly zero the two agree.
* **Flange padding.** omnizart pads the keys/values with ``[flange[0], flange[1]]`` on *both*
  spatial axes (height gets ``flange[0]`` above and ``flange[1]`` below, width likewise), while
  its windows assume ``flange[0]`` on both sides of the height and ``flange[1]`` on both sides of
  the width; the windows are misaligned whenever ``flange[0] != flange[1]``. jaxmir pads each axis
  by its own flange on both sides, the tensor2tensor behaviour. omnizart only ever uses
  ``(8, 8)``, where both are the same.
* **Single-block shortcut (exact).** When an axis of the feature map fits in one query block, all
  of that axis' flange and block padding is masked, so the attention along that axis is simply over
  the real positions. jaxmir then uses the real extent as the block size and no flange on that
  axis, which gives the same result without materialising the masked positions. omnizart's music
  model hits this case: its 16 x 22 bottleneck (256 x 352 input, /16) is a single (100, 32) block
  for ``attn_1`` -- global attention -- and one block high for ``attn_2``'s (64, 16), so the
  shortcut shrinks the first layer's logits from 3,200 x 5,568 to 352 x 352 per head.
* The softmax is computed in float32 whatever the input dtype (tensor2tensor upcasts it under mixed
  precision too).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

MASK_VALUE: float = -1e9
"""Logit given to memory positions outside the feature map (tensor2tensor's constant)."""


def split_heads_2d(x: jax.Array, n_heads: int) -> jax.Array:
    """(batch, H, W, C) -> (batch, n_heads, H, W, C // n_heads); head ``i`` gets the ``i``-th
    contiguous chunk of channels."""
    b, h, w, c = x.shape
    if c % n_heads:
        raise ValueError(f"{c} channels cannot be split into {n_heads} heads")
    return x.reshape(b, h, w, n_heads, c // n_heads).transpose(0, 3, 1, 2, 4)


def combine_heads_2d(x: jax.Array) -> jax.Array:
    """Inverse of :func:`split_heads_2d`: (batch, n_heads, H, W, d) -> (batch, H, W, n_heads*d)."""
    b, n, h, w, d = x.shape
    return x.transpose(0, 2, 3, 1, 4).reshape(b, h, w, n * d)


def _axis_plan(size: int, block: int, flange: int) -> tuple[int, int, int]:
    """(block, flange, n_blocks) actually used along one axis of length ``size``."""
    if block <= 0 or flange < 0:
        raise ValueError(f"need block > 0 and flange >= 0, got {block} and {flange}")
    n_blocks = -(-size // block)
    if n_blocks == 1:  # exact shortcut: everything beyond the real extent is masked anyway
        return size, 0, 1
    return block, flange, n_blocks


def _window_index(n_blocks: int, block: int, flange: int) -> np.ndarray:
    """(n_blocks, block + 2 flange) positions, in the flange-padded axis, of each memory window."""
    return np.arange(n_blocks)[:, None] * block + np.arange(block + 2 * flange)[None, :]


def local_attention_2d(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    query_shape: tuple[int, int] = (8, 16),
    memory_flange: tuple[int, int] = (8, 16),
) -> jax.Array:
    """Blocked local 2-D attention; the counterpart of omnizart's/tensor2tensor's
    ``local_attention_2d`` (see the module docstring for the exact semantics).

    ``q``, ``k``: (batch, heads, H, W, d_k); ``v``: (batch, heads, H, W, d_v). ``q`` must already
    be scaled. Returns (batch, heads, H, W, d_v).
    """
    if q.shape[:-1] != k.shape[:-1] or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"incompatible q/k/v shapes {q.shape}, {k.shape}, {v.shape}")
    b, n, h, w, _ = q.shape
    qh, fh, nbh = _axis_plan(h, query_shape[0], memory_flange[0])
    qw, fw, nbw = _axis_plan(w, query_shape[1], memory_flange[1])
    hp, wp = nbh * qh, nbw * qw

    def pad(x: jax.Array, top: int, bottom: int, left: int, right: int) -> jax.Array:
        return jnp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right), (0, 0)))

    # Query blocks: (b, n, nbh, nbw, qh * qw, d).
    qb = pad(q, 0, hp - h, 0, wp - w)
    qb = qb.reshape(b, n, nbh, qh, nbw, qw, -1).transpose(0, 1, 2, 4, 3, 5, 6)
    qb = qb.reshape(b, n, nbh, nbw, qh * qw, -1)

    # Memory windows: (b, n, nbh, nbw, mh * mw, d), gathered with static index tables.
    rows = _window_index(nbh, qh, fh)[:, None, :, None]  # (nbh, 1, mh, 1)
    cols = _window_index(nbw, qw, fw)[None, :, None, :]  # (1, nbw, 1, mw)
    m = rows.shape[2] * cols.shape[3]

    def windows(x: jax.Array) -> jax.Array:
        x = pad(x, fh, hp - h + fh, fw, wp - w + fw)
        return x[:, :, rows, cols, :].reshape(b, n, nbh, nbw, m, -1)

    kb, vb = windows(k), windows(v)
    valid = np.zeros((hp + 2 * fh, wp + 2 * fw), dtype=bool)
    valid[fh : fh + h, fw : fw + w] = True
    valid = valid[rows, cols].reshape(nbh, nbw, 1, m)  # same for every batch item and head

    logits = jnp.einsum("bnijqd,bnijmd->bnijqm", qb, kb).astype(jnp.float32)
    logits = jnp.where(valid, logits, MASK_VALUE)
    weights = jax.nn.softmax(logits, axis=-1).astype(vb.dtype)
    out = jnp.einsum("bnijqm,bnijmd->bnijqd", weights, vb)

    out = out.reshape(b, n, nbh, nbw, qh, qw, -1).transpose(0, 1, 2, 4, 3, 5, 6)
    return out.reshape(b, n, hp, wp, -1)[:, :, :h, :w, :]


def _keras_conv(features: int, use_bias: bool, name: str) -> nn.Conv:
    return nn.Conv(
        features,
        (3, 3),
        padding="SAME",
        use_bias=use_bias,
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.zeros,
        name=name,
    )


class LocalMultiHeadAttention2D(nn.Module):
    """omnizart's 2-D ``MultiHeadAttention`` (``models/u_net.py``).

    ``__call__(x (batch, H, W, C))`` -> (batch, H, W, out_channel). Submodules: ``q_conv``,
    ``k_conv``, ``v_conv`` (3x3, ``d_model`` channels, bias) and ``out_conv`` (3x3,
    ``out_channel`` channels, no bias). omnizart's defaults: ``out_channel=64, d_model=32,
    n_heads=8, query_shape=(128, 24), memory_flange=(8, 8)``.
    """

    out_channel: int = 64
    d_model: int = 32
    n_heads: int = 8
    query_shape: tuple[int, int] = (128, 24)
    memory_flange: tuple[int, int] = (8, 8)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        q = split_heads_2d(_keras_conv(self.d_model, True, "q_conv")(x), self.n_heads)
        k = split_heads_2d(_keras_conv(self.d_model, True, "k_conv")(x), self.n_heads)
        v = split_heads_2d(_keras_conv(self.d_model, True, "v_conv")(x), self.n_heads)
        q = q * (1.0 / math.sqrt(self.d_model // self.n_heads))
        out = local_attention_2d(
            q, k, v, query_shape=tuple(self.query_shape), memory_flange=tuple(self.memory_flange)
        )
        return _keras_conv(self.out_channel, False, "out_conv")(combine_heads_2d(out))
