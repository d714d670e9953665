"""The symbolic beat tracker's networks: omnizart's ``blstm`` and ``blstm_attn`` in Flax Linen.

Both read a (batch, timesteps, 178) feature segment (see :mod:`jaxmir.tasks.beat.labels`) and
predict, for every frame, a beat and a downbeat activation:

* :class:`BLSTM` -- LayerNorm, ``num_layers`` bidirectional LSTMs, then the whole sequence is
  flattened and two ``Dense(timesteps)`` heads emit one value per frame. The heads see the entire
  segment, which is why they dominate the parameter count (2 x 50,000 x 1,000 weights at the
  paper's 1,000 frames x 2 x 25 units).
* :class:`BLSTMAttn` -- the same, with a 1x1 convolution to ``attn_hidden`` channels and a causal
  multi-head self-attention with relative positions (:mod:`jaxmir.nn.relative_attention`)
  between the LSTMs and the heads.

Differences from omnizart, and why:

* The models return **logits** (omnizart applies a sigmoid inside the heads); the loss applies
  the sigmoid in a numerically stable way, and inference applies it explicitly.
* The attention's relative-position vectors are learned parameters (in omnizart they are random
  tensors re-drawn on every call); see :mod:`jaxmir.nn.relative_attention`.
* Initialisers mirror Keras' defaults rather than Flax's: Glorot-uniform kernels and zero biases
  for the dense layers and the 1x1 convolution, LayerNorm ``epsilon=1e-3``, and for the LSTMs a
  Glorot-uniform input kernel with Keras' fused fan (``in`` + ``4 * hidden``), orthogonal
  recurrent kernels (per gate here, over the fused matrix in Keras) and a forget-gate bias of 1
  (Keras' ``unit_forget_bias``). The LSTM parameters are those of Flax's
  :class:`~flax.linen.OptimizedLSTMCell` with only the bias initialisation changed, so the layout
  is Flax's (per-gate ``i*``/``h*`` kernels, bias on the ``h*`` side) and the count per direction
  equals Keras' ``4 * (hidden * (in + hidden) + hidden)``. By default the BiLSTM computes with
  them through :func:`jaxmir.nn.lstm.bilstm` (both directions in one loop, hand-written backward
  pass); ``lstm_impl="flax"`` runs the same cell through two :class:`flax.linen.RNN`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.linen.dtypes import promote_dtype
from flax.linen.recurrent import DenseParams
from flax.typing import Initializer

from jaxmir.config import ConfigError
from jaxmir.nn.lstm import bilstm
from jaxmir.nn.relative_attention import MultiHeadAttention

MODEL_NAMES: tuple[str, ...] = ("blstm", "blstm_attn")
_GATES = ("i", "f", "g", "o")
_LN_EPSILON = 1e-3  # Keras' LayerNormalization default


def keras_lstm_kernel_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Glorot-uniform for one gate's ``(in, hidden)`` input kernel, with the fan of Keras' fused
    ``(in, 4 * hidden)`` kernel, so every entry has the distribution Keras gives it."""
    fan_in, fan_out = shape[-2], 4 * shape[-1]
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


class KerasLSTMCell(nn.OptimizedLSTMCell):
    """:class:`flax.linen.OptimizedLSTMCell` with Keras' initialisation.

    Same parameters (names and shapes) and the same fused computation as the parent; the only
    change is that the forget gate's bias is initialised by ``forget_bias_init`` (ones, Keras'
    ``unit_forget_bias=True``), which the parent cannot express because it shares one
    ``bias_init`` between all gates. Gates are sigmoid, cell/output activation tanh, as in Keras.
    """

    kernel_init: Initializer = keras_lstm_kernel_init
    forget_bias_init: Initializer = nn.initializers.ones

    @nn.compact
    def __call__(
        self, carry: tuple[jax.Array, jax.Array], inputs: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        c, h = carry
        kernel_i, kernel_h, bias = _declare_lstm_params(self, inputs.shape[-1], h.shape[-1])
        inputs, h, kernel_i, kernel_h, bias = promote_dtype(
            inputs, h, kernel_i, kernel_h, bias, dtype=self.dtype
        )
        z = inputs @ kernel_i + h @ kernel_h + bias
        z_i, z_f, z_g, z_o = jnp.split(z, 4, axis=-1)
        new_c = self.gate_fn(z_f) * c + self.gate_fn(z_i) * self.activation_fn(z_g)
        new_h = self.gate_fn(z_o) * self.activation_fn(new_c)
        return (new_c, new_h), new_h


def _declare_lstm_params(
    cell: KerasLSTMCell, n_in: int, hidden: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Declare one LSTM direction's parameters inside ``cell``'s compact method: per gate an
    ``i{gate}`` (in, hidden) kernel and an ``h{gate}`` (hidden, hidden) kernel with bias, as
    Flax's OptimizedLSTMCell names them. Returns them fused, gates in i, f, g, o order: the
    (in, 4h) input kernel, the (h, 4h) recurrent kernel and the (4h,) bias."""
    kernels_i, kernels_h, biases = [], [], []
    for gate in _GATES:
        kernel_i, _ = DenseParams(
            features=hidden,
            use_bias=False,
            param_dtype=cell.param_dtype,
            kernel_init=cell.kernel_init,
            name=f"i{gate}",
        )(jax.ShapeDtypeStruct((n_in,), cell.param_dtype))
        kernel_h, bias = DenseParams(
            features=hidden,
            use_bias=True,
            param_dtype=cell.param_dtype,
            kernel_init=cell.recurrent_kernel_init,
            bias_init=cell.forget_bias_init if gate == "f" else cell.bias_init,
            name=f"h{gate}",
        )(jax.ShapeDtypeStruct((hidden,), cell.param_dtype))
        kernels_i.append(kernel_i)
        kernels_h.append(kernel_h)
        biases.append(bias)
    return (
        jnp.concatenate(kernels_i, axis=-1),
        jnp.concatenate(kernels_h, axis=-1),
        jnp.concatenate(biases, axis=-1),
    )


class LSTMWeights(KerasLSTMCell):
    """One direction's parameters, declared exactly as :class:`KerasLSTMCell` declares them (it
    is one, with the same initialisers); ``__call__(n_in)`` returns them fused (see
    :func:`_declare_lstm_params`) and runs no cell. Used by the fused :class:`BiLSTM`."""

    @nn.compact
    def __call__(self, n_in: int) -> tuple[jax.Array, jax.Array, jax.Array]:  # type: ignore[override]
        return _declare_lstm_params(self, n_in, self.features)


LSTM_IMPLS: tuple[str, ...] = ("fused", "flax")


class BiLSTM(nn.Module):
    """Keras ``Bidirectional(LSTM(hidden, return_sequences=True))``: forward and time-reversed
    LSTMs over (batch, T, in), outputs re-aligned in time and concatenated to (batch, T, 2*hidden).

    ``impl="fused"`` (the default, :func:`jaxmir.nn.lstm.bilstm`) and ``impl="flax"`` (two
    :class:`flax.linen.RNN` over :class:`KerasLSTMCell`) compute the same function of the same
    parameters (equal within float tolerance); the fused one runs one T-step loop for both
    directions instead of two, with the input projections taken out of the loop and a
    hand-written backward pass."""

    hidden: int
    unroll: int = 1
    impl: str = "fused"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.impl == "flax":
            forward = nn.RNN(KerasLSTMCell(self.hidden, name="forward"), unroll=self.unroll)
            backward = nn.RNN(KerasLSTMCell(self.hidden, name="backward"), unroll=self.unroll)
            return nn.Bidirectional(forward, backward)(x)
        if self.impl != "fused":
            raise ConfigError(
                f"model.lstm_impl: unknown LSTM impl {self.impl!r}; "
                f"choose one of {', '.join(LSTM_IMPLS)}"
            )
        weights = [LSTMWeights(self.hidden, name=d)(x.shape[-1]) for d in ("forward", "backward")]
        kernels_i, kernels_h, biases = (jnp.stack(w) for w in zip(*weights, strict=True))
        x, kernels_i, kernels_h, biases = promote_dtype(x, kernels_i, kernels_h, biases)
        return bilstm(x, kernels_i, kernels_h, biases, self.unroll)


def _glorot_dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.xavier_uniform(), name=name)


def _encode(x: jax.Array, hidden: int, num_layers: int, unroll: int, lstm_impl: str) -> jax.Array:
    """LayerNorm then ``num_layers`` BiLSTMs; called inside a compact ``__call__``."""
    x = nn.LayerNorm(epsilon=_LN_EPSILON, name="input_norm")(x)
    for layer in range(num_layers):
        x = BiLSTM(hidden, unroll=unroll, impl=lstm_impl, name=f"blstm_{layer}")(x)
    return x


HEADS: tuple[str, ...] = ("flat", "frame")


def _heads(x: jax.Array, timesteps: int, heads: str = "flat") -> jax.Array:
    """(batch, T, C) -> (batch, timesteps, 2) logits, [beat, downbeat].

    ``"flat"`` (omnizart's): two ``Dense(timesteps)`` over the flattened sequence, so their
    weights grow with the square of the window (16 M at 400 frames). ``"frame"`` (not in
    omnizart): one ``Dense(2)`` shared by every frame, as madmom's BLSTM beat trackers read
    out their states; the BiLSTM already carries the whole window's context to each frame, and
    the window can grow to hold several bars (downbeats need them) at no cost in weights."""
    if x.shape[-2] != timesteps:
        raise ValueError(f"input has {x.shape[-2]} frames, the model was built for {timesteps}")
    if heads == "frame":
        return _glorot_dense(2, "frame_head")(x)
    if heads != "flat":
        raise ConfigError(
            f"model.heads: unknown beat heads {heads!r}; choose one of {', '.join(HEADS)}"
        )
    flat = x.reshape(x.shape[0], -1)
    beat = _glorot_dense(timesteps, "beat_head")(flat)
    downbeat = _glorot_dense(timesteps, "downbeat_head")(flat)
    return jnp.stack([beat, downbeat], axis=-1)


class BLSTM(nn.Module):
    """omnizart's ``blstm``. ``__call__(x (batch, timesteps, 178), train)`` -> logits
    (batch, timesteps, 2) with [beat, downbeat] on the last axis. ``train`` is accepted for a
    uniform interface (the model has no dropout)."""

    timesteps: int = 1000
    hidden: int = 25
    num_layers: int = 2
    unroll: int = 1
    lstm_impl: str = "fused"  # BiLSTM.impl: "fused" or "flax" (same function, speed only)
    heads: str = "flat"  # flat (omnizart) | frame (`_heads`)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        del train
        x = _encode(x, self.hidden, self.num_layers, self.unroll, self.lstm_impl)
        return _heads(x, self.timesteps, self.heads)


class BLSTMAttn(nn.Module):
    """omnizart's ``blstm_attn``: :class:`BLSTM`'s encoder, a 1x1 Conv1D to ``attn_hidden``
    channels, causal relative self-attention (8 heads, dropout 0.1, ``max_dist=800``), then the
    same two heads. Dropout (needs a ``'dropout'`` rng) is active only with ``train=True``."""

    timesteps: int = 1000
    hidden: int = 25
    num_layers: int = 2
    attn_hidden: int = 256
    n_heads: int = 8
    dropout_rate: float = 0.1
    max_dist: int = 800
    unroll: int = 1
    lstm_impl: str = "fused"  # BiLSTM.impl: "fused" or "flax" (same function, speed only)
    heads: str = "flat"  # flat (omnizart) | frame (`_heads`)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = _encode(x, self.hidden, self.num_layers, self.unroll, self.lstm_impl)
        x = _glorot_dense(self.attn_hidden, "attn_in")(x)  # Conv1D(attn_hidden, kernel_size=1)
        x = MultiHeadAttention(
            n_units=self.attn_hidden,
            n_heads=self.n_heads,
            dropout_rate=self.dropout_rate,
            causal=True,
            relative_position=True,
            max_dist=self.max_dist,
            name="attention",
        )(x, x, x, deterministic=not train)
        return _heads(x, self.timesteps, self.heads)


def build_model(
    name: str, timesteps: int, hidden: int, num_layers: int, attn_hidden: int
) -> nn.Module:
    """The beat model called ``name`` ("blstm" or "blstm_attn"; ``attn_hidden`` is ignored by
    "blstm")."""
    if name == "blstm":
        return BLSTM(timesteps=timesteps, hidden=hidden, num_layers=num_layers)
    if name == "blstm_attn":
        return BLSTMAttn(
            timesteps=timesteps, hidden=hidden, num_layers=num_layers, attn_hidden=attn_hidden
        )
    raise ConfigError(
        f"model.name: unknown beat model {name!r}; choose one of {', '.join(MODEL_NAMES)}"
    )


def count_params(params: object) -> int:
    """Total number of entries of a parameter tree (arrays or ``jax.ShapeDtypeStruct`` s)."""
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))
