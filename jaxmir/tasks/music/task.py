"""The music task: piano and multi-instrument note transcription (omnizart's `music`).

Input: CFP features at 44.1 kHz / 20 ms, 352 log-frequency bins, channels [Spec, Ceps] by
default (omnizart's), or with a short-window spectrum beside them (`FEATURE_CHANNELS`).
Output: per-frame, per-bin logits for the label mode's channels (note-stream: background
+ 11 instruments x (duration, onset)). Loss: smooth BCE (default), focal, or label-smoothed BCE.
Decoding: omnizart's note assembly or a simpler onset/frame decoder. Scores: mir_eval note F1
(onset only and with offsets), frame F1, per instrument for the stream modes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmir.config import Config, ConfigError, OptimConfig
from jaxmir.data.features.cfp import (
    CHANNELS,
    MUSIC,
    MUSIC_SHORT,
    cfp_numpy,
    gain_exponents,
    n_frames,
)
from jaxmir.losses import apply_model, binary_accuracy
from jaxmir.tasks.base import (
    CorpusConfig,
    PieceTask,
    check_timesteps,
    mean_scores,
    nothing_found_note,
    schedule,
    tiny_schedule,
    warmup_cosine,
)
from jaxmir.tasks.music.decode import (
    OFFSET_TIMES,
    ONSET_TIMES,
    decode_notes,
    key_posteriors,
    notes_to_midi,
    one_note_per_key,
    write_notes_csv,
)
from jaxmir.tasks.music.labels import (
    BINS_PER_KEY,
    FPS,
    LABEL_MODES,
    N_BINS,
    bce_label_smoothing,
    check_mode,
    focal_loss,
    music_labels,
    notes_for_mode,
    release_frames,
    repeat_onsets,
    smooth_bce,
    tail_frames,
    weighted_bce,
)
from jaxmir.tasks.music.metrics import note_f1_scores, note_metrics
from jaxmir.tasks.music.model import SemanticSegmentationAttn, build_model


@dataclasses.dataclass
class MusicModelConfig:
    name: str = "attn"  # attn (semantic_segmentation_attn) | aspp (semantic_segmentation)
    timesteps: int = 256  # frames per window (20 ms each)
    channels: tuple[str, ...] = ("Spec", "Ceps")  # Z, Spec, GCoS, Ceps (CFP), SpecShort
    base: int = 32  # channel width of the first level (paper: 32 attn, 128 aspp)
    dropout: float = 0.4
    conv_impl: str = "auto"  # native | matmul (matmul weight gradient) | auto (matmul on CPU only)
    bn_momentum: float = 0.99  # BatchNorm running-stat momentum (Keras' 0.99 lags in short runs)


@dataclasses.dataclass
class MusicDataConfig(CorpusConfig):
    label_mode: str = "note-stream"  # note | note-stream | pop-note-stream | frame | ...
    loss: str = "smooth"  # smooth | focal | bce | weighted (note channels' positives x pos_weight)
    pos_weight: float = 20.0  # weighted loss only
    # weighted loss, note / note-offset modes: the onsets of notes that re-strike a sounding key
    # (`repeat_onsets`) weigh this many times more (1: as every onset)
    repeat_weight: float = 1.0
    # weighted loss, note / note-offset modes: every onset's positive term weighs this many times
    # more (on top of `repeat_weight`); 1 weighs onsets as the other note channels
    onset_weight: float = 1.0
    # weighted loss, note-offset mode: the offset channel's positives weigh this many times more
    offset_weight: float = 1.0
    # weighted loss, note / note-offset modes: the frame channel's negatives on the frames just
    # after a note ends (`release_frames`) weigh this many times more (1: as every negative)
    release_weight: float = 1.0
    # weighted loss, note / note-offset modes: the frame channel's positives on a note's frames
    # from 0.5 s after its onset (`tail_frames`) weigh this many times more (1: as every frame)
    tail_weight: float = 1.0
    # note-offset mode: 0 marks a note's last frame and the next in the offset channel; above 0,
    # a soft triangle of this half-width (frames) peaking at the exact end (`offset_triangle`),
    # to decode with decode.offset_time "peak"
    offset_spread: float = 0.0
    hop: int | None = None  # frames between training windows (default: timesteps)
    jitter: bool = True
    # each training window read as if its audio had a random gain, uniform in +-gain_db dB (put
    # on the cached features exactly: `feature_gain_exponents`); 0: as rendered
    gain_db: float = 0.0


@dataclasses.dataclass
class MusicDecodeConfig:
    # simple | omnizart (omnizart's: thresholds on each piece's z-normalised posteriors, so it
    # finds notes in the noise of silence or a near-empty piece; simple's are absolute)
    method: str = "simple"
    onset_threshold: float = 0.5  # simple decoder
    frame_threshold: float = 0.5  # simple decoder
    offset_threshold: float = 0.5  # simple decoder, note-offset label mode
    min_gap: float = 0.1  # simple decoder: seconds between two onsets of one key, at least
    onset_delay: float = 0.0  # simple decoder: seconds added to every onset (calibrated)
    # simple decoder: a note starts at its onset run's first frame over the threshold ("first")
    # or at the run's maximum ("peak"); calibrated with the delay
    onset_time: str = "first"
    # simple decoder, note-offset mode: a note ends after the first frame whose offset
    # probability is over the threshold ("first") or at that run's maximum ("peak", for
    # data.offset_spread > 0); calibrated after the thresholds (the configured rule wins ties)
    offset_time: str = "first"
    # simple decoder, note-offset mode: an offset frame ends a note only where the frame
    # probability of the next 3 frames averages below this (None: every offset frame ends one);
    # calibrated with the end rule
    offset_gate: float | None = None
    onset_th: float | None = None  # omnizart decoder (None: 4 piano modes, 6 stream modes)
    # At the end of training, choose the simple decoder's thresholds on the validation pieces
    # (`calibrate`); they are stored in the workdir's decode.json and used by eval/transcribe.
    calibrate: bool = True


#: The music features' channels: the CFP's four in omnizart's order, then the 46-ms spectrum
#: (`MUSIC_SHORT`), which lets a model hear a key struck again while it still sounds.
FEATURE_CHANNELS: dict[str, int] = {**CHANNELS, "SpecShort": 4}

#: The demo and quality presets' input: omnizart's two CFP channels and the 46-ms spectrum. On
#: the quality recipe it alone raised test note F1 from 0.62 to 0.66 (piano), 0.52 to 0.54
#: (mixed) and 0.61 to 0.62 (held-out voices) (docs/music.md).
WITH_SHORT = ("Spec", "Ceps", "SpecShort")

#: The largest `decode.onset_delay` accepted, either way (s): calibration's lie within 0.05.
MAX_ONSET_DELAY = 1.0

CALIBRATED = "note_f1_calibrated"  # a validation score: note F1 once calibrated (`evaluate`)

# The thresholds `calibrate` tries (coarse: each decode of every validation piece is scored).
# Onsets up to 0.9: with onsets weighted x3 (`data.onset_weight`) a seed-4 model chose 0.8,
# the old grid's top (with 0.9 on the grid it still chose 0.8).
ONSET_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# Frame thresholds reach 0.95: with positives weighted x5 an even chance reads 0.83, and the
# shipped model's test_piano note F1 with offsets was 0.40 at 0.7 and 0.42 at 0.95.
FRAME_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
OFFSET_GRID = (0.3, 0.5, 0.7, 0.9)
# Where notes end (`decode.offset_time`, `decode.offset_gate`) is chosen with the offset
# threshold, which may go lower once gated: on the shipped ensemble's validation pieces note
# F1 with offsets was 0.15 at 0.2 ungated, 0.536 at 0.2 gated at 1.2 (0.516 at 0.3 ungated).
END_OFFSET_GRID = (0.2, 0.25, *OFFSET_GRID)
GATE_GRID = (0.8, 1.0, 1.1, 1.2, 1.3, 1.4)  # frame = duration + onset probability: up to 2
DELAY_GRID = (0.0, 0.005, 0.01, 0.015, 0.02)  # seconds: up to one frame
# With onsets at the run's peak (`run_peak`), which comes about 30 ms after the onset.
PEAK_DELAY_GRID = (-0.05, -0.04, -0.035, -0.03, -0.025, -0.02, -0.01, 0.0)
TIMINGS = [("first", t) for t in DELAY_GRID] + [("peak", t) for t in PEAK_DELAY_GRID]


def varied_decode() -> MusicDecodeConfig:
    """The demo and quality presets validate at onset 0.2 (x5 positives leave onset posteriors
    lower than x20 did; at 0.5 the first epochs found no notes at all); calibration chooses the
    final thresholds."""
    return MusicDecodeConfig(onset_threshold=0.2)


def varied_data(pieces: int, works: int, textures: int, random: int, **kw) -> MusicDataConfig:
    """The data of the demo and quality presets: the varied corpus (chorales, other works,
    piano textures and random notes of 30 s, piano and mixed, soundfont and synthesis voices,
    FM held out), note labels with an offset channel, BCE with positives weighted x5 (x20
    pushed every uncertain frame over 0.5: precision 0.3) and the onsets of re-struck keys x4
    more (at x1 the quality model found 13 % of them; at x4, 38 %)."""
    return MusicDataConfig(
        label_mode="note-offset",
        loss="weighted",
        pos_weight=5.0,
        repeat_weight=4.0,
        corpus_pieces=pieces,
        corpus_works=works,
        corpus_textures=textures,
        corpus_random=random,
        corpus_piece_seconds=30.0,
        corpus_instruments="both",
        corpus_voices=0.5,
        corpus_holdout="fm",
        **kw,
    )


class MusicTask(PieceTask):
    output_suffixes = (".mid", "_notes.csv", "_pianoroll.png")
    name = "music"
    # Each window's centre frames are kept (hop 3/4 of a window, `inference_hop`): the edges
    # see little context. Against omnizart's averaging of half-overlapping windows this is
    # 1.5x fewer windows and about +0.03 note F1 on the varied corpus's pieces.
    stitch = "centre"
    model_config = MusicModelConfig
    data_config = MusicDataConfig
    decode_config = MusicDecodeConfig
    datasets = ("synth", "maestro", "maps", "musicnet")  # the readers that give notes

    def corpus_params(self, cfg: Config) -> dict:
        if cfg.data.corpus_programs != "omnizart" and "stream" in _mode(cfg):
            raise ConfigError(
                f"data.corpus_programs: {cfg.data.corpus_programs!r} plays programs outside "
                f"omnizart's instrument classes, which label mode {cfg.data.label_mode!r} names"
            )
        return super().corpus_params(cfg)

    def presets(self) -> dict[str, Config]:
        adam = OptimConfig(
            learning_rate=1e-3, lr_schedule="step", decay_rate=0.25, decay_every=3, min_lr=5e-8
        )
        # omnizart's music.yaml: attn U-Net, [Spec, Ceps], note-stream, 256 frames, batch 8,
        # 20 x 3000 steps (val 500), LR x0.25 every 3 epochs (floor 5e-8), early stop 6.
        paper = schedule(20, 3000, 500, 8, early_stop_patience=6, monitor="val_note_f1")
        paper_data = MusicDataConfig(corpus_pieces=None, corpus_instruments="mixed")
        # Same architecture at 1/4 width (base 8) on 128-frame windows, note labels with an
        # offset channel; weighted BCE and BatchNorm momentum 0.9 so it learns notes within
        # minutes, on the varied corpus (`varied_data`).
        # The best checkpoint is the one of lowest validation loss (the default monitor). The
        # validation note F1 at the fixed onset 0.2 jumped by 0.1 between epochs while the loss
        # fell smoothly: on one machine it kept step 450 of 900 (test note F1 0.40 once
        # calibrated), where the loss and the calibrated note F1 (`evaluate`) both rank step
        # 900 first (0.48).
        demo = schedule(6, 150, 10, 4, 8, log_every=10, early_stop_patience=3)
        demo_model = MusicModelConfig(
            timesteps=128, base=8, dropout=0.1, bn_momentum=0.9, channels=WITH_SHORT
        )
        demo_data = varied_data(20, 8, 12, 8)
        # The recipe of the shipped model: a larger varied corpus, more and larger batches,
        # warm-up + cosine decay and a parameter EMA; about 50 minutes on a 2-core CPU once the
        # corpus is rendered. The width stays 8: inference on a 2-core CPU must stay under
        # 2.5 s per minute of audio.
        # Against the first shipped run (7 epochs, positives x20, EMA 0.998, BatchNorm
        # momentum 0.9): positives x5 (x20 pushed every uncertain frame over 0.5), an EMA
        # that follows within ~200 steps, running BatchNorm statistics over ~100 batches
        # (over ~10 they follow the last few batches; the first run's validation note F1
        # fell from 0.31 to 0.22 in its last epoch, at a small LR), and the whole cosine.
        # 16 epochs (same cosine, stretched) did not do better: best validation checkpoint
        # step 2400, test_piano note F1 0.56 (0.57 at its last step) against 0.62 for this one.
        quality = schedule(10, 300, 20, 8, 8, log_every=25, early_stop_patience=None)
        # The best checkpoint is the one that decodes best once calibrated (`evaluate`); the
        # split of voices training never hears is scored each epoch for its curve. Seed 2:
        # of seeds 0-4 it scored highest on validation (0.728; the others 0.712-0.726).
        quality = dataclasses.replace(
            quality, monitor=f"val_{CALIBRATED}", watch_splits=("test_heldout",), seed=2
        )
        quality_model = MusicModelConfig(
            timesteps=128, base=8, dropout=0.1, bn_momentum=0.99, channels=WITH_SHORT
        )
        # Every onset x3 more (`data.onset_weight`): over seeds 0-4 the best calibrated
        # validation note F1 went from 0.47-0.71 (mean 0.60) to 0.71-0.73 (mean 0.72).
        quality_data = varied_data(100, 40, 60, 40, onset_weight=3.0)
        cosine = warmup_cosine(quality, warmup_steps=200, ema_decay=0.995)
        tiny_model = MusicModelConfig(timesteps=32, base=8, dropout=0.0)
        tiny_data = MusicDataConfig(label_mode="note", corpus_pieces=4, corpus_max_seconds=8.0)
        tiny = tiny_schedule()  # batches of 8: one example per simulated test device
        return {
            "paper": self.config("paper", MusicModelConfig(), paper_data, paper, adam),
            "demo": dataclasses.replace(
                self.config("demo", demo_model, demo_data, demo, adam), decode=varied_decode()
            ),
            "quality": dataclasses.replace(
                self.config("quality", quality_model, quality_data, quality, cosine),
                decode=varied_decode(),
            ),
            "tiny": self.config("tiny", tiny_model, tiny_data, tiny, adam),
        }

    # -- model ----------------------------------------------------------------------------------
    def model(self, cfg: Config):
        m = cfg.model
        _check_channels(m.channels)
        check_timesteps(m.timesteps)
        heads = SemanticSegmentationAttn.n_heads
        if m.name == "attn" and (m.base <= 0 or m.base % heads):
            raise ConfigError(
                f"model.base: the attn model's width must be a positive multiple of its "
                f"{heads} attention heads (got {m.base}; e.g. 8, 16, 32)"
            )
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
        _repeat_weighted(cfg)  # checked before the first step, not at the first batch
        _release_weighted(cfg)
        _tail_weighted(cfg)
        _offset_spread(cfg)
        onset_scale = cfg.data.onset_weight if _extra_weight(cfg, "onset_weight") else None
        offset_scale = cfg.data.offset_weight if _offset_weighted(cfg) else None

        def loss(apply_fn, variables, batch, rng, train):
            logits, new_state = apply_model(apply_fn, variables, batch["x"], rng, train)
            mask = batch["mask"][:, :, None, None]
            weights = {"onset_weight": batch["w"]} if "w" in batch else {}
            if onset_scale is not None:
                weights["onset_weight"] = weights.get("onset_weight", 1.0) * onset_scale
            if "w_release" in batch:
                weights["release_weight"] = batch["w_release"]
            if "w_tail" in batch:
                weights["tail_weight"] = batch["w_tail"]
            if offset_scale is not None:
                weights["offset_weight"] = offset_scale
            value = fn(logits, batch["y"], mask=mask, **weights)
            accuracy = binary_accuracy(logits, batch["y"], batch["mask"])
            return value, ({"accuracy": accuracy}, new_state)

        return loss

    # -- data -----------------------------------------------------------------------------------
    def input_view(self, cfg: Config, x: np.ndarray) -> np.ndarray:
        return x[..., [FEATURE_CHANNELS[c] for c in cfg.model.channels]]

    def train_augment(self, cfg: Config):
        """A random gain on each training window (`data.gain_db`), or None."""
        gain = cfg.data.gain_db
        if not gain >= 0:
            raise ConfigError(f"data.gain_db: a range in dB, 0 or more (got {gain})")
        if gain == 0:
            return None
        exponents = feature_gain_exponents(tuple(cfg.model.channels))
        return functools.partial(random_gain, gain_db=gain, exponents=exponents)

    def window_labels(self, cfg, labels, start, mask):
        """Labels built per window from the piece's notes: no (T, 352, 23) array is stored."""
        notes = labels["notes"].copy()
        notes[:, :2] -= start / FPS
        y = music_labels(notes, len(mask), _mode(cfg), _offset_spread(cfg))
        out = {"y": y * mask[:, None, None]}
        if _repeat_weighted(cfg):
            extra = (cfg.data.repeat_weight - 1.0) * repeat_onsets(notes, len(mask), _mode(cfg))
            out["w"] = np.repeat(1.0 + extra, BINS_PER_KEY, axis=1)
        if _release_weighted(cfg):
            extra = (cfg.data.release_weight - 1.0) * release_frames(notes, len(mask), _mode(cfg))
            out["w_release"] = np.repeat(1.0 + extra, BINS_PER_KEY, axis=1)
        if _tail_weighted(cfg):
            extra = (cfg.data.tail_weight - 1.0) * tail_frames(notes, len(mask), _mode(cfg))
            out["w_tail"] = np.repeat(1.0 + extra, BINS_PER_KEY, axis=1)
        return out

    def piece_features(self, piece) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(features (T, 352, 5) float32, {"notes"}) of one audio piece (`music_features`)."""
        return music_features(piece)

    def cache_params(self, dataset: str) -> dict:
        params = {"cfp": dataclasses.asdict(MUSIC), "short": dataclasses.asdict(MUSIC_SHORT)}
        key = {"feature": "cfp+short", "params": params, "version": 2}
        if dataset == "maestro":  # its MIDI now keeps notes of no length (one tick long)
            key["midi_reader"] = 2
        return key

    # -- inference ------------------------------------------------------------------------------
    def inference_hop(self, cfg: Config) -> int:
        return self.timesteps(cfg) * 3 // 4

    def input_features(self, path: Path, cfg: Config) -> np.ndarray:
        """The features of an input file, as in training but read at one level
        (`AudioPiece.input`), with only the layers the model reads computed
        (`music_feature_stack`): GCoS, the CFP's costliest layer, is skipped unless the model
        reads it or Z."""
        from jaxmir.data.records import AudioPiece

        audio = AudioPiece.input(path).samples(MUSIC.fs)
        workers = min(os.cpu_count() or 1, 8)  # threads over frame chunks (FFTs free the GIL)
        return music_feature_stack(audio, cfg.model.channels, workers=workers)

    def check_decode(self, cfg: Config) -> None:
        """ConfigError naming a `decode.*` value the decoders cannot use (an unknown word, a
        threshold outside [0, 1], a negative gap, a delay beyond a second, a gate that is not
        a positive number), before any model runs."""
        d = cfg.decode
        for key, words in (
            ("method", ("simple", "omnizart")),
            ("onset_time", ONSET_TIMES),
            ("offset_time", OFFSET_TIMES),
        ):
            if getattr(d, key) not in words:
                got = getattr(d, key)
                raise ConfigError(f"decode.{key}: unknown {got!r} ({', '.join(words)})")
        for key in ("onset_threshold", "frame_threshold", "offset_threshold"):
            if not 0.0 <= getattr(d, key) <= 1.0:
                raise ConfigError(f"decode.{key}: a probability in [0, 1], got {getattr(d, key)}")
        if not 0.0 <= d.min_gap < float("inf"):
            raise ConfigError(f"decode.min_gap: seconds, 0 or more, got {d.min_gap}")
        if not -MAX_ONSET_DELAY <= d.onset_delay <= MAX_ONSET_DELAY:
            raise ConfigError(
                f"decode.onset_delay: seconds within +-{MAX_ONSET_DELAY:g}, got {d.onset_delay}"
            )
        if d.offset_gate is not None and not 0.0 < d.offset_gate < float("inf"):
            raise ConfigError(
                f"decode.offset_gate: a positive number (or null: none), got {d.offset_gate}"
            )
        if d.onset_th is not None and not math.isfinite(d.onset_th):  # z-scores: any sign
            raise ConfigError(f"decode.onset_th: a number (or null: default), got {d.onset_th}")

    def decode(self, probs: np.ndarray, cfg: Config) -> np.ndarray:
        self.check_decode(cfg)
        d = cfg.decode
        if d.method == "simple":
            return decode_notes(
                probs,
                _mode(cfg),
                method="simple",
                onset_threshold=d.onset_threshold,
                frame_threshold=d.frame_threshold,
                offset_threshold=d.offset_threshold,
                min_gap=int(round(d.min_gap * FPS)),
                onset_delay=d.onset_delay,
                onset_time=d.onset_time,
                offset_time=d.offset_time,
                offset_gate=d.offset_gate,
            )
        return decode_notes(probs, _mode(cfg), th=d.onset_th, method="omnizart")

    def calibrates(self, cfg: Config) -> bool:
        return cfg.decode.method == "simple" and cfg.decode.calibrate

    def calibrate(
        self, predict, cfg: Config, cache, progress: bool = False, workdir: Path | None = None
    ) -> dict | None:
        """The simple decoder's thresholds that maximise note F1 on the validation pieces
        (`calibrate_pieces`); `workdir` (the run's) is not needed. Returns the chosen `decode`
        values plus the validation scores before and after, or None when the config does not
        ask for it."""
        if not self.calibrates(cfg) or not cache.names("val"):
            return None
        pieces = self.split_posteriors(
            predict, cfg, cache, "val", desc="Calibrate decoding", progress=progress
        )
        return calibrate_pieces([(key_posteriors(p), labels) for p, labels in pieces], cfg)

    def evaluate(
        self, predict, cfg: Config, cache, split: str, progress: bool = False
    ) -> dict[str, float]:
        """The mean scores of `split`; on the validation split of a run that monitors
        ``val_note_f1_calibrated`` (the quality preset), also the note F1 with and without
        offsets after calibrating on those pieces: a checkpoint is then chosen by how well it
        decodes once calibrated, as it will be used (at a fixed onset threshold the choice is
        poor: a 16-epoch run's best-ranked checkpoint scored 0.56 once calibrated, its last
        0.57). Only then, because calibrating holds every validation piece's posteriors in
        memory (per key, `key_posteriors`: about 40 MB per 10-minute piece in note-offset
        mode, 240 MB in a stream mode; 4 times that per bin)."""
        wanted = cfg.train.monitor == f"val_{CALIBRATED}"
        if split != "val" or not wanted or not self.calibrates(cfg):
            return super().evaluate(predict, cfg, cache, split, progress)
        if not cache.names(split):
            raise cache.no_split(split)
        pieces = [
            (key_posteriors(p), labels)  # every piece is held: a quarter of the memory
            for p, labels in self.split_posteriors(
                predict, cfg, cache, split, desc=f"Evaluate {split}", progress=progress
            )
        ]
        scores = mean_scores(self.score(self.decode(p, cfg), labels, cfg) for p, labels in pieces)
        after = calibrate_pieces(pieces, cfg)["after"]
        scores[CALIBRATED] = after["note_f1"]
        scores["note_with_offset_f1_calibrated"] = after["note_with_offset_f1"]
        return scores

    def score(self, events, labels, cfg: Config) -> dict[str, float]:
        row = note_metrics(notes_for_mode(labels["notes"], _mode(cfg)), events)
        keys = ["note_f1", "note_precision", "note_recall", "note_with_offset_f1", "frame_f1"]
        # per instrument (stream modes): averaged over the pieces where it is scored
        keys += sorted(k for k in row if k.startswith("note_f1/"))
        return {k: row[k] for k in keys}

    def transcription_note(self, path: Path, written: list[Path], cfg: Config | None = None):
        return nothing_found_note(path, written, "_notes.csv", "notes")

    def write(self, events, stem: str, outdir: Path, cfg: Config, *, x, posteriors) -> list[Path]:
        events = one_note_per_key(events)  # what MIDI can hold, in the CSV as in the MIDI
        midi = outdir / f"{stem}.mid"
        notes_to_midi(events).write(str(midi))
        csv = outdir / f"{stem}_notes.csv"
        write_notes_csv(csv, events)
        png = outdir / f"{stem}_pianoroll.png"
        plot_piano_roll(posteriors, events, png, title=stem, mode=cfg.data.label_mode)
        return [midi, csv, png]


def calibrate_pieces(pieces: list[tuple[np.ndarray, dict]], cfg: Config) -> dict:
    """The simple decoder's thresholds that maximise note F1 on `pieces` ((posteriors, labels)
    of the validation pieces), as ``{"decode", "val_pieces", "before", "after"}``.

    Three coordinate steps over coarse grids, each maximising the sum of the note F1 with
    and without offsets (one alone trades the other away: a high onset threshold gains onset
    F1 and loses offsets): the onset threshold (the others as configured), where onsets start
    and the delay together (`TIMINGS`: the first frame over the threshold, whose systematic
    lead is up to one frame, or the run's peak, about 30 ms late), then the frame and offset
    thresholds together, then where a note ends in its offset run (`OFFSET_TIMES`) and the
    offset gate (`GATE_GRID` or none) together with the offset threshold again
    (`END_OFFSET_GRID`), the frame threshold kept (the offset steps in ``note-offset`` mode
    only; the configured rule and gate win a tie). The end rule is measured, not
    assumed from the labels: an ensemble may average a model whose offset labels mark two
    frames with one whose labels are triangles (`data.offset_spread`)."""
    d = cfg.decode
    mode = _mode(cfg)
    refs = [(probs, notes_for_mode(labels["notes"], mode)) for probs, labels in pieces]
    gap = int(round(d.min_gap * FPS))

    def mean_f1(key: str, **th) -> float:
        rows = []
        for probs, ref in refs:
            est = decode_notes(probs, mode, method="simple", min_gap=gap, **th)
            f1 = note_f1_scores(ref, est)
            rows.append(f1["note_f1"] + f1["note_with_offset_f1"] if key == "sum" else f1[key])
        return float(np.mean(rows))

    th = {
        "onset_threshold": d.onset_threshold,
        "frame_threshold": d.frame_threshold,
        "offset_threshold": d.offset_threshold,
        "onset_delay": d.onset_delay,
        "onset_time": d.onset_time,
        "offset_time": d.offset_time,
        "offset_gate": d.offset_gate,
    }
    before = {k: mean_f1(k, **th) for k in ("note_f1", "note_with_offset_f1")}
    th["onset_threshold"] = max(
        ONSET_GRID, key=lambda o: mean_f1("sum", **{**th, "onset_threshold": o})
    )
    th["onset_time"], th["onset_delay"] = max(
        TIMINGS, key=lambda v: mean_f1("sum", **{**th, "onset_time": v[0], "onset_delay": v[1]})
    )
    offsets = OFFSET_GRID if mode == "note-offset" else (d.offset_threshold,)
    pairs = [(f, o) for f in FRAME_GRID for o in offsets]
    best = max(
        pairs,
        key=lambda p: mean_f1("sum", **{**th, "frame_threshold": p[0], "offset_threshold": p[1]}),
    )
    th["frame_threshold"], th["offset_threshold"] = best
    if mode == "note-offset":
        rules = [d.offset_time] + [r for r in OFFSET_TIMES if r != d.offset_time]
        gates = [d.offset_gate] + [g for g in (None, *GATE_GRID) if g != d.offset_gate]
        ends = [
            {"offset_time": r, "offset_gate": g, "offset_threshold": o}
            for r in rules
            for g in gates
            for o in END_OFFSET_GRID
        ]
        th.update(max(ends, key=lambda e: mean_f1("sum", **{**th, **e})))
    after = {k: mean_f1(k, **th) for k in ("note_f1", "note_with_offset_f1")}
    return {"decode": th, "val_pieces": len(refs), "before": before, "after": after}


def music_feature_stack(
    audio: np.ndarray, channels=tuple(FEATURE_CHANNELS), workers: int = 1
) -> np.ndarray:
    """``(T, 352, 5)`` float32 features of 44.1-kHz audio, channels as `FEATURE_CHANNELS`.

    Only the layers that `channels` need are computed; the others are left zero. Each channel
    computed is bit-identical to the full stack's: the CFP's layers do not depend on the later
    ones, so with neither Z nor GCoS the third layer is not run.
    """
    _check_channels(channels)
    need = set(channels)
    x = np.zeros((n_frames(len(audio), MUSIC), MUSIC.n_bins, len(FEATURE_CHANNELS)), np.float32)
    if need & {"Z", "GCoS"}:
        x[..., :4] = cfp_numpy(audio, MUSIC, np.float32, workers=workers)
    elif need & {"Spec", "Ceps"}:
        params = dataclasses.replace(MUSIC, g=MUSIC.g[:2])
        x[..., :4] = cfp_numpy(audio, params, np.float32, workers=workers)
        x[..., [CHANNELS["Z"], CHANNELS["GCoS"]]] = 0.0  # not computed: not left as garbage
    if "SpecShort" in need:
        short = cfp_numpy(audio, MUSIC_SHORT, np.float32, workers=workers)
        x[..., FEATURE_CHANNELS["SpecShort"]] = short[..., CHANNELS["Spec"]]
    return x


def feature_gain_exponents(channels: tuple[str, ...]) -> np.ndarray:
    """Per input channel (`FEATURE_CHANNELS` names), how it follows the audio's amplitude
    (`gain_exponents`)."""
    _check_channels(channels)
    e = {**gain_exponents(MUSIC), "SpecShort": gain_exponents(MUSIC_SHORT)["Spec"]}
    return np.array([e[c] for c in channels], np.float32)


def random_gain(
    x: np.ndarray, rng: np.random.Generator, gain_db: float, exponents: np.ndarray
) -> np.ndarray:
    """A window of features ``(T, bins, C)`` as its audio would give them at a random gain,
    uniform in +-`gain_db` dB: channel c times ``a ** exponents[c]``."""
    a = 10.0 ** (rng.uniform(-gain_db, gain_db) / 20.0)
    return x * np.power(a, exponents, dtype=np.float32)  # x is float32 (`read_frames`)


def music_features(piece) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(features (T, 352, 5) float32: the CFP and the 46-ms spectrum, {"notes"}) of one audio
    piece."""
    audio = piece.samples(MUSIC.fs)
    x = music_feature_stack(audio)
    notes = piece.notes if piece.notes is not None else np.zeros((0, 5))
    return x, {"notes": np.asarray(notes, np.float64)}


def _mode(cfg: Config) -> str:
    if cfg.data.label_mode not in LABEL_MODES:
        raise ConfigError(
            f"data.label_mode: unknown mode {cfg.data.label_mode!r} ({', '.join(LABEL_MODES)})"
        )
    return cfg.data.label_mode


def _repeat_weighted(cfg: Config) -> bool:
    """Whether re-struck onsets weigh more (`MusicDataConfig.repeat_weight`); checked here."""
    return _extra_weight(cfg, "repeat_weight")


def _release_weighted(cfg: Config) -> bool:
    """Whether the frames after a note's end weigh more (`MusicDataConfig.release_weight`)."""
    return _extra_weight(cfg, "release_weight")


def _tail_weighted(cfg: Config) -> bool:
    """Whether long notes' later frames weigh more (`MusicDataConfig.tail_weight`)."""
    return _extra_weight(cfg, "tail_weight")


def _offset_weighted(cfg: Config) -> bool:
    """Whether the offset channel's positives weigh more (`MusicDataConfig.offset_weight`)."""
    if _extra_weight(cfg, "offset_weight") and _mode(cfg) != "note-offset":
        raise ConfigError(
            f"data.offset_weight: needs label mode 'note-offset', the one with an offset channel "
            f"(got {cfg.data.label_mode!r})"
        )
    return cfg.data.offset_weight != 1.0


def _offset_spread(cfg: Config) -> float:
    """The offset targets' half-width (`MusicDataConfig.offset_spread`); checked here."""
    spread = cfg.data.offset_spread
    if spread < 0 or (spread > 0 and _mode(cfg) != "note-offset"):
        raise ConfigError(
            f"data.offset_spread: needs label mode 'note-offset' and a width >= 0 frames "
            f"(got {cfg.data.label_mode!r}, {spread})"
        )
    return float(spread)


def _extra_weight(cfg: Config, key: str) -> bool:
    """Whether the data weight `key` is on (not 1); raises ConfigError where it cannot apply."""
    d = cfg.data
    value = getattr(d, key)
    if value == 1.0:
        return False
    if d.loss != "weighted" or _mode(cfg) not in ("note", "note-offset") or value <= 0:
        raise ConfigError(
            f"data.{key}: needs data.loss 'weighted', label mode 'note' or 'note-offset' "
            f"and a positive weight (got {d.loss!r}, {d.label_mode!r}, {value})"
        )
    return True


def _check_channels(channels) -> None:
    bad = [c for c in channels if c not in FEATURE_CHANNELS]
    if bad or not channels:
        known = ", ".join(FEATURE_CHANNELS)
        raise ConfigError(f"model.channels: unknown feature channel(s) {bad} ({known})")


PLOT_COLUMNS = 2400  # twice the piano-roll figure's width in pixels


def plot_piano_roll(
    probs: np.ndarray, notes: np.ndarray, path: Path, title: str = "", mode: str | None = None
) -> Path:
    """A PNG of the frame and onset posteriors (their maximum; `mode`'s channels, not the
    offset channel of ``note-offset``; every note channel without a mode) with the decoded
    notes on top."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure  # no pyplot: safe in `transcribe`'s writer thread

    # the note channels: all but the first, less note-offset's offset channel (as
    # `split_channels` gives them, without its float64 copy of every channel)
    last = 3 if mode is not None and check_mode(mode) == "note-offset" else None
    act = np.asarray(probs)[..., 1:last].max(axis=-1).astype(np.float64)
    act = act.reshape(len(probs), 88, 4).mean(axis=-1)
    if len(act) > PLOT_COLUMNS:  # a long piece: each column the maximum of its frames
        # (matplotlib resampled the whole roll in float64 RGBA: 1.2 GB for 20 minutes)
        group = -(-len(act) // PLOT_COLUMNS)
        padded = np.pad(act, ((0, -len(act) % group), (0, 0)))
        act = padded.reshape(-1, group, 88).max(axis=1)
    fig = Figure(figsize=(12, 4))
    ax = fig.subplots()
    ax.imshow(
        act.T,
        origin="lower",
        aspect="auto",
        cmap="Greys",
        extent=(0, max(len(probs), 1) / FPS, 20.5, 108.5),  # 1 frame at least: no warning
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    # one collection, not one line per note: a 30-s piece's ~300 notes took 1 s as lines
    segments = [((on, pitch), (off, pitch)) for on, off, pitch, *_ in notes]
    ax.add_collection(LineCollection(segments, colors="tab:red", linewidths=2, alpha=0.8))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MIDI pitch")
    ax.set_title(title or "transcription")
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.12, top=0.92)  # tight_layout: +0.1 s
    fig.savefig(path, dpi=100)
    return path


TASK = MusicTask()
