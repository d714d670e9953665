"""The beat task: symbolic (MIDI) beat and downbeat tracking, as omnizart's `beat` app.

Input: 10 ms frames of onset roll (88) + duration roll (88) + inter-onset interval + spectral
flux = 178 features. Output: per-frame beat and downbeat probabilities (targets fade as
1/(i+1) over 15 frames). Loss: binary cross-entropy with downbeats weighted x5. Decoding: peak
picking. Scores: `mir_eval.beat.f_measure` (70 ms) on whole pieces, no 5-second trim.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import shutil
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import mir_eval
import numpy as np
import optax

from jaxmir.config import Config, ConfigError, OptimConfig
from jaxmir.data.cache import FeatureCache
from jaxmir.data.pipeline import frames_window
from jaxmir.data.symbolic import SymbolicPiece
from jaxmir.inference import sigmoid
from jaxmir.losses import binary_accuracy
from jaxmir.tasks.base import PieceTask, schedule, tiny_schedule, warmup_cosine
from jaxmir.tasks.beat.bar_lengths import BAR_LENGTHS, whole_bars
from jaxmir.tasks.beat.bars import SUBDIVISIONS, notes_from_features, subdivided
from jaxmir.tasks.beat.decode import (
    LEVEL_MIN_BEATS,
    NO_BOUNDS,
    START_TOLERANCE,
    bars_continued_back,
    beats_to_midi,
    checked_level,
    dbn_beats,
    decode_beats,
    from_first_onset,
    period_in_range,
    pick_peaks,
    read_beat_csv,
    strongest_phase,
    track_beats,
    tracking_peaks,
    write_beat_csv,
)
from jaxmir.tasks.beat.labels import (
    FPS,
    LOWEST_PITCH,
    N_FEATURES,
    N_PITCHES,
    beat_features,
    beat_labels,
    n_frames_for,
)
from jaxmir.tasks.beat.model import HEADS, LSTM_IMPLS, build_model
from jaxmir.tasks.beat.tagger import (
    CANDIDATE_SUFFIX,
    LEVEL_DIR,
    TAGGER_DIR,
    TAGGER_SIZE_FILE,
    TAGGER_VARIABLES,
    TaggerSize,
    level_examples,
    marked_downbeats,
    piece_examples,
    recover_folder,
    replace_folder,
    stored_tagger_problem,
    tagger_probs,
    train_tagger,
)


@dataclasses.dataclass
class BeatModelConfig:
    name: str = "blstm"  # blstm | blstm_attn
    timesteps: int = 1000  # frames per window (10 s)
    hidden: int = 25  # LSTM units per direction
    num_layers: int = 2
    attn_hidden: int = 256  # blstm_attn only
    unroll: int = 1  # LSTM scan unroll (speed only)
    lstm_impl: str = "fused"  # fused | flax: the same BiLSTM, one loop for both directions or two
    downbeat_weight: float = 5.0  # loss weight of the downbeat channel
    heads: str = "flat"  # flat: omnizart's Dense(timesteps) over the window | frame: per frame
    # The downbeat tagger (not in omnizart; `jaxmir.tasks.beat.bars`): a BiLSTM over the beats
    # trained after the frame model (0 units: none, downbeats come from the frame model).
    tagger_hidden: int = 0
    tagger_layers: int = 2
    tagger_steps: int = 2000
    tagger_members: int = 1  # > 1: that many taggers, their probabilities averaged
    # The level tagger (not in omnizart; `slower_level`): a BiLSTM over the tracked beats, of the
    # downbeat tagger's kind, that tells beats from sub-beats (0 units: none).
    level_hidden: int = 0
    level_layers: int = 2
    level_steps: int = 2000
    level_members: int = 1  # > 1: that many, their probabilities averaged (as tagger_members)


@dataclasses.dataclass
class BeatDataConfig:
    # read from older runs' config.json and dropped: the symbolic corpus is built in one process
    RETIRED: ClassVar[frozenset[str]] = frozenset({"corpus_workers"})

    hop: int | None = None  # frames between training windows (default timesteps // 2)
    jitter: bool = True  # shift each training window by up to +-hop/2 frames
    # The embedded corpus (music21's Bach chorales, tempo-warped); pieces per split, None = all
    corpus_train: int | None = None
    corpus_val: int | None = None
    corpus_test: int | None = None
    corpus_variants: int = 2  # tempo/velocity renderings of each training chorale
    corpus_seed: int = 0
    # Beyond the chorales: base tempi per beat (default omnizart-like 60-160), other music21
    # works, procedural piano textures (10 meters, pickups, swing, rubato, pedal), and a test
    # split `test_unseen` of textures in meters and tempi that training never sees.
    corpus_bpm: tuple[float, float] = (60.0, 160.0)
    corpus_works: int = 0
    corpus_textures: int = 0
    corpus_unseen: int = 0
    # The probability that a training rendering of a chorale or work keeps only some of its
    # parts (a melody alone, melody and bass, ...: beats with one onset, not a chord); > 0 also
    # renders each test score once that way, as the split `test_sparse`.
    corpus_part_subsets: float = 0.0
    # The probability that each four-bar phrase of a training texture changes to another meter
    # with the same beat (4/4 to 3/4, 6/8 to 9/8, ...): bars whose length is not a constant
    # teach the downbeat cues other than counting. Validation and test textures keep one meter.
    corpus_meter_changes: float = 0.0


@dataclasses.dataclass
class BeatDecodeConfig:
    # peaks (omnizart's peak picking) | track (+ dynamic programming at one tempo) | dbn (+ a
    # hidden Markov model whose tempo drifts from beat to beat, `dbn_beats`)
    method: str = "peaks"
    beat_threshold: float = 0.5
    downbeat_threshold: float = 0.3
    min_distance: float = 0.3  # seconds between peaks (0.2 for tempi up to 300 bpm)
    # methods "track", "dbn": prefer a faster beat level whose autocorrelation reaches this fraction
    # of the picked peaks' period's (`faster_period`); 0 tracks at the peaks' median interval.
    faster_level: float = 1.0
    # Downbeats: "peaks" of the frame model's downbeat channel, or "tagger": the beats that the
    # downbeat tagger stored in folder `tagger` (relative: to the run or model folder) marks,
    # read as whole bars (below) or, with `bar_change` 0 or where no bar stands out, each beat
    # with a probability of at least `tagger_threshold`.
    downbeats: str = "peaks"
    tagger: str = ""
    tagger_threshold: float = 0.5
    # Downbeats "tagger": read the tagger's probabilities as whole bars of 1-7 beats
    # (`bar_downbeats`): a bar of another length follows a bar with probability `bar_change`,
    # a beat that does not count (a fermata's extra beat) repeats a place in mid-bar with
    # probability `bar_hold`. 0 for `bar_change`: every beat marked at >= `tagger_threshold`.
    # A prior, not calibrated (calibration still chooses `tagger_threshold`, each beat marked);
    # runs calibrated before it existed decode with it too (docs/beat.md, "Whole bars").
    bar_change: float = 0.1
    bar_hold: float = 0.1
    # Downbeats "tagger": bars of this many tracked beats where one knows it (0: any of 1-7,
    # as above); read as whole bars whatever `bar_change`, and the taggers choose where they
    # start. `transcribe` of a score file tracked at its notated level takes it from the
    # file's time signature where its bars keep one length (`notated_bars`).
    bar_beats: int = 0
    # Methods "track", "dbn": where the level tagger stored in folder `level_tagger` (relative,
    # as `tagger`) gives every other tracked beat (or every second and third) a mean
    # probability under `level_threshold`, the tracker followed a sub-beat and only the beats
    # are kept (`slower_level`); where it gives points inserted between the tracked beats a
    # mean of at least 1 - `level_threshold`, the tracker followed every other (or third) beat
    # and the points are added (`checked_level`, never closer than `min_distance`); "" or 0: no
    # check. Calibration tries thresholds 0.05-0.5 (above 0.5 the fill passes more easily
    # than the slower test). Under tempo bounds the check is skipped and the same tagger
    # chooses the phase of a slower level (`bounded_beats`).
    level_tagger: str = ""
    level_threshold: float = 0.0
    # False: the level check only goes slower (`slower_level`). A run calibrated before the
    # fill existed decodes with it too (its threshold was chosen without it); False restores
    # its old decoding, `jaxmir calibrate` chooses the threshold for both.
    fill_level: bool = True
    # Methods "track", "dbn": bounds on the tracked tempo in beats per minute (0: none). The
    # level moves to 2, 3 or 4 beats, or a half, third or quarter of one, to lie within them
    # (`period_in_range`): a slower level keeps the tracked beats in the level tagger's phase,
    # others are tracked at the bounded period (`bounded_beats`); the level check is skipped,
    # the user's bounds choose the level. Never calibrated nor trained with; for a piece whose
    # tempo one knows (`jaxmir eval` / `transcribe --set`).
    min_bpm: float = 0.0
    max_bpm: float = 0.0
    # `transcribe` of a MIDI file that reads as a score (its own meter map, its onsets on that
    # map's grid, a beat that keeps its length: `FileMeter.score_beat_s`) and no bounds given:
    # bounds within 1.25 times either way of the file's notated beat. The tracker still places
    # every beat from the notes; the map chooses only the metrical level, a convention of the
    # notation the notes do not carry (a reel in 2/2 or 2/4 sounds alike). False: the level the
    # notes suggest. Not used by training, eval or calibration (their pieces carry no map).
    notated_level: bool = True
    notated_bars: bool = True
    # Beats tracked faster than tempo_band[1] or slower than tempo_band[0] (beats per minute)
    # are tracked again on the piece played `tempo_stretch` times slower (or faster), where the
    # frame model hears a tempo it trained on, and their times scaled back (`stretched_tempo`).
    # tempo_band [0, 0] or tempo_stretch 1: never. Not calibrated (validation holds few such pieces); chosen on
    # fresh unseen pieces and checked on others (docs/beat.md, "Tempi outside training").
    tempo_band: tuple[float, float] = (45.0, 200.0)
    tempo_stretch: float = 1.5
    # At the end of training, choose the method and thresholds on the validation pieces
    # (`calibrate`); stored in the workdir's decode.json and used by eval/transcribe.
    calibrate: bool = True


# What `BeatTask.calibrate` tries, each on every validation piece.
METHODS = ("peaks", "track", "dbn")
BEAT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
DISTANCE_GRID = (0.2, 0.3)
# Mean validation beat F closer than this to the best is a tie, and a tie goes to the shorter
# minimum distance. Validation pieces slower than 200 bpm cannot tell 0.2 s from 0.3 s apart,
# but 0.3 s hides every other beat above 200 bpm: on the shipped model, `dbn` at threshold 0.3
# scored 0.9231 / 0.9233 on validation (one beat of one piece apart) and 0.74 / 0.62 on 24
# textures at 220-260 and 28-40 bpm built for this choice (docs/beat.md).
TIE = 1e-3
DOWNBEAT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5)
DOWNBEAT_SOURCES = ("peaks", "tagger")

TAGGER_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
MAX_BAR_BEATS = 16  # `decode.bar_beats`: longer bars are rarer than a tagger's doubt
LEVEL_GRID = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)


def tagged_downbeats(
    beats: np.ndarray, probs: np.ndarray, d: BeatDecodeConfig, threshold: float | None = None
) -> np.ndarray:
    """The downbeats among `beats` that the tagger's probabilities `probs` give, as `d` reads
    them: whole bars (`whole_bars`), or each beat at >= `threshold` (default: the config's
    `tagger_threshold`) where `d.bar_change` is 0 (and no `d.bar_beats` is given) or the bars'
    downbeats do not stand out."""
    beats = np.asarray(beats, np.float64)
    if d.bar_change > 0 or d.bar_beats:
        lengths = (d.bar_beats,) if d.bar_beats else BAR_LENGTHS
        marks = whole_bars(probs, d.bar_change, d.bar_hold, lengths)
        if marks is not None:
            return beats[marks]
    return marked_downbeats(beats, probs, d.tagger_threshold if threshold is None else threshold)


class BeatPosteriors(NamedTuple):
    """A piece's beat posteriors: the frame model's (T, 2) probabilities and the piece's notes
    (N, 3) as its features hold them (what the downbeat tagger reads). `at_tempo(r)`, where
    the model is at hand: the posteriors of the same notes played r times slower (computed
    once per r), for decoding a piece whose tempo training never reached (`stretched_tempo`)."""

    frames: np.ndarray
    notes: np.ndarray
    at_tempo: Callable[[float], BeatPosteriors] | None = None


class BeatTask(PieceTask):
    output_suffixes = ("_beats.mid", "_beats.csv", "_downbeats.csv")
    name = "beat"
    model_config = BeatModelConfig
    data_config = BeatDataConfig
    decode_config = BeatDecodeConfig
    datasets = ("midi", "musicnet")
    stitch = "centre"  # a BLSTM's window edges see little context (omnizart's scheme)
    corpus_kind = "chorales"

    def presets(self) -> dict[str, Config]:
        adam = OptimConfig(learning_rate=1e-3)
        # omnizart's beat.yaml: BLSTM 2x25, 1000 frames, 10 x 1000 steps of 64, ES 7.
        paper = schedule(10, 1000, 50, 64, early_stop_patience=7, monitor="val_loss")
        # Same architecture with 4-second windows (the dense heads shrink 6x): learns on a
        # 2-core CPU in minutes.
        demo = schedule(8, 150, 10, 32, log_every=10, early_stop_patience=4)
        demo = dataclasses.replace(demo, monitor="val_beat_f_measure")
        demo_data = BeatDataConfig(corpus_train=150, corpus_val=12, corpus_test=24)
        # The demo's model and schedule on a wider corpus: tempi 40-220 bpm, other music21
        # works, piano textures in 10 meters, and the `test_unseen` split (meters and tempi
        # never trained on). Not yet the demo: its rendering takes longer.
        wide_data = dataclasses.replace(
            demo_data,
            corpus_bpm=(40.0, 220.0),
            corpus_works=24,
            corpus_textures=160,
            corpus_unseen=24,
        )
        # The wide data trained 2.5x longer (the wide run's validation beat F was still rising
        # at its last epoch), with warm-up + cosine decay and a parameter EMA, by a model that
        # reads out each frame (`heads="frame"`, not omnizart's) on 8-s windows (2-4 bars):
        # 104 k weights instead of the flat heads' 16 M at 4 s, and on unseen tempi and meters
        # beat F 0.78 against 0.75 (test: 0.85 both).
        quality = dataclasses.replace(
            schedule(20, 150, 10, 16, log_every=10, early_stop_patience=None),
            monitor="val_beat_f_measure",
        )
        # Half the training renderings of chorales and works keep only some of their parts
        # (scores thinned to a melody, melody and bass, ...): on the thinned test scores
        # (`test_sparse`) downbeat F 0.47 -> 0.62, beat F 0.75 both; test 0.85 -> 0.86 beat F,
        # test_unseen 0.78 -> 0.79 (one run each).
        # Each four-bar phrase after the first of a training texture changes meter on the same
        # beat with probability 0.5 (`corpus_meter_changes`): the shipped frame model's taggers
        # re-trained on them against on the corpus without (same frame model, same recipe):
        # downbeat F test_unseen 0.827 -> 0.859, 96 fresh unseen pieces 0.659 -> 0.695 (7/4:
        # 0.40 -> 0.49), test 0.814 -> 0.821, test_sparse 0.654 -> 0.666, validation 0.917 ->
        # 0.908; beat F (the level tagger) test_unseen 0.890 -> 0.903, fresh 0.795 -> 0.805.
        # Those textures also hold one harmony per bar and end with a whole phrase
        # (docs/beat.md).
        quality_data = dataclasses.replace(
            wide_data, corpus_part_subsets=0.5, corpus_meter_changes=0.5
        )
        # Its downbeats come from the tagger over the tracked beats (`jaxmir.tasks.beat.bars`):
        # 2 x 64 units (2 x 32 scored 0.76 / 0.73 on test / test_unseen downbeat F, 64 0.78 /
        # 0.77, the frame model's peaks 0.48 / 0.53).
        # Four taggers side by side, their probabilities averaged: single taggers trained
        # with four seeds on the same tracked beats scored 0.73-0.82 test downbeat F, their
        # mean 0.83 (test_unseen 0.77-0.79 -> 0.80).
        # A level tagger (four 2 x 32 members) checks the tracked beats for sub-beats
        # (`slower_level`): on the shipped frame model, beat F test 0.885 -> 0.893 and
        # test_unseen 0.849 -> 0.890 (docs/beat.md); and for missed beats (`checked_level`):
        # validation 0.923 -> 0.933, test unchanged, test_unseen 0.890 both (calibrated again,
        # threshold 0.2 -> 0.15: one unseen piece filled in, another lost; docs/beat.md).
        quality_model = BeatModelConfig(
            timesteps=800,
            hidden=32,
            num_layers=3,
            heads="frame",
            tagger_hidden=64,
            tagger_members=4,
            level_hidden=32,
            level_members=4,
        )
        cosine = warmup_cosine(quality, warmup_steps=100, ema_decay=0.99)
        tiny_model = BeatModelConfig(timesteps=64, hidden=4, num_layers=1, attn_hidden=8)
        tiny_data = BeatDataConfig(corpus_train=3, corpus_val=1, corpus_test=1, corpus_variants=1)
        tiny = tiny_schedule(steps_per_epoch=4, val_steps=2, log_every=2)
        return {
            "paper": self.config("paper", BeatModelConfig(), BeatDataConfig(), paper, adam),
            "demo": self.config("demo", BeatModelConfig(timesteps=400), demo_data, demo, adam),
            "wide": self.config("wide", BeatModelConfig(timesteps=400), wide_data, demo, adam),
            "quality": self.config("quality", quality_model, quality_data, quality, cosine),
            "tiny": self.config("tiny", tiny_model, tiny_data, tiny, adam),
        }

    # -- model ----------------------------------------------------------------------------------
    def model(self, cfg: Config):
        m = cfg.model
        # the modules check these when first run; said here, before a run writes anything
        for key, value, known in (
            ("heads", m.heads, HEADS),
            ("lstm_impl", m.lstm_impl, LSTM_IMPLS),
        ):
            if value not in known:
                raise ConfigError(
                    f"model.{key}: unknown {value!r}; choose one of {', '.join(known)}"
                )
        return build_model(
            m.name,
            timesteps=m.timesteps,
            hidden=m.hidden,
            num_layers=m.num_layers,
            attn_hidden=m.attn_hidden,
        ).clone(unroll=m.unroll, lstm_impl=m.lstm_impl, heads=m.heads)

    def input_spec(self, cfg: Config) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((cfg.model.timesteps, N_FEATURES), jnp.float32)

    def bind_loss(self, cfg: Config):
        weight = cfg.model.downbeat_weight

        def loss(apply_fn, variables, batch, rng, train):
            logits = apply_fn(variables, batch["x"], train=train, rngs={"dropout": rng})
            loss, metrics = weighted_bce(logits, batch["y"], batch["mask"], weight)
            return loss, (metrics, {})

        return loss

    # -- data -----------------------------------------------------------------------------------
    def default_hop(self, cfg: Config) -> int:
        return cfg.model.timesteps // 2

    def window_labels(self, cfg, labels, start, mask):
        return {"y": frames_window(labels["y"], start, len(mask))}

    def piece_features(self, piece: SymbolicPiece) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(features (T, 178), labels {"y": (T, 2), notes, beats, downbeats}) of one piece."""
        n = n_frames_for(piece)
        x = beat_features(piece.notes, n)
        y = beat_labels(piece.beats, piece.downbeats, n)
        return x, {"y": y, **piece.to_npz_dict()}

    def cache_params(self, dataset: str) -> dict:
        # MIDI folders: version 2 reads a tempo map kept outside track 0 (`meter_in_first_track`;
        # version 1 read such files at 120 qpm), version 3 notes of no length
        # (`zero_length_notes_sounded`), so a cache of one is never added to by another;
        # MusicNet: version 2 keeps the official test split (version 1 split by name)
        version = {"midi": 3, "musicnet": 2}.get(dataset, 1)
        return {"dataset": dataset, "fps": FPS, "version": version}

    def piece_split(self, piece: SymbolicPiece) -> str:
        """A dataset's own split (MusicNet's official test set), else one by name."""
        from jaxmir.data.synth.chorales import split_of

        return piece.split or split_of(piece.name)

    def read_pieces(self, dataset: str, root: Path):
        self.check_dataset(dataset)
        if dataset == "midi":
            from jaxmir.data.datasets.midi import read_midi_folder

            return read_midi_folder(Path(root))
        # MusicNet's label CSVs as symbolic beat data; downbeats assume 4 beats per bar
        # (MusicNet has no meter), as omnizart did: see jaxmir.data.datasets.musicnet.
        from jaxmir.data.datasets.musicnet import read_beats

        return read_beats(Path(root)), []

    def corpus_params(self, cfg: Config) -> dict:
        d = cfg.data
        out = {
            "corpus": "music21-bach-chorales",
            "fps": FPS,
            "train": d.corpus_train,
            "val": d.corpus_val,
            "test": d.corpus_test,
            "variants": d.corpus_variants,
            "seed": d.corpus_seed,
            "version": 1,
        }
        wide = {"bpm": list(d.corpus_bpm), "works": d.corpus_works}
        wide.update(textures=d.corpus_textures, unseen=d.corpus_unseen)
        if wide != {"bpm": [60.0, 160.0], "works": 0, "textures": 0, "unseen": 0}:
            out.update(wide)  # absent otherwise: the chorale-only caches keep their digest
        if d.corpus_part_subsets > 0:  # likewise
            out["part_subsets"] = d.corpus_part_subsets
        if d.corpus_meter_changes > 0:  # likewise
            out["meter_changes"] = d.corpus_meter_changes
        return out

    def embedded_splits(self, cfg: Config) -> tuple[str, ...]:
        d = cfg.data
        extra = ("test_sparse",) if d.corpus_part_subsets > 0 else ()
        return ("train", "val", "test", *extra) + (("test_unseen",) if d.corpus_unseen else ())

    def build_default(self, cfg: Config, out: Path, cache_root: Path, progress: bool) -> None:
        """The chorales' beats straight from music21 (symbolic: nothing to render)."""
        from jaxmir.data.synth.chorales import build_chorale_pieces

        d = cfg.data
        cache = FeatureCache.create(out, self.name, self.corpus_params(cfg))
        counts = {"train": d.corpus_train, "val": d.corpus_val, "test": d.corpus_test}
        sources = [("chorales", None, counts)]
        if d.corpus_works:
            from jaxmir.data.synth.corpus import work_ids

            sources.append(("works", work_ids(), work_counts(d)))
        # (split of the scores, split written, probability of a part subset, name suffix)
        renderings = [
            ("train", "train", d.corpus_part_subsets, ""),
            ("val", "val", 0.0, ""),
            ("test", "test", 0.0, ""),
        ]
        if d.corpus_part_subsets > 0:
            renderings.append(("test", "test_sparse", 1.0, "__sparse"))
        for label, ids, per_split in sources:
            for split, out_split, subsets, suffix in renderings:
                pieces, failures = build_chorale_pieces(
                    split,
                    per_split[split],
                    d.corpus_seed,
                    variants=d.corpus_variants if split == "train" else 1,
                    progress=progress,
                    bpm_range=tuple(d.corpus_bpm),
                    ids=ids,
                    part_subsets=subsets,
                    suffix=suffix,
                )
                done = set(cache.names())
                for piece in pieces:
                    if piece.name not in done:
                        write_piece(cache, piece, out_split)
                if failures:
                    print(f"skipped {len(failures)} {label}: {[c for c, _ in failures]}")
        for piece, split in texture_pieces(d):
            write_piece(cache, piece, split)

    # -- inference ------------------------------------------------------------------------------
    def logits_posteriors(self, logits, x, cfg: Config, source=None) -> BeatPosteriors:
        return BeatPosteriors(sigmoid(logits), notes_from_features(x))

    def posteriors_many(self, predict, pieces, cfg: Config, batch_size: int | None = None):
        """As `PieceTask.posteriors_many`, each piece's posteriors able to give those of the
        piece at another tempo (`BeatPosteriors.at_tempo`), computed only when decoding asks.

        Those call the model itself (`inspect.unwrap`: without a progress bar's, a timer's or
        a stop poll's wrapper), since decoding may run on another thread (transcribe's
        writer) and, in a multi-process run, on some processes only."""
        model = inspect.unwrap(predict)
        for x, post in super().posteriors_many(predict, pieces, cfg, batch_size):
            yield x, post._replace(at_tempo=self._at_tempo(model, cfg, post.notes, batch_size))

    def _at_tempo(
        self, predict, cfg: Config, notes: np.ndarray, batch_size: int | None
    ) -> Callable[[float], BeatPosteriors]:
        memo: dict[float, BeatPosteriors] = {}

        def at_tempo(r: float) -> BeatPosteriors:
            if r not in memo:
                slower = np.array(notes, np.float64)
                slower[:, :2] *= r
                x = beat_features(slower, n_frames_for(SymbolicPiece("", slower, [], [])))
                logits = next(self.window_logits(predict, [x], cfg, batch_size))
                memo[r] = self.logits_posteriors(logits, x, cfg)
            return memo[r]

        return at_tempo

    def check_decode(self, cfg: Config) -> None:
        """ConfigError for an unknown method or downbeat source, probabilities outside their
        range, unusable tempo bounds, `decode.tempo_band` or `decode.tempo_stretch`, before any
        model runs (`train` checks them before anything is written)."""
        d = cfg.decode
        if d.method not in METHODS:
            raise ConfigError(f"decode.method: unknown method {d.method!r} ({', '.join(METHODS)})")
        if d.downbeats not in DOWNBEAT_SOURCES:
            raise ConfigError(
                f"decode.downbeats: unknown source {d.downbeats!r} ({', '.join(DOWNBEAT_SOURCES)})"
            )
        for key in ("bar_change", "bar_hold"):
            if not 0.0 <= getattr(d, key) < 1.0:
                raise ConfigError(f"decode.{key}: {getattr(d, key)} is a probability in [0, 1)")
        if not 0 <= d.bar_beats <= MAX_BAR_BEATS:
            raise ConfigError(
                f"decode.bar_beats: beats per bar, 1-{MAX_BAR_BEATS} (0: any), got {d.bar_beats}"
            )
        if d.bar_beats and d.downbeats != "tagger":
            raise ConfigError(
                "decode.bar_beats: bars of the downbeat taggers (decode.downbeats=tagger); "
                f"the downbeats here are {d.downbeats!r}"
            )
        for key in ("beat_threshold", "downbeat_threshold", "tagger_threshold"):
            if not 0.0 <= getattr(d, key) <= 1.0:
                raise ConfigError(f"decode.{key}: a probability in [0, 1], got {getattr(d, key)}")
        if not 0.0 <= d.min_distance < float("inf"):
            raise ConfigError(f"decode.min_distance: seconds, 0 or more, got {d.min_distance}")
        check_tempo_band(d)
        check_bounds_range(d)
        tempo_bounds(d)

    def decode(self, posteriors, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
        """(beats, downbeats) in seconds. `posteriors`: `BeatPosteriors`, or the frame
        probabilities (T, 2) alone when downbeats come from their peaks. Beats tracked
        outside `decode.tempo_band` are tracked again at another tempo (`stretched_tempo`)."""
        self.check_decode(cfg)
        beats, downbeats = self._decode_once(posteriors, cfg)
        at_tempo = getattr(posteriors, "at_tempo", None)
        r = stretched_tempo(beats, cfg.decode)
        if r == 1.0 or at_tempo is None:
            return beats, downbeats
        d = cfg.decode  # the user's tempo bounds hold at the new tempo too
        bounds = {"min_bpm": d.min_bpm / r, "max_bpm": d.max_bpm / r, "tempo_band": (0.0, 0.0)}
        again = dataclasses.replace(cfg, decode=dataclasses.replace(d, **bounds))
        beats, downbeats = self._decode_once(at_tempo(r), again)
        return beats / r, downbeats / r

    def _decode_once(self, posteriors, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
        d = cfg.decode
        bounds = tempo_bounds(d)
        probs = posteriors.frames if isinstance(posteriors, BeatPosteriors) else posteriors
        beats, downbeats = decode_beats(
            probs, FPS, d.beat_threshold, d.downbeat_threshold, d.min_distance
        )
        if d.method != "peaks":
            tracker = functools.partial(
                track_beats if d.method == "track" else dbn_beats,
                probs[:, 0],
                tracking_peaks(probs[:, 0], beats, d.min_distance, FPS),
                FPS,
                faster_level=d.faster_level,
            )
            notes = posteriors.notes if isinstance(posteriors, BeatPosteriors) else ()
            first_onset = notes[:, 0].min() if len(notes) else None

            laid_anew = []  # whether the beats before the first note were laid anew

            def track(**bounded) -> np.ndarray:  # from the first note, before a level check
                beats = tracker(**bounded)
                if first_onset is None:
                    return beats
                beats, anew = from_first_onset(beats, first_onset)
                laid_anew.append(anew)
                return beats

            if bounds != NO_BOUNDS:  # the user's bounds choose the level: no level check
                beats = bounded_beats(track, bounds, d, posteriors)
            elif checks_level(d):
                probs_of = level_probs(d.level_tagger, _notes(posteriors, "level_tagger"))
                beats = checked_level(
                    track(), probs_of, d.level_threshold, SUBDIVISIONS, d.min_distance, d.fill_level
                )
            else:
                beats = track()
        if d.downbeats == "tagger":
            if not d.tagger:
                raise ConfigError("decode.downbeats=tagger: decode.tagger names no folder")
            notes = _notes(posteriors, "downbeats=tagger")
            # beats laid anew over a silent lead-in carry no bars: the taggers read the beats
            # from the first note on, and the opening bars continue back
            anew = d.method != "peaks" and any(laid_anew)
            start = notes[:, 0].min() - START_TOLERANCE if anew else -np.inf
            played = beats[beats >= start]
            downbeats = tagged_downbeats(played, tagger_probs(d.tagger, notes, played), d)
            downbeats = bars_continued_back(beats, downbeats, start)
        return beats, downbeats

    def locate(self, cfg: Config, folder: Path) -> Config:
        """A relative `decode.tagger` or `decode.level_tagger` is inside the run or model
        `folder`."""
        found = {}
        for key in ("tagger", "level_tagger"):
            path = getattr(cfg.decode, key)
            if path and not Path(path).is_absolute():
                found[key] = str((Path(folder) / path).resolve())
        if not found:
            return cfg
        return dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, **found))

    def extra_params(self, cfg: Config) -> dict[str, int]:
        m = cfg.model
        out = {}
        if m.tagger_hidden > 0:
            out["downbeat_tagger"] = tagger_size(m).param_count()
        if m.level_hidden > 0:
            out["level_tagger"] = level_size(m).param_count()
        return out

    def export_files(self, cfg: Config, out: Path) -> Config:
        """A shipped model carries its taggers (`TAGGER_DIR`, `LEVEL_DIR`), referred to
        relatively; a model that decodes without one leaves none in `out` (a tagger left there
        by a model exported before would compete when the folder is calibrated)."""
        d = cfg.decode
        uses = {
            "tagger": (TAGGER_DIR, d.downbeats == "tagger" and bool(d.tagger)),
            "level_tagger": (LEVEL_DIR, checks_level(d)),
        }
        moved = {}
        for key, (name, used) in uses.items():
            target = Path(out) / name
            if not used:
                shutil.rmtree(target, ignore_errors=True)
                continue
            target.mkdir(parents=True, exist_ok=True)
            for file in (TAGGER_VARIABLES, TAGGER_SIZE_FILE):
                shutil.copyfile(Path(getattr(d, key)) / file, target / file)
            moved[key] = name
        return dataclasses.replace(cfg, decode=dataclasses.replace(d, **moved))

    def calibrate(
        self,
        predict,
        cfg: Config,
        cache,
        progress: bool = False,
        workdir: Path | None = None,
        log=print,
    ) -> dict | None:
        """The decoding that maximises the mean beat F-measure on the validation pieces (method,
        beat threshold, minimum distance), then the downbeats that maximise the downbeat
        F-measure: the frame model's peaks at the best threshold, or, when the model config
        asks for a tagger (and `workdir` is given to store it), the tagger trained here on the
        training pieces' true and tracked beats at its best threshold, whichever scores
        higher. Where the folder holds a tagger already (a model folder, a run calibrated
        again), the re-trained one (trained beside it) replaces it only if it scores higher
        on these beats by more than `TIE`: taggers of one recipe differ by up to 0.09
        downbeat F from draw to draw, so calibrating again must not swap the folder's for one
        that scores lower on validation. A stored tagger of another size than the config's,
        or one that cannot be read, is replaced. Posteriors are computed once per piece (the
        training pieces' only when a tagger is trained, once for both taggers).
        Returns the chosen `decode` values plus the validation scores before and after, or
        None when the config does not ask for it. Tempo bounds (`decode.min_bpm`,
        `max_bpm`) and a bar length (`decode.bar_beats`) are a user's choice for a piece, never
        calibrated: calibration decodes without them."""
        d = dataclasses.replace(cfg.decode, min_bpm=0.0, max_bpm=0.0, bar_beats=0)
        cfg = dataclasses.replace(cfg, decode=d)
        names = cache.names("val")
        if not d.calibrate or not names:
            return None
        pieces = list(
            self.split_posteriors(
                predict, cfg, cache, "val", desc="Calibrate decoding", progress=progress
            )
        )

        @functools.cache
        def train_pieces() -> list:
            return list(
                self.split_posteriors(
                    predict, cfg, cache, "train", desc="Tagger data (train)", progress=progress
                )
            )

        def with_decode(**values) -> Config:
            return dataclasses.replace(cfg, decode=dataclasses.replace(d, **values))

        def mean(key: str, **values) -> float:
            c = with_decode(**values)
            return float(np.mean([f_measures(self.decode(p, c), lab)[key] for p, lab in pieces]))

        home = None if workdir is None else Path(workdir) / TAGGER_DIR
        if home is not None:
            recover_folder(home)  # what a crash left, put right before anything decodes with it
        as_stored = {}  # the folder's decoding, but for a stored tagger that cannot be used
        if d.downbeats == "tagger" and d.tagger:
            problem = stored_tagger_problem(Path(d.tagger), tagger_size(cfg.model))
            if problem:
                log(f"Downbeat tagger in {d.tagger} {problem}: scored before with the peaks")
                as_stored = {"downbeats": "peaks"}
        if checks_level(d):
            problem = stored_tagger_problem(Path(d.level_tagger), level_size(cfg.model))
            if problem:
                log(f"Level tagger in {d.level_tagger} {problem}: scored before without it")
                as_stored["level_tagger"] = ""
        keys = ("beat_f_measure", "downbeat_f_measure")
        before = {k: mean(k, **as_stored) for k in keys}
        grid = [(m, b, g) for m in METHODS for b in BEAT_GRID for g in DISTANCE_GRID]
        beat_f = {  # beats only: the frame model's peaks stand in for a tagger's downbeats
            v: mean(
                "beat_f_measure",
                method=v[0],
                beat_threshold=v[1],
                min_distance=v[2],
                downbeats="peaks",
                level_tagger="",
            )
            for v in grid
        }
        method, beat, gap = best_tracking(beat_f)
        chosen = {"method": method, "beat_threshold": beat, "min_distance": gap}
        chosen.update(level_tagger="", level_threshold=0.0)
        level = {}
        if cfg.model.level_hidden > 0 and workdir is not None:
            plain = with_decode(**chosen, downbeats="peaks")
            level = self.calibrate_level(
                plain, train_pieces(), pieces, Path(workdir), progress, log
            )
            used = level["folder"] if level["threshold"] > 0 else ""  # none: no folder named
            chosen.update(level_tagger=used, level_threshold=level["threshold"])

        refs = [lab["downbeats"] for _, lab in pieces]

        def downbeat_f(estimates: list[np.ndarray]) -> float:
            """Mean validation downbeat F of one estimate per piece."""
            return float(np.mean([beat_fscore(r, e) for r, e in zip(refs, estimates, strict=True)]))

        def mean_downbeat_f(threshold: float) -> float:  # downbeats only: no beat is decoded
            return downbeat_f([pick_peaks(p.frames[:, 1], threshold, gap, FPS) for p, _ in pieces])

        peak_threshold = max(DOWNBEAT_GRID, key=mean_downbeat_f)
        chosen.update(downbeats="peaks", downbeat_threshold=peak_threshold, tagger="")
        scores = {"peaks": mean_downbeat_f(peak_threshold)}
        if cfg.model.tagger_hidden > 0 and workdir is not None:
            tracked = [self.decode(p, with_decode(**chosen))[0] for p, _ in pieces]

            def best_threshold(folder: Path) -> tuple[float, float]:
                """The tagger's best threshold on the beats tracked once above (each beat
                marked at it), and its score as `decode` tags them (whole bars, the threshold
                where they carry no bar: `tagged_downbeats`)."""
                probs = [
                    tagger_probs(str(folder), p.notes, b)
                    for (p, _), b in zip(pieces, tracked, strict=True)
                ]
                each = dataclasses.replace(d, bar_change=0.0)

                def score(t: float, how: BeatDecodeConfig) -> float:
                    return downbeat_f(
                        [
                            tagged_downbeats(b, q, how, t)
                            for b, q in zip(tracked, probs, strict=True)
                        ]
                    )

                f = {t: score(t, each) for t in TAGGER_GRID}
                threshold = max(f, key=f.get)
                return threshold, score(threshold, d) if d.bar_change > 0 else f[threshold]

            kept = None  # calibrated before: the tagger there competes with the re-trained one
            if (home / TAGGER_VARIABLES).is_file():
                problem = stored_tagger_problem(home, tagger_size(cfg.model))
                if problem:
                    log(f"Downbeat tagger in {home} {problem}: replaced")
                else:
                    kept = best_threshold(home)
                    scores["tagger_before"] = kept[1]
            trained = self.fit_tagger(
                with_decode(**chosen),
                train_pieces(),
                pieces,
                workdir,
                progress,
                log,
                kept is not None,
            )
            threshold, scores["tagger"] = best_threshold(trained)
            if kept is not None:
                scores["tagger_retrained"] = scores["tagger"]
                if kept[1] >= scores["tagger"] - TIE:  # a tie keeps the tagger already there
                    shutil.rmtree(trained)
                    threshold, scores["tagger"] = kept
                    log("Downbeat tagger: the re-trained one scores no higher; the old one stays")
                else:
                    replace_folder(trained, home)
                    log("Downbeat tagger: the re-trained one scores higher; it replaces the old")
            if scores["tagger"] > scores["peaks"]:
                chosen = dict(chosen, downbeats="tagger", tagger=str(home))
                chosen["tagger_threshold"] = threshold
            log(f"Validation downbeat F by source: {scores} (using {chosen['downbeats']})")
        after = {k: mean(k, **chosen) for k in keys}
        if chosen["downbeats"] == "tagger":
            chosen["tagger"] = TAGGER_DIR  # stored relative to the run folder (`locate`)
        if chosen["level_tagger"]:
            chosen["level_tagger"] = LEVEL_DIR
        out = {
            "decode": chosen,
            "val_pieces": len(pieces),
            "before": before,
            "after": after,
            "val_downbeat_f_by_source": scores,
        }
        if level:
            out["level"] = {k: v for k, v in level.items() if k != "folder"}
        return out

    def calibrate_level(
        self, cfg: Config, train: list, pieces: list, workdir: Path, progress=False, log=print
    ) -> dict:
        """Train the level tagger (`fit_level_tagger`) on the `train` pieces and choose its
        threshold on the validation `pieces` (each (posteriors, labels); beats tracked as
        `cfg.decode` says): the `LEVEL_GRID` value of highest mean of two validation beat F
        (`checked_level`), of the tracked beats and of the true beats cut into 2 and into 3
        steps (`subdivided`: a tracker that followed a sub-beat) or thinned to every 2nd and
        every 3rd (a tracker that followed every other beat). The validation pieces are rarely
        tracked at another level, so the cut and thinned beats stand for those; without them
        every threshold low enough to leave the tracked beats alone would tie. Among the
        thresholds within `TIE` of the best, the middle one; none (0, no check) where no
        threshold beats it by more than `TIE`. Returns the folder, the threshold and the score
        of each threshold tried."""
        folder = str(self.fit_level_tagger(cfg, train, pieces, workdir, progress, log))
        shortest, fill = cfg.decode.min_distance, cfg.decode.fill_level
        tracked, other = [], []  # (beats, true beats, the level tagger's probabilities)
        for p, lab in pieces:
            probs_of = level_probs(folder, p.notes)
            tracked.append((self.decode(p, cfg)[0], lab["beats"], probs_of))
            other += [(b, lab["beats"], probs_of) for b in other_levels(lab["beats"])]

        def mean_f(cases: list, threshold: float) -> float:
            return float(
                np.mean(
                    [
                        beat_fscore(
                            ref, checked_level(b, q, threshold, SUBDIVISIONS, shortest, fill)
                        )
                        for b, ref, q in cases
                    ]
                )
            )

        score = {t: (mean_f(tracked, t) + mean_f(other, t)) / 2 for t in (0.0, *LEVEL_GRID)}
        threshold = middle_of_best(score)
        log(f"Level tagger: validation beat F by threshold {score} (using {threshold})")
        return {"folder": folder, "threshold": threshold, "val_score_by_threshold": score}

    def fit_level_tagger(
        self, cfg: Config, train: list, val: list, workdir: Path, progress=False, log=print
    ) -> Path:
        """Train the level tagger of `cfg.model` on the `train` pieces (`level_examples`,
        beats tracked as `cfg.decode` says), validated on the `val` pieces alike (each
        (posteriors, labels)), in ``workdir/level.new``; once trained it takes the place of
        ``workdir/level`` (a tagger there before is replaced: its threshold is chosen anew
        either way). Returns that folder."""

        def examples(pieces: list) -> list[dict]:
            out = []
            for p, lab in pieces:
                out += level_examples(p.notes, lab["beats"], self.decode(p, cfg)[0])
            return out

        train, val = examples(train), examples(val)
        log(f"Level tagger: {len(train)} training windows, {len(val)} validation windows")
        home = Path(workdir) / LEVEL_DIR
        recover_folder(home)
        candidate = home.with_name(home.name + CANDIDATE_SUFFIX)
        m = cfg.model
        train_tagger(
            train, val, candidate, level_size(m), m.level_steps, cfg.train.seed,
            progress=progress, log=log,
        )  # fmt: skip
        if (home / TAGGER_VARIABLES).is_file():
            replace_folder(candidate, home)
        else:
            shutil.rmtree(home, ignore_errors=True)
            candidate.rename(home)
        return home

    def fit_tagger(
        self,
        cfg: Config,
        train_pieces: list,
        val_pieces: list,
        workdir: Path,
        progress: bool = False,
        log=print,
        candidate: bool = False,
    ) -> Path:
        """Train the downbeat tagger of `cfg.model` in ``workdir/tagger`` (`candidate`: in
        ``workdir/tagger.new``, beside a tagger that it must beat to replace) on the training
        pieces' true and tracked beats (tracked as `cfg.decode` says) and validate it on the
        validation pieces' tracked beats (each piece (posteriors, labels)); returns its
        folder."""
        m = cfg.model

        def examples(pieces: list, with_true_beats: bool) -> list[dict]:
            out = []
            for p, lab in pieces:
                tracked, _ = self.decode(p, cfg)
                beat_lists = [lab["beats"], tracked] if with_true_beats else [tracked]
                out += piece_examples(p.notes, beat_lists, lab["downbeats"])
            return out

        train, val = examples(train_pieces, True), examples(val_pieces, False)
        log(f"Downbeat tagger: {len(train)} training windows, {len(val)} validation windows")
        folder = Path(workdir) / (TAGGER_DIR + CANDIDATE_SUFFIX if candidate else TAGGER_DIR)
        return train_tagger(
            train,
            val,
            folder,
            tagger_size(m),
            m.tagger_steps,
            cfg.train.seed,
            progress=progress,
            log=log,
        )

    def score(self, events, labels, cfg: Config) -> dict[str, float]:
        """Beat and downbeat F-measure (70 ms), and the beats' continuity scores: CMLt (the
        annotated metrical level) and AMLt (also at double or half tempo, or off-beat), which
        tell tempo-octave errors from others; `beat_at_level`: 1 where the beats were tracked
        at the annotated level (`metrical_level`), so its mean over a split is the share of
        pieces at the right tempo."""
        beats, _ = events
        with warnings.catch_warnings():  # no beats tracked: scored 0 (`beat_fscore`)
            warnings.filterwarnings("ignore", "Estimated beats are empty", UserWarning)
            _, cmlt, _, amlt = mir_eval.beat.continuity(labels["beats"], beats)
        at_level = float(metrical_level(beats, labels["beats"]) == "beat")
        return {
            **f_measures(events, labels),
            "beat_cmlt": cmlt,
            "beat_amlt": amlt,
            "beat_at_level": at_level,
        }

    def input_features(self, path: Path, cfg: Config) -> np.ndarray:
        from jaxmir.data.datasets.midi import read_midi_notes

        notes = octaves_into_range(read_midi_notes(Path(path), rhythm=True))
        return beat_features(notes, int(np.ceil(notes[:, 1].max() * FPS)) + 1 if len(notes) else 1)

    def is_own_output(self, path: Path) -> bool:
        """A MIDI file of the two drum tracks `beats_to_midi` writes, and nothing else."""
        from jaxmir.data.datasets.midi import MidiError, load_midi

        try:
            tracks = load_midi(Path(path)).instruments
        except MidiError:
            return False
        return [(t.name, t.is_drum) for t in tracks] == [("Beat", True), ("Down Beat", True)]

    def write(self, events, stem: str, outdir: Path, cfg: Config, *, x, posteriors) -> list[Path]:
        beats, downbeats = events
        midi_path = outdir / self.readable_outputs(stem)[0]  # never the input's own name
        beats_to_midi(beats, downbeats).write(str(midi_path))
        write_beat_csv(outdir / f"{stem}_beats.csv", beats)
        write_beat_csv(outdir / f"{stem}_downbeats.csv", downbeats)
        return [midi_path, outdir / f"{stem}_beats.csv", outdir / f"{stem}_downbeats.csv"]

    def check_training(self, cfg: Config) -> None:
        """Tempo bounds and a bar length are one piece's choice at decoding (`eval` /
        `transcribe --set`); a run would validate with them and calibrate without them."""
        if cfg.decode.min_bpm or cfg.decode.max_bpm:
            raise ConfigError(
                "decode.min_bpm, decode.max_bpm: bounds for decoding a piece whose tempo you "
                "know (jaxmir eval / transcribe --set), not for training"
            )
        if cfg.decode.bar_beats:
            raise ConfigError(
                "decode.bar_beats: the bar length of a piece whose meter you know (jaxmir eval "
                "/ transcribe --set), not for training (its validation pieces' bars differ)"
            )

    def input_decode_config(self, path: Path, cfg: Config) -> Config:
        """`cfg` as it decodes the MIDI file `path` where that reads as a score (`FileMeter`):
        with tempo bounds within `HINT_FACTOR` of its notated beat (`decode.notated_level`,
        where the user gave none, the method tracks (peak picking takes no bounds) and the
        beat keeps its length) and then with its bars' length in those beats
        (`decode.notated_bars`, where the user gave none, the downbeats are the tagger's and
        every bar of the file is as long)."""
        from jaxmir.tasks.beat.agreement import bounds_of_beat, file_meter

        d = cfg.decode
        level = d.notated_level and d.method != "peaks" and not (d.min_bpm or d.max_bpm)
        bars = d.notated_bars and d.downbeats == "tagger" and not d.bar_beats
        meter = file_meter(path) if level or bars else None
        if meter is None:
            return cfg
        found = {}
        beat_s = meter.score_beat_s
        lo, hi = bounds_of_beat(beat_s) if beat_s is not None else (0.0, 0.0)
        if level and lo < hi:  # not where the beat changes length or decoding cannot take it
            found.update(min_bpm=lo, max_bpm=hi)
        # bars counted in the file's beats: only where the beats are tracked at its level
        if found and bars and meter.bar_beats and meter.bar_beats <= MAX_BAR_BEATS:
            found.update(bar_beats=meter.bar_beats)
        if not found:
            return cfg
        return dataclasses.replace(cfg, decode=dataclasses.replace(d, **found))

    def transcription_note(
        self, path: Path, written: list[Path], cfg: Config | None = None
    ) -> str | None:
        """How the beats written for the MIDI file `path` agree with its own meter map
        (`jaxmir.tasks.beat.agreement`); None for a file with no map of its own. Its hint of
        tempo bounds names a tracker where `cfg` decodes by peak picking (which has none), and
        is left out where bounds were given or taken from the map (`input_decode_config`)."""
        from jaxmir.tasks.beat.agreement import meter_agreement

        csv = {p.name: p for p in written}
        stem = Path(path).stem
        beats = read_beat_csv(csv[f"{stem}_beats.csv"])
        agreement = meter_agreement(path, beats, read_beat_csv(csv[f"{stem}_downbeats.csv"]))
        if agreement is None:
            return None
        peaks = cfg is not None and cfg.decode.method == "peaks"
        given = cfg is not None and bool(cfg.decode.min_bpm or cfg.decode.max_bpm)
        used = self.input_decode_config(path, cfg).decode if cfg is not None else None
        level = used is not None and not given and bool(used.min_bpm)
        taken = [("its beat level", "decode.notated_level=false")] if level else []
        if used is not None and used.bar_beats != cfg.decode.bar_beats:
            taken.append((f"bars of {used.bar_beats} beats", "decode.notated_bars=false"))
        line = agreement.line(Path(path).name, peaks=peaks, hint=not (given or level))
        if taken:
            what, off = " and ".join(t[0] for t in taken), ", ".join(t[1] for t in taken)
            line += f"; {what} taken from that map ({off}: from the notes)"
        return line


def octaves_into_range(notes: np.ndarray) -> np.ndarray:
    """`notes` (N, >=3: onset, offset, pitch, ...) with each pitch outside the features' A0-C8
    moved by whole octaves into it. `beat_features` drops such notes, which training's scores
    never hold; a user's file of them (a bass line written an octave low, a sequencer's
    drum notes) keeps its rhythm instead of giving no beats."""
    notes = np.array(notes, np.float64)
    low, high = LOWEST_PITCH, LOWEST_PITCH + N_PITCHES - 1
    pitch = np.rint(notes[:, 2])
    pitch = np.where(pitch < low, pitch + 12 * np.ceil((low - pitch) / 12), pitch)
    notes[:, 2] = np.where(pitch > high, pitch - 12 * np.ceil((pitch - high) / 12), pitch)
    return notes


def f_measures(events, labels) -> dict[str, float]:
    """Beat and downbeat F-measure of (beats, downbeats) against a piece's labels."""
    beats, downbeats = events
    return {
        "beat_f_measure": beat_fscore(labels["beats"], beats),
        "downbeat_f_measure": beat_fscore(labels["downbeats"], downbeats),
    }


def beat_fscore(reference: np.ndarray, estimated: np.ndarray) -> float:
    """`mir_eval.beat.f_measure` (70 ms), without its warning for no estimated beats (an
    early or tiny model's: F 0, printed once per piece through a training run's progress)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Estimated beats are empty", UserWarning)
        return float(mir_eval.beat.f_measure(reference, estimated))


#: `metrical_level`'s names, each with the ratio of the tracked beat period to the true one:
#: faster levels, slower ones, and the dotted ("3/2": every three half-beats) and triplet ones.
LEVELS = {
    "beat": 1.0,
    "1/2": 0.5,
    "1/3": 1 / 3,
    "1/4": 0.25,
    "2": 2.0,
    "3": 3.0,
    "3/2": 1.5,
    "2/3": 2 / 3,
}
LEVEL_TOLERANCE = 0.1  # relative


def period_ratio(estimated: np.ndarray, reference: np.ndarray) -> float | None:
    """The median interval of the `estimated` beats over that of the `reference` beats (None
    for fewer than two beats on either side)."""
    if len(estimated) < 2 or len(reference) < 2:
        return None
    return median_interval(estimated) / median_interval(reference)


def stretched_tempo(beats: np.ndarray, d: BeatDecodeConfig) -> float:
    """How many times slower to play a piece whose beats were tracked as `beats` so that the
    frame model hears a tempo it trained on: `d.tempo_stretch` above `d.tempo_band`, its
    inverse below, else (or with fewer than three beats, no band or a stretch of 1) 1.

    Why: the frame model's activation at tempi outside its training (40-220 bpm for the
    shipped model) loses the beat's phase above it and rises on sub-beats below it. A piece's
    notes can be played at any tempo, so the model is asked at one it knows. On 96 fresh
    pieces at 220-260 and 28-40 bpm, beat F / downbeat F 0.815 / 0.778 -> 0.838 / 0.809, and
    0.827 / 0.785 -> 0.844 / 0.812 on the next 96 (docs/beat.md)."""
    check_tempo_band(d)
    lo, hi = d.tempo_band
    if hi <= 0 or d.tempo_stretch == 1.0 or len(beats) < 3:
        return 1.0
    bpm = 60.0 / median_interval(beats)
    if bpm > hi:
        return d.tempo_stretch
    if bpm < lo:
        return 1.0 / d.tempo_stretch
    return 1.0


def check_tempo_band(d: BeatDecodeConfig) -> None:
    """ConfigError unless `d.tempo_band` is (0, 0) or 0 <= low < high, and the stretch >= 1."""
    if len(d.tempo_band) != 2:
        raise ConfigError(f"decode.tempo_band: [low, high] in bpm, got {list(d.tempo_band)}")
    lo, hi = d.tempo_band
    if not (lo == hi == 0 or 0 <= lo < hi) or not math.isfinite(hi):
        raise ConfigError(f"decode.tempo_band: low < high in bpm, or 0,0 for none; got {lo}, {hi}")
    if not (math.isfinite(d.tempo_stretch) and d.tempo_stretch >= 1.0):
        raise ConfigError(f"decode.tempo_stretch: a factor >= 1 (1: none), got {d.tempo_stretch}")


def median_interval(times: np.ndarray) -> float | None:
    """The median interval (s) between successive `times`; None for fewer than two."""
    return float(np.median(np.diff(times))) if len(times) >= 2 else None


def level_of(ratio: float | None) -> str:
    """The name in `LEVELS` whose ratio a `period_ratio` is within 10 % of ("1/2": every half
    beat, a tempo octave too fast; "2": every other beat), "other" (no such ratio: the tracked
    tempo is off or slips) or "none" (no ratio: fewer than two beats on either side)."""
    if ratio is None:
        return "none"
    for name, target in LEVELS.items():
        if abs(ratio / target - 1.0) <= LEVEL_TOLERANCE:
            return name
    return "other"


def metrical_level(estimated: np.ndarray, reference: np.ndarray) -> str:
    """Which level of the `reference` beats a tracker followed (`level_of` their
    `period_ratio`)."""
    return level_of(period_ratio(estimated, reference))


def best_tracking(beat_f: dict[tuple[str, float, float], float]) -> tuple[str, float, float]:
    """The (method, beat threshold, minimum distance) of highest mean validation beat F in
    `beat_f`; among those within `TIE` of it, the shortest minimum distance (then the higher
    score, then the earlier in `beat_f`'s order)."""
    top = max(beat_f.values())
    ties = [v for v, f in beat_f.items() if f >= top - TIE]
    return min(ties, key=lambda v: (v[2], -beat_f[v]))


def other_levels(beats: np.ndarray) -> list[np.ndarray]:
    """What a tracker at another metrical level gives for the true `beats`: each interval cut
    into k steps (`subdivided`) and every k-th beat, for each k of `SUBDIVISIONS`; the level
    check's calibration scores both directions on them (`BeatTask.calibrate_level`)."""
    beats = np.asarray(beats, np.float64)
    return [b for k in SUBDIVISIONS for b in (subdivided(beats, k)[0], beats[::k])]


def level_probs(folder: str, notes: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """`probs_of(times)` for `checked_level`: the probability that the level tagger in
    `folder` gives each of `times` of a piece with these `notes`, computed once per sequence
    (calibration asks again for each threshold)."""
    memo: dict[bytes, np.ndarray] = {}

    def probs_of(times: np.ndarray) -> np.ndarray:
        key = np.asarray(times, np.float64).tobytes()
        if key not in memo:
            memo[key] = tagger_probs(folder, notes, times)
        return memo[key]

    return probs_of


def middle_of_best(score: dict[float, float]) -> float:
    """The level threshold to use from the validation score of each (`calibrate_level`): 0 (no
    check) unless another scores more than `TIE` above it; else the middle one of those within
    `TIE` of the best (the lower of two middles)."""
    top = max(score.values())
    if top <= score[0.0] + TIE:
        return 0.0
    ties = sorted(t for t, f in score.items() if f >= top - TIE)
    return ties[(len(ties) - 1) // 2]


def tagger_size(m: BeatModelConfig) -> TaggerSize:
    """The downbeat tagger that model config `m` asks for."""
    return TaggerSize(m.tagger_hidden, m.tagger_layers, m.tagger_members)


def bounded_beats(
    track: Callable[..., np.ndarray],
    bounds: tuple[float, float],
    d: BeatDecodeConfig,
    posteriors,
) -> np.ndarray:
    """Beats within tempo `bounds` (`decode.min_bpm`, `max_bpm`). `track(bpm_range=...)` runs
    the tracker. Where the bounds hold a slower level than the tracker's own (every k-th of its
    beats, k = 2, 3 or 4, not one moved to a bound) and the model decodes with a level tagger
    (`checks_level`), the tracker's own beats are kept in the phase the tagger gives the highest
    mean probability of being beats (`strongest_phase`): it reads the notes, where a tracker at
    the slower period has only the frame model's activation, which rises on the sub-beats too.
    Otherwise (and for fewer than `LEVEL_MIN_BEATS` beats a phase) the tracker runs at the
    bounded period.

    Why: told each piece's tempo within 25 %, on 48 music21 works exported to MIDI
    (`benchmarks.beat_works --told-tempo 1.25`), the tracker at the bounded period found the
    notated level in 47 and beat F 0.79 (the one-part folk tunes 0.64: the off-beat half
    notes); the tagger's phase 0.88 (folk tunes 0.83), docs/beat.md."""
    if checks_level(d):
        own = track()
        if len(own) >= 2:
            period = median_interval(own)
            target = period_in_range(period, bounds)
            k = round(target / period)
            whole = k >= 2 and math.isclose(target, k * period)  # a level, not a bound
            if whole and len(own) >= LEVEL_MIN_BEATS * k:
                probs_of = level_probs(d.level_tagger, _notes(posteriors, "level_tagger"))
                return own[strongest_phase(probs_of(own), k) :: k]
    return track(bpm_range=bounds)


#: Tempo bounds a user may set (bpm). The trackers' state space grows with the slowest
#: period (bounds of 0.001-0.002 bpm ran for minutes in gigabytes), and above the fastest the
#: beats lie a frame or two apart.
BOUNDS_RANGE = (10.0, 1000.0)


def check_bounds_range(d: BeatDecodeConfig) -> None:
    """ConfigError for a tempo bound (`decode.min_bpm`, `decode.max_bpm`; 0: none) outside
    `BOUNDS_RANGE`; other faults are `tempo_bounds`'."""
    lo, hi = BOUNDS_RANGE
    for key in ("min_bpm", "max_bpm"):
        v = getattr(d, key)
        if math.isfinite(v) and v > 0 and not lo <= v <= hi:
            raise ConfigError(f"decode.{key}: {lo:g}-{hi:g} beats per minute (0: none), got {v:g}")


def tempo_bounds(d: BeatDecodeConfig) -> tuple[float, float]:
    """(low, high) bpm of `d.min_bpm` and `d.max_bpm` (`NO_BOUNDS` where neither is set);
    ConfigError for a bound below 0 or not finite, bounds the wrong way round, or bounds on a
    method that does not track ("peaks")."""
    if not all(math.isfinite(v) and v >= 0 for v in (d.min_bpm, d.max_bpm)):
        got = f"{d.min_bpm:g}, {d.max_bpm:g}"
        raise ConfigError(f"decode.min_bpm, decode.max_bpm: finite and >= 0 (0: none), got {got}")
    if d.min_bpm == 0 and d.max_bpm == 0:
        return NO_BOUNDS
    if d.max_bpm and d.max_bpm < d.min_bpm:
        raise ConfigError(f"decode.max_bpm ({d.max_bpm:g}) is below decode.min_bpm ({d.min_bpm:g})")
    if d.method == "peaks":
        raise ConfigError(  # peak picking follows no tempo
            "decode.min_bpm, decode.max_bpm: bound a tracker's tempo (decode.method=track or "
            "dbn), not peak picking"
        )
    return (d.min_bpm, d.max_bpm or NO_BOUNDS[1])


def checks_level(d: BeatDecodeConfig) -> bool:
    """Whether decoding `d` checks tracked beats with a level tagger (a folder and a threshold
    above 0; `decode` does so for the tracking methods)."""
    return bool(d.level_tagger) and d.level_threshold > 0


def level_size(m: BeatModelConfig) -> TaggerSize:
    """The level tagger that model config `m` asks for."""
    return TaggerSize(m.level_hidden, m.level_layers, m.level_members)


def _notes(posteriors, what: str) -> np.ndarray:
    if not isinstance(posteriors, BeatPosteriors):
        raise ValueError(f"decode.{what} needs BeatPosteriors (the notes)")
    return posteriors.notes


def weighted_bce(logits, targets, mask, downbeat_weight: float):
    """omnizart's weighted BCE (downbeats x `downbeat_weight`), on logits, padding masked."""
    per = optax.sigmoid_binary_cross_entropy(logits, targets)
    w = jnp.asarray([1.0, downbeat_weight], per.dtype) * mask[..., None]
    loss = jnp.sum(per * w) / jnp.maximum(jnp.sum(mask) * 2.0, 1.0)
    return loss, {"accuracy": binary_accuracy(logits, targets, mask)}


def work_counts(d: BeatDataConfig) -> dict[str, int]:
    """How many music21 works (beside the chorales) each split renders: `corpus_works` for
    training, an eighth as many (at least one) for validation and for test; none without."""
    if not d.corpus_works:
        return {}
    n_eval = max(1, d.corpus_works // 8)
    return {"train": d.corpus_works, "val": n_eval, "test": n_eval}


def texture_pieces(d: BeatDataConfig):
    """(piece, split) of the procedural textures: `corpus_textures` in the training meters and
    tempi (split by a hash of the id, as the chorales), then `corpus_unseen` in meters and
    tempi training never sees (split `test_unseen`)."""
    from jaxmir.data.synth.chorales import split_of

    jobs = [(f"texture/{i:04d}", None) for i in range(d.corpus_textures)]
    jobs += [(f"unseen/{i:04d}", "test_unseen") for i in range(d.corpus_unseen)]
    for cid, split in jobs:
        split = split or split_of(cid)
        changes = d.corpus_meter_changes if split == "train" else 0.0
        piece, _ = texture_piece_of(cid, d, unseen=split == "test_unseen", meter_change=changes)
        yield piece, split


def texture_piece_of(
    cid: str, d: BeatDataConfig, unseen: bool, meter_change: float = 0.0
) -> tuple[SymbolicPiece, dict]:
    """(piece, its meta: meter, tempo, ...) of the procedural texture with id `cid`, drawn from
    `d.corpus_seed` and the id, in training's meters and tempi (`d.corpus_bpm`, changing meter
    at phrases with probability `meter_change`) or, `unseen`, in those training never sees. Ids
    the corpus never uses give pieces no split holds (`benchmarks.beat_unseen`)."""
    from jaxmir.data.synth import textures as T

    ss = np.random.SeedSequence([d.corpus_seed, zlib.crc32(cid.encode()), 0xBEA7])
    rng = np.random.default_rng(ss)
    if unseen:
        p = T.texture_piece(rng, 40.0, T.UNSEEN_METERS, T.UNSEEN_TEMPI)
    else:
        bpm = (tuple(d.corpus_bpm),)
        p = T.texture_piece(rng, 40.0, T.METERS, bpm, meter_change=meter_change)
    name = cid.replace("/", "__")
    return SymbolicPiece(name, p.notes[:, :4].copy(), p.beats, p.downbeats), p.meta


def write_piece(cache: FeatureCache, piece: SymbolicPiece, split: str) -> None:
    x, labels = TASK.piece_features(piece)
    cache.write_piece(piece.name, split, x, labels)


TASK = BeatTask()
