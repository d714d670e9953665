"""The Task interface, the pipeline shared by every task, and the task registry.

`Task` is the minimum the engine trains: a model, a loss and datasets (plus the config sections
and presets that describe them). `jaxmir.engine.fit` wraps a model of the user's own in one.

`PieceTask` is a task over whole pieces in a feature cache (`jaxmir.data.cache`). What stays in
a task module is only what is its own: how one piece is featurised, the input view of the cached
features, the targets of a window, the loss, posteriors -> events (`decode`), the score of one
piece and the files it writes. Written once, here: reading a dataset the task accepts into a
cache (`featurize`), the embedded corpus's cache (`default_data`), the windowed Grain pipeline
(`dataset`), whole-piece prediction (`posteriors`), the mean score over a split (`evaluate`)
and transcription of a file (`transcribe`).
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import functools
import hashlib
import importlib
import json
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import flax.linen as nn
import grain
import jax
import numpy as np
from tqdm import tqdm

from jaxmir.config import Config, ConfigError, OptimConfig, TrainConfig, from_dict, peek_json
from jaxmir.data.audio import AudioError
from jaxmir.data.cache import FeatureCache
from jaxmir.data.datasets.midi import MidiError
from jaxmir.data.featurize import featurize
from jaxmir.data.pipeline import WindowReader, windows_dataset
from jaxmir.engine.sharding import is_primary
from jaxmir.inference import (
    AUDIO_SUFFIXES,
    MIDI_SUFFIXES,
    AudioProgress,
    Timings,
    default_batch_size,
    predict_pieces,
    resolve_hop,
    sigmoid,
    window_starts,
)

UNREADABLE = (AudioError, MidiError)
"""The errors that say an input file cannot be read (each names the file and the reason)."""

# name -> module that defines `TASK` (imported on first use so `jaxmir info beat` stays light)
TASK_MODULES = {
    "beat": "jaxmir.tasks.beat.task",
    "music": "jaxmir.tasks.music.task",
    "vocal_contour": "jaxmir.tasks.vocal_contour.task",
    "patch_cnn": "jaxmir.tasks.patch_cnn.task",
    "vocal": "jaxmir.tasks.vocal.task",
    "chord": "jaxmir.tasks.chord.task",
    "drum": "jaxmir.tasks.drum.task",
}

EVAL_SEED = 12345
"""Seed of the validation windows' order: the same whatever the training seed."""


@dataclasses.dataclass
class NoConfig:
    """An empty config section (a task without model, data or decode settings)."""


class Task(abc.ABC):
    """What the engine needs from a task. Only `model`, `input_spec`, `bind_loss` and `dataset`
    are required; the rest has defaults."""

    name: str
    model_config: type = NoConfig
    #: What a piano corpus (`jaxmir synth --instruments piano`) lacks that the task's labels
    #: come from (vocal: the sung line; drum: the drums); None: a piano corpus serves.
    piano_corpus_lacks: str | None = None
    data_config: type = NoConfig
    decode_config: type = NoConfig
    needs_cache: bool = True  # False: `dataset` ignores its cache argument (no --data needed)

    # -- configuration ------------------------------------------------------------------------
    def presets(self) -> dict[str, Config]:
        """tiny (tests: seconds), demo (a 2-core CPU: minutes), paper (omnizart's setup)."""
        return {}

    def preset(self, name: str) -> Config:
        presets = self.presets()
        if name not in presets:
            raise ConfigError(
                f"unknown preset {name!r} for task {self.name} ({', '.join(presets) or 'none'})"
            )
        return presets[name]

    def config(
        self, preset: str, model, data, train: TrainConfig, optim: OptimConfig | None = None
    ) -> Config:
        """A preset's Config (the decode section at its defaults)."""
        optim = optim if optim is not None else OptimConfig()
        return Config(self.name, preset, model, data, self.decode_config(), train, optim)

    def config_from_dict(self, data: dict, source: Path | str | None = None) -> Config:
        """The Config stored as `data` (a run's or model folder's config.json, `source`)."""
        data = dict(data)
        if data.get("task") != self.name:
            where = f"{source}: " if source is not None else ""
            raise ConfigError(f"{where}a config of task {data.get('task')!r}, not {self.name!r}")
        missing = [k for k in CONFIG_SECTIONS if not isinstance(data.get(k), dict)]
        missing += [] if "preset" in data else ["preset"]
        if missing:
            where = f"{source}: " if source is not None else "a config "
            raise ConfigError(
                f"{where}has no {', '.join(missing)} (a hand edit, another program's)"
            )
        return Config(
            task=self.name,
            preset=str(data["preset"]),
            model=from_dict(self.model_config, data["model"], "model."),
            data=from_dict(self.data_config, data["data"], "data."),
            decode=from_dict(self.decode_config, data["decode"], "decode."),
            train=from_dict(TrainConfig, data["train"], "train."),
            optim=from_dict(OptimConfig, data["optim"], "optim."),
        )

    # -- required -----------------------------------------------------------------------------
    @abc.abstractmethod
    def model(self, cfg: Config) -> nn.Module:
        """The Flax module; called as `apply(variables, x, train=...)`."""

    @abc.abstractmethod
    def input_spec(self, cfg: Config) -> jax.ShapeDtypeStruct:
        """One example's input (no batch axis), for eval_shape, info and init."""

    @abc.abstractmethod
    def bind_loss(self, cfg: Config) -> Callable:
        """`loss(apply_fn, variables, batch, rng, train) -> (loss, (metrics, model_state))`,
        the config bound (what the engine jits)."""

    @abc.abstractmethod
    def dataset(
        self, cfg: Config, cache: FeatureCache | None, split: str, train: bool
    ) -> grain.MapDataset:
        """Unbatched examples {"x", ...} of this process; endless (and shuffled) when `train`."""

    # -- files beside the weights (optional) ----------------------------------------------------
    def locate(self, cfg: Config, folder: Path) -> Config:
        """`cfg` with the paths it holds relative to the run or model `folder` it was read
        from made whole (beat: its downbeat tagger). Nothing by default."""
        return cfg

    def extra_params(self, cfg: Config) -> dict[str, int]:
        """Parameter counts of models the task trains beside its main one, by name (beat: its
        downbeat tagger), for `jaxmir info`. None by default."""
        return {}

    def omnizart_params(self, params) -> tuple[int, str]:
        """(the model's parameter count as Keras counts the omnizart model, what the rest
        are), for `jaxmir info`. By default all but the relative-position tables, which jaxmir
        learns and omnizart re-drew at random on every call (beat, chord)."""
        from jaxmir.nn.relative_attention import omnizart_param_count

        why = "learned relative-position tables that omnizart re-drew at random on every call"
        return omnizart_param_count(params), why

    def paths_from_here(self, cfg: Config) -> Config:
        """`cfg` with the relative paths a user gave (`--set`) made absolute from the current
        folder, so a run's config.json names them wherever it is read later. Nothing by
        default (vocal: `decode.contour_workdir`)."""
        return cfg

    def export_files(self, cfg: Config, out: Path) -> Config:
        """Copy the files `cfg` refers to into the shipped model folder `out`; returns `cfg`
        referring to them there, relatively. Nothing by default."""
        return cfg

    # -- optional -----------------------------------------------------------------------------
    def default_data(self, cfg: Config, cache_root: Path, progress: bool = True) -> Path:
        raise ConfigError(f"{self.name}: no embedded corpus; pass --data CACHE")

    def embedded_splits(self, cfg: Config) -> tuple[str, ...] | None:
        """Every split the embedded corpus of `cfg` can hold, known before it is built (so a
        mistyped split fails at once, not after minutes of rendering); None: not known."""
        return None

    def featurize(
        self, dataset: str, root: Path, out: Path, workers: int = 1, progress: bool = True
    ) -> dict:
        raise ConfigError(f"{self.name}: reads no datasets")

    def evaluate(
        self, predict, cfg: Config, cache: FeatureCache | None, split: str, progress: bool = False
    ) -> dict[str, float]:
        """Scores beyond the loss (none by default). `predict(x_windows) -> outputs`."""
        return {}

    def transcribe(self, predict, path: Path, cfg: Config, outdir: Path) -> list[Path]:
        raise ConfigError(f"{self.name}: no transcription")

    def check_training(self, cfg: Config) -> None:
        """ConfigError for settings that decoding accepts but training cannot use (beat: tempo
        bounds; vocal and drum: a piano corpus, whose labels they lack)."""
        if getattr(cfg.data, "corpus_instruments", None) == "piano":
            self.check_piano_corpus("data.corpus_instruments=piano: a piano corpus")

    def check_piano_corpus(self, what: str) -> None:
        """ConfigError, `what` first, where the task's labels come from what a piano corpus
        lacks (`piano_corpus_lacks`): every label would be empty."""
        if self.piano_corpus_lacks:
            raise ConfigError(
                f"{what} has no {self.piano_corpus_lacks}: every {self.name} label would be "
                "empty (render mixed or both)"
            )

    def check_decode(self, cfg: Config) -> None:
        """ConfigError naming a `decode.*` value no decoding can use (a threshold outside
        [0, 1], a negative duration), before any model loads or runs. Nothing by default."""
        return None

    #: What transcribing an input named STEM writes: STEM + each of these (`output_names`).
    output_suffixes: tuple[str, ...] = ()

    def output_names(self, stem: str) -> tuple[str, ...]:
        """Names of the files transcribing an input named `stem` writes; `transcribe` refuses
        to write over a file of such a name it did not write itself (`jaxmir.transcribed`).
        None known (a task of one's own that does not say): not checked."""
        return tuple(stem + suffix for suffix in self.output_suffixes)

    def readable_outputs(self, stem: str) -> tuple[str, ...]:
        """Names of the files transcribing an input named `stem` writes that this task would
        also read as inputs (beat: its MIDI); none by default (audio in, MIDI/CSV/PNG out)."""
        return ()

    def is_own_output(self, path: Path) -> bool:
        """Whether `path` (one of `readable_outputs`) is a file an earlier transcription wrote,
        not a user's own of that name."""
        return False

    def input_decode_config(self, path: Path, cfg: Config) -> Config:
        """The config that decodes the input file `path` in `transcribe`: `cfg` itself, unless
        the file tells the task something the model does not hear (beat: a score's notated
        beat level, from its meter map)."""
        return cfg

    def transcription_note(
        self, path: Path, written: list[Path], cfg: Config | None = None
    ) -> str | None:
        """A line for the user about the transcription of `path` into the files `written`
        with `cfg` (beat: how its beats agree with the MIDI file's own meter map); None by
        default."""
        return None

    def callbacks(self, cfg: Config) -> list:
        """The task's own pure callbacks, run before the engine's (none by default)."""
        return []


def skips_as_failures(read, *args) -> tuple[list, list[tuple[str, str]]]:
    """`read(*args)` -> (pieces, failures), with each file a dataset reader left out
    (`SkippedInput`) added to the failures as (path, reason): they were printed as raw Python
    warnings and missing from the summary's count and the manifest. Other warnings pass."""
    from jaxmir.data.datasets._common import SkippedInput

    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedInput)
        try:
            pieces, failures = read(*args)
        except FileNotFoundError as e:  # "no pieces": the files left out say why
            error = e
    skipped = []
    for w in caught:
        if isinstance(w.message, SkippedInput):
            skipped.append((w.message.path, w.message.reason))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if error is not None:
        if not skipped:
            raise error
        why = "; ".join(f"{path}: {reason}" for path, reason in skipped[:3])
        more = f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        raise FileNotFoundError(f"{error}; left out: {why}{more}") from None
    return pieces, list(failures) + skipped


class PieceTask(Task):
    """A task over whole pieces in a feature cache (see the module docstring)."""

    datasets: tuple[str, ...] = ()
    """`jaxmir features --dataset` names it accepts ("synth" = the embedded corpus's folder)."""
    stitch: str = "average"
    """How overlapping windows' outputs combine at inference (`jaxmir.inference`)."""
    corpus_kind: str = "synth"
    """Name prefix of the embedded corpus's cache folder."""

    # -- the task's own -----------------------------------------------------------------------
    @abc.abstractmethod
    def piece_features(self, piece) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(features (T, ...), label arrays for the cache) of one dataset piece. Must pickle
        (workers are processes): a method of the module-level TASK is fine."""

    def cache_params(self, dataset: str) -> dict:
        """What the cache's features depend on (a cache with other params is refused)."""
        return {"version": 1}

    def input_view(self, cfg: Config, x: np.ndarray) -> np.ndarray:
        """The model's input from cached frames x[lo:hi] (channel choice, padding, ...)."""
        return x

    def window_labels(
        self, cfg: Config, labels: dict[str, np.ndarray], start: int, mask: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Targets of the window of frames [start, start + len(mask)) of a piece with cached
        `labels`; `mask` is 1 on the frames inside the piece. Needed by the default `dataset`
        (a task whose examples are not windows overrides `dataset` instead)."""
        raise TypeError(
            f"{type(self).__name__} uses the windowed dataset: define window_labels "
            "(or override dataset)"
        )

    @abc.abstractmethod
    def decode(self, posteriors: Any, cfg: Config) -> Any:
        """A piece's posteriors -> events (notes, beats, f0, ...)."""

    @abc.abstractmethod
    def score(self, events: Any, labels: dict[str, np.ndarray], cfg: Config) -> dict[str, float]:
        """mir_eval scores of one piece's events against its cached labels."""

    @abc.abstractmethod
    def write(
        self, events: Any, stem: str, outdir: Path, cfg: Config, *, x: np.ndarray, posteriors: Any
    ) -> list[Path]:
        """Write a transcription (MIDI, CSV, PNG); returns the paths."""

    # -- the embedded corpus ------------------------------------------------------------------
    def corpus_params(self, cfg: Config) -> dict:
        """Everything the embedded corpus's cache depends on (its folder is named by digest)."""
        return corpus_params(cfg.data)

    def build_default(self, cfg: Config, out: Path, cache_root: Path, progress: bool) -> None:
        """Fill `out` with the embedded corpus's features: render the audio corpus (shared by
        the audio tasks, once per corpus config) and featurise it."""
        audio_dir = render_corpus(cfg.data, Path(cache_root), progress)
        summary = self.featurize(
            "synth", audio_dir, out, workers=cfg.data.workers, progress=progress
        )
        if summary["failed"]:  # each was named as it failed
            print(f"{self.name}: {len(summary['failed'])} pieces of the corpus failed (above)")

    def default_cache_dir(self, cfg: Config, cache_root: Path) -> Path:
        """The embedded corpus's feature cache, named by the corpus and the features: a task
        whose features change gets a new cache (the rendered audio is shared and kept), never
        an old one with other channels."""
        key = {"corpus": self.corpus_params(cfg), "features": self.cache_params("synth")}
        return Path(cache_root) / self.name / f"{self.corpus_kind}-{params_digest(key)}"

    def embedded_splits(self, cfg: Config) -> tuple[str, ...] | None:
        if _overrides(self, "build_default") or _overrides(self, "default_data"):
            return None  # a corpus of the task's own: its splits are its own to name
        from jaxmir.data.synth.corpus import corpus_splits

        return corpus_splits(cfg.data.corpus_instruments, corpus_variety(cfg.data))

    def default_data(self, cfg: Config, cache_root: Path, progress: bool = True) -> Path:
        """The embedded corpus's cache, built where it is not complete. Pieces that failed
        get one more try, by the next command (a stem cut short is rendered again); then the
        cache is complete with them left out. In a multi-process run the others take what
        process 0 built (`primary_first`)."""
        out = self.default_cache_dir(cfg, cache_root)
        retry = False
        if (out / "manifest.json").is_file():
            manifest = FeatureCache(out).manifest
            if manifest.get("complete") or not is_primary():
                return out
            retry = bool(manifest.get("failures"))
        self.build_default(cfg, out, Path(cache_root), progress)
        with FeatureCache(out).writing() as cache:
            if retry or not cache.failures():
                cache.manifest["complete"] = True
                cache.save_manifest()
        return out

    # -- datasets -> caches -------------------------------------------------------------------
    def read_pieces(self, dataset: str, root: Path) -> tuple[list, list[tuple[str, str]]]:
        """(pieces, failures) of a dataset folder the task accepts; ConfigError otherwise."""
        self.check_dataset(dataset)
        if dataset == "synth":
            from jaxmir.data.synth.corpus import MANIFEST, read_corpus

            index = Path(root) / MANIFEST
            if not index.is_file():  # say what is missing, not the bare OS error
                raise FileNotFoundError(
                    f"{index}: not found (is {root} a corpus folder written by `jaxmir synth`?)"
                )
            if peek_json(index).get("instruments") == "piano":  # read_corpus names a bad one
                self.check_piano_corpus(
                    f"{root}: a piano corpus (jaxmir synth --instruments piano)"
                )
            return read_corpus(Path(root)), []
        from jaxmir.data.datasets.registry import read_dataset

        return read_dataset(dataset, root), []

    def check_dataset(self, dataset: str) -> None:
        if dataset not in self.datasets:
            raise ConfigError(
                f"{self.name}: dataset {dataset!r} is not accepted "
                f"(accepted: {', '.join(self.datasets)})"
            )

    def piece_split(self, piece) -> str:
        return piece.split

    def featurize(
        self, dataset: str, root: Path, out: Path, workers: int = 1, progress: bool = True
    ) -> dict:
        pieces, failures = skips_as_failures(self.read_pieces, dataset, Path(root))
        cache = FeatureCache.create(out, self.name, self.cache_params(dataset))
        summary = featurize(
            pieces,
            self.piece_features,
            cache,
            workers=workers,
            progress=progress,
            split_of=self.piece_split,
            extra_of=source_of,
            failures=failures,
        )
        # a cache of another root's pieces too, named (a piece of this root whose file no
        # longer reads is among the failures, not elsewhere)
        failed = {path for path, _ in summary["failed"]}
        cached = cache.pieces()
        here = {p.name for p in pieces} | {e["name"] for e in cached if e.get("source") in failed}
        summary["elsewhere"] = [e["name"] for e in cached if e["name"] not in here]
        return summary

    # -- training data --------------------------------------------------------------------------
    def timesteps(self, cfg: Config) -> int:
        return cfg.model.timesteps

    def default_hop(self, cfg: Config) -> int:
        """Frames between training windows when `data.hop` is unset."""
        return self.timesteps(cfg)

    def dataset(
        self, cfg: Config, cache: FeatureCache, split: str, train: bool
    ) -> grain.MapDataset:
        t = self.timesteps(cfg)
        hop = self.default_hop(cfg) if cfg.data.hop is None else cfg.data.hop
        jitter = hop // 2 if (train and cfg.data.jitter) else 0
        augment = self.train_augment(cfg) if train else None
        return windows_dataset(
            cache,
            split,
            timesteps=t,
            hop=hop,
            seed=cfg.train.seed if train else EVAL_SEED,
            make_reader=lambda names: self.window_reader(cfg, cache, names, jitter, augment),
        )

    def train_augment(self, cfg: Config):
        """What changes a training window's input (``(x, rng) -> x``, labels untouched), or
        None: nothing."""
        return None

    def window_reader(
        self, cfg: Config, cache: FeatureCache, names: list[str], jitter: int = 0, augment=None
    ) -> WindowReader:
        """The transform (piece index, start) -> one example of the pieces `names`."""
        return WindowReader(
            str(cache.root),
            names,
            self.timesteps(cfg),
            jitter,
            view=functools.partial(self.input_view, cfg),
            labels=functools.partial(self.window_labels, cfg),
            augment=augment,
        )

    # -- inference ------------------------------------------------------------------------------
    def inference_hop(self, cfg: Config) -> int | None:
        """Frames between inference windows (None: half a window, `jaxmir.inference`)."""
        return None

    def window_logits(
        self, predict, xs: Iterable[np.ndarray], cfg: Config, batch_size: int | None = None
    ) -> Iterator[np.ndarray]:
        """The stitched model outputs of each piece's features `xs` (read lazily), in order:
        all the pieces' windows in one stream of batches of `batch_size` (default
        `train.val_batch_size`, which splits over the training mesh)."""
        views = (np.asarray(self.input_view(cfg, x), np.float32) for x in xs)
        return predict_pieces(
            predict,
            views,
            timesteps=self.timesteps(cfg),
            batch_size=batch_size or cfg.train.val_batch_size,
            mode=self.stitch,
            hop=self.inference_hop(cfg),
        )

    def logits_posteriors(
        self, logits: np.ndarray, x: np.ndarray, cfg: Config, source: Path | None = None
    ) -> Any:
        """A piece's posteriors from its stitched model outputs (a sigmoid by default)."""
        return sigmoid(logits)

    def posteriors(self, predict, x: np.ndarray, cfg: Config, source: Path | None = None) -> Any:
        """Frame posteriors of a whole piece: windows overlapping by half, combined as
        `stitch` says, through a sigmoid. `source`: the piece's audio file, when known (for a
        task that also runs another model on it)."""
        logits = next(self.window_logits(predict, [x], cfg))
        return self.logits_posteriors(logits, x, cfg, source)

    def posteriors_many(
        self,
        predict,
        pieces: Iterable[tuple[np.ndarray, Path | None]],
        cfg: Config,
        batch_size: int | None = None,
    ) -> Iterator[tuple[np.ndarray, Any]]:
        """(features, posteriors) of each (features, source) of `pieces`, in order, read
        lazily. Evaluation and transcription both come through here. The pieces' windows
        share one stream of batches (`window_logits`), unless the task overrides `posteriors`
        (then it is called piece by piece)."""
        if _overrides(self, "posteriors"):
            for x, source in pieces:
                yield x, self.posteriors(predict, x, cfg, source=source)
            return
        taken: collections.deque = collections.deque()  # pieces read, not yet yielded

        def xs():
            for x, source in pieces:
                taken.append((x, source))
                yield x

        for logits in self.window_logits(predict, xs(), cfg, batch_size):
            x, source = taken.popleft()
            probs = self.logits_posteriors(logits, x, cfg, source)
            del logits  # not held while the piece is decoded and written
            yield x, probs

    def evaluate(
        self, predict, cfg: Config, cache: FeatureCache, split: str, progress: bool = False
    ) -> dict[str, float]:
        """The mean of `score` over the pieces of `split` (a key missing from a piece's scores,
        such as an instrument it lacks, is averaged over the pieces that have it)."""
        if not cache.names(split):
            raise cache.no_split(split)
        return mean_scores(
            self.score(self.decode(probs, cfg), labels, cfg)
            for probs, labels in self.split_posteriors(
                predict, cfg, cache, split, desc=f"Evaluate {split}", progress=progress
            )
        )

    def split_posteriors(
        self,
        predict,
        cfg: Config,
        cache: FeatureCache,
        split: str,
        *,
        desc: str = "Posteriors",
        progress: bool = False,
    ) -> Iterator[tuple[Any, dict[str, np.ndarray]]]:
        """(posteriors, labels) of each piece of `split`, in order, through the shared batched
        window stream (`posteriors_many`): evaluation and decoding calibration read pieces
        this way."""
        names = cache.names(split)
        pieces = ((cache.features(n), cache.entry(n).get("source")) for n in names)
        posteriors = self.posteriors_many(predict, pieces, cfg)
        for name, (_, probs) in tqdm(
            zip(names, posteriors, strict=True), total=len(names), desc=desc, disable=not progress
        ):
            yield probs, cache.labels(name)

    def input_features(self, path: Path, cfg: Config) -> np.ndarray:
        """The features of an input file, computed as for training but read at one level
        (`AudioPiece.input`)."""
        from jaxmir.data.records import AudioPiece

        return self.piece_features(AudioPiece.input(path))[0]

    def input_suffixes(self) -> tuple[str, ...]:
        """The file types `transcribe` reads from a folder: MIDI for a task trained on MIDI
        files (beat), else audio."""
        return MIDI_SUFFIXES if "midi" in self.datasets else AUDIO_SUFFIXES

    def readable_outputs(self, stem: str) -> tuple[str, ...]:
        """The `output_names` of an input named `stem` that are of a type the task reads
        (beat: its MIDI)."""
        suffixes = self.input_suffixes()
        return tuple(n for n in self.output_names(stem) if Path(n).suffix.lower() in suffixes)

    def transcribe(self, predict, path: Path, cfg: Config, outdir: Path) -> list[Path]:
        return self.transcribe_many(predict, [Path(path)], cfg, outdir, progress=False)

    def transcribe_many(
        self,
        predict,
        paths: Sequence[Path],
        cfg: Config,
        outdir: Path,
        progress: bool = True,
        *,
        batch_size: int | None = None,
        timings: Timings | None = None,
    ) -> list[Path]:
        """Transcribe every file of `paths` into `outdir`; returns the paths written (see
        `transcribe_iter`)."""
        it = self.transcribe_iter(
            predict, paths, cfg, outdir, progress, batch_size=batch_size, timings=timings
        )
        return [p for _, written in it for p in written]

    def transcribe_iter(
        self,
        predict,
        paths: Sequence[Path],
        cfg: Config,
        outdir: Path,
        progress: bool = True,
        *,
        batch_size: int | None = None,
        timings: Timings | None = None,
        on_unreadable: Callable[[Path, Exception], None] | None = None,
        on_written: Callable[[Path, list[Path]], None] | None = None,
    ) -> Iterator[tuple[Path, list[Path]]]:
        """(input, paths written) for each file of `paths`, in order, as each is written.

        Features are computed one file at a time (each as its windows are needed); the files'
        windows run through the model in one stream of fixed-shape batches of `batch_size`
        (default `jaxmir.inference.default_batch_size()`: `predict` must then run on one
        device), so one compiled shape serves every file; then each file is decoded and
        written, in a writer thread while the model runs on the next file's windows. A task
        that overrides `transcribe` is called file by file, and one that overrides `posteriors`
        piece by piece; both batch their own windows, by `batch_size` where it is given (as
        `train.val_batch_size`, the default there). `timings`, when given, accumulates the
        seconds spent in features, model calls and decode + write (which overlap); a task's own
        `transcribe` gives features, decode and write as one sum (`Timings.unsplit_s`).
        `progress`: a bar in seconds of input (`AudioProgress`).

        A file that cannot be read (`UNREADABLE`: undecodable audio, a corrupt MIDI file)
        raises, unless `on_unreadable` is given: then it is called with the path and the
        error, the file is skipped and the others are transcribed (one bad file in a folder
        of hundreds does not lose the rest). `on_written(input, paths)`, when given, is called
        as soon as a file's outputs are written (before it is yielded: a run stopped while the
        model works on the next file has still reported them)."""
        paths = [Path(p) for p in paths]
        outdir = Path(outdir)
        if batch_size:  # a task's own `posteriors` or `transcribe` batches its windows by this
            cfg = dataclasses.replace(
                cfg, train=dataclasses.replace(cfg.train, val_batch_size=batch_size)
            )
        t = timings if timings is not None else Timings()
        bar = AudioProgress(paths, progress)
        timed = t.timed(predict)

        def predict(windows: np.ndarray) -> np.ndarray:
            y = timed(windows)
            bar.windows_done(len(windows))
            return y

        predict.__wrapped__ = timed  # `inspect.unwrap`: the model call without the bar

        def unreadable(index: int, error: Exception) -> None:
            if on_unreadable is None:
                raise error
            on_unreadable(paths[index], error)
            bar.file_skipped(index)

        try:
            if _overrides(self, "transcribe"):
                for i, path in enumerate(paths):
                    start, model_before = time.perf_counter(), t.model_s + t.compile_s
                    try:
                        written = self.transcribe(predict, path, cfg, outdir)
                    except UNREADABLE as e:
                        unreadable(i, e)
                        continue
                    if on_written is not None:
                        on_written(path, written)
                    model_s = t.model_s + t.compile_s - model_before
                    t.unsplit_s += time.perf_counter() - start - model_s
                    t.add_file(path, bar.known_seconds(i))
                    yield path, written
                    bar.file_done(i)
                return

            read: collections.deque = collections.deque()  # (index, file) read, not yet written

            def windows_of(x: np.ndarray) -> int:  # the bar's unit of progress per file
                if _overrides(self, "posteriors"):  # a task's own windows (or none): one
                    return 1
                steps = self.timesteps(cfg)
                hop, front = resolve_hop(steps, self.stitch, self.inference_hop(cfg))
                return len(window_starts(len(x), steps, hop, front))

            def pieces():
                for i, path in enumerate(paths):
                    start = time.perf_counter()
                    try:
                        x = self.input_features(path, cfg)
                        if len(x) == 0:  # a few milliseconds of audio: no frame to decode
                            raise AudioError(path, "too short: not one feature frame")
                    except UNREADABLE as e:
                        unreadable(i, e)
                        continue
                    t.features_s += time.perf_counter() - start
                    t.add_file(path, bar.known_seconds(i))
                    read.append((i, path))
                    bar.file_read(i, windows_of(x))
                    yield x, path

            def finish(i: int, path: Path, x, probs) -> tuple[int, Path, list[Path]]:
                start = time.perf_counter()
                events = self.decode(probs, self.input_decode_config(path, cfg))
                outdir.mkdir(parents=True, exist_ok=True)  # not before a file has been read
                written = self.write(events, path.stem, outdir, cfg, x=x, posteriors=probs)
                if on_written is not None:
                    on_written(path, written)
                t.write_s += time.perf_counter() - start  # this thread alone adds to it
                return i, path, written

            def done(future) -> tuple[Path, list[Path]]:
                i, path, written = future.result()
                bar.file_done(i)
                return path, written

            # Each file is decoded and written in a thread of its own while the model runs on
            # the next file's windows (XLA frees the GIL while it computes): at most one file
            # waits to be written, so memory holds two files' posteriors at most.
            batch_size = batch_size or default_batch_size()
            pending: collections.deque = collections.deque()
            with ThreadPoolExecutor(1, thread_name_prefix="jaxmir-write") as writer:
                for x, probs in self.posteriors_many(predict, pieces(), cfg, batch_size):
                    pending.append(writer.submit(finish, *read.popleft(), x, probs))
                    while len(pending) > 1 or (pending and pending[0].done()):
                        yield done(pending.popleft())
                while pending:
                    yield done(pending.popleft())
        finally:
            bar.close()


def csv_rows(written: list[Path], suffix: str) -> int | None:
    """The rows below the header of the CSV of `written` whose name ends in `suffix`; None
    where there is none."""
    csv = next((p for p in written if p.name.endswith(suffix)), None)
    if csv is None:
        return None
    with open(csv) as f:
        return sum(1 for line in f if line.strip()) - 1


def nothing_found_note(path: Path, written: list[Path], suffix: str, what: str) -> str | None:
    """ "PATH: no WHAT found ..." where the CSV of `written` ending in `suffix` holds a header
    and no rows (a silent file, or nothing the model heard over its thresholds): an empty
    result said, not left for the user to find."""
    if csv_rows(written, suffix) != 0:
        return None
    return f"{path}: no {what} found (silence, or nothing the model hears over its thresholds)"


def _overrides(task: PieceTask, method: str) -> bool:
    """Whether `task`'s class replaces PieceTask's `method`."""
    return getattr(type(task), method) is not getattr(PieceTask, method)


def require_model(name: str, known: str) -> None:
    """ConfigError unless `model.name` is the task's one model, `known`."""
    if name != known:
        raise ConfigError(f"model.name: unknown model {name!r} ({known})")


def source_of(piece) -> dict:
    """A cache entry's record of the audio file a piece's features came from."""
    audio = getattr(piece, "audio", None)
    return {"source": str(audio)} if audio is not None else {}


def mean_scores(rows: Iterable[dict[str, float]]) -> dict[str, float]:
    """The mean of each score over the pieces' rows (a key missing from a row, such as an
    instrument that piece lacks, is averaged over the rows that have it)."""
    rows = list(rows)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}


def schedule(
    epochs: int, steps: int, val_steps: int, batch: int, val_batch: int | None = None, **kw: Any
) -> TrainConfig:
    """A preset's TrainConfig in a line: `epochs` x `steps` of `batch` examples, `val_steps`
    validation batches of `val_batch` (default `batch`); other fields by name."""
    return TrainConfig(
        epochs=epochs,
        steps_per_epoch=steps,
        val_steps=val_steps,
        batch_size=batch,
        val_batch_size=val_batch or batch,
        **kw,
    )


def warmup_cosine(train: TrainConfig, warmup_steps: int, ema_decay: float) -> OptimConfig:
    """Adam at 1e-3 with `warmup_steps` of linear warm-up, then a cosine decay to 1e-5 over
    the whole of `train`, and a parameter EMA (the quality presets' optimiser)."""
    return OptimConfig(
        learning_rate=1e-3,
        lr_schedule="warmup_cosine",
        warmup_steps=warmup_steps,
        decay_steps=train.epochs * train.steps_per_epoch,
        min_lr=1e-5,
        ema_decay=ema_decay,
    )


def tiny_schedule(**kw: Any) -> TrainConfig:
    """The tiny presets' schedule (tests: seconds): 2 epochs x 3 steps of 8, one validation
    batch, one read thread, no early stopping; fields by name override it."""
    base = dict(epochs=2, steps_per_epoch=3, val_steps=1, batch_size=8, val_batch_size=8)
    base.update(log_every=1, early_stop_patience=None, data_threads=1)
    return TrainConfig(**{**base, **kw})


# -- the embedded audio corpus, shared by the audio tasks -----------------------------------------
@dataclasses.dataclass
class CorpusConfig:
    """The embedded audio corpus (rendered music21 scores): a base of the audio tasks' data
    sections."""

    corpus_pieces: int | None = 48  # the first N chorales (None: all 350)
    corpus_seed: int = 0
    corpus_instruments: str = "piano"  # piano | mixed (GM programs, a sung line, drums) | both
    corpus_max_seconds: float | None = None  # cut every piece (tests)
    workers: int = 2  # rendering and feature processes
    # Variety (music): other music21 works, procedural piano textures and random-note pieces
    # beside the chorales; numpy synthesis voices beside the soundfont; wide velocities; one
    # engine held out of training for the test_heldout split. All off: the original corpus.
    corpus_works: int = 0
    corpus_textures: int = 0
    corpus_random: int = 0
    corpus_voices: float | None = None  # probability of a synthesis voice; None: no variety
    corpus_holdout: str | None = None  # engine kept out of train/val (test_heldout split)
    corpus_piece_seconds: float = 40.0  # length of procedural pieces, cut of other works
    # A SoundFont 2 file only the test pieces hear (splits test_sf_piano, test_sf_mixed): how a
    # model holds up on instruments sampled by someone else. None: no such splits.
    corpus_test_soundfont: str | None = None
    # The GM programs of mixed train/val pieces: omnizart (its 11 instrument classes) | wide
    # (every pitched program: more sampled timbres; label modes without instrument streams).
    corpus_programs: str = "omnizart"
    # The probability that a soundfont part of a train/val piece plays through its own random
    # instrument body (a spectral tilt and resonances); test pieces never. 0: off.
    corpus_part_eq: float = 0.0
    # The longest reverberation time (s) of a train/val piece's room, drawn uniform from 0.2 s;
    # test pieces keep 0.2-1.5 s. None: 0.2-1.5 s everywhere.
    corpus_rt60_max: float | None = None


_VARIETY_KEYS = ("works", "textures", "random", "voices", "holdout", "piece_seconds")


def corpus_variety(d: CorpusConfig):
    """The corpus builder's `Variety` of a data section (None: the original corpus)."""
    from jaxmir.data.synth.corpus import PROGRAM_SETS

    if d.corpus_programs not in PROGRAM_SETS:
        raise ConfigError(
            f"data.corpus_programs: unknown set {d.corpus_programs!r} ({', '.join(PROGRAM_SETS)})"
        )
    if d.corpus_voices is None:
        if d.corpus_programs != "omnizart":
            raise ConfigError(
                "data.corpus_programs: only the varied corpus (data.corpus_voices set) draws "
                "programs beyond omnizart's"
            )
        if d.corpus_test_soundfont is not None:
            raise ConfigError(
                "data.corpus_test_soundfont: only the varied corpus (data.corpus_voices set, as "
                "music's demo and quality presets) renders test pieces with another soundfont"
            )
        if d.corpus_part_eq:
            raise ConfigError(
                "data.corpus_part_eq: only the varied corpus (data.corpus_voices set) "
                "re-shapes its soundfont parts"
            )
        if d.corpus_rt60_max is not None:
            raise ConfigError(
                "data.corpus_rt60_max: only the varied corpus (data.corpus_voices set) "
                "widens its rooms"
            )
        return None
    if d.corpus_rt60_max is not None and not 0.2 < d.corpus_rt60_max <= 10.0:
        raise ConfigError(f"data.corpus_rt60_max: seconds in (0.2, 10], got {d.corpus_rt60_max}")
    if not 0.0 <= d.corpus_part_eq <= 1.0:
        raise ConfigError(f"data.corpus_part_eq: a probability in [0, 1], got {d.corpus_part_eq}")
    from jaxmir.data.synth.corpus import Variety

    return Variety(
        d.corpus_voices,
        d.corpus_holdout,
        True,
        d.corpus_piece_seconds,
        None if d.corpus_test_soundfont is None else str(Path(d.corpus_test_soundfont).resolve()),
        d.corpus_programs,
        float(d.corpus_part_eq),
        None if d.corpus_rt60_max is None else float(d.corpus_rt60_max),
    )


def corpus_params(d: CorpusConfig) -> dict:
    out = {
        "pieces": d.corpus_pieces,
        "seed": d.corpus_seed,
        "instruments": d.corpus_instruments,
        "max_seconds": d.corpus_max_seconds,
    }
    if corpus_variety(d) is not None:  # absent otherwise: the original corpora keep their digest
        out.update({k: getattr(d, f"corpus_{k}") for k in _VARIETY_KEYS})
        if d.corpus_programs != "omnizart":  # absent by default: earlier corpora keep theirs
            out["programs"] = d.corpus_programs
        if d.corpus_part_eq:  # absent by default, as programs
            out["part_eq"] = float(d.corpus_part_eq)
        if d.corpus_rt60_max is not None:  # absent by default, as programs
            out["rt60_max"] = float(d.corpus_rt60_max)
        if d.corpus_test_soundfont is not None:  # its content, not where the file lies
            from jaxmir.data.synth.render import soundfont_digest

            out["test_soundfont"] = soundfont_digest(d.corpus_test_soundfont)
    return out


def test_soundfont_record(d) -> dict:
    """What a score on the test-soundfont splits was made with: {} for a data section without
    `corpus_test_soundfont`, else {"test_soundfont": {"file": name, "sha1": content hash}}."""
    path = getattr(d, "corpus_test_soundfont", None)
    if path is None:
        return {}
    from jaxmir.data.synth.render import soundfont_digest

    return {"test_soundfont": {"file": Path(path).name, "sha1": soundfont_digest(path)}}


def params_digest(params: dict) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


def render_corpus(d: CorpusConfig, cache_root: Path, progress: bool = True) -> Path:
    """Render (once per corpus config) the embedded audio corpus; returns its folder."""
    from jaxmir.data.synth.corpus import build_corpus

    audio_dir = Path(cache_root) / "synth" / f"corpus-{params_digest(corpus_params(d))}"
    build_corpus(
        audio_dir,
        d.corpus_pieces,
        d.corpus_seed,
        workers=d.workers,
        progress=progress,
        instruments=d.corpus_instruments,
        max_seconds=d.corpus_max_seconds,
        variety=corpus_variety(d),
        works=d.corpus_works,
        textures=d.corpus_textures,
        random_pieces=d.corpus_random,
    )
    return audio_dir


#: The sections of a stored config (config.json), each a dict of its keys.
CONFIG_SECTIONS = ("model", "data", "decode", "train", "optim")


def get_task(name: str) -> Task:
    if name not in TASK_MODULES:
        raise ConfigError(f"unknown task {name!r} (known: {', '.join(sorted(TASK_MODULES))})")
    return importlib.import_module(TASK_MODULES[name]).TASK


def check_timesteps(timesteps: int, multiple: int = 16) -> None:
    """ConfigError where `model.timesteps` is no multiple of `multiple` (the U-Nets of music
    and vocal_contour halve the time axis four times)."""
    if timesteps % multiple:
        raise ConfigError(f"model.timesteps: a multiple of {multiple}, got {timesteps}")


def abstract_variables(task: Task, cfg: Config, output: bool = False) -> tuple[Any, Any]:
    """(variables, output or None) of `task`'s model for one example, as
    ``jax.ShapeDtypeStruct`` s (``jax.eval_shape``: nothing allocated or compiled; the output
    only with `output`). ConfigError where `cfg.model`'s settings build no network (a vocal
    depth not 6n + 2, attention heads that do not divide the width, ...): `train` and `info`
    say so in one line before anything is written."""
    model = task.model(cfg)
    spec = task.input_spec(cfg)
    x = jax.ShapeDtypeStruct((1, *spec.shape), spec.dtype)
    try:
        variables = jax.eval_shape(
            lambda r, x: model.init(r, x, train=False), jax.random.PRNGKey(0), x
        )
        out = None
        if output:
            out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    except (ValueError, TypeError, ZeroDivisionError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        name = getattr(cfg.model, "name", type(model).__name__)
        raise ConfigError(
            f"model: {name} cannot be built from these model.* settings: {first}"
        ) from e
    return variables, out


def replace(cfg: Config, **sections: Any) -> Config:
    return dataclasses.replace(cfg, **sections)


def train_function(name: str) -> Callable:
    """`jaxmir.tasks.<name>.train(cfg, workdir=None, data=None, **kwargs)`: omnizart's
    per-application entry point, delegating to `jaxmir.engine.train`."""

    def train(cfg: Config, workdir=None, data=None, **kwargs):
        from jaxmir.engine import train as engine_train

        return engine_train(get_task(name), cfg, workdir, data, **kwargs)

    train.__doc__ = f"Train the {name} model described by `cfg`; returns a RunResult."
    return train
