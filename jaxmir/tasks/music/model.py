"""The music transcription networks: omnizart's U-Nets from ``models/u_net.py`` in Flax Linen.

Both read a (batch, timesteps, feature_num, ch_num) CFP segment (NHWC: time, frequency, feature
channels) and return per-pixel **logits** of shape (batch, timesteps, feature_num, out_class):

* :class:`SemanticSegmentationAttn` -- omnizart's ``semantic_segmentation_attn``, the music app's
  default ("attn"). A 7x7 stem, a residual pre-activation encoder down to /16, two local 2-D
  multi-head attention layers in the bottleneck (:mod:`jaxmir.nn.local_attention`), and a
  transposed-convolution decoder with skip connections.
* :class:`SemanticSegmentation` -- omnizart's ``semantic_segmentation`` ("aspp"), the same U-Net
  with wider, flatter channels and an atrous-spatial-pyramid (multi-grid) bottleneck instead of
  the attention; also the network of omnizart's vocal_contour app (``feature_num=384, ch_num=1,
  out_class=2``).

Building blocks (as omnizart's):

* ``conv_block``: ``Conv3x3(BN(ReLU(x)) -> Dropout)`` twice (the first strided), added to ``x``,
  or to a 1x1 strided convolution of ``x`` when strided.
* ``transpose_conv_block``: the same with a 3x3 convolution then a 3x3 stride-2 transposed
  convolution, the skip a 1x1 stride-2 transposed convolution.
* decoder merge: ``y = tconv_block(x)``; ``y + Conv1x1(Dropout(concat(BN(ReLU(y)),
  BN(ReLU(encoder_skip)))))``.
* head: ``Conv1x1(Dropout(BN(ReLU(x))))`` to ``out_class`` channels.

Sizes, counted with ``jax.eval_shape`` (see :func:`param_counts`) -- trainable parameters plus
BatchNorm moving statistics:

* attn, music paper config (ch_num=2, out_class=23, 256 x 352): 8,333,687 + 10,880, exactly
  omnizart's shipped ``music_note_stream`` checkpoint;
* aspp, same config: 17,628,183 + 21,248;
* aspp, vocal_contour config (ch_num=1, feature_num=384, out_class=2): 17,619,202 + 21,248
  (the count does not depend on ``feature_num`` or ``timesteps``).

``base`` sets the width: every channel count is a fixed multiple of it (attn: stem ``base``,
levels ``base, 2, 4, 8 x base``, attention ``d_model`` ``base`` and ``2 base``; aspp: ``base``
everywhere, ``2 base`` at level 4, ``4 base`` in the pyramid), so ``base=16`` halves the attn
model's channels with the same architecture. The defaults (32 and 128) are omnizart's.

Differences from omnizart, and why:

* The models return **logits**. omnizart's ``prediction`` convolution is linear too (the music
  losses apply the sigmoid), so this is no change in the network; inference must apply a
  sigmoid explicitly.
* Defaults are the music app's configuration (``ch_num=2`` for [Spec, Ceps], ``out_class=23``
  for note-stream labels); omnizart's builder functions default to ``ch_num=1, out_class=2``,
  but the app always passes its settings.
* ``SemanticSegmentation.dropout`` applies to every dropout layer. omnizart's builder passes its
  ``dropout`` argument only to the pyramid and the decoder merges, while the encoder/decoder
  blocks keep their hard-wired 0.4; at the default 0.4 the two are identical.
* The attention masks padding by position rather than by all-zero keys, pads its flange
  symmetrically per axis, and takes an exact shortcut for single-block axes; see
  :mod:`jaxmir.nn.local_attention`.
* Initialisers and BatchNorm mirror Keras' defaults rather than Flax's: Glorot-uniform kernels,
  zero biases, BatchNorm ``momentum=0.99, epsilon=1e-3``. Transposed convolutions use
  ``transpose_kernel=True`` with "SAME" padding, which is exactly TensorFlow's
  ``conv2d_transpose`` (gradient of a strided "SAME" convolution, kernel stored as
  ``(kh, kw, out, in)``), so the output alignment matches Keras.

``__call__(x, train=False)``: with ``train=True`` dropout is active (needs a ``'dropout'`` rng)
and BatchNorm uses batch statistics and updates ``batch_stats`` (pass
``mutable=["batch_stats"]``); with ``train=False`` it uses the moving averages.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxmir.config import ConfigError
from jaxmir.nn.conv import ConvTranspose, conv_fn
from jaxmir.nn.dropout import Dropout
from jaxmir.nn.local_attention import LocalMultiHeadAttention2D

MODEL_NAMES: tuple[str, ...] = ("attn", "aspp")
DOWNSAMPLE: int = 16
"""Total stride of the encoder; input time and frequency sizes must be multiples of it."""

_BN_MOMENTUM = 0.99  # Keras' BatchNormalization defaults
_BN_EPSILON = 1e-3


def _conv(
    features: int,
    kernel: int,
    strides: int = 1,
    dilation: int = 1,
    name: str | None = None,
    impl: str = "native",
):
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        kernel_dilation=(dilation, dilation),
        padding="SAME",
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.zeros,
        name=name,
        conv_general_dilated=conv_fn(impl),
    )


def _tconv(
    features: int, kernel: int, strides: int = 2, name: str | None = None, impl: str = "native"
):
    """Keras' ``Conv2DTranspose(padding="same")`` (flax ``ConvTranspose(transpose_kernel=True)``
    with the same parameters; ``impl`` picks the weight-gradient kernel, see jaxmir.nn.conv)."""
    return ConvTranspose(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding="SAME",
        kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.zeros,
        name=name,
        impl=impl,
    )


def _bn(train: bool, name: str | None = None, momentum: float = _BN_MOMENTUM) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train, momentum=momentum, epsilon=_BN_EPSILON, name=name
    )


def _bn_relu(
    x: jax.Array, train: bool, name: str | None = None, momentum: float = _BN_MOMENTUM
) -> jax.Array:
    """Keras' ``BatchNormalization()(Activation("relu")(x))``."""
    return _bn(train, name, momentum)(nn.relu(x))


class ConvBlock(nn.Module):
    """omnizart's ``conv_block``: two pre-activation 3x3 convolutions with a residual; the first
    convolution (and a 1x1 skip projection) carries ``strides``."""

    channel: int
    strides: int = 1
    dilation: int = 1
    dropout: float = 0.4
    conv_impl: str = "native"
    bn_momentum: float = _BN_MOMENTUM

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        skip = x
        y = Dropout(self.dropout, deterministic=not train)(
            _bn_relu(x, train, momentum=self.bn_momentum)
        )
        y = _conv(self.channel, 3, self.strides, self.dilation, impl=self.conv_impl)(y)
        y = Dropout(self.dropout, deterministic=not train)(
            _bn_relu(y, train, momentum=self.bn_momentum)
        )
        y = _conv(self.channel, 3, 1, self.dilation, impl=self.conv_impl)(y)
        if self.strides != 1:
            skip = _conv(self.channel, 1, self.strides, name="skip", impl=self.conv_impl)(skip)
        return y + skip


class TransposeConvBlock(nn.Module):
    """omnizart's ``transpose_conv_block``: pre-activation 3x3 convolution then 3x3 transposed
    convolution (``strides``), with a 1x1 transposed-convolution skip when strided."""

    channel: int
    strides: int = 2
    dropout: float = 0.4
    conv_impl: str = "native"
    bn_momentum: float = _BN_MOMENTUM

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        skip = x
        y = Dropout(self.dropout, deterministic=not train)(
            _bn_relu(x, train, momentum=self.bn_momentum)
        )
        y = _conv(self.channel, 3, impl=self.conv_impl)(y)
        y = Dropout(self.dropout, deterministic=not train)(
            _bn_relu(y, train, momentum=self.bn_momentum)
        )
        y = _tconv(self.channel, 3, self.strides, impl=self.conv_impl)(y)
        if self.strides != 1:
            skip = _tconv(self.channel, 1, self.strides, name="skip", impl=self.conv_impl)(skip)
        return y + skip


class SkipMerge(nn.Module):
    """omnizart's decoder merge: ``x + Conv1x1(Dropout(concat(BN(ReLU(x)), BN(ReLU(skip)))))``."""

    channel: int
    dropout: float = 0.4
    conv_impl: str = "native"
    bn_momentum: float = _BN_MOMENTUM

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array, train: bool = False) -> jax.Array:
        y = jnp.concatenate(
            [
                _bn_relu(x, train, momentum=self.bn_momentum),
                _bn_relu(skip, train, momentum=self.bn_momentum),
            ],
            axis=-1,
        )
        y = Dropout(self.dropout, deterministic=not train)(y)
        return x + _conv(self.channel, 1, impl=self.conv_impl)(y)


def _check_input(x: jax.Array, shape: tuple[int, int, int]) -> None:
    if x.ndim != 4 or tuple(x.shape[1:]) != shape:
        raise ValueError(
            f"expected input (batch, timesteps, feature_num, ch_num) = (batch, {shape[0]}, "
            f"{shape[1]}, {shape[2]}), got {x.shape}"
        )
    if shape[0] % DOWNSAMPLE or shape[1] % DOWNSAMPLE:
        raise ValueError(
            f"timesteps and feature_num must be multiples of {DOWNSAMPLE}, got {shape}"
        )


def _encoder(
    x: jax.Array,
    widths: tuple[int, ...],
    depths: tuple[int, ...],
    dropout: float,
    train: bool,
    conv_impl: str = "native",
    bn_momentum: float = _BN_MOMENTUM,
) -> list[jax.Array]:
    """Stride-2 ``ConvBlock`` then ``depth - 1`` plain ones per level; returns every level's
    output (en_l1 .. en_l4). Called inside a compact ``__call__``."""
    levels = []
    for level, (width, depth) in enumerate(zip(widths, depths, strict=True), start=1):
        for i in range(depth):
            x = ConvBlock(
                width,
                2 if i == 0 else 1,
                dropout=dropout,
                conv_impl=conv_impl,
                bn_momentum=bn_momentum,
                name=f"en{level}_{i}",
            )(x, train)
        levels.append(x)
    return levels


def _decoder(
    x: jax.Array,
    skips: list[jax.Array],
    widths: tuple[int, int, int, int],
    dropout: float,
    train: bool,
    conv_impl: str = "native",
    bn_momentum: float = _BN_MOMENTUM,
) -> jax.Array:
    """Four ``TransposeConvBlock`` s (``widths``), the first three each merged with the matching
    encoder level (``skips`` = en_l3, en_l2, en_l1)."""
    for level, width in enumerate(widths, start=1):
        x = TransposeConvBlock(
            width, dropout=dropout, conv_impl=conv_impl, bn_momentum=bn_momentum, name=f"de{level}"
        )(x, train)
        if level <= len(skips):
            x = SkipMerge(
                width,
                dropout=dropout,
                conv_impl=conv_impl,
                bn_momentum=bn_momentum,
                name=f"de{level}_merge",
            )(x, skips[level - 1], train)
    return x


def _head(
    x: jax.Array,
    out_class: int,
    dropout: float,
    train: bool,
    conv_impl: str = "native",
    bn_momentum: float = _BN_MOMENTUM,
) -> jax.Array:
    x = _bn_relu(x, train, name="head_bn", momentum=bn_momentum)
    x = Dropout(dropout, deterministic=not train)(x)
    return _conv(out_class, 1, name="prediction", impl=conv_impl)(x)


class SemanticSegmentationAttn(nn.Module):
    """omnizart's ``semantic_segmentation_attn`` (music "attn").

    ``__call__(x (batch, timesteps, feature_num, ch_num), train)`` -> logits
    (batch, timesteps, feature_num, out_class). ``base`` is the stem width (omnizart: 32; must be
    a multiple of ``n_heads``). ``attn_query_shapes`` / ``memory_flange`` are in bottleneck
    positions (the input divided by 16) and do not scale with ``base``.
    """

    feature_num: int = 352
    timesteps: int = 256
    ch_num: int = 2
    out_class: int = 23
    dropout: float = 0.4
    base: int = 32
    n_heads: int = 8
    attn_query_shapes: tuple[tuple[int, int], tuple[int, int]] = ((100, 32), (64, 16))
    memory_flange: tuple[int, int] = (8, 8)
    conv_impl: str = "native"  # native | matmul | auto (see jaxmir.nn.conv); same parameters
    bn_momentum: float = _BN_MOMENTUM  # Keras default; lower it for short runs

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(timesteps, feature_num, ch_num), the expected input without the batch axis."""
        return (self.timesteps, self.feature_num, self.ch_num)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        _check_input(x, self.input_shape)
        b = self.base
        x = _conv(b, 7, name="stem", impl=self.conv_impl)(x)
        en_l1, en_l2, en_l3, en_l4 = _encoder(
            x,
            (b, 2 * b, 4 * b, 8 * b),
            (2, 3, 4, 5),
            self.dropout,
            train,
            self.conv_impl,
            self.bn_momentum,
        )

        f = en_l4
        for i, (d_model, out_channel) in enumerate(((b, 2 * b), (2 * b, 4 * b)), start=1):
            f = LocalMultiHeadAttention2D(
                out_channel=out_channel,
                d_model=d_model,
                n_heads=self.n_heads,
                query_shape=tuple(self.attn_query_shapes[i - 1]),
                memory_flange=tuple(self.memory_flange),
                name=f"attn_{i}",
            )(f)
            f = _bn_relu(f, train, name=f"attn_{i}_bn", momentum=self.bn_momentum)
        f = jnp.concatenate([en_l4, f], axis=-1)
        f = _conv(8 * b, 1, name="bottleneck_proj", impl=self.conv_impl)(f) + en_l4

        x = _decoder(
            f,
            [en_l3, en_l2, en_l1],
            (4 * b, 2 * b, 2 * b, 2 * b),
            self.dropout,
            train,
            self.conv_impl,
            self.bn_momentum,
        )
        return _head(x, self.out_class, self.dropout, train, self.conv_impl, self.bn_momentum)


class SemanticSegmentation(nn.Module):
    """omnizart's ``semantic_segmentation`` (music "aspp"; also vocal_contour's network).

    ``__call__(x (batch, timesteps, feature_num, ch_num), train)`` -> logits
    (batch, timesteps, feature_num, out_class). ``base`` is the encoder/decoder width
    (omnizart: 128); level 4 has ``2 base`` channels and every pyramid branch ``4 base``.
    ``multi_grid_layer_n`` pyramid layers are stacked, each a 1x1 branch plus
    ``multi_grid_n`` 3x3 branches with dilations ``1, 2, 4, ...`` (``2 ** i``).
    """

    feature_num: int = 352
    timesteps: int = 256
    multi_grid_layer_n: int = 1
    multi_grid_n: int = 5
    ch_num: int = 2
    out_class: int = 23
    dropout: float = 0.4
    base: int = 128
    conv_impl: str = "native"  # native | matmul | auto (see jaxmir.nn.conv); same parameters
    bn_momentum: float = _BN_MOMENTUM  # Keras default; lower it for short runs

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(timesteps, feature_num, ch_num), the expected input without the batch axis."""
        return (self.timesteps, self.feature_num, self.ch_num)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        _check_input(x, self.input_shape)
        b = self.base
        drop = self.dropout
        x = _conv(b, 7, name="stem", impl=self.conv_impl)(x)
        en_l1, en_l2, en_l3, en_l4 = _encoder(
            x, (b, b, b, 2 * b), (2, 3, 4, 5), drop, train, self.conv_impl, self.bn_momentum
        )

        f = en_l4
        for layer in range(self.multi_grid_layer_n):
            f = Dropout(drop, deterministic=not train)(
                _bn_relu(f, train, name=f"grid{layer}_in_bn", momentum=self.bn_momentum)
            )
            branches = [
                _bn(train, f"grid{layer}_b0_bn", self.bn_momentum)(
                    nn.relu(_conv(4 * b, 1, impl=self.conv_impl)(f))
                )
            ]
            for i in range(self.multi_grid_n):
                y = nn.relu(
                    _conv(
                        4 * b, 3, dilation=2**i, name=f"grid{layer}_d{2**i}", impl=self.conv_impl
                    )(f)
                )
                branches.append(_bn(train, f"grid{layer}_b{i + 1}_bn", self.bn_momentum)(y))
            f = Dropout(drop, deterministic=not train)(jnp.concatenate(branches, axis=-1))
            f = _conv(4 * b, 1, name=f"grid{layer}_proj", impl=self.conv_impl)(f)
        f = _bn_relu(f, train, name="bottleneck_bn", momentum=self.bn_momentum)
        f = _conv(2 * b, 1, name="bottleneck_proj", impl=self.conv_impl)(f) + en_l4

        x = _decoder(
            f, [en_l3, en_l2, en_l1], (b, b, b, b), drop, train, self.conv_impl, self.bn_momentum
        )
        return _head(x, self.out_class, drop, train, self.conv_impl, self.bn_momentum)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """The music model called ``name``: "attn" (:class:`SemanticSegmentationAttn`) or "aspp"
    (:class:`SemanticSegmentation`); ``kwargs`` are the module's fields."""
    if name == "attn":
        return SemanticSegmentationAttn(**kwargs)
    if name == "aspp":
        return SemanticSegmentation(**kwargs)
    raise ConfigError(
        f"model.name: unknown music model {name!r}; choose one of {', '.join(MODEL_NAMES)}"
    )


def abstract_variables(model: nn.Module, batch: int = 1) -> dict[str, Any]:
    """The model's variable tree as ``jax.ShapeDtypeStruct`` s (``jax.eval_shape``; nothing is
    allocated), for a ``(batch, *model.input_shape)`` input."""
    x = jax.ShapeDtypeStruct((batch, *model.input_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def param_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, BatchNorm moving statistics) of ``model``, without allocating it.
    The first is what Keras reports as "trainable", the second its "non-trainable"."""
    variables = abstract_variables(model)

    def size(tree: Any) -> int:
        return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))

    return size(variables.get("params", {})), size(variables.get("batch_stats", {}))
