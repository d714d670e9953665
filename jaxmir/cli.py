"""The `jaxmir` command: train, eval, calibrate, transcribe, export, info, features, synth.

Exit codes (`EXIT_STATUS`, also in `jaxmir --help`): 0 success; 1 some inputs skipped
(transcribe, features), a run stopped by a NaN loss, a full disk or an unexpected error; 2 bad
usage (unknown task, preset, config key or value; missing, empty or unreadable data), with one
clear line on stderr; 75 (EX_TEMPFAIL) stopped by SIGTERM (any command), or a training run by
Ctrl-C, after saving a checkpoint: re-run the same command to resume (what a
pre-emption-aware launcher should do); 130 Ctrl-C outside training.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import signal
import sys
import warnings
from pathlib import Path

from jaxmir.config import ConfigError, apply_overrides, read_json, validate
from jaxmir.usage import UsageError, check_output_folder, worker_count

EXIT_STATUS = """
exit status:
  0    done
  1    some inputs skipped (transcribe, features: the others written), a run stopped by a NaN
       loss (its last good checkpoint kept), eval's scores printed but not recorded in the
       run, a full disk, or an unexpected error
  2    bad usage: an unknown task, preset, config key or value; missing, empty or unreadable
       data; a busy workdir (one line on stderr, nothing written)
  75   stopped by SIGTERM (any command), or train by Ctrl-C, keeping what was written (a
       run's checkpoint saved): run the same command again to go on
  130  Ctrl-C elsewhere (features and synth keep what they wrote)
"""

EPILOG = (
    """examples:
  jaxmir train beat --preset demo                 train on the embedded corpus
  jaxmir train beat --workdir runs/b1 --set train.epochs=20 --set optim.learning_rate=3e-4
  jaxmir eval beat --workdir runs/b1 --split test
  jaxmir transcribe beat song.mid --workdir runs/b1 -o out/
  jaxmir info beat --preset paper
  jaxmir features beat --dataset midi --root my_midis/ --out cache/beat-midi
  jaxmir synth --out corpus/ --pieces 48 -j 2      render the synthetic audio corpus
  jaxmir features music --dataset synth --root corpus/ --out cache/music -j 2
  jaxmir train vocal_contour --preset demo --workdir runs/vc
  jaxmir transcribe vocal_contour song.wav --workdir runs/vc -o out/   (song_f0.csv + PNG)
  jaxmir features patch_cnn --dataset mir1k --root MIR-1K/ --out cache/pcnn-mir1k
  jaxmir train vocal --preset demo --workdir runs/v --set data.unlabelled=my_songs/
  jaxmir transcribe vocal song.wav --workdir runs/v -o out/   (song.mid, song_notes.csv, PNG)
  jaxmir eval vocal --workdir runs/v --set decode.contour_workdir=runs/vc   (pitch from a
                                                          trained vocal_contour run)
"""
    + EXIT_STATUS
)


def _parser() -> argparse.ArgumentParser:
    from jaxmir.inference import AUDIO_SUFFIXES, MIDI_SUFFIXES

    p = argparse.ArgumentParser(
        prog="jaxmir",
        description="Train, evaluate and run music-information-retrieval models (JAX/Flax).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a task's model (resumes a workdir with a checkpoint)")
    t.add_argument("task", help=TASKS_HELP)
    t.add_argument(
        "--preset",
        default=None,
        help="tiny | demo | paper for every task; quality for music and beat; wide for beat "
        "(default: demo, or the workdir's saved config when resuming)",
    )
    t.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="run directory (default runs/<task>-<preset>-<timestamp>)",
    )
    t.add_argument(
        "--data",
        type=Path,
        default=None,
        help="feature cache from `jaxmir features` (default: the embedded corpus)",
    )
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.epochs=3 (JSON values)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    e = sub.add_parser(
        "eval",
        help="score a trained run (or a model folder) with mir_eval on whole pieces",
        description="Score the run's best checkpoint (or --step) on a split, with its "
        "calibrated decoding unless --set decode.* says otherwise, and write "
        "WORKDIR/eval/SPLIT.json (SPLIT@FOLDER-DIGEST.json for a --data that is not the "
        "run's own). --workdir may also be an exported model folder (`jaxmir "
        "export`, or the package's own, jaxmir/models/TASK): its model is scored with its "
        "stored decoding and, without --set and on the cache its scores were made on (its own "
        "corpus, or the --data it was exported or calibrated with, which its model.json names), "
        "the scores replace that split's in its model.json (nothing is re-trained or "
        "re-calibrated); on other data, and for the package's own folder, they are printed "
        "only.",
    )
    e.add_argument("task", help=TASKS_HELP)
    e.add_argument(
        "--workdir",
        type=Path,
        required=True,
        metavar="RUN_OR_MODEL_FOLDER",
        help="a training run's folder, or a model folder (`jaxmir export`'s, jaxmir/models/TASK)",
    )
    e.add_argument(
        "--split",
        default="test",
        help="a split of the cache (default test): val, test, or another the cache holds, "
        "e.g. test_piano, test_mixed, test_heldout, test_sf_piano with --test-soundfont (music) "
        "or test_unseen (beat)",
    )
    e.add_argument(
        "--data", type=Path, default=None, help="feature cache (default: the run's or model's)"
    )
    e.add_argument("--step", type=int, default=None, help="checkpoint step (default: best)")
    e.add_argument(
        "--test-soundfont",
        type=Path,
        default=None,
        metavar="SF2",
        help="music: render the embedded corpus's test pieces again with this SoundFont 2 file "
        "alone, piano and mixed (splits test_sf_piano, test_sf_mixed), to see how the model "
        "holds up on instruments it never heard; the corpus gets its own cache (rendered once)",
    )
    _add_decode_set(e)
    e.add_argument("--no-progress", action="store_true", help="no progress bars")

    c = sub.add_parser(
        "calibrate",
        help="choose a run's (or a model folder's) decoding again on its validation pieces",
        description="Choose the decoding thresholds that maximise the validation score with "
        "the run's best checkpoint, as training does when it ends, and store them in the "
        "workdir's decode.json (eval and transcribe use them). For a run trained before the "
        "threshold grids grew, or one whose calibration was interrupted. --workdir may also "
        "be an exported model folder (`jaxmir export`; not the package's own, jaxmir/models/"
        "TASK: calibrate a copy): its decoding is chosen again from its stored settings, and its "
        "config.json and model.json (calibration and test scores) are rewritten. Tasks with a "
        "decoding to choose: music and beat (beat also re-trains the downbeat and level "
        "taggers its config uses, on the training pieces: minutes on a CPU).",
    )
    c.add_argument("task", help="music | beat")
    c.add_argument(
        "--workdir",
        type=Path,
        required=True,
        metavar="RUN_OR_MODEL_FOLDER",
        help="a training run's folder, or a model folder `jaxmir export` wrote",
    )
    c.add_argument(
        "--data", type=Path, default=None, help="feature cache (default: the run's or model's)"
    )
    c.add_argument("--no-progress", action="store_true", help="no progress bars")

    r = sub.add_parser(
        "transcribe",
        help="run a trained model on input files or folders",
        description="Transcribe files, or every file of a folder that the task reads (audio: "
        + ", ".join(AUDIO_SUFFIXES)
        + "; beat: "
        + ", ".join(MIDI_SUFFIXES)
        + "), in one process: the model compiles once per window shape; for music, beat and "
        "vocal_contour every file's windows share its batches, the other tasks batch each "
        "file's own. Of several inputs, a file that cannot be "
        "read is skipped with its reason and the others are transcribed; the command then "
        "exits 1 (2 when no input could be read). A file of the other kind (audio given to beat, "
        "MIDI to an audio task) stops the command (exit 2) before the model loads. Beat: a "
        "MIDI file that reads as a score (its own meter map, its onsets on that map's grid) "
        "is tracked at its notated beat level and read in bars of its time signature's length "
        "(--set decode.notated_level=false / decode.notated_bars=false: from the notes alone), "
        "and a line on stderr says how far the tracked beats agree with its map (its beat, a "
        "half or a double of it; beat and downbeat F).",
    )
    r.add_argument("task", help=TASKS_HELP)
    r.add_argument("inputs", nargs="+", type=Path, help="files and/or folders")
    r.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="a trained run or an exported model folder (`jaxmir export`; default: the model "
        "shipped with jaxmir, where the task has one)",
    )
    r.add_argument(
        "-o", "--outdir", type=Path, default=Path("."), help="folder to write (default: here)"
    )
    _add_decode_set(r)
    r.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"windows (patch_cnn: patches) per model call, 1-{MAX_BATCH} (default: 4 on CPU, "
        "16 elsewhere; for chord, drum, vocal and patch_cnn the model's train.val_batch_size)",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bar")

    i = sub.add_parser(
        "info",
        help="model size and shapes of a preset (no compute)",
        description="Print a preset's model: its parameter count (and omnizart's count, where "
        "they differ), input and output shapes, as one line and as JSON. Nothing is trained, "
        "read or compiled (jax.eval_shape).",
    )
    i.add_argument("task", help=TASKS_HELP)
    i.add_argument(
        "--preset", default="paper", help="the preset to describe (default: paper, omnizart's size)"
    )
    i.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. model.hidden=64 (beat), model.base=64 (music); the keys "
        "as in a run's config.json",
    )

    f = sub.add_parser(
        "features",
        help="turn a dataset folder into a feature cache",
        description="Read a dataset folder in its official layout, compute the task's features "
        "and labels for every piece, and write them as a cache that `jaxmir train --data` and "
        "`jaxmir eval --data` read. Pieces already in the cache are kept; a file that cannot be "
        "read is skipped with its reason (exit 1, as transcribe; exit 2 when none could be "
        "read).",
    )
    f.add_argument("task", help=TASKS_HELP)
    f.add_argument(
        "--dataset",
        required=True,
        help="dataset layout: beat midi|musicnet; music synth|maestro|maps|musicnet; "
        "vocal synth|tonas|mir1k; vocal_contour and patch_cnn synth|mir1k|medleydb|tonas; "
        "chord synth|billboard; drum synth|enst|mdb_drums",
    )
    f.add_argument("--root", type=Path, required=True, help="the dataset's folder")
    f.add_argument("--out", type=Path, required=True, help="cache directory to write")
    f.add_argument("-j", "--workers", type=int, default=1, help="worker processes (default 1)")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")
    from jaxmir.data.synth.cli import add_synth_parser

    add_synth_parser(sub)

    x = sub.add_parser(
        "export",
        help="write a run's best model as a shipped-model folder (weights, config, thresholds)",
        description="Write the run's best checkpoint as a model folder: its weights "
        "(msgpack), config, calibrated decoding and test scores. `jaxmir transcribe` and "
        "`jaxmir eval` take the folder as --workdir; the package's own models are such folders "
        "(jaxmir/models/TASK).",
    )
    x.add_argument("task", help=TASKS_HELP)
    x.add_argument("--workdir", type=Path, required=True, metavar="RUN", help="a training run")
    x.add_argument("--out", type=Path, required=True, help="folder to write")
    x.add_argument(
        "--member",
        type=Path,
        action="append",
        default=[],
        metavar="RUN",
        help="another run (or exported model folder) of the same model config to average with "
        "(repeatable): the folder holds an ensemble, whose decoding is calibrated again and "
        "whose test splits are scored on the first run's data (or --data)",
    )
    x.add_argument("--data", type=Path, default=None, help="feature cache for --member's scoring")
    x.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


TASKS_HELP = "beat | music | chord | drum | vocal | vocal_contour | patch_cnn"  # every task


def _add_decode_set(parser: argparse.ArgumentParser) -> None:
    """`--set decode.KEY=V` of the commands that run a trained model (eval, transcribe)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="decode.KEY=V",
        help="override one of the model's decode.* settings (repeatable; the settings are "
        "the fields of the task's decode config: README, docs/beat.md, docs/music.md)",
    )


EXIT_INTERRUPTED = 75  # sysexits' EX_TEMPFAIL: saved, not finished; run again to resume


def _config_for(task, preset: str | None, overrides: list[str], workdir: Path | None):
    from jaxmir.engine.run import checkpoint_config

    saved = workdir / "config.json" if workdir is not None else None
    resumed, source = None, saved  # without --preset: the run's config, or its checkpoint's
    if preset is None and saved is not None and saved.is_file():
        resumed = read_json(saved)
    elif preset is None and saved is not None:
        resumed, source = checkpoint_config(workdir), workdir / "checkpoints"
    cfg = task.config_from_dict(resumed, source) if resumed else task.preset(preset or "demo")
    cfg = validate(apply_overrides(cfg, overrides))
    task.check_training(cfg)  # first: a setting training cannot use says so, whatever else
    return _checked_decode(task, cfg)


def _checked_decode(task, cfg):
    """`cfg` (its relative paths made absolute), or the ConfigError of the task's
    `check_decode`, before any model loads or runs."""
    cfg = task.paths_from_here(cfg)
    task.check_decode(cfg)
    return cfg


def cmd_train(args) -> int:
    from jaxmir.engine.run import default_workdir, train
    from jaxmir.engine.sharding import check_batch_sizes, is_primary, make_mesh
    from jaxmir.tasks.base import get_task

    task = get_task(args.task)
    cfg = _config_for(task, args.preset, args.overrides, args.workdir)
    check_batch_sizes(cfg, make_mesh())  # before anything is written (train checks the rest)
    if args.workdir is None and not is_primary():
        raise UsageError("a multi-process run needs --workdir (a folder every process shares)")
    workdir = args.workdir or default_workdir(cfg)
    check_output_folder(workdir, "--workdir" if args.workdir else "the default workdir")
    progress = not args.no_progress and is_primary()
    # data: --data, else the cache the run began on, else the embedded corpus; its checks come
    # before the workdir is made
    result = train(task, cfg, workdir, args.data, progress=progress)
    if result.status.startswith("interrupted"):
        print(f"Interrupted; checkpoint saved. Resume with the same command (--workdir {workdir}).")
        return EXIT_INTERRUPTED
    if result.status.startswith("failed"):  # a launcher must not count it as done
        print(f"jaxmir train: {result.status}", file=sys.stderr)
        return 1
    for line in replaced_decode_settings(cfg, args.overrides, workdir):
        print(line, file=sys.stderr)
    return 0


def replaced_decode_settings(cfg, overrides: list[str], workdir: Path) -> list[str]:
    """A line for each `decode.*` value given to `train` that the end-of-training calibration
    replaced in the run's decode.json (eval and transcribe use decode.json's)."""
    from jaxmir.engine.run import DECODE_FILE

    path = Path(workdir) / DECODE_FILE
    keys = [
        o.split("=", 1)[0].removeprefix("decode.") for o in overrides if o.startswith("decode.")
    ]
    if not keys or not path.is_file():
        return []
    try:
        chosen = read_json(path)["decode"]
    except (ValueError, KeyError, TypeError):
        return []
    lines = []
    for key in keys:
        given = getattr(cfg.decode, key, None)
        if key in chosen and chosen[key] != given:
            lines.append(
                f"note: decode.{key}={given} was given to train, and calibration chose "
                f"{chosen[key]} in {path}, which eval and transcribe use; give it to them with "
                f"--set decode.{key}={given} (or --set decode.calibrate=false before training)"
            )
    return lines


def _restore(task, workdir: Path, step: int | None, overrides: list[str] = ()):
    """The run's config (with `decode.*` overrides: how to decode may change after training,
    nothing else may) and its checkpoint."""
    from jaxmir.engine.run import RestoreError, restore_for_inference

    bad = [o for o in overrides if not o.startswith("decode.")]
    if bad:
        raise UsageError(f"{bad[0]}: only decode.* keys can change after training")
    try:
        cfg, mesh, state, step = restore_for_inference(task, workdir, step)
    except RestoreError as e:
        raise UsageError(str(e)) from None
    return (
        _checked_decode(task, validate(apply_overrides(cfg, list(overrides)), training=False)),
        mesh,
        state,
        step,
    )


def _shipped(task, overrides: list[str], folder: Path | None = None):
    """The model shipped with the package for `task`, or the exported model folder `folder`
    (config, mesh, state)."""
    from jaxmir.shipped import ShippedModelError, load_model

    bad = [o for o in overrides if not o.startswith("decode.")]
    if bad:
        raise UsageError(f"{bad[0]}: only decode.* keys can change after training")
    try:
        cfg, mesh, state = load_model(task, folder)
    except ShippedModelError as e:
        raise UsageError(str(e)) from None
    return (
        _checked_decode(task, validate(apply_overrides(cfg, list(overrides)), training=False)),
        mesh,
        state,
    )


def cmd_export(args) -> int:
    from jaxmir.engine.run import run_data
    from jaxmir.shipped import export_model, is_model_folder
    from jaxmir.tasks.base import get_task

    task = get_task(args.task)
    check_output_folder(args.out, "--out")
    if args.out.resolve() == args.workdir.resolve():
        raise UsageError(f"--out {args.out}: the run's own workdir; name another folder")
    if args.out.is_dir() and any(args.out.iterdir()) and not is_model_folder(args.out):
        raise UsageError(
            f"--out {args.out}: holds files and is no model folder; name a new or empty folder"
        )
    info = {}
    for path in sorted((args.workdir / "eval").glob("*.json")):
        # the run's test scores, as `jaxmir eval` wrote them (every split evaluated but val)
        record = read_json(path)
        if "data" in record:  # scored on another cache than the run's
            print(
                f"{path}: scored on {record['data']}, not the run's data: left out", file=sys.stderr
            )
        elif path.stem != "val":
            info[f"eval_{path.stem}"] = record
    for member in args.member:
        if Path(member).resolve() == Path(args.workdir).resolve():
            raise UsageError(
                f"--member {member}: the run being exported (--workdir) is the first member"
            )
    if len({Path(m).resolve() for m in args.member}) < len(args.member):
        raise UsageError("--member: a member given twice")
    if args.data is not None and not args.member:
        raise UsageError("--data: the cache for --member's scoring; give it with --member")
    # the cache of the run's scores (named in model.json), or the members' scoring cache
    data = args.data or run_data(args.workdir, must_exist=bool(args.member))
    try:
        out = export_model(
            task,
            args.workdir,
            args.out,
            info,
            members=args.member,
            data=data,
            progress=not args.no_progress,
        )
    except ValueError as e:  # RestoreError (no run or checkpoint there), members that differ
        raise UsageError(str(e)) from None
    print(out)
    return 0


def cmd_eval(args) -> int:
    from jaxmir.engine.run import make_predict, resolve_data, run_data
    from jaxmir.shipped import data_record, eval_folder, in_package, is_model_folder, relative_to
    from jaxmir.tasks.base import get_task, test_soundfont_record

    task = get_task(args.task)
    progress = not args.no_progress
    _check_test_soundfont(args)
    if is_model_folder(args.workdir):  # an exported model folder
        if args.step is not None:
            raise UsageError(f"--step: {args.workdir} is a model folder (one step, no checkpoints)")
        cfg, mesh, state = _shipped(task, args.overrides, args.workdir)
        cfg = _with_test_soundfont(cfg, args)
        result = eval_folder(
            task,
            args.workdir,
            args.split,
            cfg,
            make_predict(mesh, state),
            args.data,
            # and on the cache of its scores (`eval_folder`); never the package's own scores
            record=not args.overrides and not in_package(args.workdir),
            progress=progress,
        )
        print(json.dumps(result))
        return 0
    cfg, mesh, state, step = _restore(task, args.workdir, args.step, args.overrides)
    cfg = _with_test_soundfont(cfg, args)
    data = args.data
    if data is None and args.test_soundfont is None:
        data = run_data(args.workdir)
    cache = resolve_data(task, cfg, data, progress=progress, split=args.split)
    metrics = task.evaluate(make_predict(mesh, state), cfg, cache, args.split, progress=progress)
    result = {"task": task.name, "split": args.split, "step": step, **metrics}
    result.update(test_soundfont_record(cfg.data))
    # the settings used (calibrated or --set); files of the run named relative to it
    result["decode"] = relative_to(dataclasses.asdict(cfg.decode), args.workdir)
    try:
        own = run_data(args.workdir, must_exist=False)
    except ValueError:  # run.json torn (CacheError; it asked for --data): scored on that cache
        own = None
    name = args.split
    if args.data is not None and data_record(args.data) != (own and data_record(own)):
        result["data"] = data_record(cache.root)  # not the run's cache: export leaves it out
        # beside the run's own score of the split, which it replaced (and export then lost)
        digest = hashlib.sha1(result["data"].encode()).hexdigest()[:8]
        name = f"{args.split}@{Path(cache.root).name}-{digest}"
    out = args.workdir / "eval" / f"{name}.json"
    print(json.dumps(result))  # before the record: a run folder it cannot write loses nothing
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    except OSError as e:
        print(
            f"jaxmir eval: warning: scores not recorded in {out} ({e.strerror or e}); export "
            "will not see them",
            file=sys.stderr,
        )
        return 1
    return 0


def _check_test_soundfont(args) -> None:
    """Fail early (before any model loads) on a `--test-soundfont` that cannot be used."""
    if args.test_soundfont is None:
        return
    if args.task != "music":
        raise UsageError("--test-soundfont: music only (its models trained on the varied corpus)")
    if args.data is not None:
        raise UsageError("--test-soundfont renders the embedded corpus: leave out --data")
    from jaxmir.data.synth.render import soundfont_digest

    soundfont_digest(args.test_soundfont)  # SoundfontError: not there, or not a soundfont


def _with_test_soundfont(cfg, args):
    """`cfg` whose corpus also renders the test pieces with `--test-soundfont` (if given)."""
    if args.test_soundfont is None:
        return cfg
    if not hasattr(cfg.data, "corpus_test_soundfont") or cfg.data.corpus_voices is None:
        raise UsageError(
            f"--test-soundfont: this {args.task} model was not trained on the varied corpus "
            "(music's demo and quality presets), whose test pieces it renders again"
        )
    path = str(args.test_soundfont.resolve())
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, corpus_test_soundfont=path))


def cmd_calibrate(args) -> int:
    from jaxmir.engine.run import RestoreError, calibrate_decoding, resolve_data, run_data
    from jaxmir.shipped import calibrate_folder, in_package, is_model_folder
    from jaxmir.tasks.base import get_task

    task = get_task(args.task)
    if not hasattr(task, "calibrate"):
        raise UsageError(f"{task.name}: this task has no decoding to calibrate")
    if in_package(args.workdir):
        raise UsageError(
            f"{args.workdir}: the model that ships with jaxmir (its decoding and published scores "
            f"would be replaced for every later command); copy it (cp -r {args.workdir} COPY) "
            "and calibrate the copy"
        )
    saved = args.workdir / "config.json"
    if not saved.is_file():
        what = "a folder, not a file" if saved.is_dir() else "no such file"
        raise UsageError(f"{saved}: {what} (not a training run's workdir)")
    if is_model_folder(args.workdir):  # an exported model folder
        calibrate_folder(task, args.workdir, data=args.data, progress=not args.no_progress)
        return 0
    cfg = task.config_from_dict(read_json(saved), saved)
    data = args.data or run_data(args.workdir)
    progress = not args.no_progress
    cache = resolve_data(task, cfg, data, progress=progress)
    try:
        result = calibrate_decoding(task, args.workdir, cache, progress=progress, raise_errors=True)
    except RestoreError as e:
        raise UsageError(str(e)) from None
    if not result:
        raise UsageError(f"{args.workdir}: the run's config turns calibration off")
    return 0


#: The most windows per model call `transcribe` accepts (a batch is allocated in full: 100,000
#: music windows asked for 50 GiB).
MAX_BATCH = 1024


def out_of_memory(e: BaseException) -> bool:
    """Whether `e` says memory ran out: numpy's (a MemoryError) or XLA's (RESOURCE_EXHAUSTED)."""
    return isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e)


#: A file name's limit (255 bytes on common file systems) less the longest suffix a task
#: writes after an input's stem ("_pianoroll.png", "_downbeats.csv") and some room.
MAX_STEM_BYTES = 255 - 16


def transcribe_inputs(
    inputs: list[Path],
    suffixes: tuple[str, ...],
    missing: list[Path] | None = None,
    outdir: Path | None = None,
) -> list[Path]:
    """The files to transcribe: each file as given, each folder's files with one of `suffixes`
    (not recursive, sorted); UsageError naming a missing input, a folder without such files, a
    file of the other kind (audio given to a task that reads MIDI, or MIDI to one that reads
    audio), a name too long for its outputs, or two inputs that would write the same outputs
    (same stem; a file given twice, or in a folder given too, is taken once). Given a list
    `missing`, an input that does not exist is added to it instead (one of several inputs:
    skipped, the others transcribed)."""
    from jaxmir.inference import AUDIO_SUFFIXES, MIDI_SUFFIXES

    kind_of = {
        s: kind
        for kind, known in (("audio", AUDIO_SUFFIXES), ("MIDI", MIDI_SUFFIXES))
        for s in known
    }
    reads = {kind_of.get(s.lower()) for s in suffixes} - {None}
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            visible = [p for p in path.iterdir() if not p.name.startswith(".")]
            found = sorted(p for p in visible if p.is_file() and p.suffix.lower() in suffixes)
            _say_left_out(path, visible, suffixes, outdir)
            if not found:
                raise UsageError(
                    f"{path}: is a folder, not a file, and holds no {'/'.join(suffixes)} files"
                )
            files.extend(found)
        elif path.is_file():
            kind = kind_of.get(path.suffix.lower())
            if kind is not None and reads and kind not in reads:
                raise UsageError(
                    f"{path}: is {kind}, and this task reads {' or '.join(sorted(reads))} files "
                    f"({', '.join(suffixes)})"
                )
            files.append(path)
        elif missing is not None:  # named once, however often given
            if all(path.resolve() != m.resolve() for m in missing):
                missing.append(path)
        else:
            raise UsageError(f"{path}: no such file")
    once: dict[Path, Path] = {}  # each file once, where first given
    for path in files:
        once.setdefault(path.resolve(), path)
    files = list(once.values())
    seen: dict[str, Path] = {}
    for path in files:
        if len(os.fsencode(path.stem)) > MAX_STEM_BYTES:
            raise UsageError(
                f"{path}: its name is too long for the files written from it (at most "
                f"{MAX_STEM_BYTES} bytes before the extension; rename or link it)"
            )
        if path.stem in seen:
            raise UsageError(
                f"{path}: same name as {seen[path.stem]} (both would write {path.stem}.*)"
            )
        seen[path.stem] = path
    return files


def _say_left_out(
    folder: Path, visible: list[Path], suffixes: tuple[str, ...], outdir: Path | None = None
) -> None:
    """A line on stderr for what a folder holds (`visible`: its entries not hidden) that
    transcription does not read and a user may expect it to: subfolders (it does not recurse;
    the output folder is not one to say) and links to no file of a kind it reads."""
    out = outdir.resolve() if outdir is not None else None
    subfolders = [p for p in visible if p.is_dir() and p.resolve() != out]
    dangling = [
        p for p in visible if p.is_symlink() and not p.exists() and p.suffix.lower() in suffixes
    ]
    said = []
    if subfolders:
        said.append(f"{len(subfolders)} subfolder(s) not read (the first: {subfolders[0].name})")
    if dangling:
        said.append(f"{len(dangling)} link(s) to no file (the first: {dangling[0].name})")
    if said:
        print(f"jaxmir transcribe: {folder}: {'; '.join(said)}", file=sys.stderr)


def _without_earlier_outputs(task, paths: list[Path], outdir: Path) -> list[Path]:
    """`paths` less the inputs that transcribing one of them into `outdir` writes over: an
    earlier run's output (beat's `STEM_beats.mid`, found again in the folder) is left out and
    named; a user's own file of that name is a UsageError, before anything is written."""
    from tqdm import tqdm

    writes = {(outdir / n).resolve(): p for p in paths for n in task.readable_outputs(p.stem)}
    kept = []
    for path in paths:
        by = writes.get(path.resolve())
        if by is None:
            kept.append(path)
        elif task.is_own_output(path):
            note = f"{path}: written by an earlier transcription of {by}, not read"
            tqdm.write(f"jaxmir transcribe: {note}", file=sys.stderr)
        else:
            raise UsageError(f"{path}: transcribing {by} into {outdir} would write over it (-o)")
    return kept


def cmd_transcribe(args) -> int:
    import time

    start = time.perf_counter()
    startup_s = _process_age()
    from tqdm import tqdm

    from jaxmir.engine.run import make_predict
    from jaxmir.inference import AUDIO_SUFFIXES, Timings
    from jaxmir.shipped import is_model_folder
    from jaxmir.tasks.base import get_task
    from jaxmir.transcribed import check_outputs_free, record_written

    task = get_task(args.task)
    if args.batch_size is not None and not 1 <= args.batch_size <= MAX_BATCH:
        raise UsageError(f"--batch-size: 1 to {MAX_BATCH}, got {args.batch_size}")
    suffixes = getattr(task, "input_suffixes", lambda: AUDIO_SUFFIXES)()
    # all checked before the model is restored; of several inputs, a missing one is skipped
    missing: list[Path] | None = [] if len(args.inputs) > 1 else None
    paths = transcribe_inputs(args.inputs, suffixes, missing, args.outdir)
    missing = missing or []
    check_output_folder(args.outdir, "-o")
    paths = _without_earlier_outputs(task, paths, args.outdir)
    if not paths and not missing:
        raise UsageError("nothing to transcribe: the inputs are this command's earlier outputs")
    check_outputs_free(task, paths, args.outdir)  # no user's file is written over
    n_inputs = len(paths) + len(missing)
    skipped: list[Path] = []

    def skip(path: Path, error: Exception) -> None:  # one bad file among several
        skipped.append(path)
        tqdm.write(f"jaxmir transcribe: skipped {error}", file=sys.stderr)

    def unread_error() -> int:
        print(
            f"jaxmir transcribe: error: {len(skipped)} of {n_inputs} inputs could not be read "
            "(named above)",
            file=sys.stderr,
        )
        return 2 if len(skipped) == n_inputs else 1

    for path in missing:
        skip(path, UsageError(f"{path}: no such file"))
    if not paths:  # none of several inputs exists: no model to load
        return unread_error()
    if args.workdir is None or is_model_folder(args.workdir):  # shipped, or exported
        cfg, mesh, state = _shipped(task, args.overrides, args.workdir)
    else:
        cfg, mesh, state, _ = _restore(task, args.workdir, None, args.overrides)
    restore_s = time.perf_counter() - start
    predict = make_predict(mesh, state)
    timings = Timings()
    # one file: a bar (seconds of audio) where someone watches; a folder: always
    progress = not args.no_progress and (len(paths) > 1 or sys.stderr.isatty())

    if hasattr(task, "transcribe_iter"):
        results = task.transcribe_iter(
            predict,
            paths,
            cfg,
            args.outdir,
            progress,
            batch_size=args.batch_size,
            timings=timings,
            on_unreadable=skip if n_inputs > 1 else None,
            on_written=lambda source, written: record_written(task, source, written, args.outdir),
        )
    else:  # a task of one's own with only `transcribe`
        results = ((p, task.transcribe(timings.timed(predict), p, cfg, args.outdir)) for p in paths)
    try:
        for source, written in results:
            for path in written:  # stdout, for scripts; past the bar where both are a terminal
                tqdm.write(str(path), file=sys.stdout)
                sys.stdout.flush()
            try:
                note = task.transcription_note(source, written, cfg)
            except Exception as e:  # a note only informs: it must not end a folder's run
                note = f"{source}: no note on its transcription ({type(e).__name__}: {e})"
            if note:
                tqdm.write(note, file=sys.stderr)
    except Exception as e:
        if not out_of_memory(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (
            f"a smaller --batch-size than {args.batch_size}"
            if args.batch_size
            else "a shorter file"
        )
        raise UsageError(f"out of memory ({first[:200]}); {hint} needs less") from e
    total_s = startup_s + time.perf_counter() - start
    if len(skipped) < n_inputs:
        print(transcribe_summary(timings, total_s, restore_s, startup_s), file=sys.stderr)
    if skipped:
        return unread_error()
    return 0


def transcribe_summary(t, total_s: float, restore_s: float, startup_s: float = 0.0) -> str:
    """One line: files, minutes of audio, seconds in all, seconds of compute per minute of
    audio (start-up, restore and compile excluded: they are one-off), its split, the one-off
    seconds."""
    minutes = t.audio_s / 60.0
    compute = max(total_s - startup_s - restore_s - t.compile_s, 0.0)

    def per_min(s: float) -> str:  # "-" under a second of audio: no rate worth printing
        return f"{s / minutes:.2f}" if t.audio_s >= 1.0 else "-"

    split = (
        f"features {per_min(t.features_s)}, model {per_min(t.model_s)}, "
        f"decode+write {per_min(t.write_s)}"
    )
    # a batch shape called once cannot tell its compilation from its run: both count there
    once = any(len(times) == 1 for times in t.calls.values())
    alone = " (with the model's only call of a batch shape)" if once else ""
    if t.unsplit_s:  # a task that transcribes each file in one call: no finer split
        split = f"features+decode+write {per_min(t.unsplit_s)}, model {per_min(t.model_s)}"
    return (
        f"transcribed {t.files} file{'s' if t.files != 1 else ''}, {minutes:.2f} min of audio, "
        f"in {total_s:.1f} s: {per_min(compute)} s/min ({split}); one-off: start-up "
        f"{startup_s:.1f} s, restore {restore_s:.1f} s, compile {t.compile_s:.1f} s{alone}"
    )


def _process_age() -> float:
    """Seconds since this process started (interpreter, imports, the malloc re-exec: the
    same PID) when it is the `jaxmir` command (console script or `python -m jaxmir`); 0 in
    another program (a test, a script calling `main`) or where /proc does not say."""
    import time

    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    as_command = Path(sys.argv[0]).name == "jaxmir" or (
        main_spec is not None and main_spec.name == "jaxmir.__main__"
    )
    if not as_command:
        return 0.0
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        started = boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")
        return max(time.time() - started, 0.0)
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0


def cmd_info(args) -> int:
    import numpy as np

    from jaxmir.engine.state import count_params
    from jaxmir.tasks.base import abstract_variables, get_task

    task = get_task(args.task)
    cfg = validate(apply_overrides(task.preset(args.preset), args.overrides))
    variables, out = abstract_variables(task, cfg, output=True)
    spec = task.input_spec(cfg)
    omnizart, why = task.omnizart_params(variables["params"])
    info = {
        "task": task.name,
        "preset": cfg.preset,
        "model": cfg.model.name,
        "params": count_params(variables["params"]),
        "omnizart_params": omnizart,  # as Keras counts the omnizart model
        "input_shape": list(spec.shape),
        "output_shape": list(np.shape(out)[1:]),
    }
    model = type(task.model(cfg)).__name__
    line = f"{task.name} / {cfg.preset}: {model}, {info['params']:,} parameters"
    extra = info["params"] - info["omnizart_params"]
    if extra:
        line += f" ({omnizart:,} as omnizart counts them: {extra:,} {'is' if extra == 1 else 'are'} {why})"
    for name, count in task.extra_params(cfg).items():
        info[f"{name}_params"] = count
        line += f"; {name}: {count:,} parameters"
    print(line)
    print(json.dumps(info))
    return 0


def check_not_foreign_folder(out: Path) -> None:
    """UsageError where `--out` holds a run, a model or a corpus: features added its cache's
    files among theirs (and a run's folder then looked like a cache to `--data`)."""
    from jaxmir.data.synth.corpus import MANIFEST as CORPUS_INDEX
    from jaxmir.shipped import VARIABLES

    marks = {  # what a folder holds where it is not a feature cache
        "config.json": "a training run or a model folder",
        "checkpoints": "a training run",
        VARIABLES: "a model folder",
        CORPUS_INDEX: "a rendered corpus (give it as --root)",
    }
    for mark, kind in marks.items():
        if (Path(out) / mark).exists():
            raise UsageError(
                f"--out {out}: holds {mark}, {kind}, not a feature cache: give a new folder"
            )


def cmd_features(args) -> int:
    from jaxmir.data.featurize import skip_line
    from jaxmir.tasks.base import get_task

    task = get_task(args.task)
    workers, note = worker_count(args.workers)
    check_output_folder(args.out, "--out")
    check_not_foreign_folder(args.out)
    if note:
        print(f"jaxmir features: {note}", file=sys.stderr)
    with warnings.catch_warnings():  # each failure is named once, below
        warnings.filterwarnings("ignore", message="skipped ")
        summary = task.featurize(
            args.dataset, args.root, args.out, workers=workers, progress=not args.no_progress
        )
    for path, reason in summary["failed"]:  # those of the readers too, which never warned
        print(skip_line(path, reason), file=sys.stderr)
    print(
        f"{summary['written']} pieces written, {summary['skipped']} already cached, "
        f"{len(summary['failed'])} failed -> {summary['out']}"
    )
    elsewhere = summary.get("elsewhere", [])
    if elsewhere:  # a re-rendered corpus of fewer pieces: the rest stayed, and trained
        print(
            f"jaxmir features: {len(elsewhere)} pieces of {args.out} are not under {args.root} "
            f"(the first: {elsewhere[0]}); training reads them too (a new --out holds only "
            f"{args.root}'s)",
            file=sys.stderr,
        )
    if summary["failed"] and not summary["written"] and not summary["skipped"]:
        print(
            f"jaxmir features: error: none of the pieces under {args.root} could be read "
            f"({args.out} holds none)",
            file=sys.stderr,
        )
        return 2
    return 1 if summary["failed"] else 0  # the others are written: as transcribe, exit 1


def cmd_synth(args) -> int:
    from jaxmir.data.synth.cli import cmd_synth as run

    return run(args)


COMMANDS = {
    "export": cmd_export,
    "calibrate": cmd_calibrate,
    "synth": cmd_synth,
    "train": cmd_train,
    "eval": cmd_eval,
    "transcribe": cmd_transcribe,
    "info": cmd_info,
    "features": cmd_features,
}


JAX_COMMANDS = ("train", "eval", "transcribe", "calibrate", "export")
"""The commands that compile and run JAX steps (compilation cache, malloc tuning)."""


def _enable_compilation_cache() -> None:
    """Reuse compiled steps across runs (train, then eval, then transcribe: seconds each).

    Every program is cached, not only those that took a second to compile (jax's default):
    restoring a run also compiles ~30 small ones (initial optimiser and callback states),
    1.5 s of a warm `jaxmir transcribe` on a 2-core CPU (8.6 s -> 6.9 s restore; medians
    of 3). JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS, when set, wins."""

    import jax

    from jaxmir.engine.run import cache_root

    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(cache_root() / "xla"))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _start_processes(command: str) -> None:
    """Join the multi-process job the environment describes (JAX_COORDINATOR_ADDRESS, ...),
    before any other JAX call. Only `train` runs as several processes."""
    from jaxmir.engine.sharding import maybe_initialize_distributed, multi_process_requested

    if not multi_process_requested():
        return
    if command != "train":
        raise ValueError(
            f"`jaxmir {command}` runs in one process: start it without JAX_COORDINATOR_ADDRESS "
            "and JAXMIR_DISTRIBUTED (only `jaxmir train` spans processes)"
        )
    maybe_initialize_distributed()


class Terminated(BaseException):
    """SIGTERM outside the training loop's own stop handler (start-up: data, restore; the end:
    the last save, plots). A BaseException, as KeyboardInterrupt: the `except Exception` that
    skips one unreadable checkpoint or piece must not take it for one."""


def _terminate_as_exception() -> None:
    """SIGTERM raises `Terminated`, so a pre-emption during `train`'s start-up exits 75 ("run
    me again") rather than 143, which a re-queueing launcher script takes for a failure; in a
    multi-process job, jax's own notifier would otherwise take it and the run would go on."""

    def terminated(signum, frame):
        raise Terminated(signal.Signals(signum).name)

    try:
        signal.signal(signal.SIGTERM, terminated)
    except ValueError:  # not the main thread (an embedding program): leave it as it is
        pass


def _disk_full(error: BaseException) -> bool:
    """Whether `error` (or an error it was raised from) is a full disk or quota: an OSError of
    such an errno, or TensorStore's RESOURCE_EXHAUSTED (a ValueError) when a checkpoint's
    arrays could not be written."""
    from jaxmir.data.cache import DISK_FULL

    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return True
        text = str(error)
        if "RESOURCE_EXHAUSTED" in text or "No space left on device" in text:
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _show_input_warnings(command: str) -> None:
    """Print an `InputWarning` (an odd input worked around) as one line, above any progress
    bar; other warnings as Python does, but matplotlib's missing glyphs (an input's name in
    a script the plots' font lacks) not at all."""
    from jaxmir.data.audio import InputWarning

    # a file named in a script the plot's font lacks: its title shows a box, and nothing more
    warnings.filterwarnings("ignore", r"Glyph \d+ .*missing from font", UserWarning)
    shown = warnings.showwarning
    if getattr(shown, "jaxmir", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, InputWarning):
            return shown(message, category, filename, lineno, file, line)
        from tqdm import tqdm

        tqdm.write(f"jaxmir {command}: warning: {message}", file=sys.stderr)

    show.jaxmir = True
    warnings.showwarning = show


#: OS errors that mean a path given cannot be used as given (`main` prints them as one line).
USER_PATH_ERRORS = (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except ValueError:
        previous = None
    try:
        return _main(args)
    finally:  # a program that calls `main` gets its own SIGTERM handling back
        if previous is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, previous)


def _main(args) -> int:
    from jaxmir.data.audio import AudioError
    from jaxmir.data.cache import CacheError
    from jaxmir.data.datasets.midi import MidiError
    from jaxmir.data.records import AnnotationError
    from jaxmir.data.synth.render import SoundfontError
    from jaxmir.engine.checkpoint import CheckpointError
    from jaxmir.engine.loop import Interrupted

    if args.command in JAX_COMMANDS:
        _enable_compilation_cache()
    _show_input_warnings(args.command)
    # every command: a SIGTERM exits 75 ("run me again"), not 143; before jax.distributed,
    # whose own SIGTERM notifier would swallow it
    _terminate_as_exception()
    try:
        _start_processes(args.command)
    except (RuntimeError, ValueError) as e:
        print(f"jaxmir {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Terminated:  # while waiting for the other processes
        print(f"jaxmir {args.command}: stopped by SIGTERM while starting", file=sys.stderr)
        return EXIT_INTERRUPTED
    _terminate_as_exception()

    try:
        return COMMANDS[args.command](args)
    except (
        ConfigError,
        UsageError,
        CacheError,
        FileNotFoundError,
        AudioError,
        MidiError,
        AnnotationError,
        CheckpointError,
        SoundfontError,
    ) as e:
        print(f"jaxmir {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C where no stop handler runs (train has its own)
        resumes = args.command in ("features", "synth")
        then = "; what was written is kept, and the same command goes on from there"
        print(f"jaxmir {args.command}: interrupted{then if resumes else ''}", file=sys.stderr)
        return 130
    except Terminated:  # outside the training loop, whose own stop saves the step it is at
        where = " outside the training steps" if args.command == "train" else ""
        print(
            f"jaxmir {args.command}: stopped by SIGTERM{where}; what was written is kept: "
            "run the same command again",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except Interrupted as e:  # `calibrate` stopped while beat's taggers trained
        print(
            f"jaxmir {args.command}: stopped by {e}: nothing written; run the same command again",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except ValueError as e:
        if not _disk_full(e):  # the checkpoint writer's full disk is a ValueError of its own
            raise
        from jaxmir.engine.checkpoint import first_line

        print(
            f"jaxmir {args.command}: error: no space left on the device ({first_line(e)}); what "
            "was finished is kept: free some space and run the same command again",
            file=sys.stderr,
        )
        return 1
    except OSError as e:
        # a path that cannot be used as given (exists, not a folder, no permission, a
        # read-only file system), or a full disk: one line. Other OS errors (a failing file
        # system) keep their traceback: they are not the user's input.
        paths = ", ".join(str(f) for f in (e.filename, e.filename2) if f) or "(a file)"
        if _disk_full(e):
            print(
                f"jaxmir {args.command}: error: {paths}: {e.strerror}; what was finished is "
                "kept: free some space and run the same command again",
                file=sys.stderr,
            )
            return 1
        if not isinstance(e, USER_PATH_ERRORS) and e.errno != errno.EROFS:
            raise
        print(f"jaxmir {args.command}: error: {paths}: {e.strerror}", file=sys.stderr)
        return 2


def entry() -> int:
    """The console script: the process first re-executes itself with the malloc tuning of
    :mod:`jaxmir.runtime` (for the commands that run JAX steps), then runs `main`."""
    from jaxmir.runtime import reexec_tuned

    argv = sys.argv[1:]
    if argv and argv[0] in JAX_COMMANDS:
        task = argv[1] if len(argv) > 1 and not argv[1].startswith("-") else None
        reexec_tuned(["-m", "jaxmir", *argv], model=task)
    return main(argv)


if __name__ == "__main__":
    sys.exit(main())
