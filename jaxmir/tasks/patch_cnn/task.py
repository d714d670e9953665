"""The patch_cnn task: melody f0 from CFP patches (omnizart's `patch_cnn`).

Input: one 25 x 25 (frequency x time) patch of CFP Z (16 kHz, hop 20 ms, window 2049,
80 Hz - 1 kHz, 174 bins) centred on a spectral peak of a frame. Output: 2 logits, [not melody,
melody]. Labels: `1/(1+|row - melody row|)` for peaks in voiced frames (a soft target
[1 - l, l]). Loss: categorical cross-entropy. Decoding: per frame the patch with the highest
melody posterior above 0.05 gives the row, then Hz. Scores: `mir_eval.melody` on whole pieces.

The cache holds Z (T, 174) and the peaks' (frame, row); training examples are cut from Z one
patch at a time (no patch array is stored), every peak of every piece one example.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmir.config import Config, ConfigError, OptimConfig
from jaxmir.data.cache import FeatureCache
from jaxmir.data.features.cfp import PATCH_CNN, cfp_numpy
from jaxmir.data.features.vocal import extract_patches, patch_at, peak_mask
from jaxmir.data.pipeline import PieceReader, shuffled_examples
from jaxmir.inference import sigmoid
from jaxmir.melody import bin_freqs, frame_times, write_melody
from jaxmir.metrics import melody_scores
from jaxmir.tasks.base import (
    EVAL_SEED,
    CorpusConfig,
    PieceTask,
    require_model,
    schedule,
    tiny_schedule,
)
from jaxmir.tasks.patch_cnn.decode import decode_patches
from jaxmir.tasks.patch_cnn.labels import patch_ref_bins, patch_targets
from jaxmir.tasks.patch_cnn.model import PATCH_SIZE, PatchCNN


@dataclasses.dataclass
class PatchModelConfig:
    name: str = "patch_cnn"
    dropout: float = 0.25
    conv_impl: str = "auto"  # native | matmul | auto


@dataclasses.dataclass
class PatchDataConfig(CorpusConfig):
    corpus_instruments: str = "mixed"  # the corpus with a sung line (the melody)


@dataclasses.dataclass
class PatchDecodeConfig:
    threshold: float = 0.05  # lowest melody posterior of a frame's best patch (omnizart's)


class PatchCNNTask(PieceTask):
    output_suffixes = ("_f0.csv", "_f0.png")
    name = "patch_cnn"
    model_config = PatchModelConfig
    data_config = PatchDataConfig
    decode_config = PatchDecodeConfig
    datasets = ("synth", "mir1k", "medleydb", "tonas")

    def presets(self) -> dict[str, Config]:
        watch = {"monitor": "val_overall_accuracy"}
        # omnizart's patch_cnn: Adam 1e-5, batch 32, 10 x 2000 steps (val 300), ES 4.
        paper = schedule(10, 2000, 300, 32, early_stop_patience=4, **watch)
        # The same network with a 100x learning rate: minutes on a 2-core CPU.
        demo = schedule(6, 1000, 20, 64, 256, log_every=50, early_stop_patience=None, **watch)
        fast, slow = OptimConfig(learning_rate=1e-3), OptimConfig(learning_rate=1e-5)
        model = PatchModelConfig()
        return {
            "paper": self.config("paper", model, PatchDataConfig(corpus_pieces=None), paper, slow),
            "demo": self.config("demo", model, PatchDataConfig(corpus_pieces=40), demo, fast),
            "tiny": self.config(
                "tiny",
                model,
                PatchDataConfig(corpus_pieces=4, corpus_max_seconds=8.0),
                tiny_schedule(val_batch_size=64, **watch),
                fast,
            ),
        }

    # -- model ----------------------------------------------------------------------------------
    def model(self, cfg: Config):
        require_model(cfg.model.name, "patch_cnn")
        return PatchCNN(dropout=cfg.model.dropout, conv_impl=cfg.model.conv_impl)

    def input_spec(self, cfg: Config) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((PATCH_SIZE, PATCH_SIZE, 1), jnp.float32)

    def bind_loss(self, cfg: Config):
        def loss(apply_fn, variables, batch, rng, train):
            logits = apply_fn(variables, batch["x"], train=train, rngs={"dropout": rng})
            value = jnp.mean(optax.softmax_cross_entropy(logits, batch["y"]))
            hit = jnp.argmax(logits, -1) == jnp.argmax(batch["y"], -1)
            return value, ({"accuracy": jnp.mean(hit.astype(jnp.float32))}, {})

        return loss

    # -- data -----------------------------------------------------------------------------------
    def piece_features(self, piece) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(Z (T, 174) float32, {"peaks": (n, 2) frame/row, "ref_bins", "f0"})."""
        audio = piece.samples(PATCH_CNN.fs)
        z = cfp_numpy(audio, PATCH_CNN, np.float32)[..., 0]
        peaks = np.stack(np.nonzero(peak_mask(z, min_bin=PATCH_SIZE // 2)), axis=1)
        f0 = piece.f0 if piece.f0 is not None else np.zeros((0, 2))
        return z, {
            "peaks": peaks.astype(np.int32),
            "ref_bins": patch_ref_bins(f0, len(z)),
            "f0": np.asarray(f0, np.float64),
        }

    def cache_params(self, dataset: str) -> dict:
        params = dataclasses.asdict(PATCH_CNN)
        return {"feature": "cfp-z-peaks", "params": params, "version": 1}

    def dataset(
        self, cfg: Config, cache: FeatureCache, split: str, train: bool
    ) -> grain.MapDataset:
        names = cache.names(split)
        if not names:
            raise cache.no_split(split)
        rows = []
        for i, name in enumerate(names):
            peaks = cache.labels(name)["peaks"]
            rows.append(np.concatenate([np.full((len(peaks), 1), i), peaks], axis=1))
        index = np.concatenate(rows).astype(np.int64)
        reader = PatchReader(str(cache.root), names)
        return shuffled_examples(index, cfg.train.seed if train else EVAL_SEED, reader)

    # -- inference ------------------------------------------------------------------------------
    def posteriors(
        self, predict, x: np.ndarray, cfg: Config, source: Path | None = None
    ) -> dict[str, np.ndarray]:
        """The melody posterior of every peak's patch, with the peaks' frames and rows."""
        patches, frames, rows = extract_patches(np.asarray(x, np.float32), PATCH_SIZE)
        b = cfg.train.val_batch_size
        probs = np.zeros(len(patches), np.float32)
        for i in range(0, len(patches), b):
            chunk = np.zeros((b, PATCH_SIZE, PATCH_SIZE, 1), np.float32)
            n = min(b, len(patches) - i)
            chunk[:n, ..., 0] = patches[i : i + n]
            logits = np.asarray(predict(chunk))[:n]
            probs[i : i + n] = sigmoid(logits[:, 1] - logits[:, 0])  # softmax of 2, on host
        return {"probs": probs, "frames": frames, "rows": rows, "n_frames": len(x)}

    def check_decode(self, cfg: Config) -> None:
        """ConfigError for a `decode.threshold` outside [0, 1]: 5 voiced no frame and -1 every
        frame, with exit 0."""
        t = cfg.decode.threshold
        if not 0.0 <= t <= 1.0:
            raise ConfigError(f"decode.threshold: a probability in [0, 1], got {t}")

    def decode(self, post: dict, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
        """(frame times, Hz with 0 = unvoiced)."""
        self.check_decode(cfg)
        hz = decode_patches(
            post["probs"],
            post["frames"],
            post["rows"],
            post["n_frames"],
            PATCH_CNN,
            threshold=cfg.decode.threshold,
        )
        return frame_times(len(hz), PATCH_CNN.hop_s), hz

    def score(self, events, labels, cfg: Config) -> dict[str, float]:
        return melody_scores(labels["f0"], *events)

    def write(self, events, stem: str, outdir: Path, cfg: Config, *, x, posteriors) -> list[Path]:
        return write_melody(outdir, stem, *events, spec=x, freqs=bin_freqs(PATCH_CNN))


@dataclasses.dataclass
class PatchReader(PieceReader):
    """(piece, frame, row) -> {"x": (25, 25, 1) patch of Z, "y": [1 - l, l]}."""

    def random_map(self, element, rng: np.random.Generator) -> dict:
        piece, frame, row = (int(v) for v in element)
        z, labels = self.arrays(piece)
        label = float(patch_targets(np.array([frame]), np.array([row]), labels["ref_bins"])[0])
        return {
            "x": patch_at(z, frame, row, PATCH_SIZE)[..., None],
            "y": np.array([1.0 - label, label], np.float32),
        }


TASK = PatchCNNTask()
