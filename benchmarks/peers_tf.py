"""TF-Keras reference implementations of jaxmir's models, for side-by-side step times.

The same networks as :mod:`benchmarks.peers_torch` (and as jaxmir's), in Keras 3 on the
TensorFlow backend, NHWC: the music attention U-Net (paper preset, with the local 2-D attention
as a custom layer computing what :mod:`jaxmir.nn.local_attention` computes), the beat BLSTM
(Keras' own LSTM: the parameter count is omnizart's exactly) and the patch CNN. A step is
``model.train_on_batch`` with Adam in a ``tf.function``; ``jit`` is Keras' ``jit_compile``
(default "auto", which Keras resolves to no XLA on a CPU-only machine and to XLA on a GPU: on
this CPU, XLA makes the patch CNN ~25x slower). The first step (tracing, and compilation with
XLA) is reported as ``compile_s``. Threads: ``threads`` intra-op and inter-op (default 2).

Only used when ``import tensorflow`` works; otherwise the suite stops (exit 3) where a model
asked for has a TF peer, naming what to install or how to leave the peer out (``--peers``).
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.common import MODELS, peak_rss_mb  # noqa: E402

layers = keras.layers


def _axis_plan(size: int, block: int, flange: int) -> tuple[int, int, int]:
    """(block, flange, n_blocks) used along one axis, as in :mod:`jaxmir.nn.local_attention`."""
    n_blocks = -(-size // block)
    return (size, 0, 1) if n_blocks == 1 else (block, flange, n_blocks)


def _window_index(n_blocks: int, block: int, flange: int) -> np.ndarray:
    return np.arange(n_blocks)[:, None] * block + np.arange(block + 2 * flange)[None, :]


def _bn():
    return layers.BatchNormalization(momentum=0.99, epsilon=1e-3)


def _conv(c, k, stride=1, use_bias=True):
    return layers.Conv2D(c, k, strides=stride, padding="same", use_bias=use_bias)


def _bn_relu(x):
    return _bn()(layers.ReLU()(x))


def _conv_block(x, c, stride, dropout):
    y = _conv(c, 3, stride)(layers.Dropout(dropout)(_bn_relu(x)))
    y = _conv(c, 3)(layers.Dropout(dropout)(_bn_relu(y)))
    skip = _conv(c, 1, stride)(x) if stride != 1 else x
    return layers.Add()([y, skip])


def _tconv_block(x, c, dropout):
    y = _conv(c, 3)(layers.Dropout(dropout)(_bn_relu(x)))
    y = layers.Conv2DTranspose(c, 3, strides=2, padding="same")(
        layers.Dropout(dropout)(_bn_relu(y))
    )
    return layers.Add()([y, layers.Conv2DTranspose(c, 1, strides=2, padding="same")(x)])


class LocalAttention2D(layers.Layer):
    """q/k/v 3x3 convolutions, blocked local attention, 3x3 output convolution (no bias)."""

    def __init__(self, out_channel, d_model, n_heads, query_shape, memory_flange, **kw):
        super().__init__(**kw)
        self.q, self.k, self.v = _conv(d_model, 3), _conv(d_model, 3), _conv(d_model, 3)
        self.out = _conv(out_channel, 3, use_bias=False)
        self.n_heads, self.query_shape, self.memory_flange = n_heads, query_shape, memory_flange
        self.scale = 1.0 / math.sqrt(d_model // n_heads)

    def _heads(self, x):  # (b, H, W, C) -> (b, n, H, W, C // n)
        b, h, w, c = x.shape
        return tf.transpose(
            tf.reshape(x, (-1, h, w, self.n_heads, c // self.n_heads)), (0, 3, 1, 2, 4)
        )

    def call(self, x):
        q = self._heads(self.q(x)) * self.scale
        k, v = self._heads(self.k(x)), self._heads(self.v(x))
        _, n, h, w, d = q.shape
        qh, fh, nbh = _axis_plan(h, self.query_shape[0], self.memory_flange[0])
        qw, fw, nbw = _axis_plan(w, self.query_shape[1], self.memory_flange[1])
        hp, wp = nbh * qh, nbw * qw
        qb = tf.pad(q, [[0, 0], [0, 0], [0, hp - h], [0, wp - w], [0, 0]])
        qb = tf.transpose(tf.reshape(qb, (-1, n, nbh, qh, nbw, qw, d)), (0, 1, 2, 4, 3, 5, 6))
        qb = tf.reshape(qb, (-1, n, nbh, nbw, qh * qw, d))
        rows = _window_index(nbh, qh, fh)  # (nbh, mh)
        cols = _window_index(nbw, qw, fw)  # (nbw, mw)
        m = rows.shape[1] * cols.shape[1]

        def windows(t):
            t = tf.pad(t, [[0, 0], [0, 0], [fh, hp - h + fh], [fw, wp - w + fw], [0, 0]])
            t = tf.gather(t, rows.reshape(-1), axis=2)  # (b, n, nbh*mh, Wp, d)
            t = tf.gather(t, cols.reshape(-1), axis=3)  # (b, n, nbh*mh, nbw*mw, d)
            t = tf.reshape(t, (-1, n, nbh, rows.shape[1], nbw, cols.shape[1], d))
            return tf.reshape(tf.transpose(t, (0, 1, 2, 4, 3, 5, 6)), (-1, n, nbh, nbw, m, d))

        kb, vb = windows(k), windows(v)
        valid = np.zeros((hp + 2 * fh, wp + 2 * fw), dtype=bool)
        valid[fh : fh + h, fw : fw + w] = True
        valid = valid[rows[:, None, :, None], cols[None, :, None, :]].reshape(nbh, nbw, 1, m)
        logits = tf.einsum("bnijqd,bnijmd->bnijqm", qb, kb)
        logits = tf.where(tf.constant(valid), logits, -1e9)
        # TF's CPU softmax takes rank <= 5: normalise over the last axis of a (-1, m) view.
        weights = tf.reshape(tf.nn.softmax(tf.reshape(logits, (-1, m)), -1), tf.shape(logits))
        out = tf.einsum("bnijqm,bnijmd->bnijqd", weights, vb)
        out = tf.transpose(tf.reshape(out, (-1, n, nbh, nbw, qh, qw, d)), (0, 1, 2, 4, 3, 5, 6))
        out = tf.reshape(out, (-1, n, hp, wp, d))[:, :, :h, :w, :]
        out = tf.reshape(tf.transpose(out, (0, 2, 3, 1, 4)), (-1, h, w, n * d))
        return self.out(out)


def music_model(ch_num=2, out_class=23, base=32, dropout=0.4, n_heads=8):
    b = base
    inp = keras.Input((256, 352, ch_num))
    x = _conv(b, 7)(inp)
    levels = []
    for width, depth in zip((b, 2 * b, 4 * b, 8 * b), (2, 3, 4, 5), strict=True):
        for i in range(depth):
            x = _conv_block(x, width, 2 if i == 0 else 1, dropout)
        levels.append(x)
    en4 = levels[-1]
    f = en4
    for d_model, out, qs in ((b, 2 * b, (100, 32)), (2 * b, 4 * b, (64, 16))):
        f = _bn_relu(LocalAttention2D(out, d_model, n_heads, qs, (8, 8))(f))
    x = layers.Add()([_conv(8 * b, 1)(layers.Concatenate()([en4, f])), en4])
    skips = levels[2::-1]
    for i, width in enumerate((4 * b, 2 * b, 2 * b, 2 * b)):
        x = _tconv_block(x, width, dropout)
        if i < len(skips):
            y = layers.Concatenate()([_bn_relu(x), _bn_relu(skips[i])])
            x = layers.Add()([x, _conv(width, 1)(layers.Dropout(dropout)(y))])
    x = layers.Dropout(dropout)(_bn_relu(x))
    return keras.Model(inp, _conv(out_class, 1)(x))


def smooth_bce(y_true, y_pred, gamma: float = 0.25):
    k = float(min(25, max(int(y_true.shape[-1]), 8)))
    pos = (1.0 - gamma) * y_true + gamma / k
    neg = (1.0 - gamma) * (1.0 - y_true) + gamma / k
    return tf.reduce_mean(-pos * tf.math.log_sigmoid(y_pred) - neg * tf.math.log_sigmoid(-y_pred))


def beat_model(timesteps=1000, features=178, hidden=25, num_layers=2):
    inp = keras.Input((timesteps, features))
    x = layers.LayerNormalization(epsilon=1e-3)(inp)
    for _ in range(num_layers):
        x = layers.Bidirectional(layers.LSTM(hidden, return_sequences=True))(x)
    flat = layers.Flatten()(x)
    out = keras.ops.stack([layers.Dense(timesteps)(flat), layers.Dense(timesteps)(flat)], -1)
    return keras.Model(inp, out)


def weighted_bce(y_true, y_pred, downbeat_weight: float = 5.0):
    per = tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=y_pred)
    return tf.reduce_mean(per * tf.constant([1.0, downbeat_weight]))


def patch_cnn_model(dropout=0.25):
    inp = keras.Input((25, 25, 1))
    x = layers.Dropout(dropout)(layers.Conv2D(8, 5, activation="relu")(inp))
    x = layers.Dropout(dropout)(layers.Conv2D(16, 3, activation="relu")(x))
    x = layers.Flatten()(layers.MaxPooling2D(2)(x))
    x = layers.Dropout(dropout)(layers.Dense(128, activation="relu")(x))
    x = layers.Dropout(dropout)(layers.Dense(64, activation="relu")(x))
    return keras.Model(inp, layers.Dense(2)(x))


def build(model: str, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    spec = MODELS[model]
    x = rng.standard_normal((batch, *spec["input"]), dtype=np.float32)
    if model == "music":
        net, loss = music_model(), smooth_bce
        y = rng.uniform(0, 1, (batch, *spec["output"])).astype(np.float32)
    elif model == "beat":
        net, loss = beat_model(), weighted_bce
        y = rng.uniform(0, 1, (batch, *spec["output"])).astype(np.float32)
    elif model == "patch_cnn":
        net = patch_cnn_model()
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
        y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, batch)]
    else:
        raise ValueError(f"unknown model {model!r}")
    return net, loss, x, y


class TFBench:
    def __init__(
        self,
        model: str,
        batch: int,
        threads: int = 2,
        warmup: int = 1,
        seed: int = 0,
        lr: float = 1e-3,
        jit: bool | str = "auto",
        **_,
    ):
        self.model, self.batch, self.threads, self.warmup = model, batch, threads, warmup
        self.seed, self.lr, self.jit = seed, lr, jit

    def setup(self) -> dict:
        t_begin = time.perf_counter()
        tf.config.threading.set_intra_op_parallelism_threads(self.threads)
        tf.config.threading.set_inter_op_parallelism_threads(self.threads)
        keras.utils.set_random_seed(self.seed)
        rss0 = peak_rss_mb()
        net, loss, x, y = build(self.model, self.batch, self.seed)
        n = int(sum(np.prod(w.shape) for w in net.trainable_weights))
        if n != MODELS[self.model]["params"]:
            raise AssertionError(
                f"TF {self.model}: {n} parameters, expected {MODELS[self.model]['params']}"
            )
        net.compile(optimizer=keras.optimizers.Adam(self.lr), loss=loss, jit_compile=self.jit)
        self._net, self._x, self._y = net, tf.constant(x), tf.constant(y)
        t0 = time.perf_counter()
        first = float(net.train_on_batch(self._x, self._y))
        compile_s = time.perf_counter() - t0
        warm = []
        for _ in range(max(self.warmup, 1)):  # after the compiling call
            t0 = time.perf_counter()
            net.train_on_batch(self._x, self._y)
            warm.append(time.perf_counter() - t0)
        return {
            "framework": "tf",
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "model": self.model,
            "batch": self.batch,
            "input": list(x.shape),
            "params": n,
            "jit_compile": bool(net.jit_compile),
            "threads": self.threads,
            "compile_s": round(compile_s, 3),
            "first_step_s": round(warm[0], 4),
            "loss": first,
            "rss_before_mb": round(rss0, 1),
            "setup_s": round(time.perf_counter() - t_begin, 3),
        }

    def run(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            self._net.train_on_batch(self._x, self._y)  # returns the loss: synchronous
            times.append(time.perf_counter() - t0)
        return times

    def finish(self) -> dict:
        return {"peak_rss_mb": round(peak_rss_mb(), 1)}
