"""omnizart's patch CNN (``models/patch_cnn.py``) in Flax Linen.

The network classifies one 25 x 25 CFP patch (centred on a spectral peak) as voiced melody or
not. On a (batch, 25, 25, 1) NHWC input:

* Conv 8 @ 5 x 5, "valid", ReLU -> (21, 21, 8); Dropout 0.25;
* Conv 16 @ 3 x 3, "valid", ReLU -> (19, 19, 16); Dropout 0.25;
* MaxPool 2 x 2 (stride 2, "valid": the last row and column are dropped) -> (9, 9, 16);
* Flatten (row-major over height, width, channels, as Keras' ``Flatten`` on NHWC) -> 1,296;
* Dense 128, ReLU; Dropout 0.25; Dense 64, ReLU; Dropout 0.25; Dense 2.

Parameters: 208 + 1,168 + 166,016 + 8,256 + 130 = **175,778**, omnizart's count.

Differences from omnizart, and why:

* The model returns **logits**; omnizart's last layer applies the softmax. Apply
  ``jax.nn.softmax`` (or use a softmax cross-entropy on logits) explicitly.
* Initialisers are Keras' defaults: Glorot-uniform kernels and zero biases.

``__call__(x, train=False)``: dropout is active only with ``train=True`` (needs a ``'dropout'``
rng).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxmir.nn.conv import conv_fn
from jaxmir.nn.dropout import Dropout

PATCH_SIZE: int = 25
N_PARAMS: int = 175_778
"""Trainable parameters at the default ``patch_size=25`` (omnizart's model summary)."""


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """``max_pool((2, 2), strides=(2, 2), padding="VALID")`` as a reshape and a max. Same values;
    its gradient is a compare-and-select instead of XLA:CPU's slow select-and-scatter (3x faster
    here). On ties it splits the gradient where select-and-scatter picks the first: in this model
    ties only happen between zeros after ReLU/dropout, whose own gradients are zero, so the
    parameters' gradients are the same."""
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    return x[:, : 2 * h2, : 2 * w2].reshape(b, h2, 2, w2, 2, c).max(axis=(2, 4))


class PatchCNN(nn.Module):
    """omnizart's ``patch_cnn_model``. ``__call__(x (batch, patch, patch, 1), train)`` ->
    (batch, 2) logits. ``conv_impl`` picks the convolution's weight-gradient path
    (:mod:`jaxmir.nn.conv`: "native", "matmul" or "auto"); the parameters are the same."""

    patch_size: int = PATCH_SIZE
    dropout: float = 0.25
    conv_impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.patch_size, self.patch_size, 1):
            raise ValueError(
                f"expected input (batch, {self.patch_size}, {self.patch_size}, 1), got {x.shape}"
            )
        glorot = nn.initializers.xavier_uniform()
        # "auto" on CPU: the 1-channel 5x5 conv as patches @ kernel (im2col), the 8-channel conv
        # native -- the fastest pair measured on XLA:CPU (benchmarks --levers); "matmul" uses the
        # matmul path for both, "native" XLA's convolution for both.
        conv = conv_fn(self.conv_impl)
        conv2 = conv_fn("native" if self.conv_impl == "auto" else self.conv_impl)
        x = nn.Conv(8, (5, 5), padding="VALID", kernel_init=glorot, conv_general_dilated=conv)(x)
        x = Dropout(self.dropout, deterministic=not train)(nn.relu(x))
        x = nn.Conv(16, (3, 3), padding="VALID", kernel_init=glorot, conv_general_dilated=conv2)(x)
        x = Dropout(self.dropout, deterministic=not train)(nn.relu(x))
        x = max_pool_2x2(x)
        x = x.reshape(x.shape[0], -1)
        x = Dropout(self.dropout, deterministic=not train)(
            nn.relu(nn.Dense(128, kernel_init=glorot)(x))
        )
        x = Dropout(self.dropout, deterministic=not train)(
            nn.relu(nn.Dense(64, kernel_init=glorot)(x))
        )
        return nn.Dense(2, kernel_init=glorot)(x)


def abstract_params(model: PatchCNN, batch: int = 1):
    """The parameter tree as ``jax.ShapeDtypeStruct`` s (nothing is allocated)."""
    x = jax.ShapeDtypeStruct((batch, model.patch_size, model.patch_size, 1), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)["params"]


def count_params(params: object) -> int:
    """Total number of entries of a parameter tree (arrays or ``jax.ShapeDtypeStruct`` s)."""
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))
