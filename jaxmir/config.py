"""Configs: nested dataclasses, the one source of truth for every setting.

The CLI (`--set a.b=value`), the saved `config.json` and the Python API are views of a `Config`.
Each task contributes its own `model`, `data` and `decode` dataclasses and its presets; the
`train` and `optim` sections are shared by all tasks.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad key, value or type in a config or an override (the CLI exits with code 2)."""


@dataclasses.dataclass
class OptimConfig:
    """Optimizer and learning-rate control (the LR lives in the optimizer state)."""

    name: str = "adam"  # adam | adamw | sgd
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    grad_clip_norm: float | None = None  # clip by global norm
    grad_clip_value: float | None = None  # clip each element (omnizart chord: clipvalue=1)
    # Learning-rate control, applied by callbacks at epoch end:
    #   constant | step (x decay_rate every decay_every epochs) | exponential (x decay_rate per
    #   epoch) | plateau (x decay_rate after `plateau_patience` epochs without improvement)
    # or inside the optimizer, as an optax schedule of the update count:
    #   exponential_steps (x decay_rate every decay_steps updates, staircase; omnizart chord)
    #   warmup_cosine (linear warm-up over warmup_steps, cosine to min_lr at decay_steps)
    lr_schedule: str = "constant"
    decay_rate: float = 0.25
    decay_every: int = 3
    decay_steps: int = 1000
    warmup_steps: int = 0
    min_lr: float = 0.0
    plateau_patience: int = 2
    ema_decay: float | None = None  # keep an EMA of the parameters (evaluation uses it)


@dataclasses.dataclass
class TrainConfig:
    """The epoch driver's schedule and its callbacks."""

    epochs: int = 10
    steps_per_epoch: int = 1000
    val_steps: int = 50
    batch_size: int = 64
    val_batch_size: int = 64
    seed: int = 0
    log_every: int = 50  # steps between metric read-backs (bar postfix, metrics.jsonl)
    monitor: str = "val_loss"  # what early stopping and "best" checkpoints watch
    # max | min | auto: max for names with acc, f1, f_measure, precision, recall or chord_
    monitor_mode: str = "auto"
    early_stop_patience: int | None = 7  # None: no early stopping
    early_stop_min_delta: float = 0.0
    keep_latest: int = 1  # checkpoints kept by recency
    keep_best: int = 1  # checkpoints kept by the monitored metric
    terminate_on_nan: bool = True
    eval_pieces_each_epoch: bool = True  # score whole validation pieces with mir_eval each epoch
    # Other splits of the data scored like the validation pieces each epoch, for their curves
    # (metrics.jsonl, curves.png); never monitored (no checkpoint or stop depends on them).
    watch_splits: tuple[str, ...] = ()
    data_threads: int = 2  # Grain read threads
    precision: str = "fp32"  # fp32 | bf16 (bf16 compute; fp32 parameters and optimizer state)
    grad_accum: int = 1  # split each batch into this many micro-batches, one update per batch
    log_grad_norm: bool = False  # log the gradients' global norm (an extra pass over them)
    # Test-only: send this process SIGTERM right after this global step (exercises resume).
    interrupt_at_step: int | None = None


@dataclasses.dataclass
class Config:
    """A full run configuration. `model`, `data` and `decode` are the task's own dataclasses."""

    task: str
    preset: str
    model: Any
    data: Any
    decode: Any
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# Keys that may change when a run is resumed: they change the schedule, not the model or data.
SCHEDULE_KEYS = (
    "train.epochs",
    "train.steps_per_epoch",
    "train.val_steps",
    "train.log_every",
    "train.eval_pieces_each_epoch",
    "train.watch_splits",
    "train.early_stop_patience",
    "train.interrupt_at_step",
    "train.data_threads",
    "train.log_grad_norm",
)


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_value(value: Any, tp: Any, key: str) -> Any:
    """Return `value` converted to type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {tp}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (elem,) = typing.get_args(tp)[:1] or (Any,)
        return tuple(_check_value(v, elem, key) for v in value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return from_dict(tp, value, prefix=key + ".")
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def from_dict(cls, data: dict, prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, checking every key and type. Keys in the
    class's `RETIRED` (settings that did nothing and were removed; older runs' config.json
    still hold them) are dropped."""
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    retired = getattr(cls, "RETIRED", frozenset())
    data = {k: v for k, v in data.items() if k not in retired}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}")
    kwargs = {k: _check_value(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def checked_section(section: Any, name: str) -> Any:
    """`section` (a config section built in Python, say `TrainConfig(epochs=3)`) with every
    value held to its field's type as a `--set` is, or ConfigError naming `name.key` (a
    string learning rate failed deep inside, a float epoch count after the workdir was
    written)."""
    cls = {"train": TrainConfig, "optim": OptimConfig}.get(name)
    if cls is not None and not isinstance(section, cls):
        raise ConfigError(f"{name}: a {cls.__name__}, got {type(section).__name__}")
    hints = _field_types(type(section))
    values = {
        f.name: _check_value(getattr(section, f.name), hints[f.name], f"{name}.{f.name}")
        for f in dataclasses.fields(section)
    }
    return dataclasses.replace(section, **values)


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value); the value is JSON when it parses, else a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def apply_override(cfg: Config, key: str, value: Any) -> Config:
    """Return a copy of `cfg` with dotted `key` set to `value` (type-checked)."""
    parts = key.split(".")
    if parts[0] in ("task", "preset"):
        raise ConfigError(f"{key} cannot be overridden: choose the task and --preset instead")

    def set_in(obj, path: list[str], prefix: str):
        name = path[0]
        if not dataclasses.is_dataclass(obj) or name not in {
            f.name for f in dataclasses.fields(obj)
        }:
            raise ConfigError(f"unknown config key {key}{_known_keys(obj, prefix)}")
        if len(path) == 1:
            if dataclasses.is_dataclass(getattr(obj, name)):
                raise ConfigError(f"{key} is a section: set its keys ({key}.NAME=VALUE)")
            tp = _field_types(type(obj))[name]
            return dataclasses.replace(obj, **{name: _check_value(value, tp, key)})
        child = getattr(obj, name)
        return dataclasses.replace(obj, **{name: set_in(child, path[1:], prefix + name + ".")})

    return set_in(cfg, parts, "")


def _known_keys(obj: Any, prefix: str) -> str:
    """ " (decode.: threshold, ...)": the keys that could have been meant, where `obj` (the
    section the unknown key was looked up in) has any."""
    if not dataclasses.is_dataclass(obj):
        return ""
    names = [f.name for f in dataclasses.fields(obj) if f.name not in ("task", "preset")]
    if not names:
        return f" ({prefix.rstrip('.')} has no keys)"
    if not prefix:  # the top level: sections
        return f" (sections: {', '.join(names)})"
    return f" ({prefix.rstrip('.')} has: {', '.join(names)})"


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    for text in overrides:
        key, value = parse_override(text)
        cfg = apply_override(cfg, key, value)
    return cfg


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def changed_keys(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _without_retired(saved: dict, cfg: Config) -> dict:
    """`saved` (a config dict) without the keys its sections' classes have retired."""
    out = dict(saved)
    for field in dataclasses.fields(cfg):
        retired = getattr(type(getattr(cfg, field.name)), "RETIRED", frozenset())
        if retired and isinstance(out.get(field.name), dict):
            out[field.name] = {k: v for k, v in out[field.name].items() if k not in retired}
    return out


def _is_default(cfg: Config, key: str) -> bool:
    """Whether the dotted `key` of `cfg` holds its section's default value."""
    section, _, name = key.partition(".")
    value = getattr(cfg, section, None)
    try:
        default = getattr(type(value)(), name)
    except (TypeError, AttributeError):  # a section without defaults, a nested key
        return False
    return json.loads(json.dumps(default)) == flatten(json.loads(cfg.to_json())).get(key)


def check_resume_compatible(saved: dict, new: Config) -> None:
    """Refuse to resume a run whose config changed in anything but schedule keys and the
    decoding settings (`decode.*`: how validation pieces are scored, not what is trained)."""
    if saved.get("task") != new.task:  # not a list of every key the two tasks differ in
        raise ConfigError(
            f"cannot resume: the workdir holds a run of task {saved.get('task')!r}, not "
            f"{new.task!r}: train in another --workdir"
        )
    changed = changed_keys(_without_retired(saved, new), json.loads(new.to_json()))
    older = set(flatten(saved))
    bad = [
        k
        for k in changed
        if k not in SCHEDULE_KEYS
        and not k.startswith("decode.")
        and (k in older or not _is_default(new, k))  # a key added since, at its default
    ]
    if bad:
        raise ConfigError(
            "cannot resume: config differs from the run's config.json in " + ", ".join(bad)
        )


# (key, lowest allowed value): values a run cannot use, refused before anything is written
_LOWER_BOUNDS = (
    ("train.epochs", 1),
    ("train.steps_per_epoch", 1),
    ("train.val_steps", 0),
    ("train.batch_size", 1),
    ("train.val_batch_size", 1),
    ("train.log_every", 1),
    ("train.grad_accum", 1),
    ("train.keep_latest", 1),
    ("train.keep_best", 1),
    ("train.data_threads", 1),
)
#: Refused by `train` (and `info`) only: a run trained with one still evaluates and transcribes.
_TRAINING_LOWER_BOUNDS = (
    ("optim.decay_every", 1),
    ("optim.decay_steps", 1),
    ("optim.warmup_steps", 0),
    ("optim.plateau_patience", 1),
    ("optim.weight_decay", 0),
    ("optim.min_lr", 0),
    ("train.early_stop_min_delta", 0),
    ("model.num_layers", 1),
    ("train.seed", 0),
)
#: Keys that are null (what null means) or at least this, where a task has them.
_NULL_OR_AT_LEAST = (("train.early_stop_patience", 1, "off"), ("data.hop", 1, "the task's default"))
#: Keys that are null (off) or above 0.
_NULL_OR_POSITIVE = ("optim.grad_clip_norm", "optim.grad_clip_value")


#: Keys whose value is one of a few words (a task's section may lack the key).
#: `model.conv_impl` (jaxmir.nn.conv): how convolutions compute their weight gradients.
CONV_IMPLS = ("auto", "native", "matmul")
_WORDS = (
    (
        "optim.lr_schedule",
        ("constant", "step", "exponential", "plateau", "exponential_steps", "warmup_cosine"),
    ),
    ("train.precision", ("fp32", "bf16")),
    ("train.monitor_mode", ("auto", "min", "max")),
    ("data.corpus_instruments", ("piano", "mixed", "both")),
    ("model.conv_impl", CONV_IMPLS),
)
#: Counts of the embedded corpus (and its seed), at least 0 where a task's section has them.
_CORPUS_COUNTS = tuple(
    f"data.corpus_{k}"
    for k in ("pieces", "train", "val", "test", "unseen", "works", "textures", "random", "seed")
)
#: Sizes that must be at least 1 where a task's section has them (0 divided by zero, deep in
#: the model or the corpus builder).
_AT_LEAST_ONE = ("model.hidden", "model.timesteps", "model.channels", "data.corpus_variants")


def validate(cfg: Config, training: bool = True) -> Config:
    """`cfg`, or ConfigError naming the first key whose value no run can use. `training=False`
    (eval, transcribe: a run already trained) leaves out the checks of how to train."""
    flat = flatten(json.loads(cfg.to_json()))
    for key, low in _LOWER_BOUNDS:
        if flat[key] < low:
            raise ConfigError(f"{key}: must be >= {low}, got {flat[key]}")
    if training:
        _check_training(flat)
    for key, known in _WORDS:
        if key in flat and flat[key] not in known:
            raise ConfigError(f"{key}: unknown {flat[key]!r} ({', '.join(known)})")
    for key in _AT_LEAST_ONE:  # where a task's section has the key
        if key in flat and isinstance(flat[key], int) and flat[key] < 1:
            raise ConfigError(f"{key}: must be >= 1, got {flat[key]}")
    if "model.dropout" in flat and not 0.0 <= flat["model.dropout"] < 1.0:
        raise ConfigError(f"model.dropout: a rate in [0, 1), got {flat['model.dropout']}")
    for key in _CORPUS_COUNTS:  # -3 pieces was a traceback, -3 train chorales a slice
        if flat.get(key) is not None and flat[key] < 0:
            raise ConfigError(f"{key}: must be >= 0, got {flat[key]}")
    bpm = flat.get("data.corpus_bpm")
    if bpm is not None and not (len(bpm) == 2 and 0 < bpm[0] <= bpm[1]):
        raise ConfigError(
            f"data.corpus_bpm: [slowest, fastest] tempo, 0 < slowest <= fastest, got {bpm}"
        )
    seconds = flat.get("data.corpus_max_seconds")
    if seconds is not None and not seconds > 0:
        raise ConfigError(
            f"data.corpus_max_seconds: seconds > 0 (or null: whole pieces), got {seconds}"
        )
    return cfg


def _check_training(flat: dict) -> None:
    """ConfigError for a setting of how to train that fails late or does nothing."""
    for key, low in _TRAINING_LOWER_BOUNDS:
        if key in flat and flat[key] < low:  # model.num_layers: where a task has it
            raise ConfigError(f"{key}: must be >= {low}, got {flat[key]}")
    for key, low, null in _NULL_OR_AT_LEAST:
        if flat.get(key) is not None and flat[key] < low:
            raise ConfigError(f"{key}: must be >= {low} (or null: {null}), got {flat[key]}")
    for key in _NULL_OR_POSITIVE:
        if flat[key] is not None and not flat[key] > 0:
            raise ConfigError(f"{key}: must be > 0 (or null: off), got {flat[key]}")
    for key in ("optim.learning_rate", "optim.decay_rate"):
        if not flat[key] > 0:
            raise ConfigError(f"{key}: must be > 0, got {flat[key]}")
    if flat["optim.weight_decay"] > 0 and flat["optim.name"] != "adamw":
        raise ConfigError(
            f"optim.weight_decay: only optim.name=adamw decays weights, got {flat['optim.name']}"
        )
    batch, accum = flat["train.batch_size"], flat["train.grad_accum"]
    if batch % accum:
        raise ConfigError(
            f"train.grad_accum: {accum} micro-batches must divide train.batch_size={batch}"
        )
    check_monitor_logged(
        flat["train.monitor"],
        flat["train.val_steps"],
        None if flat["train.eval_pieces_each_epoch"] else "train.eval_pieces_each_epoch false",
    )


def check_monitor_logged(monitor: str, val_steps: int, no_scores: str | None) -> None:
    """ConfigError where `monitor` names a validation metric no epoch logs: with no validation
    batches (`val_steps` 0) there is no val_loss, and no other val_* where `no_scores` says
    why nothing else scores the validation data (it failed after the first epoch)."""
    if not monitor.startswith("val_") or val_steps:
        return
    if monitor == "val_loss" or no_scores:
        why = "" if monitor == "val_loss" else f" and {no_scores}"
        raise ConfigError(
            f"train.monitor: {monitor} is never logged: train.val_steps is 0{why} (the "
            "validation loss comes from its batches; monitor a training metric, or validate)"
        )


def read_json(path: Path) -> Any:
    """The JSON in `path` (a run's config.json, decode.json, an eval record), or ConfigError
    naming the file where it does not parse (a hand edit, a truncated copy)."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file") from None


def peek_json(path: Path) -> dict:
    """The JSON object in `path`, or {} where it is missing or damaged: for a look ahead at a
    field (a task, an instrument set) whose file a later reader names if it is bad."""
    try:
        data = read_json(path)
    except (OSError, ConfigError):
        return {}
    return data if isinstance(data, dict) else {}


def save_config(cfg: Config, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(cfg.to_json() + "\n")
    tmp.replace(path)
