"""The Task interface and the task registry.

A task owns everything specific to one MIR problem: its model, presets, data, loss, decoding,
evaluation and transcription. The engine owns everything else.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from pathlib import Path
from typing import Any

import flax.linen as nn
import grain
import jax

from jaxmir.config import Config, ConfigError, OptimConfig, TrainConfig, from_dict
from jaxmir.data.cache import FeatureCache

# name -> module that defines `TASK` (imported on first use so `jaxmir info beat` stays light)
TASK_MODULES = {
    "beat": "jaxmir.tasks.beat.task",
    "music": "jaxmir.tasks.music.task",
}


class Task(abc.ABC):
    name: str
    model_config: type
    data_config: type
    decode_config: type

    # -- configuration ------------------------------------------------------------------------
    @abc.abstractmethod
    def presets(self) -> dict[str, Config]:
        """tiny (tests: seconds), demo (a 2-core CPU: minutes), paper (omnizart's setup)."""

    def preset(self, name: str) -> Config:
        presets = self.presets()
        if name not in presets:
            raise ConfigError(
                f"unknown preset {name!r} for task {self.name} ({', '.join(presets)})"
            )
        return presets[name]

    def config_from_dict(self, data: dict) -> Config:
        data = dict(data)
        if data.get("task") != self.name:
            raise ConfigError(f"config is for task {data.get('task')!r}, not {self.name!r}")
        return Config(
            task=self.name,
            preset=str(data["preset"]),
            model=from_dict(self.model_config, data["model"], "model."),
            data=from_dict(self.data_config, data["data"], "data."),
            decode=from_dict(self.decode_config, data["decode"], "decode."),
            train=from_dict(TrainConfig, data["train"], "train."),
            optim=from_dict(OptimConfig, data["optim"], "optim."),
        )

    # -- model --------------------------------------------------------------------------------
    @abc.abstractmethod
    def model(self, cfg: Config) -> nn.Module: ...

    @abc.abstractmethod
    def input_spec(self, cfg: Config) -> jax.ShapeDtypeStruct:
        """One example's input (no batch axis), for eval_shape, info and init."""

    @abc.abstractmethod
    def loss(self, apply_fn, variables, batch, rng, train: bool) -> tuple[jax.Array, tuple]:
        """(loss, (metrics, updated model state such as batch_stats))."""

    def bind_loss(self, cfg: Config):
        """The loss with the config bound (what the engine jits)."""
        return self.loss

    # -- data ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def dataset(
        self, cfg: Config, cache: FeatureCache, split: str, train: bool
    ) -> grain.MapDataset:
        """Unbatched examples {"x", "y", "mask", ...} of this process; endless when `train`."""

    @abc.abstractmethod
    def default_data(self, cfg: Config, cache_root: Path, progress: bool = True) -> Path:
        """Build (once) the embedded synthetic corpus's feature cache; return its directory."""

    @abc.abstractmethod
    def featurize(
        self, dataset: str, root: Path, out: Path, workers: int = 1, progress: bool = True
    ) -> dict:
        """`jaxmir features`: a dataset in its official layout -> a feature cache. Returns a
        summary {"written", "skipped", "failed": [(path, reason), ...]}."""

    # -- inference ------------------------------------------------------------------------------
    @abc.abstractmethod
    def evaluate(self, predict, cfg: Config, cache: FeatureCache, split: str) -> dict[str, float]:
        """mir_eval metrics on whole pieces. `predict(x_windows) -> posteriors`."""

    @abc.abstractmethod
    def transcribe(self, predict, path: Path, cfg: Config, outdir: Path) -> list[Path]: ...


def get_task(name: str) -> Task:
    if name not in TASK_MODULES:
        raise ConfigError(f"unknown task {name!r} (known: {', '.join(sorted(TASK_MODULES))})")
    return importlib.import_module(TASK_MODULES[name]).TASK


def replace(cfg: Config, **sections: Any) -> Config:
    return dataclasses.replace(cfg, **sections)
