"""The music task: piano and multi-instrument note transcription (omnizart's `music`).

Input: CFP features at 44.1 kHz / 20 ms, 352 log-frequency bins, channels [Spec, Ceps] by
default. Output: per-frame, per-bin logits for the label mode's channels (note-stream: background
+ 11 instruments x (duration, onset)). Loss: smooth BCE (default), focal, or label-smoothed BCE.
Decoding: omnizart's note assembly or a simpler onset/frame decoder. Scores: mir_eval note F1
(onset only and with offsets), frame F1, per instrument for the stream modes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np

from jaxmir.config import Config, ConfigError, OptimConfig, TrainConfig
from jaxmir.data.cache import FeatureCache
from jaxmir.data.features.cfp import CHANNELS, MUSIC, cfp_numpy
from jaxmir.data.featurize import featurize
from jaxmir.data.pipeline import windows_dataset
from jaxmir.inference import predict_piece, sigmoid
from jaxmir.tasks.base import Task
from jaxmir.tasks.music.decode import decode_notes, notes_to_midi, write_notes_csv
from jaxmir.tasks.music.labels import (
    FPS,
    LABEL_MODES,
    N_BINS,
    bce_label_smoothing,
    focal_loss,
    music_labels,
    notes_for_mode,
    smooth_bce,
    weighted_bce,
)
from jaxmir.tasks.music.metrics import note_metrics
from jaxmir.tasks.music.model import build_model


@dataclasses.dataclass
class MusicModelConfig:
    name: str = "attn"  # attn (semantic_segmentation_attn) | aspp (semantic_segmentation)
    timesteps: int = 256  # frames per window (20 ms each)
    channels: tuple[str, ...] = ("Spec", "Ceps")  # CFP channels: Z, Spec, GCoS, Ceps
    base: int = 32  # channel width of the first level (paper: 32 attn, 128 aspp)
    dropout: float = 0.4
    conv_impl: str = "auto"  # native | matmul (matmul weight gradient) | auto (matmul on CPU only)
    bn_momentum: float = 0.99  # BatchNorm running-stat momentum (Keras' 0.99 lags in short runs)


@dataclasses.dataclass
class MusicDataConfig:
    label_mode: str = "note-stream"  # note | note-stream | pop-note-stream | frame | ...
    loss: str = "smooth"  # smooth | focal | bce | weighted (note channels' positives x pos_weight)
    pos_weight: float = 20.0  # weighted loss only
    hop: int | None = None  # frames between training windows (default: timesteps)
    jitter: bool = True
    # The embedded corpus (rendered Bach chorales): pieces, seed, instrumentation
    corpus_pieces: int | None = 48
    corpus_seed: int = 0
    corpus_instruments: str = "piano"  # piano | multi
    corpus_max_seconds: float | None = None
    workers: int = 2


@dataclasses.dataclass
class MusicDecodeConfig:
    method: str = "simple"  # simple | omnizart
    onset_threshold: float = 0.5  # simple decoder
    frame_threshold: float = 0.5  # simple decoder
    onset_th: float | None = None  # omnizart decoder (None: 4 piano modes, 6 stream modes)


def _config(preset, model, data, train, lr=1e-3) -> Config:
    return Config(
        task="music",
        preset=preset,
        model=model,
        data=data,
        decode=MusicDecodeConfig(),
        train=train,
        optim=OptimConfig(
            learning_rate=lr, lr_schedule="step", decay_rate=0.25, decay_every=3, min_lr=5e-8
        ),
    )


class MusicTask(Task):
    name = "music"
    model_config = MusicModelConfig
    data_config = MusicDataConfig
    decode_config = MusicDecodeConfig

    def presets(self) -> dict[str, Config]:
        return {
            # omnizart's music.yaml: attn U-Net, [Spec, Ceps], note-stream, 256 frames, batch 8,
            # 20 x 3000 steps (val 500), LR x0.25 every 3 epochs (floor 5e-8), early stop 6.
            "paper": _config(
                "paper",
                MusicModelConfig(),
                MusicDataConfig(corpus_pieces=None, corpus_instruments="multi"),
                TrainConfig(
                    epochs=20,
                    steps_per_epoch=3000,
                    val_steps=500,
                    batch_size=8,
                    val_batch_size=8,
                    early_stop_patience=6,
                    monitor="val_note_f1",
                ),
            ),
            # Same architecture at 1/4 width (base 8) on 128-frame windows, piano "note" labels;
            # weighted BCE and BatchNorm momentum 0.9 so it learns notes within minutes.
            "demo": _config(
                "demo",
                MusicModelConfig(timesteps=128, base=8, dropout=0.1, bn_momentum=0.9),
                MusicDataConfig(label_mode="note", loss="weighted", corpus_pieces=48),
                TrainConfig(
                    epochs=6,
                    steps_per_epoch=150,
                    val_steps=10,
                    batch_size=4,
                    val_batch_size=8,
                    log_every=10,
                    early_stop_patience=3,
                    monitor="val_note_f1",
                ),
            ),
            "tiny": _config(
                "tiny",
                MusicModelConfig(timesteps=32, base=8, dropout=0.0),
                MusicDataConfig(label_mode="note", corpus_pieces=4, corpus_max_seconds=8.0),
                TrainConfig(
                    epochs=2,
                    steps_per_epoch=3,
                    val_steps=1,
                    batch_size=2,
                    val_batch_size=2,
                    log_every=1,
                    early_stop_patience=None,
                    data_threads=1,
                ),
            ),
        }

    # -- model ----------------------------------------------------------------------------------
    def model(self, cfg: Config):
        m = cfg.model
        _check_channels(m.channels)
        kwargs = dict(
            feature_num=N_BINS,
            timesteps=m.timesteps,
            ch_num=len(m.channels),
            out_class=LABEL_MODES[_mode(cfg)],
            dropout=m.dropout,
            base=m.base,
            conv_impl=m.conv_impl,
            bn_momentum=m.bn_momentum,
        )
        return build_model(m.name, **kwargs)

    def input_spec(self, cfg: Config) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(
            (cfg.model.timesteps, N_BINS, len(cfg.model.channels)), jnp.float32
        )

    def bind_loss(self, cfg: Config):
        kind = cfg.data.loss
        fns = {
            "smooth": smooth_bce,
            "focal": focal_loss,
            "bce": bce_label_smoothing,
            "weighted": functools.partial(weighted_bce, pos_weight=cfg.data.pos_weight),
        }
        if kind not in fns:
            raise ConfigError(f"data.loss: unknown loss {kind!r} ({', '.join(fns)})")
        fn = fns[kind]

        def loss(apply_fn, variables, batch, rng, train):
            if train:
                logits, new_state = apply_fn(
                    variables,
                    batch["x"],
                    train=True,
                    rngs={"dropout": rng},
                    mutable=["batch_stats"],
                )
            else:
                logits, new_state = apply_fn(variables, batch["x"], train=False), {}
            mask = batch["mask"][:, :, None, None]
            value = fn(logits, batch["y"], mask=mask)
            correct = ((logits > 0) == (batch["y"] > 0.5)).astype(jnp.float32) * mask
            accuracy = jnp.sum(correct) / jnp.maximum(jnp.sum(mask) * logits[0, 0].size, 1.0)
            return value, ({"accuracy": accuracy}, dict(new_state))

        return loss

    def loss(self, apply_fn, variables, batch, rng, train):
        return self.bind_loss(self.preset("paper"))(apply_fn, variables, batch, rng, train)

    # -- data -----------------------------------------------------------------------------------
    def dataset(
        self, cfg: Config, cache: FeatureCache, split: str, train: bool
    ) -> grain.MapDataset:
        t = cfg.model.timesteps
        hop = cfg.data.hop or t
        jitter = hop // 2 if (train and cfg.data.jitter) else 0
        channels = [CHANNELS[c] for c in cfg.model.channels]
        return windows_dataset(
            cache,
            split,
            timesteps=t,
            hop=hop,
            seed=cfg.train.seed if train else 12345,
            make_reader=lambda names: MusicWindow(
                str(cache.root), names, t, jitter, channels, _mode(cfg)
            ),
        )

    def default_data(self, cfg: Config, cache_root: Path, progress: bool = True) -> Path:
        from jaxmir.data.synth.corpus import build_corpus

        d = cfg.data
        corpus_params = {
            "pieces": d.corpus_pieces,
            "seed": d.corpus_seed,
            "instruments": d.corpus_instruments,
            "max_seconds": d.corpus_max_seconds,
        }
        digest = hashlib.sha1(json.dumps(corpus_params, sort_keys=True).encode()).hexdigest()[:10]
        audio_dir = Path(cache_root) / "synth" / f"corpus-{digest}"
        out = Path(cache_root) / "music" / f"synth-{digest}"
        if (out / "manifest.json").is_file() and FeatureCache(out).manifest.get("complete"):
            return out
        build_corpus(
            audio_dir,
            d.corpus_pieces,
            d.corpus_seed,
            workers=d.workers,
            progress=progress,
            instruments=d.corpus_instruments,
            max_seconds=d.corpus_max_seconds,
        )
        summary = self.featurize("synth", audio_dir, out, workers=d.workers, progress=progress)
        if summary["failed"]:
            print(f"music: {len(summary['failed'])} pieces failed: {summary['failed']}")
        cache = FeatureCache(out)
        cache.manifest["complete"] = True
        cache.save_manifest()
        return out

    def featurize(
        self, dataset: str, root: Path, out: Path, workers: int = 1, progress=True
    ) -> dict:
        pieces = _read_dataset(dataset, Path(root))
        cache = FeatureCache.create(
            out, self.name, {"feature": "cfp", "params": dataclasses.asdict(MUSIC), "version": 1}
        )
        return featurize(pieces, music_features, cache, workers=workers, progress=progress)

    # -- inference ------------------------------------------------------------------------------
    def posteriors(self, predict, x: np.ndarray, cfg: Config) -> np.ndarray:
        idx = [CHANNELS[c] for c in cfg.model.channels]
        logits = predict_piece(
            predict,
            np.asarray(x[..., idx], np.float32),
            timesteps=cfg.model.timesteps,
            batch_size=cfg.train.val_batch_size,
            mode="average",
        )
        return sigmoid(logits)

    def decode(self, probs: np.ndarray, cfg: Config) -> np.ndarray:
        d = cfg.decode
        if d.method == "simple":
            return decode_notes(
                probs,
                _mode(cfg),
                method="simple",
                onset_threshold=d.onset_threshold,
                frame_threshold=d.frame_threshold,
            )
        if d.method == "omnizart":
            return decode_notes(probs, _mode(cfg), th=d.onset_th, method="omnizart")
        raise ConfigError(f"decode.method: unknown method {d.method!r} (simple, omnizart)")

    def evaluate(self, predict, cfg: Config, cache: FeatureCache, split: str) -> dict[str, float]:
        mode = _mode(cfg)
        rows = []
        for name in cache.names(split):
            est = self.decode(self.posteriors(predict, cache.features(name), cfg), cfg)
            ref = notes_for_mode(cache.labels(name)["notes"], mode)
            rows.append(note_metrics(ref, est))
        keys = ["note_f1", "note_precision", "note_recall", "note_with_offset_f1", "frame_f1"]
        # per instrument (stream modes): averaged over the pieces where it is scored
        keys += sorted({k for r in rows for k in r if k.startswith("note_f1/")})
        return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}

    def transcribe(self, predict, path: Path, cfg: Config, outdir: Path) -> list[Path]:
        from jaxmir.data.audio import load_audio

        audio = load_audio(path, MUSIC.fs)
        probs = self.posteriors(predict, cfp_numpy(audio, MUSIC, np.float32), cfg)
        notes = self.decode(probs, cfg)
        outdir.mkdir(parents=True, exist_ok=True)
        stem = Path(path).stem
        midi = outdir / f"{stem}.mid"
        notes_to_midi(notes).write(str(midi))
        csv = outdir / f"{stem}_notes.csv"
        write_notes_csv(csv, notes)
        png = outdir / f"{stem}_pianoroll.png"
        plot_piano_roll(probs, notes, png, title=stem)
        return [midi, csv, png]


@dataclasses.dataclass
class MusicWindow(grain.transforms.RandomMap):
    """(piece, start) -> {"x": (T, 352, C_in), "y": (T, 352, C_out), "mask": (T,)}.

    Labels are built per window from the piece's notes, so no (T, 352, 23) array is ever stored.
    """

    root: str
    names: list[str]
    timesteps: int
    jitter: int
    channels: list[int]
    mode: str

    def __post_init__(self):
        self._cache = None
        self._notes: dict[str, np.ndarray] = {}

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_cache"], d["_notes"] = None, {}
        return d

    def random_map(self, element, rng: np.random.Generator) -> dict:
        if self._cache is None:
            self._cache = FeatureCache(self.root)
        name = self.names[int(element[0])]
        start = int(element[1])
        if self.jitter:
            start += int(rng.integers(-self.jitter, self.jitter + 1))
        if name not in self._notes:
            self._notes[name] = self._cache.labels(name)["notes"]
        x_all = self._cache.features(name)
        t, n = self.timesteps, len(x_all)
        lo, hi = max(start, 0), min(start + t, n)
        x = np.zeros((t, x_all.shape[1], len(self.channels)), np.float32)
        mask = np.zeros(t, np.float32)
        if hi > lo:
            x[lo - start : hi - start] = x_all[lo:hi][..., self.channels]
            mask[lo - start : hi - start] = 1.0
        notes = self._notes[name].copy()
        notes[:, :2] -= start / FPS
        y = music_labels(notes, t, self.mode) * mask[:, None, None]
        return {"x": x, "y": y, "mask": mask}


def music_features(piece) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(CFP (T, 352, 4) float32, {"notes"}) of one audio piece."""
    from jaxmir.data.audio import load_audio

    audio = load_audio(piece.audio, MUSIC.fs)
    x = cfp_numpy(audio, MUSIC, np.float32)
    notes = piece.notes if piece.notes is not None else np.zeros((0, 5))
    return x, {"notes": np.asarray(notes, np.float64)}


def _read_dataset(dataset: str, root: Path):
    if dataset == "synth":
        from jaxmir.data.synth.corpus import read_corpus

        return read_corpus(root)
    from jaxmir.data.datasets.registry import read_dataset

    try:
        return read_dataset(dataset, root)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _mode(cfg: Config) -> str:
    if cfg.data.label_mode not in LABEL_MODES:
        raise ConfigError(
            f"data.label_mode: unknown mode {cfg.data.label_mode!r} ({', '.join(LABEL_MODES)})"
        )
    return cfg.data.label_mode


def _check_channels(channels) -> None:
    bad = [c for c in channels if c not in CHANNELS]
    if bad or not channels:
        raise ConfigError(f"model.channels: unknown CFP channel(s) {bad} ({', '.join(CHANNELS)})")


def plot_piano_roll(probs: np.ndarray, notes: np.ndarray, path: Path, title: str = "") -> Path:
    """A PNG of the frame posteriors (max over note channels) with the decoded notes on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    act = probs[..., 1:].max(axis=-1).reshape(len(probs), 88, 4).mean(axis=-1)
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.imshow(
        act.T,
        origin="lower",
        aspect="auto",
        cmap="Greys",
        extent=(0, len(probs) / FPS, 20.5, 108.5),
        vmin=0,
        vmax=1,
    )
    for on, off, pitch, *_ in notes:
        ax.plot([on, off], [pitch, pitch], color="tab:red", linewidth=2, alpha=0.8)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title or "transcription")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


TASK = MusicTask()
