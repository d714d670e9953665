"""The drum task: 13 drum classes on every mini-beat (omnizart's `drum`).

Input: CQT patches (`jaxmir.data.features.cqt`: 44.1 kHz, hop 256, 120 bins from MIDI 16, dB
scaled, L2 per frame) of [t - 0.2, t + 0.5] s around each mini-beat t, resized to 120 x 120;
4 consecutive mini-beats make one example, (4, 120, 120), the network's (120, 120, 4). The
network scales its input by 100 and appends its difference along time (`model.diff_axis=1`;
omnizart's `tf_diff2` took it across the CQT bins, which `paper` keeps: `diff_axis=2`).
Mini-beats: 8 per beat, from the labels' beats (the embedded corpus), else from
`librosa.beat.beat_track` (ENST, MDB and `transcribe`; omnizart used madmom, which cannot be
installed here). Output: per mini-beat, 13 class values. Network: the spectral-norm ResNet with
self-attention. Decoding: slots at or above `decode.threshold` that are peaks along time.
Scores: `mir_eval.onset` F1 (50 ms) for kick, snare, hi-hat, per class and overall.

The loss (`model.loss`):
- `hinge` (omnizart's, the `paper` preset): max(|100 y - (70 tanh z + 50)| - 20, 0), per class
  averaged and weighted by omnizart's class priorities.
- `bce` (the default, `tiny` and `demo`): sigmoid cross-entropy on z with the same weights and
  averaging. The hinge's zero-gradient band means an output that has settled anywhere within
  20 of its target stops learning, and tanh saturates far from it, so a slot pushed to
  "silence" early (most slots are silence) gets no gradient back; the BCE's gradient never
  vanishes on a wrong slot.
Both are omnizart's shapes made consistent: labels are (mini-beats, classes) everywhere
(omnizart built (13, 4) targets against a declared (4, 13)).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxmir.config import Config, ConfigError, OptimConfig
from jaxmir.data.audio import AudioError
from jaxmir.data.cache import FeatureCache
from jaxmir.data.features.cqt import DRUM_CLASSES, HOP, PATCH_SIZE, drum_input, drum_labels
from jaxmir.data.pipeline import frames_window
from jaxmir.inference import predict_piece
from jaxmir.tasks.base import (
    CorpusConfig,
    PieceTask,
    csv_rows,
    require_model,
    schedule,
    tiny_schedule,
)
from jaxmir.tasks.drum.decode import (
    decode_hits,
    drum_scores,
    hits_to_midi,
    plot_hits,
    write_hits_csv,
)
from jaxmir.tasks.drum.labels import activations, hinge_l1_loss, weighted_bce_loss
from jaxmir.tasks.drum.model import DrumNet

N_CLASSES = len(DRUM_CLASSES)
LOSSES = {"hinge": hinge_l1_loss, "bce": weighted_bce_loss}


@dataclasses.dataclass
class DrumModelConfig:
    name: str = "sn_resnet"
    timesteps: int = 4  # mini-beats an example
    channels: int = 64
    dense: int = 1024
    loss: str = "bce"  # bce | hinge (omnizart's)
    # The appended difference of the input: 1 = along time (onsets show there), 2 = across
    # CQT bins, what omnizart's `tf_diff2` on its (time, bins) patches computed (`paper`).
    diff_axis: int = 1
    # Average-pool each 120 x 120 patch by this factor before the network (tiny: 4, so the
    # tests' model sees 30 x 30 patches; 1 = omnizart's full patches).
    input_pool: int = 1
    conv_impl: str = "auto"  # native | matmul (matmul weight gradient) | auto (matmul on CPU only)


@dataclasses.dataclass
class DrumDataConfig(CorpusConfig):
    corpus_instruments: str = "mixed"  # the corpus with drums
    hop: int | None = None  # mini-beats between training examples (default 1, omnizart's)
    jitter: bool = False


@dataclasses.dataclass
class DrumDecodeConfig:
    threshold: float = 0.5  # of a slot's activation in [0, 1]


class DrumTask(PieceTask):
    output_suffixes = (".mid", "_drums.csv", "_drums.png")
    name = "drum"
    model_config = DrumModelConfig
    data_config = DrumDataConfig
    decode_config = DrumDecodeConfig
    datasets = ("synth", "enst", "mdb_drums")
    piano_corpus_lacks = "drums"
    stitch = "average"
    init_rng_impl = "rbg"

    def presets(self) -> dict[str, Config]:
        watch = {"monitor": "val_drum_f1"}
        # omnizart's drum: Adam 2e-5, batch 32, 50 x 1000 steps (val 100), early stopping 6.
        paper = schedule(50, 1000, 100, 32, early_stop_patience=6)
        paper_model = DrumModelConfig(loss="hinge", diff_axis=2)
        demo = schedule(5, 150, 10, 16, log_every=25, early_stop_patience=None, **watch)
        demo_model = DrumModelConfig(channels=16, dense=256)
        demo_data = DrumDataConfig(corpus_pieces=40, hop=2)
        tiny_model = DrumModelConfig(channels=4, dense=16, input_pool=4)
        tiny_data = DrumDataConfig(corpus_pieces=4, corpus_max_seconds=8.0, hop=4)
        return {
            "paper": self.config(
                "paper", paper_model, DrumDataConfig(corpus_pieces=None), paper, _adam(2e-5)
            ),
            "demo": self.config("demo", demo_model, demo_data, demo, _adam(1e-3)),
            "tiny": self.config("tiny", tiny_model, tiny_data, tiny_schedule(**watch), _adam(1e-3)),
        }

    # -- model ----------------------------------------------------------------------------------
    def omnizart_params(self, params) -> tuple[int, str]:
        sizes = {
            jax.tree_util.keystr(path): int(np.prod(leaf.shape))
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        }
        gamma = sum(n for path, n in sizes.items() if path.endswith("['self_attn']['gamma']"))
        why = "the self-attention's gamma, which omnizart's Keras model never tracked"
        return sum(sizes.values()) - gamma, why

    def model(self, cfg: Config) -> nn.Module:
        m = cfg.model
        require_model(m.name, "sn_resnet")
        if m.loss not in LOSSES:
            raise ConfigError(f"model.loss: unknown loss {m.loss!r} ({', '.join(LOSSES)})")
        if m.input_pool < 1 or PATCH_SIZE % m.input_pool:
            raise ConfigError(f"model.input_pool must divide {PATCH_SIZE}, got {m.input_pool}")
        if m.diff_axis not in (1, 2):
            raise ConfigError(f"model.diff_axis: 1 (time) or 2 (bins), got {m.diff_axis}")
        side = PATCH_SIZE // m.input_pool
        net = DrumNet(
            channels=m.channels,
            dense_width=m.dense,
            diff_axis=m.diff_axis,
            frames=side,
            bins=side,
            mini_beats=m.timesteps,
            conv_impl=m.conv_impl,
        )
        return PatchesAsChannels(net, m.input_pool)

    def input_spec(self, cfg: Config) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((cfg.model.timesteps, PATCH_SIZE, PATCH_SIZE), jnp.float32)

    def default_hop(self, cfg: Config) -> int:
        return 1

    def bind_loss(self, cfg: Config):
        loss_fn = LOSSES[cfg.model.loss]

        def loss(apply_fn, variables, batch, rng, train):
            if train:
                z, state = apply_fn(variables, batch["x"], train=True, mutable=["batch_stats"])
                state = dict(state)
            else:
                z, state = apply_fn(variables, batch["x"], train=False), {}
            value = loss_fn(z, batch["y"], batch["mask"])
            hits = ((z > 0) == (batch["y"] > 0.5)) * batch["mask"][..., None]
            accuracy = jnp.sum(hits) / jnp.maximum(jnp.sum(batch["mask"]) * N_CLASSES, 1.0)
            return value, ({"accuracy": accuracy}, state)

        return loss

    # -- data -----------------------------------------------------------------------------------
    def cache_params(self, dataset: str) -> dict:
        beats = "labels" if dataset == "synth" else "librosa"
        return {
            "feature": "drum-cqt-patches",
            "beats": beats,
            "dtype": "float16",
            "version": 1,
        }

    def piece_features(self, piece) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(patches (M, 120, 120) float16, {"hits" (M, 13), "mini_beats" (M,), "drum_hits"})."""
        from jaxmir.data.features.cqt import SR

        audio = piece.samples(SR)
        if piece.drum_hits is None and len(audio) < HOP:  # refused, as by every other task
            raise AudioError(piece.audio, "too short: not one feature frame")
        beats = piece.beats if piece.beats is not None and len(piece.beats) >= 2 else None
        patches, mini = drum_input(audio, SR, beats=beats)
        labels = {"mini_beats": mini}
        if piece.drum_hits is not None and not len(mini):  # a piece for a cache: named, skipped
            raise ValueError("no beats to cut mini-beats on (fewer than 2 found)")
        if piece.drum_hits is not None:
            hits = np.asarray(piece.drum_hits, np.float64).reshape(-1, 2)
            labels.update(hits=drum_labels(hits, mini), drum_hits=hits)
        return patches.astype(np.float16), labels

    def input_view(self, cfg: Config, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32)

    def window_labels(self, cfg, labels, start, mask):
        return {"y": frames_window(labels["hits"], start, len(mask)) * mask[:, None]}

    # -- inference ------------------------------------------------------------------------------
    def posteriors(self, predict, x: np.ndarray, cfg: Config, source: Path | None = None):
        """Per-mini-beat activations (M, 13) in [0, 1]; (0, 13) for a piece without
        mini-beats (fewer than 2 beats: silence, a steady tone), which has no drum hits."""
        if len(x) == 0:
            return np.zeros((0, N_CLASSES), np.float32)
        z = predict_piece(
            predict,
            self.input_view(cfg, x),
            timesteps=self.timesteps(cfg),
            batch_size=cfg.train.val_batch_size,
            mode=self.stitch,
        )
        return activations(z, cfg.model.loss)

    def check_decode(self, cfg: Config) -> None:
        """ConfigError for a `decode.threshold` outside [0, 1] (activations are probabilities)."""
        t = cfg.decode.threshold
        if not 0.0 <= t <= 1.0:
            raise ConfigError(f"decode.threshold: a probability in [0, 1], got {t}")

    def decode(self, posteriors, cfg: Config) -> np.ndarray:
        self.check_decode(cfg)
        act, mini_beats = posteriors
        return decode_hits(act, mini_beats, cfg.decode.threshold)

    def score(self, events, labels, cfg: Config) -> dict[str, float]:
        return drum_scores(labels["drum_hits"], events)

    def evaluate(
        self, predict, cfg: Config, cache: FeatureCache, split: str, progress: bool = False
    ) -> dict[str, float]:
        """The mean of `score` over the pieces of `split` (decoded on each piece's mini-beats,
        which the cache keeps with its labels)."""
        names = cache.names(split)
        if not names:
            raise cache.no_split(split)
        rows = []
        for name in tqdm(names, desc=f"Evaluate {split}", disable=not progress):
            labels = cache.labels(name)
            act = self.posteriors(predict, cache.features(name), cfg)
            rows.append(self.score(self.decode((act, labels["mini_beats"]), cfg), labels, cfg))
        keys = list(dict.fromkeys(k for row in rows for k in row))
        return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}

    def transcribe(self, predict, path: Path, cfg: Config, outdir: Path) -> list[Path]:
        from jaxmir.data.records import AudioPiece

        x, labels = self.piece_features(AudioPiece.input(path))
        posteriors = (self.posteriors(predict, x, cfg), labels["mini_beats"])
        outdir = Path(outdir)
        outdir.mkdir(parents=True, exist_ok=True)
        hits = self.decode(posteriors, cfg)
        return self.write(hits, Path(path).stem, outdir, cfg, x=x, posteriors=posteriors)

    def write(self, events, stem: str, outdir: Path, cfg: Config, *, x, posteriors) -> list[Path]:
        act, mini_beats = posteriors
        midi = outdir / f"{stem}.mid"
        hits_to_midi(events).write(str(midi))
        csv = write_hits_csv(outdir / f"{stem}_drums.csv", events)
        png = plot_hits(act, mini_beats, events, outdir / f"{stem}_drums.png", stem)
        return [midi, csv, png]

    def transcription_note(
        self, path: Path, written: list[Path], cfg: Config | None = None
    ) -> str | None:
        """Why a file got no drum hits: no beat grid to cut mini-beats on, or no activation
        above the threshold; None when it got hits."""
        from jaxmir.data.features.cqt import SR, tracked_beats
        from jaxmir.data.records import AudioPiece

        if csv_rows(written, "_drums.csv"):  # hits
            return None
        name = Path(path).name
        if len(tracked_beats(AudioPiece.input(path).samples(SR), SR)) < 2:
            return (
                f"{name}: no drum hits: fewer than 2 beats were tracked (silence, a steady "
                "tone or a very short file), so there is no grid of mini-beats to find hits on"
            )
        return f"{name}: no drum hits: no activation reached decode.threshold"


class PatchesAsChannels(nn.Module):
    """(B, mini-beats, time, bins) examples -> the network's (B, time, bins, mini-beats),
    average-pooled by `pool` first when it is above 1."""

    net: DrumNet
    pool: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = jnp.transpose(x, (0, 2, 3, 1))
        if self.pool > 1:
            x = nn.avg_pool(x, (self.pool, self.pool), strides=(self.pool, self.pool))
        return self.net(x, train=train)


def _adam(lr: float) -> OptimConfig:
    return OptimConfig(learning_rate=lr)


TASK = DrumTask()
