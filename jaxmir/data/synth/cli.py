"""`jaxmir synth`: render the embedded synthetic audio corpus (see `jaxmir.data.synth.corpus`).

    jaxmir synth --out DIR [--pieces N] [--seed S] [-j N] [--max-seconds T] [--no-augment]

Exit codes: 0 success, 1 no piece could be rendered, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def add_synth_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `synth` sub-command to an argparse sub-parser collection; returns its parser."""
    from jaxmir.data.synth.corpus import DEFAULT_PIECES

    p = subparsers.add_parser(
        "synth",
        help="render the synthetic audio corpus (Bach chorales + drums, exact labels)",
        description=(
            "Render music21's Bach chorales to audio with pretty_midi's GM soundfont: mixture, "
            "vocals / accompaniment / drums stems and exact labels (notes, f0, beats, "
            "downbeats, chords, drum hits) per piece, plus a corpus.json manifest. Finished "
            "pieces are skipped on re-run."
        ),
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--pieces",
        type=int,
        default=DEFAULT_PIECES,
        help=f"number of chorales, in corpus order; 0 = all 350 (default {DEFAULT_PIECES})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the train pieces (default 0)")
    p.add_argument("-j", "--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--max-seconds", type=float, default=None, help="cut every piece at this time")
    p.add_argument("--no-augment", action="store_true", help="dry stems, no EQ, reverb or noise")
    p.add_argument(
        "--instruments",
        choices=("mixed", "piano"),
        default="mixed",
        help="mixed: random GM programs, a sung line and drums (default); piano: all on piano",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)
    return p


def cmd_synth(args) -> int:
    """Run `jaxmir synth`; prints the summary as JSON on stdout."""
    from jaxmir.data.synth.corpus import build_corpus
    from jaxmir.usage import UsageError, check_output_folder, worker_count

    def refuse(problem: str) -> int:
        print(f"jaxmir synth: error: {problem}", file=sys.stderr)
        return 2

    if args.pieces < 0:
        return refuse(f"--pieces: must be >= 0, got {args.pieces}")
    try:
        workers, note = worker_count(args.workers)
    except UsageError as e:
        return refuse(str(e))
    if args.max_seconds is not None and not 0 < args.max_seconds < math.inf:
        return refuse(f"--max-seconds: seconds > 0, got {args.max_seconds}")
    if args.pieces > 0:  # more than the chorales there are: say so, render them all
        from jaxmir.data.synth.chorales import chorale_ids

        there = len(chorale_ids())
        if args.pieces > there:
            print(
                f"jaxmir synth: --pieces {args.pieces}: there are {there} chorales; "
                f"rendering all {there}",
                file=sys.stderr,
            )
    try:
        check_output_folder(args.out, "--out")
    except UsageError as e:
        return refuse(str(e))
    if note:
        print(f"jaxmir synth: {note}", file=sys.stderr)
    summary = build_corpus(
        Path(args.out),
        None if args.pieces == 0 else args.pieces,
        args.seed,
        workers=workers,
        progress=not args.no_progress,
        max_seconds=args.max_seconds,
        augment=not args.no_augment,
        instruments=args.instruments,
    )
    print(json.dumps(summary, indent=1))
    if summary["pieces"] == 0 and summary["failed"]:
        print("jaxmir synth: no piece could be rendered", file=sys.stderr)
        return 1
    return 0
