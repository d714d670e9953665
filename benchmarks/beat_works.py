"""How a beat model does on scores no beat split holds, exported to MIDI as a user would export
them: music21 works (never the reserved ones) that the model's corpus does not use.

    python -m benchmarks.beat_works [--workdir RUN_OR_MODEL] [--pieces 48] [--first 0]
                                    [--rendering exported|performed]
                                    [--variant NAME:decode.KEY=V,...] [--told-tempo FACTOR]
                                    [--name NAME]

``exported``: each score (repeats expanded) written by music21's MIDI writer at its own
metronome marks (120 quarters per minute where it has none), read back by jaxmir's MIDI reader,
and decoded as ``jaxmir transcribe beat piece.mid`` reads and decodes a file (the stored
decoding at the file's notated beat level, ``decode.notated_level``): the score's tempo marks
and dynamics, no timing deviations. ``performed``: the same notes (repeats expanded, unlike the corpus) rendered
as the corpus renders its test works (a tempo drawn from the model's training range, tempo
curves, fermatas, velocity curves, onset jitter). The annotated beats and downbeats come from
the score's measures and meters (as the corpus's), mapped to seconds by the same tempo map as
the notes. The works are taken in
`work_ids` order (one work of each folder in turn) from its ``--first``-th on, skipping those
the model's corpus renders, so two models meet the same works from a position neither corpus
reaches; a work music21 cannot parse into measures or expand the repeats of, or whose exported
onsets are not the score's, is skipped and named. Scored as `benchmarks.beat_unseen` scores
(stored decoding, variants and ``--told-tempo``, levels, each piece's record), per meter, per number of parts (one or several) and per composer folder;
written to ``benchmarks/results/<name>.json`` (default ``beat-works-<rendering>``) with a plot
``<name>.png`` of each piece's beat F against its tempo.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.beat_unseen import checked_variants, piece_arguments, plot_pieces, score_pieces
from benchmarks.common import save_result
from jaxmir.data.symbolic import SymbolicPiece

if TYPE_CHECKING:
    from jaxmir.tasks.beat.task import BeatDataConfig

RENDERINGS = ("exported", "performed")
ONSET_TOLERANCE_S = 0.005  # an exported note starts where the score says, to this much
MIN_AGREEMENT = 0.99  # the share of onsets that must agree both ways


def corpus_works(d: BeatDataConfig) -> set[str]:
    """The music21 works a beat corpus (a run's or model's `data` section) takes for any split
    (the few music21 cannot read are then skipped by the corpus too)."""
    from jaxmir.data.synth.chorales import split_ids
    from jaxmir.data.synth.corpus import work_ids
    from jaxmir.tasks.beat.task import work_counts

    counts = work_counts(d)
    ids = work_ids() if counts else []
    return {c for split, n in counts.items() for c in split_ids(ids, split, n)}


def left_out_works(used: set[str], first: int = 0) -> list[str]:
    """`work_ids` (never reserved) from the `first`-th on, without `used`: the same position
    gives two models the same works wherever neither corpus uses them."""
    from jaxmir.data.synth.corpus import work_ids

    return [c for c in work_ids()[first:] if c not in used]


def exported_piece(score, name: str, folder: Path) -> SymbolicPiece:
    """The piece as music21 exports `score` (repeats already expanded) to MIDI and jaxmir reads
    it back, with the beats and downbeats of the score's measures on the file's tempo map.
    ValueError when the exported onsets are not the score's."""
    from jaxmir.data.datasets.midi import high_ticks, load_midi, read_midi_notes
    from jaxmir.data.synth.chorales import _collect_notes, _metrical_grid

    grid, notes = _metrical_grid(score), _collect_notes(score)
    path = folder / f"{name}.mid"
    score.write("midi", fp=str(path))
    pm = load_midi(path)
    midi_notes = read_midi_notes(path)

    with high_ticks():
        change_s, qpm = pm.get_tempo_changes()
    change_q = np.concatenate([[0.0], np.cumsum(np.diff(change_s) * qpm[:-1] / 60.0)])

    def seconds(q: np.ndarray) -> np.ndarray:  # the file's tempo map, past its last tick too
        k = np.searchsorted(change_q, q, side="right") - 1
        return change_s[k] + (np.asarray(q, np.float64) - change_q[k]) * 60.0 / qpm[k]

    want = np.unique(seconds(notes.onset_q))
    got = np.unique(midi_notes[:, 0])
    agree = [share_near(a, b, ONSET_TOLERANCE_S) for a, b in ((want, got), (got, want))]
    if min(agree) < MIN_AGREEMENT:
        raise ValueError(f"exported onsets are not the score's ({agree[0]:.0%}, {agree[1]:.0%})")
    return SymbolicPiece(name, midi_notes, seconds(grid.beats_q), seconds(grid.downbeats_q))


def share_near(a: np.ndarray, b: np.ndarray, tolerance: float) -> float:
    """The share of the times `a` within `tolerance` of one of the sorted, non-empty times `b`."""
    i = np.searchsorted(b, a)
    before = np.abs(a - b[np.maximum(i - 1, 0)])
    after = np.abs(a - b[np.minimum(i, len(b) - 1)])
    return float(np.mean(np.minimum(before, after) <= tolerance))


def performed_piece(score, name: str, cid: str, seed: int, bpm: tuple[float, float]):
    """The piece as the corpus renders a test work (`build_chorale_pieces`' rendering)."""
    from jaxmir.data.synth.chorales import _collect_notes, _metrical_grid, _piece_rng, _render

    grid, notes = _metrical_grid(score), _collect_notes(score)
    return _render(grid, notes, name, _piece_rng(seed, cid, 0), True, bpm)


def work_pieces(
    d: BeatDataConfig, n: int, folder: Path, first: int = 0, rendering: str = "exported"
) -> Iterator[tuple[SymbolicPiece, dict[str, str]] | tuple[str, str]]:
    """(piece, its groups) for `n` works that the corpus of data section `d` leaves out, and
    (work id, reason) for each one skipped on the way; exported works leave their MIDI file,
    `<piece name>.mid`, in `folder`."""
    from music21 import corpus, meter

    made = 0
    for cid in left_out_works(corpus_works(d), first):
        if made == n:
            return
        name = cid.rsplit(".", 1)[0].replace("/", "__")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                score = corpus.parse(cid, forceSource=True).expandRepeats()
                ts = next(iter(score.recurse().getElementsByClass(meter.TimeSignature)))
                if rendering == "exported":
                    piece = exported_piece(score, name, folder)
                else:
                    piece = performed_piece(score, name, cid, d.corpus_seed, d.corpus_bpm)
        except Exception as e:  # one work music21 cannot handle must not end the run
            yield cid, f"{type(e).__name__}: {e}"
            continue
        parts = "one part" if len(getattr(score, "parts", [])) <= 1 else "several parts"
        made += 1
        yield piece, {"meter": ts.ratioString, "parts": parts, "folder": cid.split("/")[0]}


def main(argv: list[str] | None = None) -> int:
    p = piece_arguments(
        "python -m benchmarks.beat_works",
        __doc__.split("\n\n")[0],
        "works",
        "position in the works' order to start at (default 0)",
    )
    p.add_argument(
        "--rendering",
        choices=RENDERINGS,
        default="exported",
        help="exported: music21's MIDI file at the score's tempo (default); performed: as the "
        "corpus renders test works",
    )
    p.add_argument("--name", default=None, help="results name (default beat-works-RENDERING)")
    args = p.parse_args(argv)
    variants = checked_variants(p, args)
    from jaxmir.shipped import load_for_inference
    from jaxmir.tasks.beat.task import TASK

    d = load_for_inference(TASK, args.workdir)[0].data
    built, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:  # the exported files, read as transcribe reads them
        for item in work_pieces(d, args.pieces, Path(tmp), args.first, args.rendering):
            (built if isinstance(item[0], SymbolicPiece) else skipped).append(item)
        for cid, reason in skipped:
            print(f"skipped {cid}: {reason}")
        if not built:
            p.error(f"--first {args.first}: no work left to score from there")
        if len(built) < args.pieces:
            print(f"only {len(built)} works left from position {args.first}")
        result = {"first": args.first, "rendering": args.rendering}
        files = {piece.name: Path(tmp) / f"{piece.name}.mid" for piece, _ in built}
        sources = files if args.rendering == "exported" else None
        result |= score_pieces(args.workdir, built, variants, args.told_tempo, sources)
    result["skipped"] = [{"work": cid, "reason": reason} for cid, reason in skipped]
    name = args.name or f"beat-works-{args.rendering}"
    title = f"{len(built)} left-out works, {args.rendering}"
    print(plot_pieces(result, save_result(name, result).with_suffix(".png"), "parts", title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
