"""PyTorch reference implementations of jaxmir's models, for side-by-side step times.

Same per-sample shapes and trainable-parameter counts as jaxmir's (checked at set-up):

* ``music``: the music U-Net with local 2-D attention exactly as :mod:`jaxmir.tasks.music.model`
  builds it ("attn", paper preset: base 32, 256 x 352 x 2 -> 23 channels, 8,333,687 parameters):
  pre-activation residual blocks, the two local-attention layers of
  :mod:`jaxmir.nn.local_attention` (same blocking, flange, masking and index tables), transposed
  convolution decoder, smooth-BCE loss. NCHW, torch's native layout.
* ``beat``: LayerNorm -> 2 x BiLSTM(25) -> Flatten -> 2 x Dense(1000), 100,058,356 parameters.
  torch's LSTM has two bias vectors per gate where Keras/Flax have one, so ``bias_hh`` is zero and
  frozen (the trainable count is then jaxmir's). Weighted BCE (downbeat x5).
* ``patch_cnn``: Conv 8@5x5 -> Conv 16@3x3 -> MaxPool 2 -> Dense 128 -> 64 -> 2, 175,778
  parameters, softmax cross-entropy.

Each step is forward + backward + ``torch.optim.Adam`` (defaults), in train mode (dropout on,
BatchNorm batch statistics), on ``torch.set_num_threads(threads)`` threads (default 2).
Run through :mod:`benchmarks.worker` (``torch``); needs ``pip install "jaxmir[bench]"``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import MODELS, peak_rss_mb

# -- music: the attention U-Net ------------------------------------------------------------------


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)  # Keras' momentum 0.99


class ConvBlock(nn.Module):
    def __init__(self, cin: int, c: int, stride: int, dropout: float):
        super().__init__()
        self.bn0, self.bn1 = _bn(cin), _bn(c)
        self.conv0 = nn.Conv2d(cin, c, 3, stride, 1)
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1)
        self.skip = nn.Conv2d(cin, c, 1, stride) if stride != 1 else None
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        y = self.conv0(self.drop(self.bn0(F.relu(x))))
        y = self.conv1(self.drop(self.bn1(F.relu(y))))
        return y + (self.skip(x) if self.skip is not None else x)


class TransposeConvBlock(nn.Module):
    def __init__(self, cin: int, c: int, dropout: float):
        super().__init__()
        self.bn0, self.bn1 = _bn(cin), _bn(c)
        self.conv = nn.Conv2d(cin, c, 3, 1, 1)
        self.tconv = nn.ConvTranspose2d(c, c, 3, 2, padding=1, output_padding=1)
        self.skip = nn.ConvTranspose2d(cin, c, 1, 2, output_padding=1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        y = self.conv(self.drop(self.bn0(F.relu(x))))
        y = self.tconv(self.drop(self.bn1(F.relu(y))))
        return y + self.skip(x)


class SkipMerge(nn.Module):
    def __init__(self, c: int, cskip: int, dropout: float):
        super().__init__()
        self.bn_x, self.bn_s = _bn(c), _bn(cskip)
        self.conv = nn.Conv2d(c + cskip, c, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, skip):
        y = torch.cat([self.bn_x(F.relu(x)), self.bn_s(F.relu(skip))], dim=1)
        return x + self.conv(self.drop(y))


def _axis_plan(size: int, block: int, flange: int) -> tuple[int, int, int]:
    n_blocks = -(-size // block)
    if n_blocks == 1:
        return size, 0, 1
    return block, flange, n_blocks


def _window_index(n_blocks: int, block: int, flange: int) -> np.ndarray:
    return np.arange(n_blocks)[:, None] * block + np.arange(block + 2 * flange)[None, :]


def local_attention_2d(q, k, v, query_shape, memory_flange):
    """(b, n, H, W, d) blocked local attention, the same computation as jaxmir's."""
    b, n, h, w, _ = q.shape
    qh, fh, nbh = _axis_plan(h, query_shape[0], memory_flange[0])
    qw, fw, nbw = _axis_plan(w, query_shape[1], memory_flange[1])
    hp, wp = nbh * qh, nbw * qw
    qb = F.pad(q, (0, 0, 0, wp - w, 0, hp - h))
    qb = qb.reshape(b, n, nbh, qh, nbw, qw, -1).permute(0, 1, 2, 4, 3, 5, 6)
    qb = qb.reshape(b, n, nbh, nbw, qh * qw, -1)
    rows = torch.as_tensor(_window_index(nbh, qh, fh)[:, None, :, None])
    cols = torch.as_tensor(_window_index(nbw, qw, fw)[None, :, None, :])
    m = rows.shape[2] * cols.shape[3]

    def windows(x):
        x = F.pad(x, (0, 0, fw, wp - w + fw, fh, hp - h + fh))
        return x[:, :, rows, cols, :].reshape(b, n, nbh, nbw, m, -1)

    kb, vb = windows(k), windows(v)
    valid = np.zeros((hp + 2 * fh, wp + 2 * fw), dtype=bool)
    valid[fh : fh + h, fw : fw + w] = True
    valid = torch.as_tensor(valid[rows.numpy(), cols.numpy()].reshape(nbh, nbw, 1, m))
    logits = torch.einsum("bnijqd,bnijmd->bnijqm", qb, kb)
    logits = logits.masked_fill(~valid, -1e9)
    out = torch.einsum("bnijqm,bnijmd->bnijqd", torch.softmax(logits, -1), vb)
    out = out.reshape(b, n, nbh, nbw, qh, qw, -1).permute(0, 1, 2, 4, 3, 5, 6)
    return out.reshape(b, n, hp, wp, -1)[:, :, :h, :w, :]


class LocalAttention2D(nn.Module):
    def __init__(self, cin, out_channel, d_model, n_heads, query_shape, memory_flange):
        super().__init__()
        self.q = nn.Conv2d(cin, d_model, 3, 1, 1)
        self.k = nn.Conv2d(cin, d_model, 3, 1, 1)
        self.v = nn.Conv2d(cin, d_model, 3, 1, 1)
        self.out = nn.Conv2d(d_model, out_channel, 3, 1, 1, bias=False)
        self.n_heads, self.query_shape, self.memory_flange = n_heads, query_shape, memory_flange
        self.scale = 1.0 / math.sqrt(d_model // n_heads)

    def _heads(self, x):  # (b, C, H, W) -> (b, n, H, W, C // n), contiguous channel chunks
        b, c, h, w = x.shape
        return x.reshape(b, self.n_heads, c // self.n_heads, h, w).permute(0, 1, 3, 4, 2)

    def forward(self, x):
        q = self._heads(self.q(x)) * self.scale
        out = local_attention_2d(
            q, self._heads(self.k(x)), self._heads(self.v(x)), self.query_shape, self.memory_flange
        )
        b, n, h, w, d = out.shape
        return self.out(out.permute(0, 1, 4, 2, 3).reshape(b, n * d, h, w))


class MusicAttnUNet(nn.Module):
    """jaxmir's SemanticSegmentationAttn (omnizart's ``semantic_segmentation_attn``), NCHW."""

    def __init__(
        self,
        ch_num=2,
        out_class=23,
        base=32,
        dropout=0.4,
        n_heads=8,
        attn_query_shapes=((100, 32), (64, 16)),
        memory_flange=(8, 8),
    ):
        super().__init__()
        b = base
        self.stem = nn.Conv2d(ch_num, b, 7, 1, 3)
        blocks, cin = [], b
        for width, depth in zip((b, 2 * b, 4 * b, 8 * b), (2, 3, 4, 5), strict=True):
            level = []
            for i in range(depth):
                level.append(ConvBlock(cin, width, 2 if i == 0 else 1, dropout))
                cin = width
            blocks.append(nn.Sequential(*level))
        self.encoder = nn.ModuleList(blocks)
        self.attn = nn.ModuleList()
        self.attn_bn = nn.ModuleList()
        cin = 8 * b
        for i, (d_model, out) in enumerate(((b, 2 * b), (2 * b, 4 * b))):
            self.attn.append(
                LocalAttention2D(cin, out, d_model, n_heads, attn_query_shapes[i], memory_flange)
            )
            self.attn_bn.append(_bn(out))
            cin = out
        self.bottleneck = nn.Conv2d(8 * b + 4 * b, 8 * b, 1)
        widths, skips = (4 * b, 2 * b, 2 * b, 2 * b), (4 * b, 2 * b, b)
        self.decoder, self.merges, cin = nn.ModuleList(), nn.ModuleList(), 8 * b
        for level, width in enumerate(widths):
            self.decoder.append(TransposeConvBlock(cin, width, dropout))
            if level < len(skips):
                self.merges.append(SkipMerge(width, skips[level], dropout))
            cin = width
        self.head_bn = _bn(cin)
        self.head_drop = nn.Dropout(dropout)
        self.prediction = nn.Conv2d(cin, out_class, 1)

    def forward(self, x):
        x = self.stem(x)
        levels = []
        for level in self.encoder:
            x = level(x)
            levels.append(x)
        en4 = levels[-1]
        f = en4
        for attn, bn in zip(self.attn, self.attn_bn, strict=True):
            f = bn(F.relu(attn(f)))
        x = self.bottleneck(torch.cat([en4, f], dim=1)) + en4
        skips = levels[2::-1]
        for i, block in enumerate(self.decoder):
            x = block(x)
            if i < len(self.merges):
                x = self.merges[i](x, skips[i])
        return self.prediction(self.head_drop(self.head_bn(F.relu(x))))


def smooth_bce(logits, targets, gamma: float = 0.25):
    """jaxmir's ``smooth_bce`` (full mask): label-smoothed sigmoid cross-entropy, channels on
    axis 1 here."""
    k = float(min(25, max(targets.shape[1], 8)))
    pos = (1.0 - gamma) * targets + gamma / k
    neg = (1.0 - gamma) * (1.0 - targets) + gamma / k
    return torch.mean(-pos * F.logsigmoid(logits) - neg * F.logsigmoid(-logits))


# -- beat: the BLSTM -----------------------------------------------------------------------------


class BeatBLSTM(nn.Module):
    def __init__(self, timesteps=1000, features=178, hidden=25, num_layers=2):
        super().__init__()
        self.norm = nn.LayerNorm(features, eps=1e-3)
        self.lstms = nn.ModuleList(
            nn.LSTM(
                features if i == 0 else 2 * hidden, hidden, batch_first=True, bidirectional=True
            )
            for i in range(num_layers)
        )
        for lstm in self.lstms:  # one bias per gate, as Keras/Flax: freeze torch's second one
            for name, p in lstm.named_parameters():
                if name.startswith("bias_hh"):
                    nn.init.zeros_(p)
                    p.requires_grad_(False)
        self.beat = nn.Linear(timesteps * 2 * hidden, timesteps)
        self.downbeat = nn.Linear(timesteps * 2 * hidden, timesteps)

    def forward(self, x):
        x = self.norm(x)
        for lstm in self.lstms:
            x, _ = lstm(x)
        flat = x.reshape(x.shape[0], -1)
        return torch.stack([self.beat(flat), self.downbeat(flat)], dim=-1)


def weighted_bce(logits, targets, downbeat_weight: float = 5.0):
    per = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    w = torch.tensor([1.0, downbeat_weight])
    return torch.sum(per * w) / (targets.shape[0] * targets.shape[1] * 2.0)


# -- patch CNN -----------------------------------------------------------------------------------


class PatchCNN(nn.Module):
    def __init__(self, dropout: float = 0.25):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 5), nn.Conv2d(8, 16, 3)
        self.fc1, self.fc2, self.fc3 = nn.Linear(1296, 128), nn.Linear(128, 64), nn.Linear(64, 2)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = self.drop(F.relu(self.conv1(x)))
        x = self.drop(F.relu(self.conv2(x)))
        # NHWC flatten order, as Keras/Flax (the count and the cost do not depend on it)
        x = F.max_pool2d(x, 2).permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        x = self.drop(F.relu(self.fc1(x)))
        x = self.drop(F.relu(self.fc2(x)))
        return self.fc3(x)


# -- the bench -----------------------------------------------------------------------------------


def build(model: str, batch: int, seed: int = 0):
    """(module, loss(module, x, y), x, y) at jaxmir's shapes, torch layout."""
    rng = np.random.default_rng(seed)
    spec = MODELS[model]
    x = rng.standard_normal((batch, *spec["input"]), dtype=np.float32)
    if model == "music":
        module = MusicAttnUNet()
        x = x.transpose(0, 3, 1, 2)
        y = rng.uniform(0, 1, (batch, *spec["output"])).astype(np.float32).transpose(0, 3, 1, 2)

        def loss(m, x, y):
            return smooth_bce(m(x), y)
    elif model == "beat":
        module = BeatBLSTM()
        y = rng.uniform(0, 1, (batch, *spec["output"])).astype(np.float32)

        def loss(m, x, y):
            return weighted_bce(m(x), y)
    elif model == "patch_cnn":
        module = PatchCNN()
        x = x.transpose(0, 3, 1, 2)
        y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, batch)]

        def loss(m, x, y):
            return F.cross_entropy(m(x), y)
    else:
        raise ValueError(f"unknown model {model!r}")
    return (
        module,
        loss,
        torch.from_numpy(np.ascontiguousarray(x)),
        torch.from_numpy(np.ascontiguousarray(y)),
    )


def trainable_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class TorchBench:
    def __init__(
        self,
        model: str,
        batch: int,
        threads: int = 2,
        warmup: int = 1,
        seed: int = 0,
        lr: float = 1e-3,
        **_,
    ):
        self.model, self.batch, self.threads, self.warmup = model, batch, threads, warmup
        self.seed, self.lr = seed, lr

    def setup(self) -> dict:
        t_begin = time.perf_counter()
        torch.set_num_threads(self.threads)
        torch.manual_seed(self.seed)
        rss0 = peak_rss_mb()
        module, loss_fn, x, y = build(self.model, self.batch, self.seed)
        n = trainable_params(module)
        if n != MODELS[self.model]["params"]:
            raise AssertionError(
                f"torch {self.model}: {n} parameters, expected {MODELS[self.model]['params']}"
            )
        module.train()
        opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=self.lr)
        self._step_args = (module, loss_fn, opt, x, y)
        first = []
        for _ in range(max(self.warmup, 1)):
            t0 = time.perf_counter()
            loss = self._step()
            first.append(time.perf_counter() - t0)
        return {
            "framework": "torch",
            "torch": torch.__version__,
            "model": self.model,
            "batch": self.batch,
            "input": list(x.shape),
            "layout": "NCHW" if x.ndim == 4 else "NTC",
            "params": n,
            "threads": torch.get_num_threads(),
            "first_step_s": round(first[0], 4),
            "loss": float(loss),
            "rss_before_mb": round(rss0, 1),
            "setup_s": round(time.perf_counter() - t_begin, 3),
        }

    def _step(self):
        module, loss_fn, opt, x, y = self._step_args
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(module, x, y)
        loss.backward()
        opt.step()
        return loss.detach()

    def run(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            self._step()
            times.append(time.perf_counter() - t0)
        return times

    def finish(self) -> dict:
        return {"peak_rss_mb": round(peak_rss_mb(), 1)}
