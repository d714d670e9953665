"""The `jaxmir` command: train, eval, transcribe, info, features.

Exit codes: 0 success, 1 unexpected error, 2 bad usage (unknown task, preset, config key or
value; missing, empty or unreadable data), with one clear line on stderr; 75 (EX_TEMPFAIL)
a training run interrupted by SIGTERM/SIGINT after saving a checkpoint: re-run the same
command to resume (what a pre-emption-aware launcher should do).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jaxmir.config import ConfigError, apply_overrides, validate

EPILOG = """examples:
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


def _parser() -> argparse.ArgumentParser:
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
        help="tiny | demo | paper (default: demo, or the workdir's saved config when resuming)",
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

    e = sub.add_parser("eval", help="score a trained run with mir_eval on whole pieces")
    e.add_argument("task")
    e.add_argument("--workdir", type=Path, required=True)
    e.add_argument("--split", default="test", help="val | test (default test)")
    e.add_argument("--data", type=Path, default=None, help="feature cache (default: the run's)")
    e.add_argument("--step", type=int, default=None, help="checkpoint step (default: best)")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="decode.KEY=V")

    r = sub.add_parser("transcribe", help="run a trained model on input files")
    r.add_argument("task")
    r.add_argument("inputs", nargs="+", type=Path)
    r.add_argument("--workdir", type=Path, required=True)
    r.add_argument("-o", "--outdir", type=Path, default=Path("."))
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="decode.KEY=V")

    i = sub.add_parser("info", help="model size and shapes of a preset (no compute)")
    i.add_argument("task")
    i.add_argument("--preset", default="paper")
    i.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    f = sub.add_parser("features", help="turn a dataset folder into a feature cache")
    f.add_argument("task")
    f.add_argument(
        "--dataset",
        required=True,
        help="dataset layout: beat midi|musicnet; music synth|maestro|maps|musicnet; "
        "vocal synth|tonas|mir1k; vocal_contour and patch_cnn synth|mir1k|medleydb|tonas",
    )
    f.add_argument("--root", type=Path, required=True, help="the dataset's folder")
    f.add_argument("--out", type=Path, required=True, help="cache directory to write")
    f.add_argument("-j", "--workers", type=int, default=1)
    from jaxmir.data.synth.cli import add_synth_parser

    add_synth_parser(sub)
    return p


TASKS_HELP = "beat | music | vocal | vocal_contour | patch_cnn"


EXIT_INTERRUPTED = 75  # sysexits' EX_TEMPFAIL: saved, not finished; run again to resume


class UsageError(Exception):
    pass


def _config_for(task, preset: str | None, overrides: list[str], workdir: Path | None):
    saved = workdir / "config.json" if workdir is not None else None
    if preset is None and saved is not None and saved.is_file():
        cfg = task.config_from_dict(json.loads(saved.read_text()))
    else:
        cfg = task.preset(preset or "demo")
    return validate(apply_overrides(cfg, overrides))


def _run_json(workdir: Path) -> dict:
    path = workdir / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def cmd_train(args) -> int:
    from jaxmir.engine.run import default_workdir, resolve_data, train
    from jaxmir.engine.sharding import check_batch_sizes, is_primary, make_mesh, primary_first
    from jaxmir.tasks.base import get_task

    task = get_task(args.task)
    cfg = _config_for(task, args.preset, args.overrides, args.workdir)
    check_batch_sizes(cfg, make_mesh())  # before anything is written
    if args.workdir is None and not is_primary():
        raise UsageError("a multi-process run needs --workdir (a folder every process shares)")
    workdir = args.workdir or default_workdir(cfg)
    data = args.data or _run_json(workdir).get("data")
    progress = not args.no_progress and is_primary()
    cache = primary_first(lambda: resolve_data(task, cfg, data, progress), "jaxmir-data")
    if is_primary():
        workdir.mkdir(parents=True, exist_ok=True)
        run_json = json.dumps({"data": str(cache.root.absolute())})
        (workdir / "run.json").write_text(run_json + "\n")
    result = train(task, cfg, workdir, cache.root, progress=progress)
    if result.status.startswith("interrupted"):
        print(f"Interrupted; checkpoint saved. Resume with the same command (--workdir {workdir}).")
        return EXIT_INTERRUPTED
    return 0


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
    return validate(apply_overrides(cfg, list(overrides))), mesh, state, step


def cmd_eval(args) -> int:
    from jaxmir.engine.run import make_predict, resolve_data
    from jaxmir.tasks.base import get_task

    task = get_task(args.task)
    cfg, mesh, state, step = _restore(task, args.workdir, args.step, args.overrides)
    data = args.data or _run_json(args.workdir).get("data")
    cache = resolve_data(task, cfg, data)
    metrics = task.evaluate(make_predict(mesh, state), cfg, cache, args.split, progress=True)
    result = {"task": task.name, "split": args.split, "step": step, **metrics}
    out = args.workdir / "eval" / f"{args.split}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


def cmd_transcribe(args) -> int:
    from jaxmir.engine.run import make_predict
    from jaxmir.tasks.base import get_task

    task = get_task(args.task)
    for path in args.inputs:  # every input checked before the model is restored
        if path.is_dir():
            raise UsageError(f"{path}: is a folder, not a file")
        if not path.is_file():
            raise UsageError(f"{path}: no such file")
    cfg, mesh, state, _ = _restore(task, args.workdir, None, args.overrides)
    predict = make_predict(mesh, state)
    for path in args.inputs:
        for written in task.transcribe(predict, path, cfg, args.outdir):
            print(written)
    return 0


def cmd_info(args) -> int:
    import jax
    import numpy as np

    from jaxmir.engine.state import count_params
    from jaxmir.nn.relative_attention import omnizart_param_count
    from jaxmir.tasks.base import get_task

    task = get_task(args.task)
    cfg = apply_overrides(task.preset(args.preset), args.overrides)
    model = task.model(cfg)
    spec = task.input_spec(cfg)
    x = jax.ShapeDtypeStruct((1, *spec.shape), spec.dtype)
    variables = jax.eval_shape(lambda r, x: model.init(r, x, train=False), jax.random.PRNGKey(0), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    info = {
        "task": task.name,
        "preset": cfg.preset,
        "model": cfg.model.name,
        "params": count_params(variables["params"]),
        # as Keras counts the omnizart model: without the relative-position tables, which
        # jaxmir learns and omnizart re-drew at random on every call (beat, chord)
        "omnizart_params": omnizart_param_count(variables["params"]),
        "input_shape": list(spec.shape),
        "output_shape": list(np.shape(out)[1:]),
    }
    line = f"{task.name} / {cfg.preset}: {type(model).__name__}, {info['params']:,} parameters"
    extra = info["params"] - info["omnizart_params"]
    if extra:
        line += (
            f" ({info['omnizart_params']:,} as omnizart counts them: {extra:,} are learned "
            "relative-position tables that omnizart re-drew at random on every call)"
        )
    print(line)
    print(json.dumps(info))
    return 0


def cmd_features(args) -> int:
    from jaxmir.tasks.base import get_task

    task = get_task(args.task)
    summary = task.featurize(args.dataset, args.root, args.out, workers=args.workers)
    for path, reason in summary["failed"]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(
        f"{summary['written']} pieces written, {summary['skipped']} already cached, "
        f"{len(summary['failed'])} failed -> {summary['out']}"
    )
    return 0


def cmd_synth(args) -> int:
    from jaxmir.data.synth.cli import cmd_synth as run

    return run(args)


COMMANDS = {
    "synth": cmd_synth,
    "train": cmd_train,
    "eval": cmd_eval,
    "transcribe": cmd_transcribe,
    "info": cmd_info,
    "features": cmd_features,
}


JAX_COMMANDS = ("train", "eval", "transcribe")
"""The commands that compile and run JAX steps (compilation cache, malloc tuning)."""


def _enable_compilation_cache() -> None:
    """Reuse compiled steps across runs (train, then eval, then transcribe: seconds each)."""
    import jax

    from jaxmir.engine.run import cache_root

    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(cache_root() / "xla"))


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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from jaxmir.data.audio import AudioError
    from jaxmir.data.cache import CacheError
    from jaxmir.data.datasets.midi import MidiError
    from jaxmir.data.records import AnnotationError
    from jaxmir.engine.checkpoint import CheckpointError

    if args.command in JAX_COMMANDS:
        _enable_compilation_cache()
    try:
        _start_processes(args.command)
    except (RuntimeError, ValueError) as e:
        print(f"jaxmir {args.command}: error: {e}", file=sys.stderr)
        return 2

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
    ) as e:
        print(f"jaxmir {args.command}: error: {e}", file=sys.stderr)
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
