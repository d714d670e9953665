"""How a beat model does in meters and tempi that training never saw, on as many fresh pieces as
asked, so that decoding choices can be judged without looking at the `test_unseen` split.

    python -m benchmarks.beat_unseen [--workdir RUN_OR_MODEL] [--pieces 48] [--first 0]
                                     [--variant NAME:decode.KEY=V,decode.KEY=V ...]
                                     [--told-tempo FACTOR] [--name NAME]

The pieces are the corpus's procedural piano textures in the unseen split's meters (3/2, 6/4,
7/4) and tempi (28-40 and 220-260 beats per minute), with ids the corpus never uses
(``select/NNNN``, from ``--first``), so no run has trained, calibrated or been tested on them;
a decision made by looking at one set's pieces can be checked on another (``--first 96``). The
model (a run or model folder, default the shipped one) computes each piece's posteriors once;
every variant decodes them ("stored": the model's own decoding; others override it, as `jaxmir
eval --set` does; ``--told-tempo F``: the stored decoding bounded to each piece's own tempo
within F either way, as a user who knows it would set `decode.min_bpm` and `decode.max_bpm`)
and is scored as `jaxmir eval beat` scores. Mean scores overall, per meter
and per tempo range, and how many pieces each variant tracked at which metrical level
(`jaxmir.tasks.beat.task.metrical_level`: the beat, a tempo octave away, ...) are printed and
written to ``benchmarks/results/<name>.json`` (default ``beat-unseen``), with each piece's
scores and level under the stored decoding, which ``<name>.png`` plots against its tempo.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.common import add_name_option, require_folders, save_result

if TYPE_CHECKING:
    from jaxmir.config import Config
    from jaxmir.data.symbolic import SymbolicPiece

BOUNDS = (("min", "/"), ("max", "*"))  # how `--told-tempo` sets each bound from a tempo
SCORES = ("beat_f_measure", "downbeat_f_measure", "beat_cmlt", "beat_amlt", "beat_at_level")


def fresh_pieces(n: int, first: int = 0) -> Iterator[tuple[SymbolicPiece, str, str]]:
    """(piece, meter, "slow" or "fast") of `n` textures in the unseen meters and tempi, built as
    the corpus builds `test_unseen` (`texture_piece_of`) from ids it never uses, from
    ``select/<first>`` on."""
    from jaxmir.data.synth.textures import TEMPO_RANGE
    from jaxmir.tasks.beat.task import BeatDataConfig, texture_piece_of

    for i in range(first, first + n):
        piece, meta = texture_piece_of(f"select/{i:04d}", BeatDataConfig(), unseen=True)
        # the tempo it was drawn at: rubato moves the measured one past the ranges' edges
        yield piece, meta["meter"], "slow" if meta["bpm"] < TEMPO_RANGE[0] else "fast"


def parse_variant(text: str) -> tuple[str, list[str]]:
    """("fill-off", ["decode.fill_level=false"]) from "fill-off:decode.fill_level=false"."""
    name, sep, rest = text.partition(":")
    overrides = [o for o in rest.split(",") if o]
    if not name or not sep or not overrides or not all(o.startswith("decode.") for o in overrides):
        raise ValueError(f"{text!r}: not a variant (NAME:decode.KEY=V[,decode.KEY=V...])")
    return name, overrides


def measure(
    workdir: Path | None,
    n: int,
    variants: list[tuple[str, list[str]]],
    first: int = 0,
    told: float | None = None,
) -> dict:
    built = [(p, {"meter": meter, "tempo": pace}) for p, meter, pace in fresh_pieces(n, first)]
    return {"first": first} | score_pieces(workdir, built, variants, told)


def told_name(factor: float) -> str:
    """The variant that `--told-tempo FACTOR` adds."""
    return f"told-tempo-x{factor:g}"


def told_tempo(cfg: Config, beats: np.ndarray, factor: float) -> Config:
    """`cfg` decoding with the tempo bounds of a user who knows the piece's tempo (its true
    `beats`' median interval, in beats per minute) within `factor` either way."""
    from jaxmir.tasks.beat.decode import bounds_around
    from jaxmir.tasks.beat.task import median_interval

    lo, hi = bounds_around(60.0 / median_interval(beats), factor)
    return dataclasses.replace(cfg, decode=dataclasses.replace(cfg.decode, min_bpm=lo, max_bpm=hi))


def same_for_every_piece(cfg: Config) -> Callable[[np.ndarray], Config]:
    """A decoding's config for a piece of any true beats (`score_pieces`)."""
    return lambda beats: cfg


def score_pieces(
    workdir: Path | None,
    built: list[tuple[SymbolicPiece, dict[str, str]]],
    variants: list[tuple[str, list[str]]],
    told: float | None = None,
    sources: dict[str, Path] | None = None,
) -> dict:
    """Each piece's posteriors once, decoded by the model's stored decoding and by every variant
    (and, with `told`, by the stored decoding bounded to each piece's own tempo within that
    factor, `told_tempo`) and scored as `jaxmir eval beat` scores; a piece read from a MIDI
    file (`sources`: piece name -> file) is decoded as `jaxmir transcribe beat` decodes that
    file (`input_decode_config`: a score's notated beat level): mean scores overall and per
    value of each of the pieces' groups (`built`: (piece, {"meter": "7/4", "tempo": "slow", ...})), how many pieces
    each decoding tracked at which metrical level, and each piece's record (its groups, tempo,
    level and scores) under the stored decoding."""
    from jaxmir.config import apply_overrides
    from jaxmir.engine.run import make_predict
    from jaxmir.shipped import load_for_inference
    from jaxmir.tasks.base import mean_scores
    from jaxmir.tasks.beat.task import LEVELS, TASK, level_of, median_interval, period_ratio

    cfg, mesh, state = load_for_inference(TASK, workdir)
    # each decoding: the config for a piece of these true beats
    configs = [("stored", same_for_every_piece(cfg))] + [
        (name, same_for_every_piece(apply_overrides(cfg, o))) for name, o in variants
    ]
    described = dict(variants)
    if told is not None:
        configs.append((told_name(told), functools.partial(told_tempo, cfg, factor=told)))
        described[told_name(told)] = [f"decode.{k}_bpm=tempo{op}{told:g}" for k, op in BOUNDS]
    featured = [(TASK.piece_features(p), groups, p) for p, groups in built]
    features = ((x, None) for (x, _), _, _ in featured)
    predict = make_predict(mesh, state)
    posteriors = [post for _, post in TASK.posteriors_many(predict, features, cfg)]
    kinds = list(dict.fromkeys(k for _, groups in built for k in groups))
    rows, levels, per_piece = [], {}, []
    for name, config_for in configs:
        scored, counts = [], dict.fromkeys([*LEVELS, "other", "none"], 0)
        for ((_, labels), groups, piece), post in zip(featured, posteriors, strict=True):
            c = config_for(labels["beats"])
            if sources and piece.name in sources:
                c = TASK.input_decode_config(sources[piece.name], c)
            events = TASK.decode(post, c)
            scores = TASK.score(events, labels, c)
            ratio = period_ratio(events[0], labels["beats"])
            level = level_of(ratio)
            counts[level] += 1
            scored.append((groups, scores))
            if name == "stored":
                bpm = 60.0 / median_interval(piece.beats)
                per_piece.append(
                    {"piece": piece.name, **groups, "bpm": round(bpm, 1), "level": level}
                    | {"ratio": None if ratio is None else round(ratio, 3)}
                    | {k: round(scores[k], 4) for k in SCORES}
                )
        levels[name] = counts
        print(json.dumps({"variant": name, "levels": counts}), flush=True)
        keys = [("all", None)] + [
            (kind, value) for kind in kinds for value in sorted({g[kind] for g, _ in scored})
        ]
        for kind, value in keys:
            chosen = [s for g, s in scored if kind == "all" or g[kind] == value]
            mean = mean_scores(chosen)
            row = {"variant": name, "pieces": kind if value is None else f"{kind} {value}"}
            row.update(n=len(chosen), **{k: round(mean[k], 4) for k in SCORES})
            print(json.dumps(row), flush=True)
            rows.append(row)
    return {
        "model": str(workdir or "shipped"),
        "pieces": len(built),
        "variants": described,
        "rows": rows,
        "levels": levels,
        "per_piece": per_piece,
    }


#: `plot_pieces`' legend: (label, colour, the metrical levels drawn in it); the rest are grey.
LEVEL_GROUPS = (
    ("at the beat", "tab:green", ("beat",)),
    ("too fast (1/2-1/4)", "tab:red", ("1/2", "1/3", "1/4")),
    ("triplets (2/3)", "tab:orange", ("2/3",)),
    ("too slow (2, 3)", "tab:blue", ("2", "3")),
    ("dotted (3/2)", "tab:purple", ("3/2",)),
    ("other", "tab:gray", ("other", "none")),
)
LEVEL_COLOURS = {level: colour for _, colour, levels in LEVEL_GROUPS for level in levels}
METER_MARKERS = {"3/2": "o", "6/4": "s", "7/4": "^"}
OTHER_MARKERS = ("D", "v", "<", ">", "P", "*", "h", "X")  # other meters', in sorted order


def plot_pieces(result: dict, path: Path, panels: str = "tempo", title: str | None = None) -> Path:
    """Each piece's beat F (stored decoding) against its tempo, one panel per value of the
    pieces' group `panels` (slow and fast pieces side by side); colour: the metrical level it
    was tracked at; marker: its meter. `title` goes before the overall scores."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(10.0, 3.8))
    FigureCanvasAgg(fig)
    pieces = result["per_piece"]
    meters = {r["meter"] for r in pieces}
    others = sorted(meters - set(METER_MARKERS))
    markers = METER_MARKERS | dict(zip(others, OTHER_MARKERS, strict=False))
    values = list(dict.fromkeys(r[panels] for r in pieces))
    if set(values) <= {"slow", "fast"}:
        values = [t for t in ("slow", "fast") if t in values]
    axes = fig.subplots(1, len(values), sharey=True, squeeze=False)[0]
    for ax, value in zip(axes, values, strict=True):
        for r in (r for r in pieces if r[panels] == value):
            ax.scatter(
                r["bpm"],
                r["beat_f_measure"],
                c=LEVEL_COLOURS[r["level"]],
                marker=markers.get(r["meter"], "x"),
                s=22,
            )
        ax.set_xlabel(f"{value}: tempo (beats per minute)")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("beat F")
    handles = [
        Line2D([], [], ls="", marker="o", color=colour, label=label)
        for label, colour, _ in LEVEL_GROUPS
    ]
    handles += [
        Line2D([], [], ls="", marker=markers.get(meter, "x"), color="k", label=meter)
        for meter in sorted(meters, key=lambda m: (m not in METER_MARKERS, m))
    ]
    fig.legend(handles=handles, fontsize=7, loc="center right")
    overall = next(r for r in result["rows"] if r["variant"] == "stored" and r["pieces"] == "all")
    title = title or f"{len(pieces)} fresh pieces from select/{result['first']:04d}"
    fig.suptitle(
        f"{title}: beat F "
        f"{overall['beat_f_measure']:.3f}, downbeat F {overall['downbeat_f_measure']:.3f}, "
        f"at the beat {overall['beat_at_level']:.2f}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0.0, 0.0, 0.85, 1.0))  # the legend on the right
    fig.savefig(path, dpi=110)
    return Path(path)


def piece_arguments(prog: str, description: str, what: str, first: str) -> argparse.ArgumentParser:
    """The options a benchmark over pieces shares: --workdir, --pieces, --first, --variant."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--workdir", type=Path, default=None, help="a beat run or model folder")
    p.add_argument("--pieces", type=int, default=48, help=f"how many {what} (default 48)")
    p.add_argument("--first", type=int, default=0, help=first)
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:decode.KEY=V[,decode.KEY=V...], decoded beside the stored decoding",
    )
    p.add_argument(
        "--told-tempo",
        type=float,
        default=None,
        metavar="FACTOR",
        help="also decode each piece as a user who knows its tempo within FACTOR either way "
        "would (decode.min_bpm / max_bpm: its tempo / FACTOR, * FACTOR; e.g. 1.25)",
    )
    return p


def check_variant(overrides: list[str]) -> None:
    """ConfigError for a decode key the beat task does not have or a value it refuses."""
    from jaxmir.config import apply_overrides
    from jaxmir.tasks.base import get_task

    task = get_task("beat")
    task.check_decode(apply_overrides(task.preset("demo"), overrides))


def checked_variants(p: argparse.ArgumentParser, args) -> list[tuple[str, list[str]]]:
    """The parsed --variant options, after `p.error` for a bad count, position or variant."""
    if args.pieces < 1:
        p.error("--pieces: at least 1")
    if args.first < 0:
        p.error("--first: at least 0")
    if args.told_tempo is not None and args.told_tempo <= 1:
        p.error("--told-tempo: a factor above 1")
    require_folders(p, workdir=args.workdir)
    try:
        variants = [parse_variant(v) for v in args.variant]
        for _, overrides in variants:  # a key or value the beat task refuses: before any work
            check_variant(overrides)
    except ValueError as e:  # ConfigError is one
        p.error(str(e))
    names = ["stored"] + [name for name, _ in variants]
    names += [told_name(args.told_tempo)] if args.told_tempo is not None else []
    if len(set(names)) < len(names):
        p.error(f"--variant: names must differ from each other and from 'stored' ({names})")
    return variants


def main(argv: list[str] | None = None) -> int:
    p = piece_arguments(
        "python -m benchmarks.beat_unseen",
        __doc__.split("\n\n")[0],
        "fresh pieces",
        "the first piece's number (default 0; --first 96 draws a set beside the first 96)",
    )
    add_name_option(p, "beat-unseen", " and .png")
    args = p.parse_args(argv)
    variants = checked_variants(p, args)
    result = measure(args.workdir, args.pieces, variants, args.first, args.told_tempo)
    print(plot_pieces(result, save_result(args.name, result).with_suffix(".png")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
