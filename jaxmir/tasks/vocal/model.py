"""omnizart's vocal note-segmentation network (``models/pyramid_net.py``): PyramidNet-110 with
ShakeDrop, in Flax Linen.

On a (batch, 19, 174, 9) NHWC input (19 frames of context, 174 vocal-CFP bins, 9 channels),
at the paper configuration (``depth=110``: 18 blocks per stage, ``alpha=270``, stem width 16):

* stem (L174-184, L219-222): Conv 16 @ 7 x 7, stride 2, "valid", no bias, He-normal, **ReLU**
  -> BatchNorm -> ReLU -> MaxPool 2 x 2 (stride 2, "valid"): (7, 84, 16) -> (3, 42, 16);
* 3 stages of ``PyramidBlock`` s (L58-111, L186-210), strides 1, 2, 2 on each stage's first
  block: (3, 42) -> (2, 21) -> (1, 11). Block ``k`` (0..53) is ``c_k = int(ceil(alpha (k+1)) /
  54 + 16)`` = 21, 26, ..., 286 wide (L169-171; Keras truncates float widths with ``int``) and
  computes ``BN -> Conv3x3(stride, bias, ReLU) -> BN -> ReLU -> Conv3x3(no bias, ReLU) -> BN ->
  ShakeDrop(p_keep = 1 - 0.5 (k+1)/54)``, convs "same", VarianceScaling(0.1) (fan-in, truncated
  normal) kernels, plus the shortcut: 2 x 2 stride-2 "same" average pool when strided (padding
  not counted, as TF), then zero channels appended up to ``c_k``;
* head (L212-230): ReLU -> AvgPool (1, 11) ("valid") -> flatten (286) -> Dense 19 * 6 ->
  reshape (19, 6).

Parameters (block ``k`` from ``c'`` = previous width, 16 for the first, to ``c``: BN 2c' + conv
9c'c + c + BN 2c + conv 9c^2 + BN 2c):

* stem 7 * 7 * 9 * 16 + 2 * 16 = 7,088;
* stage 1 (16 -> 21 ... 106) 1,480,860; stage 2 (-> 111 ... 196) 7,747,020; stage 3
  (-> 201 ... 286) 19,261,980;
* head 286 * 114 + 114 = 32,718;

total **28,529,666** (:data:`N_PARAMS`, omnizart's count), plus 49,226 BatchNorm moving
statistics (:data:`N_BATCH_STATS`: 32 + sum over blocks of 2c' + 4c).

Differences from omnizart, and why:

* The model returns **logits**; omnizart's Dense applies the sigmoid. The loss applies it
  (numerically stable BCE); inference must apply ``jax.nn.sigmoid`` explicitly.
* ``batch_norm_out`` (L185) is created but never called in omnizart, so it owns no variables;
  it is left out (the counts above are unchanged).
* Inference uses ShakeDrop's expected value (``p_keep * x``, omnizart's ``is_training=False``
  branch, which its ``test_step`` uses). omnizart's ``model.predict`` (``vocal/prediction.py``)
  never passes ``is_training=False`` (Keras' ``training=False`` is not that argument), so its
  shipped inference is stochastic; deterministic predictions are the intent.
* With ``train=True`` BatchNorm uses batch statistics and updates ``batch_stats``. omnizart's
  custom ``train_step`` calls the model without Keras' ``training=True``, so its BatchNorm layers
  probably normalised with their (never updated) moving statistics while training; this is read
  from Keras' code, not verified by running it, and not reproduced.
* Initialisers and BatchNorm follow Keras' defaults (Glorot-uniform Dense, zero biases,
  BatchNorm ``momentum=0.99, epsilon=1e-3``); the kernels come from the init rng rather than
  omnizart's ``seed=int(time.time())``.
* ShakeDrop draws its gate per element, as omnizart does (``shakedrop_gate="example"`` for the
  paper's per-example gate); see :mod:`jaxmir.nn.shakedrop`.

``__call__(x, train=False)``: with ``train=True`` ShakeDrop is random (needs a ``'shakedrop'``
rng) and BatchNorm uses batch statistics (pass ``mutable=["batch_stats"]``); with
``train=False`` it scales by ``p_keep`` and uses the moving averages. ``conv_impl`` picks the
convolutions' weight-gradient path (:mod:`jaxmir.nn.conv`); the parameters are the same.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxmir.nn.conv import conv_fn
from jaxmir.nn.shakedrop import ShakeDrop

N_PARAMS: int = 28_529_666
"""Trainable parameters of the paper configuration (omnizart's ``vocal_semi``)."""
N_BATCH_STATS: int = 49_226
"""BatchNorm moving statistics (mean and variance) of the paper configuration."""
INPUT_SHAPE: tuple[int, int, int] = (19, 174, 9)

_BN_MOMENTUM = 0.99  # Keras' BatchNormalization defaults
_BN_EPSILON = 1e-3
_BLOCK_INIT = nn.initializers.variance_scaling(0.1, "fan_in", "truncated_normal")


def _bn(train: bool, momentum: float, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train, momentum=momentum, epsilon=_BN_EPSILON, name=name
    )


def shortcut(x: jax.Array, channels: int, strides: int) -> jax.Array:
    """omnizart's ``PyramidBlock._shortcut``: a 2 x 2 "same" average pool (padding excluded from
    the mean, as TF's) when strided, then zero channels appended up to ``channels``."""
    if strides != 1:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2), padding="SAME", count_include_pad=False)
    extra = channels - x.shape[-1]
    if extra < 0:
        raise ValueError(f"a pyramid block cannot narrow {x.shape[-1]} to {channels} channels")
    return jnp.pad(x, ((0, 0),) * (x.ndim - 1) + ((0, extra),)) if extra else x


class PyramidBlock(nn.Module):
    """omnizart's ``PyramidBlock`` (see the module docstring)."""

    channels: int
    strides: int = 1
    p_keep: float = 1.0
    shakedrop: bool = True
    shakedrop_gate: str = "element"
    conv_impl: str = "auto"
    bn_momentum: float = _BN_MOMENTUM

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def conv(strides: int, bias: bool, name: str) -> nn.Conv:
            return nn.Conv(
                self.channels,
                (3, 3),
                strides=(strides, strides),
                padding="SAME",
                use_bias=bias,
                kernel_init=_BLOCK_INIT,
                name=name,
                conv_general_dilated=conv_fn(self.conv_impl),
            )

        y = _bn(train, self.bn_momentum, "batch_norm_1")(x)
        y = nn.relu(conv(self.strides, True, "conv_1")(y))
        y = nn.relu(_bn(train, self.bn_momentum, "batch_norm_2")(y))
        y = nn.relu(conv(1, False, "conv_2")(y))
        y = _bn(train, self.bn_momentum, "batch_norm_3")(y)
        if self.shakedrop:
            y = ShakeDrop(self.p_keep, gate=self.shakedrop_gate, name="shakedrop")(
                y, deterministic=not train
            )
        return y + shortcut(x, self.channels, self.strides)


class PyramidNet(nn.Module):
    """omnizart's vocal ``PyramidNet``. ``__call__(x (batch, frames, 174, 9), train)`` ->
    (batch, frames, out_classes) logits. ``depth`` (6n + 2) gives n blocks per stage; ``alpha``
    is the total width added over all blocks; ``stem_channels`` is omnizart's
    ``min_kernel_size``. A tiny preset: ``PyramidNet(depth=8, alpha=8, stem_channels=4)``."""

    depth: int = 110
    alpha: float = 270
    stem_channels: int = 16
    out_classes: int = 6
    frames: int = INPUT_SHAPE[0]
    bins: int = INPUT_SHAPE[1]
    in_channels: int = INPUT_SHAPE[2]
    shakedrop: bool = True
    shakedrop_gate: str = "element"
    conv_impl: str = "auto"
    bn_momentum: float = _BN_MOMENTUM

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.frames, self.bins, self.in_channels)

    @property
    def blocks_per_stage(self) -> int:
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(
                f"depth must be 6n + 2 with n >= 1 (20, 56, 110, ...), not {self.depth}"
            )
        return (self.depth - 2) // 6

    def block_channels(self) -> tuple[int, ...]:
        """Each block's width, as omnizart (L169-171) with Keras' ``int`` on float widths."""
        total = 3 * self.blocks_per_stage
        return tuple(
            int(math.ceil(self.alpha * (k + 1)) / total + self.stem_channels) for k in range(total)
        )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected input (batch, {', '.join(map(str, self.input_shape))}), got {x.shape}"
            )
        y = nn.Conv(
            self.stem_channels,
            (7, 7),
            strides=(2, 2),
            padding="VALID",
            use_bias=False,
            kernel_init=nn.initializers.he_normal(),
            name="conv_1",
            conv_general_dilated=conv_fn(self.conv_impl),
        )(x)
        y = nn.relu(_bn(train, self.bn_momentum, "batch_norm_1")(nn.relu(y)))
        y = nn.max_pool(y, (2, 2), strides=(2, 2), padding="VALID")
        n = self.blocks_per_stage
        for k, channels in enumerate(self.block_channels()):
            y = PyramidBlock(
                channels,
                strides=2 if k in (n, 2 * n) else 1,
                p_keep=1.0 - 0.5 * (k + 1) / (3 * n),
                shakedrop=self.shakedrop,
                shakedrop_gate=self.shakedrop_gate,
                conv_impl=self.conv_impl,
                bn_momentum=self.bn_momentum,
                name=f"block_{k}",
            )(y, train)
        y = nn.avg_pool(nn.relu(y), (1, 11), strides=(1, 11), padding="VALID")
        y = nn.Dense(
            self.frames * self.out_classes,
            kernel_init=nn.initializers.xavier_uniform(),
            name="dense_out",
        )(y.reshape(y.shape[0], -1))
        return y.reshape(y.shape[0], self.frames, self.out_classes)


def abstract_variables(model: PyramidNet, batch: int = 1) -> dict[str, Any]:
    """The variable tree as ``jax.ShapeDtypeStruct`` s (``jax.eval_shape``: nothing allocated)."""
    x = jax.ShapeDtypeStruct((batch, *model.input_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def param_counts(model: PyramidNet) -> tuple[int, int]:
    """(trainable parameters, BatchNorm moving statistics), without allocating the model."""
    variables = abstract_variables(model)

    def size(tree: Any) -> int:
        return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))

    return size(variables.get("params", {})), size(variables.get("batch_stats", {}))
