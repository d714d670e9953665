"""Trained models that ship with the package, so `jaxmir transcribe music song.wav` works with
no `--workdir` and no training (as omnizart's and basic-pitch's shipped checkpoints do).

A shipped model is a folder `jaxmir/models/<task>/` with:
    config.json     the run's full config (decode values already calibrated)
    variables.msgpack  the evaluation weights (the EMA when the run kept one) and model state,
                    as `flax.serialization` msgpack (no pickle)
    model.json      provenance: the run, its best step, its decoding calibration, its test
                    scores, the command to re-train
    metrics.jsonl, curves.png  the run's curves

`export_model` writes one from a trained run (`jaxmir export`); `load_model` restores it onto one
device for inference, with the same `predict` the CLI uses for a run's checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax

MODELS_DIR = Path(__file__).parent / "models"
VARIABLES = "variables.msgpack"
CURVES = ("metrics.jsonl", "curves.png")


class ShippedModelError(FileNotFoundError):
    """No shipped model for a task, or a broken one (the message names the file)."""


def model_dir(task_name: str) -> Path:
    return MODELS_DIR / task_name


def has_model(task_name: str) -> bool:
    return (model_dir(task_name) / VARIABLES).is_file()


def export_model(task, workdir: Path | str, out: Path | str, info: dict | None = None) -> Path:
    """Write the best checkpoint of the run in `workdir` (decode calibration applied, EMA weights
    when kept) as a shipped model folder `out`; `info` is added to its model.json."""
    from flax import serialization

    from jaxmir.engine.run import DECODE_FILE, restore_for_inference
    from jaxmir.engine.state import eval_variables

    workdir, out = Path(workdir), Path(out)
    cfg, _mesh, state, step = restore_for_inference(task, workdir)
    variables = jax.device_get(eval_variables(state))
    # the weights are final: no EMA to keep, no optimizer state
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, ema_decay=None))
    out.mkdir(parents=True, exist_ok=True)
    cfg = task.export_files(cfg, out)
    _write(out / VARIABLES, serialization.to_bytes(variables))
    _write(out / "config.json", cfg.to_json().encode())
    meta = {"task": task.name, "preset": cfg.preset, "run": workdir.name, "step": step}
    calibration = workdir / DECODE_FILE
    if calibration.is_file():  # how the thresholds were chosen, and what they gained
        meta["calibration"] = json.loads(calibration.read_text())
    meta.update(info or {})
    _write(out / "model.json", (json.dumps(meta, indent=1) + "\n").encode())
    for name in CURVES:  # the run's curve travels with its model
        if (workdir / name).is_file():
            _write(out / name, (workdir / name).read_bytes())
    return out


def load_model(task, folder: Path | str | None = None):
    """(cfg, mesh, state) of a shipped model (default: the package's own for `task`), ready for
    `jaxmir.engine.run.make_predict`."""
    import numpy as np
    from flax import serialization

    from jaxmir.engine.run import abstract_state
    from jaxmir.engine.sharding import make_mesh

    folder = Path(folder) if folder is not None else model_dir(task.name)
    path = folder / VARIABLES
    if not path.is_file():
        raise ShippedModelError(
            f"{path}: no shipped {task.name} model; pass --workdir RUN (a trained run)"
        )
    cfg = task.locate(
        task.config_from_dict(json.loads((folder / "config.json").read_text())), folder
    )
    mesh = make_mesh(jax.devices()[:1])
    # zeros of the state's shapes: only the variables matter for inference, and they are read
    # next (compiling the model's initialisers would take ~40 s on a CPU)
    state = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_state(task, cfg, mesh))
    target = dict(state.variables)
    try:
        variables = serialization.from_bytes(target, path.read_bytes())
    except (ValueError, KeyError, TypeError) as e:
        raise ShippedModelError(f"{path}: does not fit the {task.name} model ({e})") from None
    state = state.replace(
        params=variables["params"], batch_stats=variables.get("batch_stats", state.batch_stats)
    )
    return cfg, mesh, state


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
