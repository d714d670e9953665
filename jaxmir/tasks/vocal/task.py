"""The vocal task: the sung notes of a recording (omnizart's `vocal`), semi-supervised.

Input: the 9-channel vocal feature of the **mixture** at 16 kHz (spectral flux, inverse flux and
Z of three CFP windows, 174 bins from 80 Hz; 20 ms frames) in windows of 19 frames (±9 of
context). Output: per frame the 6 SDT channels (activation, silence, onset, non-onset, offset,
non-offset). Network: PyramidNet-110 with ShakeDrop. Loss: 0.3·BCE over all channels + 0.7·Σ BCE
of channels {1, 2, 4}, plus virtual adversarial training (VAT) on a batch of unlabelled windows
paired with every labelled one. Decoding: peaks of the onset and offset channels, the pitch of
each note from an f0 track. Scores: `mir_eval.transcription` on whole pieces.

Choices, and why:
- The mixture, not a separated voice: omnizart separates the voice with Spleeter first, which is
  not available here. Training and inference both read the mixture, so nothing at inference
  depends on a separator; the price is a harder input (accompaniment under the voice).
- The pitch of a note: as omnizart, the f0 of a trained `vocal_contour` run given by
  `decode.contour_workdir=RUN` (run on the piece's audio). Without one, a built-in estimate:
  per frame the strongest bin of the feature's Z (mean of its 3 windows, 80 Hz – 1 kHz, the
  sung range). It needs no other model but is rough on a mixture, where the accompaniment is
  often stronger than the voice: on the corpus's mixtures it is within 50 cents of the sung
  note on 36-46 % of the frames.
- VAT's unlabelled audio: `data.unlabelled=DIR` (any folder of audio, featurised once into the
  cache folder), else the training split's mixtures read without their labels. Every labelled
  example draws one unlabelled window in the same Grain pipeline, so resume restores both.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmir.config import Config, ConfigError, OptimConfig, peek_json
from jaxmir.data.cache import FeatureCache
from jaxmir.data.features.cfp import VOCAL_372
from jaxmir.data.features.vocal import VOCAL_FS, vocal_cfp
from jaxmir.data.pipeline import frames_window, window_index
from jaxmir.losses import binary_accuracy
from jaxmir.melody import bin_to_hz
from jaxmir.tasks.base import (
    CorpusConfig,
    PieceTask,
    nothing_found_note,
    require_model,
    schedule,
    tiny_schedule,
)
from jaxmir.tasks.vocal.decode import decode_notes
from jaxmir.tasks.vocal.labels import FRAME_S, notes_from_f0, sdt_labels
from jaxmir.tasks.vocal.model import PyramidNet
from jaxmir.tasks.vocal.vat import vat_loss

N_BINS = 174
Z_CHANNELS = [6, 7, 8]  # z-normalised Z of the three windows
Z_CHANNEL = 7  # the 372-sample window's, drawn under the notes
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


@dataclasses.dataclass
class VocalModelConfig:
    name: str = "pyramidnet"
    depth: int = 110  # 3 stages of (depth - 2) / 6 blocks
    alpha: float = 270.0  # channels added over all blocks
    stem_channels: int = 16
    context: int = 9  # frames either side: windows of 2 * context + 1
    shakedrop: bool = True
    conv_impl: str = "auto"  # native | matmul | auto (matmul weight gradients on CPU)
    bn_momentum: float = 0.99


@dataclasses.dataclass
class VocalDataConfig(CorpusConfig):
    corpus_instruments: str = "mixed"  # the corpus with a sung line
    hop: int | None = None  # frames between training windows (default 1, omnizart's)
    jitter: bool = False
    unlabelled: str | None = None  # folder of audio for VAT (default: the train mixtures)
    vat: bool = True
    vat_epsilon: float = 8.0  # norm of the adversarial perturbation (omnizart's yaml)
    vat_xi: float = 1e-6  # size of the probe in the power iterations
    vat_iterations: int = 2
    vat_weight: float = 1.0


@dataclasses.dataclass
class VocalDecodeConfig:
    threshold: float = 0.5  # of the onset / offset peaks
    context: int = 2  # frames a peak must exceed on each side
    min_seconds: float = 0.1  # shortest note
    contour_workdir: str | None = None  # a vocal_contour run giving the notes' f0


class VocalTask(PieceTask):
    output_suffixes = (".mid", "_notes.csv", "_notes.png")
    name = "vocal"
    model_config = VocalModelConfig
    data_config = VocalDataConfig
    decode_config = VocalDecodeConfig
    datasets = ("synth", "tonas", "mir1k")  # notes (TONAS), f0 made into notes (MIR-1K)
    piano_corpus_lacks = "sung line"
    # XLA:CPU compiles the default (threefry) initialisers of PyramidNet's ~330 tensors in
    # minutes (paper size: 5 min; tiny: 31 s); the RBG generator's in seconds (tiny: 2 s).
    init_rng_impl = "rbg"

    def presets(self) -> dict[str, Config]:
        watch = {"monitor": "val_note_f1"}
        # omnizart's vocal: PyramidNet-110, batch 64, 10 x 1000 steps (val 50), Adam 1e-4,
        # early stopping 8 on val_loss.
        paper = schedule(10, 1000, 50, 64, early_stop_patience=8)
        everything = VocalDataConfig(corpus_pieces=None)
        # A PyramidNet-20 (3 blocks a stage) at a fifth of the width on the corpus's mixtures,
        # Adam 3e-3, VAT at ε = 1 and weight 0.3: with omnizart's ε = 8 and weight 1 (or
        # Adam 1e-3) the onset channel stayed at its prior for 1200 steps (note F1 0).
        demo = schedule(6, 200, 8, 16, log_every=20, early_stop_patience=None, **watch)
        demo_model = VocalModelConfig(depth=20, alpha=48.0, bn_momentum=0.9)
        demo_data = VocalDataConfig(
            corpus_pieces=40, vat_iterations=1, vat_epsilon=1.0, vat_weight=0.3
        )
        tiny_model = VocalModelConfig(depth=8, alpha=6.0, stem_channels=4)
        tiny_data = VocalDataConfig(corpus_pieces=4, corpus_max_seconds=8.0, vat_iterations=1)
        return {
            "paper": self.config("paper", VocalModelConfig(), everything, paper, _adam(1e-4)),
            "demo": self.config("demo", demo_model, demo_data, demo, _adam(3e-3)),
            "tiny": self.config("tiny", tiny_model, tiny_data, tiny_schedule(**watch), _adam(1e-3)),
        }

    # -- model ----------------------------------------------------------------------------------
    def model(self, cfg: Config) -> PyramidNet:
        m = cfg.model
        require_model(m.name, "pyramidnet")
        if m.context < 0:
            raise ConfigError(f"model.context: frames either side, 0 or more, got {m.context}")
        if m.depth < 8 or (m.depth - 2) % 6:
            raise ConfigError(f"model.depth: 6n + 2 with n >= 1 (8, 20, 110, ...), got {m.depth}")
        return PyramidNet(
            depth=m.depth,
            alpha=m.alpha,
            stem_channels=m.stem_channels,
            frames=self.timesteps(cfg),
            bins=N_BINS,
            in_channels=9,
            shakedrop=m.shakedrop,
            conv_impl=m.conv_impl,
            bn_momentum=m.bn_momentum,
        )

    def input_spec(self, cfg: Config) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((self.timesteps(cfg), N_BINS, 9), jnp.float32)

    def timesteps(self, cfg: Config) -> int:
        return 2 * cfg.model.context + 1

    def default_hop(self, cfg: Config) -> int:
        return 1

    def bind_loss(self, cfg: Config):
        d = cfg.data
        if d.vat and d.unlabelled is not None:
            # said before the corpus is built or the workdir written, not when VAT first reads it
            if not Path(d.unlabelled).is_dir():
                raise ConfigError(f"data.unlabelled: {d.unlabelled}: not a folder")
            if next(_audio_files(Path(d.unlabelled)), None) is None:
                raise ConfigError(_no_audio(Path(d.unlabelled)))

        def loss(apply_fn, variables, batch, rng, train):
            logits, new_state = _apply(apply_fn, variables, batch["x"], rng, train)
            value = sdt_loss(logits, batch["y"], batch["mask"])
            metrics = {"accuracy": binary_accuracy(logits, batch["y"], batch["mask"])}
            if train and d.vat:
                unlabelled = batch.get("ux", batch["x"])
                vat = vat_loss(
                    functools.partial(_apply_frozen, apply_fn, variables, rng=rng),
                    unlabelled,
                    jax.random.fold_in(rng, 1),
                    epsilon=d.vat_epsilon,
                    xi=d.vat_xi,
                    iterations=d.vat_iterations,
                )
                metrics.update(sdt=value, vat=vat)
                value = value + d.vat_weight * vat
            return value, (metrics, new_state)

        return loss

    # -- data -----------------------------------------------------------------------------------
    def piece_features(self, piece) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(vocal feature (T, 174, 9) float32, {"sdt": (T, 6), "notes": (N, 5)})."""
        from jaxmir.data.audio import load_audio

        x = vocal_cfp(load_audio(piece.audio, VOCAL_FS), VOCAL_FS, np.float32)
        notes = _sung_notes(piece)
        return x, {"sdt": sdt_labels(notes, len(x)), "notes": notes}

    def cache_params(self, dataset: str) -> dict:
        return {"feature": "vocal-cfp", "params": dataclasses.asdict(VOCAL_372), "version": 1}

    def window_labels(self, cfg, labels, start, mask):
        return {"y": frames_window(labels["sdt"], start, len(mask)) * mask[:, None]}

    def dataset(self, cfg: Config, cache: FeatureCache, split: str, train: bool):
        ds = super().dataset(cfg, cache, split, train)
        if not (train and cfg.data.vat):
            return ds
        source = self.unlabelled_cache(cfg, cache)
        t = self.timesteps(cfg)
        index, names = window_index(source, "train", t, t)
        return ds.random_map(WithUnlabelled(index, self.window_reader(cfg, source, names)))

    def unlabelled_cache(self, cfg: Config, cache: FeatureCache) -> FeatureCache:
        """VAT's unlabelled windows: `data.unlabelled` featurised once, else `cache`."""
        folder = cfg.data.unlabelled
        if folder is None:
            return cache
        from jaxmir.engine.run import cache_root
        from jaxmir.tasks.base import params_digest

        root = Path(folder)
        files = sorted(_audio_files(root))
        if not files:
            raise ConfigError(_no_audio(root))
        key = {"folder": str(root.absolute()), "files": [str(p) for p in files]}
        out = cache_root() / self.name / f"unlabelled-{params_digest(key)}"
        from jaxmir.data.featurize import featurize
        from jaxmir.data.records import AudioPiece

        pieces = [AudioPiece(name=str(p.relative_to(root)), audio=p, split="train") for p in files]
        target = FeatureCache.create(out, self.name, self.cache_params("unlabelled"))
        featurize(pieces, self.piece_features, target, workers=cfg.data.workers, progress=False)
        if not target.names("train"):
            raise ConfigError(f"data.unlabelled: {root}: none of its audio files could be read")
        return target

    # -- inference ------------------------------------------------------------------------------
    def posteriors(self, predict, x: np.ndarray, cfg: Config, source: Path | None = None):
        """(SDT posteriors (T, 6), the notes' f0 per frame in Hz)."""
        probs = super().posteriors(predict, x, cfg)
        run = cfg.decode.contour_workdir
        if run is None:
            return probs, builtin_f0(x)
        if source is None:
            raise ConfigError(
                "decode.contour_workdir needs the piece's audio file, which this cache does not "
                "record: re-run `jaxmir features`"
            )
        return probs, contour_f0(run, Path(source), len(x))

    def check_decode(self, cfg: Config) -> None:
        """ConfigError naming the first `decode.*` value no decoding can use: a threshold
        outside [0, 1], a negative context or shortest note, a `contour_workdir` that is not a
        trained run's folder (checked before any model runs)."""
        d = cfg.decode
        if not 0.0 <= d.threshold <= 1.0:
            raise ConfigError(f"decode.threshold: a probability in [0, 1], got {d.threshold}")
        if d.context < 0:
            raise ConfigError(f"decode.context: frames, 0 or more, got {d.context}")
        if not 0.0 <= d.min_seconds < float("inf"):
            raise ConfigError(f"decode.min_seconds: seconds, 0 or more, got {d.min_seconds}")
        run = d.contour_workdir
        if run is not None and not (Path(run) / "config.json").is_file():
            what = "no such folder" if not Path(run).is_dir() else "no config.json there"
            raise ConfigError(
                f"decode.contour_workdir: {run}: {what} (a trained vocal_contour run's workdir, "
                "or an exported vocal_contour model folder)"
            )
        # a damaged config.json is named where the run is restored
        task = peek_json(Path(run) / "config.json").get("task") if run is not None else None
        if task not in (None, "vocal_contour"):
            raise ConfigError(
                f"decode.contour_workdir: {run}: a {task} run, not a vocal_contour one (its f0 "
                "gives the notes' pitch)"
            )

    def paths_from_here(self, cfg: Config) -> Config:
        run = cfg.decode.contour_workdir
        if run is None or Path(run).is_absolute() or not Path(run).is_dir():
            return cfg  # a folder that is not there is named by `check_decode`
        return _with_contour(cfg, str(Path(run).resolve()))

    def locate(self, cfg: Config, folder: Path) -> Config:
        """A relative `decode.contour_workdir` is inside the run or model `folder` where it is
        there (an exported model's `contour/`)."""
        run = cfg.decode.contour_workdir
        if run is None or Path(run).is_absolute() or not (Path(folder) / run).is_dir():
            return cfg
        return _with_contour(cfg, str((Path(folder) / run).resolve()))

    def export_files(self, cfg: Config, out: Path) -> Config:
        """An exported model carries the vocal_contour model its notes' pitch comes from (as an
        exported folder, `CONTOUR_DIR`), referred to relatively: it worked only where the
        run's path still led to that run."""
        target = Path(out) / CONTOUR_DIR
        shutil.rmtree(target, ignore_errors=True)
        run = cfg.decode.contour_workdir
        if run is None:
            return cfg
        from jaxmir.shipped import export_model, is_model_folder
        from jaxmir.tasks.vocal_contour.task import TASK as CONTOUR

        if is_model_folder(run):
            shutil.copytree(run, target)
        else:
            export_model(CONTOUR, run, target, log=lambda *_: None)
        return _with_contour(cfg, CONTOUR_DIR)

    def decode(self, posteriors, cfg: Config) -> np.ndarray:
        self.check_decode(cfg)
        probs, f0 = posteriors
        d = cfg.decode
        notes = decode_notes(
            probs, f0, ctx=d.context, threshold=d.threshold, min_seconds=d.min_seconds
        )
        return _as_note_rows(notes)

    def score(self, events, labels, cfg: Config) -> dict[str, float]:
        from jaxmir.tasks.music.metrics import note_metrics

        ref = _as_note_rows(labels["notes"][:, :3])
        row = note_metrics(ref, events, frame_hop=FRAME_S, per_program=False)
        keys = ("note_f1", "note_precision", "note_recall", "note_with_offset_f1", "frame_f1")
        return {k: row[k] for k in keys}

    def transcription_note(self, path: Path, written: list[Path], cfg: Config | None = None):
        return nothing_found_note(path, written, "_notes.csv", "sung notes")

    def write(self, events, stem: str, outdir: Path, cfg: Config, *, x, posteriors) -> list[Path]:
        from jaxmir.tasks.music.decode import notes_to_midi, write_notes_csv

        midi = outdir / f"{stem}.mid"
        notes_to_midi(events).write(str(midi))
        csv = outdir / f"{stem}_notes.csv"
        write_notes_csv(csv, events)
        png = outdir / f"{stem}_notes.png"
        plot_notes(x, events, png, title=stem)
        return [midi, csv, png]


@dataclasses.dataclass
class WithUnlabelled(grain.transforms.RandomMap):
    """Adds "ux": one unlabelled window (drawn with the example's own rng, so the pairing is
    the same on resume) to every labelled example."""

    index: np.ndarray
    reader: grain.transforms.RandomMap

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        row = self.index[int(rng.integers(len(self.index)))]
        return {**element, "ux": self.reader.random_map(row, rng)["x"]}


def _adam(lr: float) -> OptimConfig:
    return OptimConfig(learning_rate=lr)


def _audio_files(root: Path):
    """The audio files under `root` (recursive), lazily, in no particular order."""
    return (p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def _no_audio(root: Path) -> str:
    return f"data.unlabelled: {root}: no audio files ({', '.join(AUDIO_SUFFIXES)})"


def _sung_notes(piece) -> np.ndarray:
    """(N, 5) notes of the sung line: the corpus's vocal program notes, a dataset's notes, or
    notes made from a semitone contour (MIR-1K)."""
    if piece.notes is not None and len(piece.notes):
        notes = np.asarray(piece.notes, np.float64)
        if notes.shape[1] >= 5 and piece.stems and "vocals" in piece.stems:
            from jaxmir.data.synth.corpus import VOICE_PROGRAMS

            notes = notes[np.isin(notes[:, 4], VOICE_PROGRAMS)]
        return _as_note_rows(notes[:, :3])
    if piece.f0 is not None and len(piece.f0):
        return _as_note_rows(notes_from_f0(piece.f0))
    return np.zeros((0, 5))


def _as_note_rows(notes: np.ndarray) -> np.ndarray:
    """(N, 5) onset, offset, pitch, velocity 80, program 0 from (N, 3) onset, offset, pitch."""
    notes = np.asarray(notes, np.float64).reshape(-1, 3)
    extra = np.tile([80.0, 0.0], (len(notes), 1))
    return np.concatenate([notes, extra], axis=1)


def sdt_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> jax.Array:
    """omnizart's 0.3 · BCE(all 6 channels) + 0.7 · Σ_{c in 1, 2, 4} BCE(channel c), each a mean
    over the frames inside the pieces."""
    bce = optax.sigmoid_binary_cross_entropy(logits, targets) * mask[..., None]
    frames = jnp.maximum(jnp.sum(mask), 1.0)
    every = jnp.sum(bce) / (frames * bce.shape[-1])
    chosen = sum(jnp.sum(bce[..., c]) / frames for c in (1, 2, 4))
    return 0.3 * every + 0.7 * chosen


def _rngs(rng: jax.Array) -> dict:
    return {"shakedrop": rng, "dropout": rng}


def _apply(apply_fn, variables, x, rng, train: bool):
    """(logits, updated batch statistics) in training; (logits, {}) otherwise."""
    if not train:
        return apply_fn(variables, x, train=False), {}
    out, state = apply_fn(variables, x, train=True, rngs=_rngs(rng), mutable=["batch_stats"])
    return out, dict(state)


def _apply_frozen(apply_fn, variables, x, *, rng):
    """Logits in training mode with the batch statistics left as they are (VAT's passes)."""
    out, _ = apply_fn(variables, x, train=True, rngs=_rngs(rng), mutable=["batch_stats"])
    return out


def builtin_f0(x: np.ndarray) -> np.ndarray:
    """Per frame the Hz of the strongest bin of Z (the mean of the three windows')."""
    return bin_to_hz(np.argmax(x[..., Z_CHANNELS].mean(axis=-1), axis=-1), VOCAL_372)


#: Where an exported vocal model keeps the vocal_contour model of `decode.contour_workdir`.
CONTOUR_DIR = "contour"


def _with_contour(cfg: Config, run: str) -> Config:
    return dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, contour_workdir=run))


@functools.lru_cache(maxsize=2)
def _contour_model(workdir: str):
    """(cfg, predict) of a vocal_contour run (its best checkpoint) or exported model folder."""
    from jaxmir.engine.run import RestoreError, make_predict
    from jaxmir.shipped import load_for_inference
    from jaxmir.tasks.vocal_contour.task import TASK as CONTOUR

    try:
        cfg, mesh, state = load_for_inference(CONTOUR, workdir)
    except RestoreError as e:  # the user's setting, named: not a traceback
        raise ConfigError(f"decode.contour_workdir: {e}") from None
    return cfg, make_predict(mesh, state)


def contour_f0(workdir: str, audio: Path, n_frames: int) -> np.ndarray:
    """The f0 (Hz, 0 = unvoiced) a trained vocal_contour run finds in `audio`, on the vocal
    feature's `n_frames` frames (both tasks frame 16 kHz audio every 20 ms)."""
    from jaxmir.tasks.vocal_contour.task import TASK as CONTOUR

    cfg, predict = _contour_model(str(workdir))
    x = CONTOUR.input_features(audio, cfg)
    _, hz = CONTOUR.decode(CONTOUR.posteriors(predict, x, cfg), cfg)
    out = np.zeros(n_frames)
    k = min(n_frames, len(hz))
    out[:k] = np.maximum(hz[:k], 0.0)  # negative Hz: an unvoiced frame's pitch guess
    return out


def plot_notes(x: np.ndarray, notes: np.ndarray, path: Path, title: str = "") -> Path:
    """A PNG of the feature's Z with the transcribed notes drawn on it."""
    from matplotlib.figure import Figure  # no pyplot: safe in `transcribe`'s writer thread

    from jaxmir.melody import hz_to_bin

    fig = Figure(figsize=(12, 4))
    ax = fig.subplots()
    extent = (0.0, len(x) * FRAME_S, 0, x.shape[1])
    ax.imshow(x[..., Z_CHANNEL].T, origin="lower", aspect="auto", cmap="magma", extent=extent)
    for onset, offset, pitch, *_ in notes:
        row = float(hz_to_bin(440.0 * 2 ** ((pitch - 69) / 12), VOCAL_372))
        ax.plot([onset, offset], [row, row], color="cyan", linewidth=2.5)
    ax.set(xlabel="time (s)", ylabel="CFP bin (80 Hz - 1 kHz)", title=title or path.stem)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


TASK = VocalTask()
