"""The Harmony Transformer (omnizart's chord model, Chen & Su 2019) in Flax Linen.

Input: ``x`` of shape (batch, n_steps, segment_width * n_dims) = (B, 100, 504). Every step is a
21-frame window of 24-dim chroma (12 bass + 12 treble), flattened **frame-major**: entry
``x[b, s, f * n_dims + d]`` is dim ``d`` of frame ``f`` of step ``s`` (what omnizart's
``chord/features.py`` ``segment_feature`` builds).

Architecture (omnizart's ``models/chord_model.py``; every Dense/Conv1D is Glorot-uniform with
zero bias, every LayerNorm has Keras' ``epsilon=1e-3``, every dropout has ``dropout_rate``):

* **Segment encoder** (:class:`SegmentEncoder`), used twice. Views each step as a short sequence,
  adds ``0.01 * PE + 0.01`` (a damped sinusoidal positional encoding), runs one self-attention
  (:class:`~jaxmir.nn.relative_attention.MultiHeadAttention`: ReLU q/k/v/out projections,
  dropout on the attention weights, residual, LayerNorm) and one :class:`FeedForward`, flattens
  the step back to 504 features, then dropout -> ``Dense(hidden, relu)`` -> LayerNorm.

  - *time* view (encoder): a sequence of 21 frames of 24 dims; 2 heads, learned clipped
    relative positions (``max_dist=4``), feed-forward [96, 24];
  - *frequency* view (decoder): a sequence of 24 dims of 21 frames; 1 head, no relative
    positions, feed-forward [84, 21].

* **Encoder.** time segment encoder + PE(n_steps, hidden) -> dropout -> ``encoder_blocks`` x
  [self-attention (hidden, n_heads, no relative positions) -> FeedForward(ff, hidden)]. The
  block outputs are summed with weights ``softmax(layer_weights)`` (a learned vector, zeros at
  init). ``Dense(1)`` of that sum is the chord-change logit.
* **Change prediction.** ``p = sigmoid(slope * logit)`` and the hard change
  ``c = round(p)`` through :func:`binary_round` (forward: round; backward: identity, so
  ``dc/dlogit = slope * sigmoid'(slope * logit)``, the straight-through estimator).
* **Decoder.** frequency segment encoder ``e``; chord-block compression
  :func:`chord_block_pool` of ``e`` along the blocks delimited by ``c`` (every step gets the
  mean of ``e`` over its block); input = ``e + pool(e) + encoder output + PE`` -> dropout ->
  ``decoder_blocks`` x [relative self-attention (``max_dist=16``) -> cross-attention onto the
  encoder output -> FeedForward]; the block outputs are averaged with fixed uniform weights
  (omnizart's ``softmax(tf.zeros(n))``, a constant, not a parameter); ``Dense(num_classes)``.

Outputs: ``(chord_logits (B, T, num_classes), change_logits (B, T))``; ``change_logits`` are
the raw ``Dense(1)`` outputs, before the slope (omnizart's loss takes them so). The soft and hard
changes are also sown into the ``"intermediates"`` collection (``change_prob``, ``change``).

**The slope lives in the variables.** ``slope`` is the ``"batch_stats"`` variable ``slope``
(float32 scalar, 1.0 at init), declared at the top level. The engine carries ``batch_stats`` in
its TrainState and checkpoints it, and a callback multiplies it by 1.1 per epoch (omnizart's
``ReduceSlope``); the model only reads it. In omnizart ``slope`` is a Python attribute read
inside a traced ``call``, so the annealing is probably frozen at 1 there. Note what it can do at
all: for ``slope > 0``, ``round(sigmoid(slope * z)) == (z > 0)``, so the forward pass does not
depend on the slope (except where float32 rounds ``sigmoid(slope * z)`` to exactly 0.5, for
``|slope * z|`` below ~1e-7); it only scales the straight-through gradient. And that gradient
stops at the block ids (integers made by a cumulative sum), exactly as in omnizart, where
``tf.math.segment_mean`` has no gradient with respect to its ``segment_ids``. The change head is
therefore trained by the change loss alone and the slope is inert in training too; it is kept for
fidelity and so that a differentiable block pooling could use it.

Parameter counts (:func:`keras_param_count` excludes the learned relative-position tables,
which omnizart does not have as weights; see :mod:`jaxmir.nn.relative_attention`):

====================================================  ===========  ==============
configuration                                         Keras-style  with rel tables
====================================================  ===========  ==============
paper: 1 decoder block, 26 classes                     11,054,610      11,059,050
default: 2 decoder blocks, 26 classes                  15,258,642      15,267,306
2 decoder blocks, 25 classes                           15,258,129      15,266,793
====================================================  ===========  ==============

The relative tables add 2 x 9 x 12 = 216 (segment time attention, head width 24 / 2) plus
2 x 33 x 64 = 4,224 per decoder block (head width 512 / 8). One decoder block has 4,204,032
Keras-style parameters (two attentions of 1,051,648 and a feed-forward of 2,100,736).

Differences from omnizart, and why:

* **Decoder blocks.** omnizart builds ``num_dec_attn_blocks=2`` attention pairs but only one
  feed-forward, so ``zip`` runs a single block (its second attention pair is never built and has
  no weights: that is why the published count, 11,054,610, is the 1-block count); that block's
  output is scaled by ``softmax(zeros(2))[0] = 0.5``. Here ``decoder_blocks`` blocks all run,
  averaged with weight ``1 / decoder_blocks``; ``decoder_blocks=1`` has omnizart's parameters and
  differs from omnizart's function only by that constant 0.5 in front of the output Dense.
* **Input view.** omnizart (like the original Harmony Transformer) reads a step as a (24, 21)
  array -- ``reshape(-1, 24, 21)`` -- and transposes it for the time view. Its own features are
  frame-major (21, 24), so that view mixes frames with dims: the "time" attention's j-th
  "frame" is ``x[j::21]``, every 21st feature, which is not a frame. Here the views follow the real
  layout (time: (21 frames, 24 dims); frequency: its transpose). ``omnizart_view=True`` restores
  omnizart's reshape exactly. Parameter counts are the same either way.
* **Relative positions** are learned tables (omnizart re-draws random ones on every call); see
  :mod:`jaxmir.nn.relative_attention`.
* The model returns logits; probabilities, argmaxes and the loss are the task's business.
* No padding mask: omnizart does not mask padded steps either (they are labelled N).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxmir.nn.dropout import Dropout
from jaxmir.nn.relative_attention import MultiHeadAttention, omnizart_param_count

_LN_EPSILON = 1e-3  # Keras' LayerNormalization default
_GLOROT = nn.initializers.xavier_uniform()  # Keras' Dense / Conv1D default

PAPER_PARAM_COUNT = 11_054_610
"""Keras' trainable-parameter count of omnizart's chord model (one decoder block runs)."""


def keras_param_count(params: Mapping[str, Any]) -> int:
    """Parameters as Keras counts omnizart's model: all leaves except the learned relative-position
    tables (``rel_k_emb``/``rel_v_emb``). Works on arrays and on ``jax.eval_shape`` structs."""
    return omnizart_param_count(params)


def sinusoid_table(length: int, width: int) -> np.ndarray:
    """omnizart's (and the original Harmony Transformer's) positional encoding, (length, width).

    ``angle[p, i] = p / 10000 ** (2 * i / width)`` with the *full* column index ``i`` (the usual
    transformer encoding uses ``2 * (i // 2)``), then sine on even columns and cosine on odd
    ones. Reproduced as is, quirk included, so the input statistics match omnizart's.
    """
    pos = np.arange(length, dtype=np.float64)[:, None]
    col = np.arange(width, dtype=np.float64)[None, :]
    table = pos / np.power(10000.0, 2.0 * col / width)
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return table.astype(np.float32)


@jax.custom_jvp
def binary_round(p: jax.Array) -> jax.Array:
    """``round(p)`` (half to even, as ``tf.round``) with an identity gradient: the
    straight-through estimator omnizart's ``binary_round`` builds with a gradient override."""
    return jnp.round(p)


@binary_round.defjvp
def _binary_round_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]):
    (p,), (dp,) = primals, tangents
    return jnp.round(p), dp


def hard_change(change_logits: jax.Array, slope: jax.Array | float) -> jax.Array:
    """Hard 0/1 chord changes ``round(sigmoid(slope * logits))`` with the straight-through
    gradient ``slope * sigmoid'(slope * logits)`` (see :func:`binary_round`)."""
    return binary_round(jax.nn.sigmoid(slope * change_logits))


def chord_block_ids(changes: jax.Array) -> jax.Array:
    """Block index of every step, (B, T) int32, from 0/1 changes (B, T).

    ``cumsum(changes) - changes[:, :1]``: a change opens a new block; one at step 0 opens the
    first block and is ignored (omnizart subtracts 1 from a row whose cumulative sum starts at
    1). Indices are contiguous from 0 and below T.
    """
    c = jnp.round(changes).astype(jnp.int32)
    return jnp.cumsum(c, axis=-1) - c[..., :1]


def chord_block_pool(hidden: jax.Array, changes: jax.Array) -> jax.Array:
    """Chord-block compression and decompression: every step gets the mean of ``hidden``
    (B, T, D) over its block (blocks from :func:`chord_block_ids` of ``changes`` (B, T)).

    omnizart's ``segment_mean`` per batch element followed by a ``gather``, written as two
    one-hot matmuls so that it has static shapes under ``jit``: ``M[b, t, k] = [id(b, t) == k]``
    (at most T blocks), ``means = M^T hidden / counts``, ``out = M means``. The block ids are
    integers, so no gradient reaches ``changes`` (as in omnizart); gradients flow to ``hidden``.
    The matmuls run at full float32 precision so the means are exact sums, also on GPUs/TPUs.
    """
    ids = chord_block_ids(jax.lax.stop_gradient(changes))
    member = jax.nn.one_hot(ids, hidden.shape[-2], dtype=hidden.dtype)  # (B, T, K)
    precision = jax.lax.Precision.HIGHEST
    sums = jnp.einsum("btk,btd->bkd", member, hidden, precision=precision)
    counts = jnp.sum(member, axis=-2)[..., None]  # (B, K, 1)
    means = sums / jnp.maximum(counts, 1.0)
    return jnp.einsum("btk,bkd->btd", member, means, precision=precision)


def _dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=_GLOROT, name=name)


def _layer_norm(name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=_LN_EPSILON, name=name)


class FeedForward(nn.Module):
    """omnizart's ``FeedForward``: ``LayerNorm(x + dropout(W2 relu(W1 x + b1) + b2))``.

    The two kernel-size-1 ``Conv1D`` of omnizart are Dense layers here (same parameters, same
    Glorot fan). The output width equals the input's (residual).
    """

    hidden: int
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        y = nn.relu(_dense(self.hidden, "dense_1")(x))
        y = _dense(x.shape[-1], "dense_2")(y)
        y = Dropout(self.dropout_rate)(y, deterministic=deterministic)
        return _layer_norm("layer_norm")(y + x)


class SegmentEncoder(nn.Module):
    """omnizart's ``EncodeSegmentTime`` / ``EncodeSegmentFrequency``: attention within each step.

    ``__call__(x (B, T, segment_width * n_dims))`` -> (B, T, n_units). ``axis="time"`` attends over
    the 21 frames (24 features each), ``axis="frequency"`` over the 24 dims (21 features each);
    the feed-forward is [4 * width, width]; afterwards the step is flattened back to the input's
    layout, then dropout, ``Dense(n_units, relu)`` and LayerNorm.
    """

    n_units: int
    segment_width: int
    n_dims: int
    axis: str  # "time" or "frequency"
    n_heads: int
    relative_position: bool
    max_dist: int
    dropout_rate: float = 0.0
    ff_factor: int = 4
    omnizart_view: bool = False

    def _to_view(self, x: jax.Array) -> jax.Array:
        """(N, S*D) -> (N, S, D) time view or (N, D, S) frequency view."""
        n, s, d = x.shape[0], self.segment_width, self.n_dims
        if self.omnizart_view:  # omnizart reads the 504 features as a (24, 21) array
            grid = x.reshape(n, d, s)
            return grid.transpose(0, 2, 1) if self.axis == "time" else grid
        grid = x.reshape(n, s, d)  # the real layout: frame-major
        return grid if self.axis == "time" else grid.transpose(0, 2, 1)

    def _from_view(self, v: jax.Array) -> jax.Array:
        """Inverse of :meth:`_to_view`: back to (N, S*D) in the input's order."""
        n = v.shape[0]
        if self.omnizart_view:
            grid = v.transpose(0, 2, 1) if self.axis == "time" else v
        else:
            grid = v if self.axis == "time" else v.transpose(0, 2, 1)
        return grid.reshape(n, -1)

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if self.axis not in ("time", "frequency"):
            raise ValueError(f"axis must be 'time' or 'frequency', got {self.axis!r}")
        batch_shape, n_features = x.shape[:-1], x.shape[-1]
        if n_features != self.segment_width * self.n_dims:
            raise ValueError(
                f"expected {self.segment_width} x {self.n_dims} = "
                f"{self.segment_width * self.n_dims} features per step, got {n_features}"
            )
        view = self._to_view(x.reshape(-1, n_features))  # (N, L, W)
        length, width = view.shape[-2:]
        view = view + jnp.asarray(sinusoid_table(length, width) * 0.01 + 0.01, view.dtype)
        view = MultiHeadAttention(
            n_units=width,
            n_heads=self.n_heads,
            dropout_rate=self.dropout_rate,
            relative_position=self.relative_position,
            max_dist=self.max_dist,
            name="attention",
        )(view, view, view, deterministic=deterministic)
        view = FeedForward(self.ff_factor * width, self.dropout_rate, name="feed_forward")(
            view, deterministic=deterministic
        )
        y = self._from_view(view).reshape(*batch_shape, n_features)
        y = Dropout(self.dropout_rate)(y, deterministic=deterministic)
        y = nn.relu(_dense(self.n_units, "dense")(y))
        return _layer_norm("layer_norm")(y)


class HarmonyTransformer(nn.Module):
    """omnizart's Harmony Transformer (see the module docstring for the architecture).

    ``model.apply(variables, x, train=..., rngs={"dropout": key})`` with ``x`` (B, n_steps,
    segment_width * n_dims) returns ``(chord_logits (B, n_steps, num_classes), change_logits
    (B, n_steps))``. ``variables`` must hold ``"params"`` and ``"batch_stats"`` (the slope, a
    float32 scalar read, never written, by the model; the training loop anneals it). A
    ``"dropout"`` rng is needed only with ``train=True``.

    Attributes:
        n_steps: steps per sequence (omnizart: 100 segments, ~23 s).
        segment_width: frames per step (21, a ~1 s context).
        n_dims: features per frame (24: bass + treble chroma).
        hidden: embedding width of encoder and decoder (512).
        n_heads: heads of the encoder/decoder attentions (8).
        ff_hidden: inner width of their feed-forwards (2048).
        encoder_blocks: encoder attention blocks (2).
        decoder_blocks: decoder attention blocks (2; omnizart effectively runs 1, see above).
        num_classes: width of the output Dense (omnizart: 26).
        dropout_rate: rate of every dropout (0.6, omnizart's setting).
        segment_time_heads: heads of the time segment attention (2).
        segment_time_max_dist: its relative-position clip (4).
        segment_freq_heads: heads of the frequency segment attention (1).
        decoder_max_dist: relative-position clip of the decoder self-attention (16).
        segment_ff_factor: inner width of the segment feed-forwards, in units of their width (4).
        omnizart_view: read each step as omnizart does (a (24, 21) reshape) instead of by its
            real frame-major layout; see "Input view" in the module docstring.
    """

    n_steps: int = 100
    segment_width: int = 21
    n_dims: int = 24
    hidden: int = 512
    n_heads: int = 8
    ff_hidden: int = 2048
    encoder_blocks: int = 2
    decoder_blocks: int = 2
    num_classes: int = 26
    dropout_rate: float = 0.6
    segment_time_heads: int = 2
    segment_time_max_dist: int = 4
    segment_freq_heads: int = 1
    decoder_max_dist: int = 16
    segment_ff_factor: int = 4
    omnizart_view: bool = False

    def _segment_encoder(self, axis: str, name: str) -> SegmentEncoder:
        time = axis == "time"
        return SegmentEncoder(
            n_units=self.hidden,
            segment_width=self.segment_width,
            n_dims=self.n_dims,
            axis=axis,
            n_heads=self.segment_time_heads if time else self.segment_freq_heads,
            relative_position=time,
            max_dist=self.segment_time_max_dist,
            dropout_rate=self.dropout_rate,
            ff_factor=self.segment_ff_factor,
            omnizart_view=self.omnizart_view,
            name=name,
        )

    def _attention(self, relative: bool, name: str) -> MultiHeadAttention:
        return MultiHeadAttention(
            n_units=self.hidden,
            n_heads=self.n_heads,
            dropout_rate=self.dropout_rate,
            relative_position=relative,
            max_dist=self.decoder_max_dist,
            name=name,
        )

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        if x.ndim != 3 or x.shape[1] != self.n_steps:
            raise ValueError(
                f"expected input (batch, {self.n_steps}, features), got shape {x.shape}"
            )
        deterministic = not train
        slope = self.variable("batch_stats", "slope", lambda: jnp.asarray(1.0, jnp.float32))
        position = jnp.asarray(sinusoid_table(self.n_steps, self.hidden))

        # Encoder: chord-change detection.
        h = self._segment_encoder("time", "segment_time")(x, deterministic=deterministic)
        h = Dropout(self.dropout_rate)(h + position, deterministic=deterministic)
        layer_weights = jax.nn.softmax(
            self.param("layer_weights", nn.initializers.zeros, (self.encoder_blocks,))
        )
        encoded = jnp.zeros_like(h)
        for i in range(self.encoder_blocks):
            h = self._attention(False, f"encoder_attention_{i}")(
                h, h, h, deterministic=deterministic
            )
            h = FeedForward(self.ff_hidden, self.dropout_rate, name=f"encoder_feed_forward_{i}")(
                h, deterministic=deterministic
            )
            encoded = encoded + layer_weights[i] * h
        change_logits = _dense(1, "change_dense")(encoded)[..., 0]
        change = hard_change(change_logits, slope.value)
        self.sow("intermediates", "change_prob", jax.nn.sigmoid(slope.value * change_logits))
        self.sow("intermediates", "change", change)

        # Decoder: chord classification over the predicted chord blocks.
        e = self._segment_encoder("frequency", "segment_frequency")(x, deterministic=deterministic)
        d = e + chord_block_pool(e, change) + encoded + position
        d = Dropout(self.dropout_rate)(d, deterministic=deterministic)
        decoded = jnp.zeros_like(d)
        for i in range(self.decoder_blocks):
            d = self._attention(True, f"decoder_self_attention_{i}")(
                d, d, d, deterministic=deterministic
            )
            d = self._attention(False, f"decoder_cross_attention_{i}")(
                d, encoded, encoded, deterministic=deterministic
            )
            d = FeedForward(self.ff_hidden, self.dropout_rate, name=f"decoder_feed_forward_{i}")(
                d, deterministic=deterministic
            )
            decoded = decoded + d / self.decoder_blocks
        chord_logits = _dense(self.num_classes, "chord_dense")(decoded)
        return chord_logits, change_logits
