"""Trained models that ship with the package, so `jaxmir transcribe music song.wav` works with
no `--workdir` and no training (as omnizart's and basic-pitch's shipped checkpoints do).

A shipped model is a folder `jaxmir/models/<task>/` with:
    config.json     the run's full config (decode values already calibrated)
    variables.msgpack  the evaluation weights (the EMA when the run kept one) and model state,
                    as `flax.serialization` msgpack (no pickle)
    model.json      provenance: the run, its best step, its decoding calibration, its test
                    scores, the command to re-train
    metrics.jsonl, curves.png  the run's curves
    variables-1.msgpack, ...   an ensemble's other members (`export_model(members=...)`): the
                    model averages its members' outputs (`jaxmir.engine.ensemble`)

`export_model` writes one from a trained run (`jaxmir export`); `load_model` restores it onto one
device for inference, with the same `predict` the CLI uses for a run's checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax

from jaxmir.config import read_json
from jaxmir.tasks.base import test_soundfont_record

MODELS_DIR = Path(__file__).parent / "models"
VARIABLES = "variables.msgpack"
MEMBER = "variables-{}.msgpack"  # an ensemble's members after the first
CURVES = ("metrics.jsonl", "curves.png")
#: A helper model trained inside a run or model folder (the beat task's downbeat tagger) keeps
#: its own training run in this subfolder of its folder; a model folder is cleared of them.
HELPER_RUN = "run"


class ShippedModelError(FileNotFoundError):
    """No shipped model for a task, or a broken one (the message names the file)."""


def model_dir(task_name: str) -> Path:
    return MODELS_DIR / task_name


def is_model_folder(path: Path | str) -> bool:
    """Whether `path` is an exported model folder (`export_model`), not a training run."""
    return (Path(path) / VARIABLES).is_file()


def in_package(path: Path | str) -> bool:
    """Whether `path` is (inside) the models that ship with jaxmir, which no command rewrites:
    every later command of every user reads their decoding and published scores."""
    return Path(path).resolve().is_relative_to(MODELS_DIR.resolve())


def has_model(task_name: str) -> bool:
    return is_model_folder(model_dir(task_name))


def export_model(
    task,
    workdir: Path | str,
    out: Path | str,
    info: dict | None = None,
    members: Sequence[Path | str] = (),
    data: Path | str | None = None,
    progress: bool = False,
    log=print,
) -> Path:
    """Write the best checkpoint of the run in `workdir` (decode calibration applied, EMA weights
    when kept) as a shipped model folder `out`; `info` is added to its model.json.

    `members`: other runs of the same model config whose best checkpoints join it as an
    ensemble (`export_members`); its decoding is then calibrated again, and its test splits
    scored, on the data `data` (default: the run's own).

    The folder is written beside `out` and moved into its place only when whole: an export
    that fails (a member that is not there, or differs) leaves a model already in `out` as it
    was, and `out` may itself be a member."""
    from jaxmir.engine.run import restore_for_inference

    workdir, out = Path(workdir), Path(out)
    restored = restore_for_inference(task, workdir)  # no run there: nothing is written
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    except OSError as e:  # named as the folder asked for, not the staging one beside it
        raise type(e)(e.errno, e.strerror, str(out)) from None
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # a folder as mkdir makes it, not mkdtemp's private one
    try:
        _export_into(task, workdir, staging, restored, info, members, data, progress, log)
        _replace_folder(out, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _replace_folder(out: Path, new: Path) -> None:
    """Put the folder `new` where `out` is: two renames, the old folder removed after (a
    crash between them leaves it beside, named `.OUT.replaced-*`)."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
        old.rmdir()  # a free name beside `out`
        out.rename(old)
    new.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _export_into(
    task, workdir: Path, out: Path, restored, info, members, data, progress, log
) -> None:
    from flax import serialization

    from jaxmir.engine.run import DECODE_FILE

    cfg, _mesh, state, step = restored
    info = _scores_of_this_model(info or {}, step, cfg, workdir, log)
    variables = _final_variables(state)
    # the weights are final: no EMA to keep, no optimizer state
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, ema_decay=None))
    out.mkdir(parents=True, exist_ok=True)
    cfg = task.export_files(cfg, out)
    _write(out / VARIABLES, serialization.to_bytes(variables))
    meta = {"task": task.name, "preset": cfg.preset, "run": workdir.name, "step": step}
    if getattr(cfg.data, "corpus_test_soundfont", None) is not None:
        # a file on this machine, for test splits only: its name and hash stay with the
        # scores; `jaxmir eval --test-soundfont` renders those splits again elsewhere
        meta.update(test_soundfont_record(cfg.data))
        data_cfg = dataclasses.replace(cfg.data, corpus_test_soundfont=None)
        cfg = dataclasses.replace(cfg, data=data_cfg)
    _write(out / "config.json", cfg.to_json().encode())
    calibration = workdir / DECODE_FILE
    if calibration.is_file():  # how the thresholds were chosen, and what they gained
        meta["calibration"] = read_json(calibration)
    meta.update(info or {})
    if data is not None:  # the scores' cache, when not the config's own corpus
        meta["data"] = data_record(data)
    _write(out / "model.json", (json.dumps(meta, indent=1) + "\n").encode())
    for name in CURVES:  # the run's curve travels with its model
        if (workdir / name).is_file():
            _write(out / name, (workdir / name).read_bytes())
    if members:
        export_members(task, workdir, out, members, data, progress=progress, log=log)


def _scores_of_this_model(info: dict, step: int, cfg, workdir: Path, log) -> dict:
    """`info` less the `eval_*` records `jaxmir eval` made of another checkpoint (`--step`, or
    before the run trained on) or with other decoding (`--set decode.*`) than the model
    exported: model.json's scores must be this model's. A record without a step or decoding
    is kept as it is."""
    decode = json.loads(json.dumps(relative_to(dataclasses.asdict(cfg.decode), workdir)))
    kept = {}
    for key, record in info.items():
        other_step = isinstance(record, dict) and record.get("step", step) != step
        other_decode = isinstance(record, dict) and record.get("decode", decode) != decode
        if key.startswith("eval_") and (other_step or other_decode):
            why = f"step {record.get('step')}" if other_step else "other decoding"
            log(
                f"{workdir / 'eval' / key[5:]}.json: scored with {why} than the exported model "
                f"(step {step}): left out"
            )
            continue
        kept[key] = record
    return kept


def _final_variables(state) -> dict:
    from jaxmir.engine.state import eval_variables

    return jax.device_get(eval_variables(state))


def export_members(
    task,
    workdir: Path,
    out: Path,
    members: Sequence[Path | str],
    data: Path | str | None = None,
    progress: bool = False,
    log=print,
) -> None:
    """Add `members` (runs, whose best checkpoints join; or exported model folders, whose
    models join) to the model exported from `workdir` in `out`, then choose the ensemble's
    decoding on the validation pieces (`task.calibrate`, from the run's uncalibrated settings,
    as at the end of training; a task without calibration keeps the run's settings) and score
    every test split with it; both go into config.json and model.json (replacing the first
    run's). Each member must have the first run's model config and label mode."""
    from flax import serialization

    from jaxmir.engine.run import restore_for_inference

    base, _mesh, _state, step = restore_for_inference(task, workdir, calibrated=False)
    runs = [{"run": workdir.name, "step": step}]
    for member in map(Path, members):
        cfg_k, found, source = _member_models(task, member)
        for section in ("model", "data"):
            mine, theirs = getattr(base, section), getattr(cfg_k, section)
            if section == "data":  # the labels must mean the same; the corpus may differ
                mine, theirs = _label_fields(mine), _label_fields(theirs)
            if mine != theirs:
                raise ValueError(
                    f"{member}: its {section} config differs from {workdir}'s ({mine} vs {theirs})"
                )
        for variables in found:
            _write(out / MEMBER.format(len(runs)), serialization.to_bytes(variables))
            runs.append(source)
    meta = {**read_json(out / "model.json"), "members": runs}
    _write(out / "model.json", (json.dumps(meta, indent=1) + "\n").encode())
    calibrate_folder(
        task, out, base.decode, data, progress=progress, log=log, name=f"Ensemble of {len(runs)}"
    )


def calibrate_folder(
    task,
    folder: Path | str,
    start=None,
    data: Path | str | None = None,
    progress: bool = False,
    log=print,
    name: str | None = None,
) -> dict:
    """Choose the decoding of the model folder `folder` again on the validation pieces of
    `data` (default: the cache model.json names, else its config's corpus), from the decode
    config `start` (default: its stored settings), and score every test split with it; both
    replace the folder's calibration, decode settings and test scores in config.json and
    model.json. A task
    without calibration keeps its settings (its test splits are still scored). Returns the
    calibration record (empty without one)."""
    from jaxmir.engine.run import make_predict, resolve_data

    folder = Path(folder)
    name = name or str(folder)
    cfg, mesh, state = load_model(task, folder)
    meta_path = folder / "model.json"
    meta = read_json(meta_path) if meta_path.is_file() else {}
    data = data if data is not None else meta.get("data")  # its scores' cache, else the corpus
    cache = resolve_data(task, cfg, data, progress=progress)
    predict = make_predict(mesh, state)
    meta = {
        k: v
        for k, v in meta.items()
        if k not in ("calibration", "data") and not k.startswith("eval_")
    }
    if data is not None:  # the calibration's and the scores' cache
        meta["data"] = data_record(data)
    calibrate = getattr(task, "calibrate", None)
    if start is not None:
        cfg = task.locate(dataclasses.replace(cfg, decode=start), folder)
    calibration = None
    if calibrate is not None:
        calibration = calibrate(predict, cfg, cache, progress=progress, workdir=folder)
    step = meta.get("step")
    if calibration:
        meta["calibration"] = {"step": step, **calibration}
        decode = dataclasses.replace(cfg.decode, **calibration["decode"])
        # paths in the calibration (beat: its tagger) are relative to the folder
        cfg = task.locate(dataclasses.replace(cfg, decode=decode), folder)
        log(f"{name}: decoding calibrated: {calibration['decode']}")
    for leftover in folder.glob(f"*/{HELPER_RUN}"):  # a model folder holds no training runs
        shutil.rmtree(leftover)
    for split in sorted({piece["split"] for piece in cache.pieces()}):
        if split.startswith("test"):
            record = _score(task, predict, cfg, cache, split, meta, folder, progress)
            meta[f"eval_{split}"] = record
            log(f"{name} on {split}: {_scores(record)}")
    stored = read_json(folder / "config.json")
    stored["decode"] = {**stored["decode"], **(calibration or {}).get("decode", {})}
    _write(folder / "config.json", json.dumps(stored, indent=2, sort_keys=True).encode())
    _write(meta_path, (json.dumps(meta, indent=1) + "\n").encode())
    return calibration or {}


def eval_folder(
    task,
    folder: Path | str,
    split: str,
    cfg,
    predict,
    data: Path | str | None = None,
    record: bool = True,
    progress: bool = False,
) -> dict:
    """Score the model of the model folder `folder` (`predict`, decoding by `cfg`) on `split`
    of `data` (default: the cache model.json names, else its config's corpus). With
    `record`, the result replaces the
    folder's test score for that split in model.json, so the scores that ship with a model
    can follow a change of decoding without choosing it again (`calibrate_folder`) or
    re-training anything; only where `data` is the cache the folder's scores were made on
    (model.json's "data", absent for its config's corpus), so that no score of another
    dataset takes a split's place unnamed. Returns the record, as `jaxmir eval` writes for
    a run."""
    from jaxmir.engine.run import resolve_data

    folder = Path(folder)
    meta_path = folder / "model.json"
    meta = read_json(meta_path) if meta_path.is_file() else {}
    own = meta.get("data") and data_record(meta["data"])  # None: the config's corpus
    data = data if data is not None else own
    cache = resolve_data(task, cfg, data, progress=progress, split=split)
    result = _score(task, predict, cfg, cache, split, meta, folder, progress)
    if record and own == (None if data is None else data_record(data)):
        _write(meta_path, (json.dumps({**meta, f"eval_{split}": result}, indent=1) + "\n").encode())
    return result


def _score(task, predict, cfg, cache, split: str, meta: dict, folder: Path, progress: bool) -> dict:
    """One split's scores with the decoding they were made with (paths inside `folder` made
    relative to it, as `eval` writes them), at the step of the folder's `meta` (model.json);
    a test-soundfont split names its soundfont (from `cfg`, else from `meta`: a run's, whose
    path the folder's config does not keep)."""
    scores = task.evaluate(predict, cfg, cache, split, progress=progress)
    record = {"task": task.name, "split": split, "step": meta.get("step"), **scores}
    record["decode"] = relative_to(dataclasses.asdict(cfg.decode), folder)
    soundfont = test_soundfont_record(cfg.data)
    if not soundfont and split.startswith("test_sf_") and "test_soundfont" in meta:
        soundfont = {"test_soundfont": meta["test_soundfont"]}
    return {**record, **soundfont}


def _scores(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("task", "split", "step", "decode")}


def data_record(data: Path | str) -> str:
    """How model.json names a feature cache: its resolved path (one spelling per folder)."""
    return str(Path(data).resolve())


def relative_to(values: dict, folder: Path) -> dict:
    """`values` with each string that is a path inside `folder` made relative to it."""
    inside = f"{Path(folder).resolve()}{os.sep}"
    return {
        k: v[len(inside) :] if isinstance(v, str) and v.startswith(inside) else v
        for k, v in values.items()
    }


def _member_models(task, path: Path) -> tuple:
    """(config, [variables], provenance) of an ensemble member: a run's best checkpoint, or
    the model(s) of an exported model folder."""
    from jaxmir.engine.ensemble import members_of
    from jaxmir.engine.run import restore_for_inference

    if is_model_folder(path):
        cfg, _mesh, state = load_model(task, path)
        meta_path = path / "model.json"
        meta = read_json(meta_path) if meta_path.is_file() else {}
        source = {"run": meta.get("run"), "step": meta.get("step"), "from": "model folder"}
        if members_of(state) > 1:
            return cfg, list(jax.device_get(state.params)), source
        return cfg, [_final_variables(state)], source
    cfg, _mesh, state, step = restore_for_inference(task, path)
    return cfg, [_final_variables(state)], {"run": path.name, "step": step}


def _label_fields(data_config) -> dict:
    """The data config's fields that decide what the model's outputs mean."""
    values = dataclasses.asdict(data_config)
    return {k: values[k] for k in ("label_mode",) if k in values}


def load_for_inference(task, path: Path | str | None = None):
    """(cfg, mesh, state) for inference from a trained run (its best checkpoint), an exported
    model folder, or, for None, the model shipped with the package."""
    if path is None or is_model_folder(path):
        return load_model(task, path)
    from jaxmir.engine.run import restore_for_inference

    cfg, mesh, state, _ = restore_for_inference(task, Path(path))
    return cfg, mesh, state


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
        task.config_from_dict(read_json(folder / "config.json"), folder / "config.json"),
        folder,
    )
    mesh = make_mesh(jax.devices()[:1])
    # zeros of the state's shapes: only the variables matter for inference, and they are read
    # next (compiling the model's initialisers would take ~40 s on a CPU)
    state = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_state(task, cfg, mesh))
    target = dict(state.variables)

    def read(file: Path) -> dict:
        try:
            return serialization.from_bytes(target, file.read_bytes())
        except (ValueError, KeyError, TypeError) as e:
            raise ShippedModelError(f"{file}: does not fit the {task.name} model ({e})") from None

    variables = read(path)
    state = state.replace(
        params=variables["params"], batch_stats=variables.get("batch_stats", state.batch_stats)
    )
    extra = []
    while (folder / MEMBER.format(len(extra) + 1)).is_file():
        extra.append(read(folder / MEMBER.format(len(extra) + 1)))
    if extra:
        from jaxmir.engine.ensemble import ensemble_state

        state = ensemble_state(state, [variables, *extra])
    return cfg, mesh, state


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
