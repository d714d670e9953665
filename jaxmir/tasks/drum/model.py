"""omnizart's drum transcription network (``models/spectral_norm_net.py`` ``drum_model``): a
spectral-norm ResNet with SAGAN self-attention and an MLP head, in Flax Linen.

The input is (batch, 120, 120, 4): 4 consecutive mini-beat CQT patches, each (120 frames x 120
bins), stacked on the channel axis exactly as omnizart's loader does (``drum/app.py``
``PopDatasetLoader._get_feature``: ``transpose(patches, (1, 2, 0))``). So axis 1 is **time**
and axis 2 is the **CQT bin** (``feature/wrapper_func.py extract_patch_cqt`` resizes each
(time, bins) slice of the CQT to 120 x 120 without transposing it).

At the paper configuration (``channels=64``, ``dense_width=1024``, ``res_blocks=3``):

* stem (L311-317): ``x * 100``; its first difference along **axis 2** (``tf_diff2``:
  ``d[j] = x[j] - x[j-1]``, with ``d[0] = 0``) is appended, giving 8 channels. Axis 2 is the bin
  axis (see above), so this is a difference across frequency, not time, although one might
  expect a temporal difference for onsets; ``diff_axis`` keeps omnizart's choice by default.
* ``init_resbk`` (``residual_block``, L210-244): reflect-pad 1 -> SN-Conv 3x3 -> ELU ->
  reflect-pad 1 -> SN-Conv 3x3 -> AvgPool 2, plus the shortcut AvgPool 2 -> SN-Conv 1x1:
  (120, 120, 8) -> (60, 60, 64);
* ``fd_resbk`` (``transpose_residual_block``, L247-286): ELU -> pad -> SN-Conv 3x3 -> ELU ->
  pad -> SN-Conv 3x3 -> AvgPool 2, plus the shortcut SN-Conv 1x1 -> AvgPool 2: -> (30, 30, 64);
* ``self_attn`` (``cnn_attention``, L174-207, SAGAN): f = MaxPool2(SN-Conv1x1 c/8),
  g = SN-Conv1x1 c/8, h = MaxPool2(SN-Conv1x1 c/2); ``softmax(g f^T) h`` -> (30, 30, 32) ->
  SN-Conv1x1 c; output ``gamma * o + x`` with a learned scalar ``gamma`` (initialised 0);
* ``md_resbk_0..2``: 3 transposed blocks, the last without pooling (and so, 64 -> 64, without
  a shortcut conv): -> (15, 15) -> (8, 8) -> (8, 8, 64);
* head (L340-353): flatten 4096 -> ``o1 = elu(Dense 1024)``, ``o2 = elu(Dense 1024)(o1)``,
  ``m1 = o1 + 0.25 o2``, ``o3 = elu(Dense 1024)(m1)``, ``m2 = o3 + 0.25 m1``,
  ``of2 = elu(Dense 1024)(m2)``, ``z = Dense 52(of2)``.

All pools are 2 x 2 stride 2 "same" (average pools exclude the padding from the mean, as TF's),
all convs have biases, "SN-Conv" is a conv whose kernel is divided by its spectral norm
(:class:`flax.linen.SpectralNorm`, one power iteration per call).

**Output.** omnizart's head is ``70 tanh(z) + 50`` reshaped to ``(13, 4)``: Dense unit
``j = c * 4 + m`` is class ``c`` at mini-beat ``m`` (class-major). Its prediction code
(``drum/prediction.py merge_batches``) then transposes to (mini-beats, classes). This module
returns the *pre-activation* ``z`` in that final layout::

    out[b, m, c] = z[b, c * mini_beats + m]      # shape (batch, mini_beats=4, classes=13)

and :func:`omnizart_output` applies omnizart's ``70 tanh(z) + 50`` (its targets are
``100 * label``). Returning ``z`` leaves the choice of loss (omnizart's hinge on the scaled
tanh, or a sigmoid BCE) to the task.

**Parameters** (:data:`N_PARAMS` = **7,752,741** trainable):

* convs (kernel + bias): init_resbk 4,672 + 36,928 + 576 = 42,176; fd_resbk, md_resbk_0,
  md_resbk_1 2 x 36,928 + 4,160 = 78,016 each; md_resbk_2 2 x 36,928 = 73,856; attention
  520 + 520 + 2,080 + 2,112 = 5,232: 355,312 in all;
* head: 4,195,328 + 3 x 1,049,600 + 53,300 = 7,397,428;
* ``gamma``: 1.

omnizart's "7.75M trainable" is Keras' count, **7,752,740**: the same layers without
``gamma``, which omnizart creates with ``tf.compat.v1.get_variable`` inside a Keras functional
graph, so Keras never tracks it (it is absent from the shipped checkpoint, is never trained and
stays 0). Neither count includes the spectral-norm power-iteration vectors: Keras keeps ``u``
(1, c_out) and ``v`` (1, k*k*c_in) per SN conv as non-trainable weights (6,688 values), Flax
keeps ``u`` (1, c_out) and the last ``sigma`` per SN conv in ``batch_stats``
(:data:`N_BATCH_STATS` = 1,026 = 1,008 + 18 convs).

Differences from omnizart, and why:

* ``gamma`` is a real parameter (SAGAN's intent); in omnizart it is an untracked variable fixed
  at 0, so its attention branch contributes nothing and its four attention convs never get a
  gradient. Here the attention convs also get no gradient until ``gamma`` moves off 0 (which it
  does from the first step: its own gradient is ``sum(dL/dy * o)``).
* Spectral normalisation is the standard reparameterisation ``W / sigma(W)`` differentiated
  through ``sigma`` (``u``, ``v`` held constant), as in Flax's ``SpectralNorm`` and the SAGAN
  paper (the header says the model was first written for TF 1.12; that code is not in the
  repository). omnizart's TF2 ``SpectralNormalization
  wrapper aliases ``self.w`` to the layer's kernel, so each call *overwrites* the kernel with
  ``W / sigma`` (its ``restore_weights`` is a no-op) and the gradient ignores ``sigma``: a
  projection after every forward pass rather than a reparameterisation. Not reproduced.
* omnizart runs the power iteration on every call (its wrapper is built with
  ``training=True``), including inference. Here ``train=True`` updates ``u`` (and the stored
  ``sigma``); ``train=False`` still computes one power-iteration step from the stored ``u`` to
  normalise, but does not store it, so evaluation is deterministic and side-effect free.
* Initialisers follow Keras' defaults (Glorot-uniform kernels, zero biases); ``u`` starts
  normal (omnizart: truncated normal, std 0.02; its scale is irrelevant after normalisation).
  Flax's ``SpectralNorm`` stores the *normalised* kernel at ``init`` (the Glorot draw divided
  by a one-step estimate of its spectral norm, so the top singular value is a little above 1),
  and ``sigma`` starts at 1; since ``W / sigma(W)`` is scale-free this changes only the
  gradients' initial scale, not the function.
* The model returns the pre-tanh ``z`` transposed to (mini-beats, classes); see **Output**.
* The attention's query/key width ``channels // 8`` is at least 1 (only matters below 8
  channels, a size omnizart never built).

``__call__(x, train=False)``: with ``train=True`` pass ``mutable=["batch_stats"]`` (the
power-iteration vectors are updated). ``conv_impl`` picks the convolutions' weight-gradient path
(:mod:`jaxmir.nn.conv`; XLA:CPU's native conv weight gradient is slow: one paper-size batch of 4
took ~0.7 s forward+backward with "matmul" against ~1.3 s "native" on a loaded 2-core CPU); the
parameters are the same either way. A small preset for tests: ``DrumNet(frames=32, bins=32, channels=16,
dense_width=64)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxmir.nn.conv import conv_fn

N_PARAMS: int = 7_752_741
"""Trainable parameters of the paper configuration, ``gamma`` included."""
N_PARAMS_OMNIZART: int = 7_752_740
"""omnizart's Keras trainable count (its ``gamma`` is untracked; see the module docstring)."""
N_BATCH_STATS: int = 1_026
"""Spectral-norm state of the paper configuration: ``u`` (c_out) and ``sigma`` per SN conv."""
INPUT_SHAPE: tuple[int, int, int] = (120, 120, 4)
N_CLASSES: int = 13
INPUT_SCALE: float = 100.0
"""omnizart multiplies the (L2-normalised, ~0.1) CQT patches by 100 before the first conv."""

_KERNEL_INIT = nn.initializers.xavier_uniform()  # Keras' glorot_uniform


def omnizart_output(z: jax.Array) -> jax.Array:
    """omnizart's head activation ``70 tanh(z) + 50`` (range (-20, 120); targets are
    ``100 * label``), elementwise on :class:`DrumNet`'s output."""
    return 70.0 * jnp.tanh(z) + 50.0


def stack_difference(x: jax.Array, axis: int = 2) -> jax.Array:
    """``x`` with its first difference along ``axis`` appended on the channel axis (omnizart's
    ``tf_diff2``): ``d[j] = x[j] - x[j-1]`` for ``j >= 1`` and ``d[0] = 0``."""
    d = jnp.diff(x, axis=axis)
    zero = jnp.zeros_like(jax.lax.slice_in_dim(x, 0, 1, axis=axis))
    return jnp.concatenate([x, jnp.concatenate([zero, d], axis=axis)], axis=-1)


def _avg_pool(x: jax.Array) -> jax.Array:
    # Keras AveragePooling2D(2, 2, "same"): the padded cell is not counted in the mean.
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME", count_include_pad=False)


def _max_pool(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")


class SNConv(nn.Module):
    """omnizart's ``conv_sa``: optional reflect padding, then a "valid", stride-1 conv with bias
    whose kernel is spectrally normalised (``kernel_size`` x ``kernel_size``). Reflect padding
    is 1 each side for the 3 x 3 convs (``conv_sa``'s ``pad=1`` doubles to 2 at stride 1, split
    1/1), i.e. "same" output size. Params: ``conv/{kernel,bias}``; state:
    ``batch_stats/sn/conv/kernel/{u,sigma}``."""

    features: int
    kernel_size: int = 1
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        p = (self.kernel_size - 1) // 2
        if p:
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
        conv = nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            padding="VALID",
            kernel_init=_KERNEL_INIT,
            conv_general_dilated=conv_fn(self.conv_impl),
            name="conv",
        )
        return nn.SpectralNorm(conv, name="sn")(x, update_stats=train)


class ResidualBlock(nn.Module):
    """omnizart's ``residual_block`` (the first block): conv3 -> ELU -> conv3 -> AvgPool, plus
    AvgPool -> conv1 on the shortcut. Halves the spatial size (rounding up)."""

    channels: int
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = nn.elu(SNConv(self.channels, 3, self.conv_impl, name="res1")(x, train))
        y = _avg_pool(SNConv(self.channels, 3, self.conv_impl, name="res2")(y, train))
        return y + SNConv(self.channels, 1, self.conv_impl, name="shortcut")(_avg_pool(x), train)


class TransposeResidualBlock(nn.Module):
    """omnizart's ``transpose_residual_block`` (a pre-activation block despite the name; nothing
    is transposed): ELU -> conv3 -> ELU -> conv3 -> [AvgPool], plus conv1 -> [AvgPool] on the
    shortcut when pooling or widening, the identity otherwise."""

    channels: int
    to_down: bool = True
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = SNConv(self.channels, 3, self.conv_impl, name="res1")(nn.elu(x), train)
        y = SNConv(self.channels, 3, self.conv_impl, name="res2")(nn.elu(y), train)
        if self.to_down:
            y = _avg_pool(y)
        if self.to_down or x.shape[-1] != self.channels:
            x = SNConv(self.channels, 1, self.conv_impl, name="shortcut")(x, train)
            if self.to_down:
                x = _avg_pool(x)
        return y + x


class SelfAttention(nn.Module):
    """omnizart's ``cnn_attention`` (SAGAN): queries ``g`` (c/8) at every position, keys ``f``
    (c/8) and values ``h`` (c/2) max-pooled 2 x 2, ``softmax(g f^T) h`` projected back to c by a
    1 x 1 conv and added as ``gamma * o + x``. ``gamma`` (shape (1,), as omnizart's) starts at 0,
    so the block begins as the identity and learns how much attention to mix in."""

    channels: int
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        b, hh, ww, _ = x.shape
        # omnizart's widths; at least 1 so that a tiny test model (channels < 8) still attends
        c8, c2 = max(1, self.channels // 8), max(1, self.channels // 2)
        f = _max_pool(SNConv(c8, 1, self.conv_impl, name="f_attn_conv")(x, train))
        g = SNConv(c8, 1, self.conv_impl, name="g_attn_conv")(x, train)
        h = _max_pool(SNConv(c2, 1, self.conv_impl, name="h_attn_conv")(x, train))
        f = f.reshape(b, -1, c8)
        g = g.reshape(b, -1, c8)
        h = h.reshape(b, -1, c2)
        attn = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", g, f), axis=-1)
        o = jnp.einsum("bqk,bkc->bqc", attn, h).reshape(b, hh, ww, c2)
        o = SNConv(self.channels, 1, self.conv_impl, name="out_attn_conv")(o, train)
        gamma = self.param("gamma", nn.initializers.zeros, (1,), jnp.float32)
        return gamma * o + x


class DrumNet(nn.Module):
    """omnizart's drum ``drum_model`` (see the module docstring).

    ``__call__(x (batch, frames, bins, mini_beats), train=False)`` -> (batch, mini_beats,
    classes): the pre-tanh value of omnizart's last Dense, ``out[b, m, c] = z[b, c *
    mini_beats + m]``. Fields: ``channels`` (conv width, 64), ``dense_width`` (head width,
    1024), ``res_blocks`` (omnizart's ``res_block_num``: transposed blocks after the attention,
    all but the last pooling), ``frames``/``bins``/``mini_beats`` (input shape), ``classes``,
    ``diff_axis`` (the axis of the appended difference; omnizart's is 2, the bin axis),
    ``conv_impl`` (auto | native | matmul)."""

    channels: int = 64
    dense_width: int = 1024
    res_blocks: int = 3
    frames: int = INPUT_SHAPE[0]
    bins: int = INPUT_SHAPE[1]
    mini_beats: int = INPUT_SHAPE[2]
    classes: int = N_CLASSES
    diff_axis: int = 2
    conv_impl: str = "auto"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.frames, self.bins, self.mini_beats)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected input (batch, {', '.join(map(str, self.input_shape))}), got {x.shape}"
            )
        if self.diff_axis not in (1, 2):
            raise ValueError(f"diff_axis must be 1 (time) or 2 (bins), not {self.diff_axis}")
        if self.res_blocks < 1:
            raise ValueError(f"res_blocks must be >= 1, not {self.res_blocks}")
        c, impl = self.channels, self.conv_impl
        y = stack_difference(x * INPUT_SCALE, self.diff_axis)
        y = ResidualBlock(c, impl, name="init_resbk")(y, train)
        y = TransposeResidualBlock(c, True, impl, name="fd_resbk")(y, train)
        y = SelfAttention(c, impl, name="self_attn")(y, train)
        n = self.res_blocks
        for i in range(n):
            # omnizart: the first block always pools, the last (if not also the first) does not
            to_down = i == 0 or i != n - 1
            y = TransposeResidualBlock(c, to_down, impl, name=f"md_resbk_{i}")(y, train)

        def dense(features: int, name: str) -> nn.Dense:
            return nn.Dense(features, kernel_init=_KERNEL_INIT, name=name)

        y = y.reshape(y.shape[0], -1)  # NHWC row-major, as TF's reshape
        o1 = nn.elu(dense(self.dense_width, "mdl_nn_mlp_o1")(y))
        o2 = nn.elu(dense(self.dense_width, "mdl_nn_mlp_o2")(o1))
        m1 = o1 + 0.25 * o2
        o3 = nn.elu(dense(self.dense_width, "mdl_nn_mlp_o3")(m1))
        m2 = o3 + 0.25 * m1
        of2 = nn.elu(dense(self.dense_width, "mdl_nn_mlp_of2")(m2))
        z = dense(self.classes * self.mini_beats, "mdl_nn_mlp_of3")(of2)
        # omnizart's reshape (classes, mini_beats), then its prediction code's transpose
        return z.reshape(z.shape[0], self.classes, self.mini_beats).transpose(0, 2, 1)


def abstract_variables(model: DrumNet, batch: int = 1) -> dict[str, Any]:
    """The variable tree as ``jax.ShapeDtypeStruct`` s (``jax.eval_shape``: nothing allocated)."""
    x = jax.ShapeDtypeStruct((batch, *model.input_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def param_counts(model: DrumNet) -> tuple[int, int]:
    """(trainable parameters, spectral-norm ``batch_stats`` entries), without allocating."""
    variables = abstract_variables(model)

    def size(tree: Any) -> int:
        return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))

    return size(variables.get("params", {})), size(variables.get("batch_stats", {}))
