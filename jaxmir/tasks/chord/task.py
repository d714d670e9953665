"""The chord task: major/minor chords from bass and treble chroma (omnizart's `chord`).

Input: 24-d bass + treble chroma every 46 ms (hop 2048 at 44.1 kHz; `bass_treble_chroma` for
audio, `bothchroma.csv` for McGill Billboard), cut into segments of 21 frames taken every 5th
frame (232 ms), sequences of 100 segments: (100, 504). Output per segment: 25 chord classes
(12 major, 12 minor, N; the paper preset keeps omnizart's 26th, X, output) and the
chord-change logit. Network: the Harmony Transformer. Loss: 3 x sigmoid-CE on the change +
softmax-CE on the chord (label smoothing 0.1) + 2e-4 x L2 on the weights. Decoding: argmax per
segment, equal neighbours merged, chords under 0.1 s merged into the one before.
Scores: `mir_eval.chord` on whole pieces, weighted by duration: majmin (the headline), root,
thirds, mirex.

Choices, and why:
- X segments (sonorities that are not major or minor: power chords, suspensions, diminished
  chords, single notes) are masked out of both loss terms and are skipped by the score, as
  mir_eval skips X in a reference. They are not a class to predict.
- 12x transposition happens at read time (`labels.Transpose`): every training example is moved
  by a random 0-11 semitones, so nothing is stored 12 times and every epoch sees new keys.
- The change slope (the straight-through sigmoid's steepness) is model state (the
  "batch_stats" collection, checkpointed with the run); `AnnealSlope` multiplies it by 1.1 at
  the end of every epoch, as omnizart's `ReduceSlope` meant to (its slope was a Python
  attribute, fixed once the graph was traced). It changes nothing in training, here as in
  omnizart: the straight-through round of sigmoid(slope * z) is z > 0 for any positive slope,
  and no gradient reaches the change logit through the block ids (see `model.py`).
- L2: on every weight whose name is not `bias`. omnizart's "not bias" also kept LayerNorm's
  shift (Keras calls it `beta`); flax calls it `bias`, and decaying a shift is not what the
  term is for, so it is left out here.
- The same chroma at training and at transcription: `jaxmir transcribe chord song.wav` runs
  `bass_treble_chroma`, as the corpus's features were made (omnizart trained on Billboard's
  NNLS chroma and transcribed with the Vamp plug-in's other settings).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmir.config import Config, ConfigError, OptimConfig
from jaxmir.data.cache import FeatureCache
from jaxmir.data.features import chroma as C
from jaxmir.data.pipeline import frames_window
from jaxmir.data.synth.corpus import X_CHORD
from jaxmir.inference import predict_piece, sigmoid
from jaxmir.tasks.base import CorpusConfig, PieceTask, require_model, schedule, tiny_schedule
from jaxmir.tasks.chord.decode import chords_to_midi, decode_chords, plot_chords, write_chords_csv
from jaxmir.tasks.chord.labels import N_CLASSES, Transpose, change_flags, segment_classes
from jaxmir.tasks.chord.model import HarmonyTransformer

SEGMENT_SECONDS = C.SEGMENT_HOP * C.HOP / C.SR  # 0.232 s between segment centres
WIDTH = C.SEGMENT_WIDTH * 24  # 504 input values a segment
CENTRE = slice((C.SEGMENT_WIDTH // 2) * 24, (C.SEGMENT_WIDTH // 2 + 1) * 24)  # its own frame


@dataclasses.dataclass
class ChordModelConfig:
    name: str = "harmony_transformer"
    timesteps: int = C.SEQ_LEN  # segments a sequence
    hidden: int = 512
    heads: int = 8
    ff: int = 2048
    encoder_blocks: int = 2
    # omnizart's decoder ran 1 block (its `ff_layers` list held one entry) where 2 were
    # configured; 2 is the default here, `paper` keeps 1 (its 11,054,610 parameters).
    decoder_blocks: int = 2
    classes: int = N_CLASSES  # 26 adds omnizart's X output (never a target; never decoded)
    dropout: float = 0.6
    slope_rate: float = 1.1  # the change slope's growth per epoch


@dataclasses.dataclass
class ChordDataConfig(CorpusConfig):
    corpus_instruments: str = "mixed"
    hop: int | None = None  # segments between training sequences (default 50, omnizart's)
    jitter: bool = True  # move each training sequence by up to hop/2 segments
    transpose: bool = True  # 12x transposition augmentation at read time


@dataclasses.dataclass
class ChordDecodeConfig:
    min_seconds: float = 0.1  # a shorter chord is merged into the one before it


class ChordTask(PieceTask):
    output_suffixes = ("_chords.csv", ".mid", "_chords.png")
    name = "chord"
    model_config = ChordModelConfig
    data_config = ChordDataConfig
    decode_config = ChordDecodeConfig
    datasets = ("synth", "billboard")
    stitch = "average"

    def presets(self) -> dict[str, Config]:
        watch = {"monitor": "val_chord_majmin"}
        # omnizart's chord: batch 32, 10 x 1000 steps (val 500), early stopping 4 on val_loss,
        # Adam 1e-4 x 0.96 every 1000 steps (staircase), gradients clipped to +-1.
        paper = schedule(10, 1000, 500, 32, early_stop_patience=4)
        paper_model = ChordModelConfig(decoder_blocks=1, classes=26)
        paper_optim = _optim(1e-4, decay_steps=1000)
        demo = schedule(6, 150, 10, 16, log_every=25, early_stop_patience=None, **watch)
        demo_model = ChordModelConfig(hidden=128, heads=4, ff=256, dropout=0.3)
        demo_data = ChordDataConfig(corpus_pieces=40, hop=10)
        tiny_model = ChordModelConfig(hidden=16, heads=2, ff=32, dropout=0.1)
        tiny_data = ChordDataConfig(corpus_pieces=4, corpus_max_seconds=8.0, hop=10)
        return {
            "paper": self.config(
                "paper", paper_model, ChordDataConfig(corpus_pieces=None), paper, paper_optim
            ),
            "demo": self.config("demo", demo_model, demo_data, demo, _optim(1e-3, 150)),
            "tiny": self.config(
                "tiny", tiny_model, tiny_data, tiny_schedule(**watch), _optim(1e-3)
            ),
        }

    # -- model ----------------------------------------------------------------------------------
    def model(self, cfg: Config) -> nn.Module:
        m = cfg.model
        require_model(m.name, "harmony_transformer")
        if m.classes not in (N_CLASSES, N_CLASSES + 1):
            raise ConfigError(f"model.classes must be {N_CLASSES} or {N_CLASSES + 1}")
        if m.heads < 1 or m.hidden % m.heads:
            raise ConfigError(f"model.heads: must divide model.hidden={m.hidden}, got {m.heads}")
        return ChordNet(
            HarmonyTransformer(
                n_steps=m.timesteps,
                hidden=m.hidden,
                n_heads=m.heads,
                ff_hidden=m.ff,
                encoder_blocks=m.encoder_blocks,
                decoder_blocks=m.decoder_blocks,
                num_classes=m.classes,
                dropout_rate=m.dropout,
            )
        )

    def input_spec(self, cfg: Config) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((cfg.model.timesteps, WIDTH), jnp.float32)

    def default_hop(self, cfg: Config) -> int:
        return C.SEQ_HOP

    def callbacks(self, cfg: Config) -> list:
        return [AnnealSlope(cfg.model.slope_rate)]

    def bind_loss(self, cfg: Config):
        classes = cfg.model.classes

        def loss(apply_fn, variables, batch, rng, train):
            kwargs = {"rngs": {"dropout": rng}} if train else {}
            out = apply_fn(variables, batch["x"], train=train, **kwargs)
            value, metrics = chord_loss(out, batch, classes)
            l2 = weight_l2(variables["params"])
            metrics.update(chord_change_loss=metrics.pop("change_ce"), l2=l2)
            return value + L2_WEIGHT * l2, (metrics, {})

        return loss

    # -- data -----------------------------------------------------------------------------------
    def cache_params(self, dataset: str) -> dict:
        feature = "billboard-bothchroma" if dataset == "billboard" else "bass-treble-chroma"
        return {
            "feature": feature,
            "segment_width": C.SEGMENT_WIDTH,
            "segment_hop": C.SEGMENT_HOP,
            "version": 1,
        }

    def piece_features(self, piece) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(segments (S, 504) float32, {"chord", "change", "times", "chords", "chord_labels"})."""
        chroma = piece_chroma(Path(piece.audio))
        segments = C.chord_segments(chroma)
        times = np.arange(len(segments)) * SEGMENT_SECONDS
        labels: dict[str, np.ndarray] = {"times": times}
        if piece.chords is not None and piece.chord_labels is not None:
            classes = segment_classes(times, piece.chords, piece.chord_labels)
            labels.update(
                chord=classes,
                change=change_flags(classes),
                chords=np.asarray(piece.chords, np.float64).reshape(-1, 2),
                chord_labels=np.asarray(piece.chord_labels, np.str_),
            )
        return segments, labels

    def window_labels(self, cfg, labels, start, mask):
        chord = frames_window(labels["chord"], start, len(mask)).astype(np.int32)
        return {
            "chord": chord,
            "change": frames_window(labels["change"], start, len(mask)),
            "valid": mask * (chord != X_CHORD),
        }

    def dataset(self, cfg: Config, cache: FeatureCache, split: str, train: bool):
        ds = super().dataset(cfg, cache, split, train)
        return ds.random_map(Transpose()) if (train and cfg.data.transpose) else ds

    # -- inference ------------------------------------------------------------------------------
    def posteriors(self, predict, x: np.ndarray, cfg: Config, source: Path | None = None):
        """{"chord": class posteriors (S, classes), "change": (S,), "times": (S,)}."""
        out = predict_piece(
            predict,
            np.asarray(x, np.float32),
            timesteps=self.timesteps(cfg),
            batch_size=cfg.train.val_batch_size,
            mode=self.stitch,
        )
        classes = cfg.model.classes
        logits = out[:, :classes]
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        times = np.arange(len(x)) * SEGMENT_SECONDS
        out = {"chord": probs, "change": sigmoid(out[:, classes]), "times": times}
        duration = audio_duration(source)
        if duration is not None:
            out["duration"] = duration
        return out

    def check_decode(self, cfg: Config) -> None:
        """ConfigError for a negative (or not finite) `decode.min_seconds`."""
        m = cfg.decode.min_seconds
        if not 0.0 <= m < float("inf"):
            raise ConfigError(f"decode.min_seconds: seconds, 0 or more, got {m}")

    def decode(self, posteriors, cfg: Config) -> tuple[np.ndarray, list[str]]:
        """Chord intervals and labels; with the audio's duration known (`posteriors`'s
        "duration": a file transcribed or a piece whose audio is at hand), none runs past it."""
        self.check_decode(cfg)
        times = posteriors["times"]
        duration = (len(times) + 0.5) * SEGMENT_SECONDS if len(times) else 0.0
        end = posteriors.get("duration")
        return decode_chords(posteriors["chord"], times, duration, cfg.decode.min_seconds, end=end)

    def score(self, events, labels, cfg: Config) -> dict[str, float]:
        return chord_scores(labels["chords"], labels["chord_labels"], *events)

    def write(self, events, stem: str, outdir: Path, cfg: Config, *, x, posteriors) -> list[Path]:
        intervals, labels = events
        csv = write_chords_csv(outdir / f"{stem}_chords.csv", intervals, labels)
        midi = outdir / f"{stem}.mid"
        chords_to_midi(intervals, labels).write(str(midi))
        png = plot_chords(
            np.asarray(x)[:, CENTRE],
            posteriors["times"],
            intervals,
            labels,
            outdir / f"{stem}_chords.png",
            title=stem,
        )
        return [csv, midi, png]


class ChordNet(nn.Module):
    """The Harmony Transformer with its two outputs in one array (B, T, classes + 1): the class
    logits, then the change logit (one array is what windowed prediction stitches)."""

    net: HarmonyTransformer

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        chord, change = self.net(x, train=train)
        return jnp.concatenate([chord, change[..., None]], axis=-1)


L2_WEIGHT = 2e-4
CHANGE_WEIGHT = 3.0
LABEL_SMOOTHING = 0.1


def chord_loss(out: jax.Array, batch: dict, classes: int) -> tuple[jax.Array, dict]:
    """3 x mean sigmoid-CE of the change + mean softmax-CE of the chord (labels smoothed by
    0.1), both over the segments inside the pieces that are not X."""
    valid = batch["valid"]
    count = jnp.maximum(jnp.sum(valid), 1.0)
    logits, change_logit = out[..., :classes], out[..., classes]
    chord = jnp.clip(batch["chord"], 0, classes - 1)
    targets = optax.smooth_labels(jax.nn.one_hot(chord, classes), LABEL_SMOOTHING)
    ce = jnp.sum(optax.softmax_cross_entropy(logits, targets) * valid) / count
    change_ce = optax.sigmoid_binary_cross_entropy(change_logit, batch["change"])
    change_ce = jnp.sum(change_ce * valid) / count
    hits = (jnp.argmax(logits[..., :N_CLASSES], axis=-1) == batch["chord"]) * valid
    change_hits = ((change_logit > 0) == (batch["change"] > 0.5)) * valid
    metrics = {
        "chord_ce": ce,
        "change_ce": change_ce,
        "accuracy": jnp.sum(hits) / count,
        "change_accuracy": jnp.sum(change_hits) / count,
    }
    return ce + CHANGE_WEIGHT * change_ce, metrics


def weight_l2(params) -> jax.Array:
    """sum(w^2) / 2 (TensorFlow's `l2_loss`) over every parameter not named `bias`."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    terms = [
        0.5 * jnp.sum(jnp.square(w))
        for path, w in leaves
        if getattr(path[-1], "key", None) != "bias"
    ]
    return sum(terms, jnp.zeros((), jnp.float32))


@dataclasses.dataclass(frozen=True)
class AnnealSlope:
    """Multiply the change slope (model state) by `rate` at the end of every epoch."""

    rate: float = 1.1
    name: str = "anneal_slope"
    every_steps: int | None = None

    def init_state(self) -> dict:
        return {}

    def __call__(self, state, logs):
        def grow(path, value):
            if getattr(path[-1], "key", None) == "slope":
                return value * jnp.asarray(self.rate, value.dtype)
            return value

        stats = jax.tree_util.tree_map_with_path(grow, state.batch_stats)
        return state.replace(batch_stats=stats), ()


def piece_chroma(path: Path) -> np.ndarray:
    """(T, 24) chroma of a piece: Billboard's bothchroma.csv as it is, else the audio's
    `bass_treble_chroma` (the same function at training and at transcription)."""
    if path.suffix.lower() == ".csv":
        from jaxmir.data.datasets.billboard import read_chroma

        times, chroma = read_chroma(path)
        if len(times) > 2:
            step = float(np.median(np.diff(times)))
            nominal = C.HOP / C.SR
            if abs(step - nominal) > 0.02 * nominal:
                raise ValueError(
                    f"{path}: frames every {step * 1000:.1f} ms; the chord model reads chroma "
                    f"every {nominal * 1000:.1f} ms (hop {C.HOP} at {C.SR} Hz)"
                )
        return chroma.astype(np.float32)
    from jaxmir.data.audio import AudioError, load_audio

    audio = load_audio(path, C.SR)
    if len(audio) < C.HOP:  # librosa's CQT refuses a signal this short, with a traceback
        raise AudioError(path, f"too short: {len(audio)} samples at {C.SR} Hz, under one frame")
    return C.bass_treble_chroma(audio, C.SR).astype(np.float32)


def audio_duration(source: Path | str | None) -> float | None:
    """Seconds of the audio file `source` (from its header, else decoded); None without a
    file, for chroma read from a CSV (Billboard) or where the file cannot tell. Remembered per
    file, size and modification time: a format whose header cannot tell (m4a) is decoded once
    per process, not on every validation pass."""
    if source is None or Path(source).suffix.lower() == ".csv" or not Path(source).is_file():
        return None
    stat = Path(source).stat()
    return _file_seconds(str(Path(source).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _file_seconds(path: str, size: int, mtime_ns: int) -> float | None:
    """`audio_duration` of one version of one file (`size` and `mtime_ns` key the memo)."""
    from jaxmir.data.featurize import audio_seconds

    seconds = audio_seconds(path)
    if seconds is None:  # a format libsndfile lacks (m4a, ...): decode it
        from jaxmir.data.audio import AudioError, load_audio

        try:
            seconds = len(load_audio(path, C.SR)) / C.SR
        except AudioError:
            return None
    return seconds if seconds > 0 else None


def chord_scores(
    ref_intervals: np.ndarray, ref_labels, est_intervals: np.ndarray, est_labels: list[str]
) -> dict[str, float]:
    """mir_eval.chord scores weighted by duration: majmin, root, thirds and mirex."""
    import mir_eval

    ref_intervals = np.asarray(ref_intervals, np.float64).reshape(-1, 2)
    keep = ref_intervals[:, 1] > ref_intervals[:, 0]
    ref_labels = [str(s) for s, k in zip(ref_labels, keep, strict=True) if k]
    if not len(est_labels):
        est_intervals, est_labels = ref_intervals[keep][:1], ["N"]
    scores = mir_eval.chord.evaluate(ref_intervals[keep], ref_labels, est_intervals, est_labels)
    return {f"chord_{k}": float(scores[k]) for k in ("majmin", "root", "thirds", "mirex")}


def _optim(lr: float, decay_steps: int | None = None) -> OptimConfig:
    """Adam, gradients clipped to +-1; x0.96 every `decay_steps` updates when given."""
    if decay_steps is None:
        return OptimConfig(learning_rate=lr, grad_clip_value=1.0)
    return OptimConfig(
        learning_rate=lr,
        grad_clip_value=1.0,
        lr_schedule="exponential_steps",
        decay_rate=0.96,
        decay_steps=decay_steps,
    )


TASK = ChordTask()
