"""The vocal_contour task: the sung f0 of a mixture, frame by frame (omnizart's `vocal_contour`).

Input: CFP Z (omnizart's channel 0) of the mixture at 16 kHz, hop 20 ms, window 2049, with the
music app's fc/tc (352 bins at 48 per octave from A0), zero-padded to 384 bins: windows of
(128, 384, 1). Output: per-frame, per-bin logits of 2 channels, [not voice, voice], the one-hot
encoding of the voice's f0 row. Network: omnizart's ASPP U-Net (`semantic_segmentation` with one
pyramid layer). Loss: the focal loss on sigmoids. Decoding: per frame the row with the highest
voice posterior, voiced above a threshold, converted to Hz. Scores: `mir_eval.melody` on whole
pieces against the exact reference f0.

Differences from omnizart, each a fix:
- Overlapping inference windows are averaged once (omnizart applies the sigmoid twice and sums
  the overlaps, with a hop of one frame).
- Early stopping and the best checkpoint watch `val_overall_accuracy`, which is logged (omnizart
  watches `val_acc`, a name TF2 never logs, so it never stops early).
- The cached input is Z only (the other three CFP channels are never read).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmir.config import Config, ConfigError, OptimConfig
from jaxmir.data.features.cfp import VOCAL_CONTOUR, cfp_numpy
from jaxmir.losses import apply_model, binary_accuracy
from jaxmir.melody import bin_freqs, frame_times, write_melody
from jaxmir.metrics import melody_scores
from jaxmir.tasks.base import (
    CorpusConfig,
    PieceTask,
    check_timesteps,
    require_model,
    schedule,
    tiny_schedule,
)
from jaxmir.tasks.music.labels import focal_loss, weighted_bce
from jaxmir.tasks.music.model import SemanticSegmentation
from jaxmir.tasks.vocal_contour.decode import decode_contour
from jaxmir.tasks.vocal_contour.labels import N_BINS, contour_bins, pad_rows, window_targets

CFP_BINS = VOCAL_CONTOUR.n_bins  # 352


@dataclasses.dataclass
class ContourModelConfig:
    name: str = "aspp"  # omnizart's semantic_segmentation
    timesteps: int = 128  # frames per window (20 ms each)
    base: int = 128  # channel width (omnizart: 128)
    dropout: float = 0.4
    conv_impl: str = "auto"  # native | matmul | auto (matmul weight gradients on CPU)
    bn_momentum: float = 0.99


@dataclasses.dataclass
class ContourDataConfig(CorpusConfig):
    corpus_instruments: str = "mixed"  # the corpus with a sung line
    loss: str = "focal"  # focal (omnizart's) | weighted (BCE, voice positives x pos_weight)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    pos_weight: float = 20.0  # weighted loss only
    label_blur: float = 0.0  # rows of Gaussian blur of the voice target (0: omnizart's one-hot)
    hop: int | None = None  # frames between training windows (default: timesteps)
    jitter: bool = True


@dataclasses.dataclass
class ContourDecodeConfig:
    threshold: float | None = 0.5  # voice posterior of a voiced frame; None: omnizart's rule


class VocalContourTask(PieceTask):
    output_suffixes = ("_f0.csv", "_f0.png")
    name = "vocal_contour"
    model_config = ContourModelConfig
    data_config = ContourDataConfig
    decode_config = ContourDecodeConfig
    datasets = ("synth", "mir1k", "medleydb", "tonas")  # the readers that give a voice f0

    def presets(self) -> dict[str, Config]:
        adam = OptimConfig(learning_rate=1e-3)
        watch = {"monitor": "val_overall_accuracy"}
        # omnizart's vocal_contour: ASPP U-Net, 128 frames, batch 12, 5 x 6000 steps
        # (val 200), Adam 1e-3, early stopping 3.
        paper = schedule(5, 6000, 200, 12, early_stop_patience=3, **watch)
        # The same network at 1/8 width on the corpus's sung line, with the positives' BCE
        # weighted and a blurred target (omnizart's focal loss on a one-hot row: RPA 0.16
        # after 120 steps, this recipe 0.74 after 100): minutes on a 2-core CPU.
        demo = schedule(5, 100, 10, 8, log_every=10, early_stop_patience=None, **watch)
        demo_model = ContourModelConfig(base=16, dropout=0.1, bn_momentum=0.9)
        demo_data = ContourDataConfig(corpus_pieces=40, loss="weighted", label_blur=1.0)
        tiny_model = ContourModelConfig(timesteps=32, base=4, dropout=0.0)
        tiny_data = ContourDataConfig(corpus_pieces=4, corpus_max_seconds=8.0)
        everything = ContourDataConfig(corpus_pieces=None)
        return {
            "paper": self.config("paper", ContourModelConfig(), everything, paper, adam),
            "demo": self.config("demo", demo_model, demo_data, demo, adam),
            "tiny": self.config("tiny", tiny_model, tiny_data, tiny_schedule(**watch), adam),
        }

    # -- model ----------------------------------------------------------------------------------
    def model(self, cfg: Config):
        m = cfg.model
        require_model(m.name, "aspp")
        check_timesteps(m.timesteps)
        return SemanticSegmentation(
            feature_num=N_BINS,
            timesteps=m.timesteps,
            multi_grid_layer_n=1,
            ch_num=1,
            out_class=2,
            dropout=m.dropout,
            base=m.base,
            conv_impl=m.conv_impl,
            bn_momentum=m.bn_momentum,
        )

    def input_spec(self, cfg: Config) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((cfg.model.timesteps, N_BINS, 1), jnp.float32)

    def bind_loss(self, cfg: Config):
        d = cfg.data
        if d.loss == "focal":
            fn = functools.partial(focal_loss, alpha=d.focal_alpha, gamma=d.focal_gamma)
        elif d.loss == "weighted":
            fn = functools.partial(weighted_bce, pos_weight=d.pos_weight)
        else:
            raise ConfigError(f"data.loss: unknown loss {d.loss!r} (focal, weighted)")

        def loss(apply_fn, variables, batch, rng, train):
            logits, new_state = apply_model(apply_fn, variables, batch["x"], rng, train)
            value = fn(logits, batch["y"], mask=batch["mask"][:, :, None, None])
            accuracy = binary_accuracy(logits, batch["y"], batch["mask"])
            return value, ({"accuracy": accuracy}, new_state)

        return loss

    # -- data -----------------------------------------------------------------------------------
    def piece_features(self, piece) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(Z (T, 352) float32, {"bins": voice row per frame (-1 unvoiced), "f0"})."""
        audio = piece.samples(VOCAL_CONTOUR.fs)
        z = cfp_numpy(audio, VOCAL_CONTOUR, np.float32)[..., 0]
        f0 = piece.f0 if piece.f0 is not None else np.zeros((0, 2))
        return z, {"bins": contour_bins(f0, len(z)), "f0": np.asarray(f0, np.float64)}

    def cache_params(self, dataset: str) -> dict:
        params = dataclasses.asdict(VOCAL_CONTOUR)
        return {"feature": "cfp-z", "params": params, "version": 1}

    def input_view(self, cfg: Config, x: np.ndarray) -> np.ndarray:
        return pad_rows(x)[..., None]

    def window_labels(self, cfg, labels, start, mask):
        n = len(mask)
        bins = np.full(n, -1, np.int64)
        lo, hi = max(start, 0), min(start + n, len(labels["bins"]))
        if hi > lo:
            bins[lo - start : hi - start] = labels["bins"][lo:hi]
        return {"y": window_targets(bins, blur=cfg.data.label_blur)}

    # -- inference ------------------------------------------------------------------------------
    def check_decode(self, cfg: Config) -> None:
        """ConfigError for a `decode.threshold` outside [0, 1] (None: omnizart's rule): 5 voiced
        no frame and -1 every frame, with exit 0."""
        t = cfg.decode.threshold
        if t is not None and not 0.0 <= t <= 1.0:
            raise ConfigError(f"decode.threshold: a probability in [0, 1] (or null), got {t}")

    def decode(self, probs: np.ndarray, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
        """(frame times, Hz with 0 = unvoiced)."""
        self.check_decode(cfg)
        hz = decode_contour(probs, VOCAL_CONTOUR, threshold=cfg.decode.threshold)
        return frame_times(len(hz), VOCAL_CONTOUR.hop_s), hz

    def score(self, events, labels, cfg: Config) -> dict[str, float]:
        return melody_scores(labels["f0"], *events)

    def write(self, events, stem: str, outdir: Path, cfg: Config, *, x, posteriors) -> list[Path]:
        return write_melody(outdir, stem, *events, spec=x, freqs=bin_freqs(VOCAL_CONTOUR, CFP_BINS))


TASK = VocalContourTask()
