"""Does a music model hear a re-struck key? Its onset posterior at first and repeated notes.

    python -m benchmarks.repeated_notes [--workdir RUN] [--renderers sf0,sf40,struck]
                                        [--gaps 0,0.04] [--name NAME]

Each renderer plays 8 keys (MIDI 43-79), each struck 4 times at 0.5-s intervals: the first
note follows silence, the next three repeat the key that is still sounding, ending `gap` s
before the repeat (0: touching, as in a score). ``sfN`` is the soundfont's GM program N; the
other names are the numpy synthesis voices (`jaxmir.data.synth.voices.ENGINES`). For each
renderer and gap: the median onset posterior (the mean of the key's 4 bins, the highest within
2 frames of the note's onset) of the first notes and of the repeats, and the share of repeats
over the decoding's onset threshold. The model is the run or model folder in `RUN` (default: the
shipped one).

A model that hears onsets but not re-struck keys shows high first-note and low repeat values;
on the corpus's `test_piano` split such repeats are about a fifth of the notes (docs/music.md).
The results go to ``benchmarks/results/<name>.json`` (default ``repeated-notes``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import add_name_option, require_folders, save_result
from jaxmir.data.synth.voices import ENGINES

KEYS = (43, 48, 55, 60, 64, 67, 72, 79)
STRIKES = 4
PERIOD_S = 0.5
SPACING_S = 2.2  # between the first strikes of two keys: the last repeat has rung out
SR = 44100


def strike_notes(gap: float, keys=KEYS) -> tuple[np.ndarray, np.ndarray]:
    """(notes (N, 4) onset, offset, pitch, velocity; is_first (N,) bool)."""
    rows, first = [], []
    for i, key in enumerate(keys):
        t0 = 0.5 + i * SPACING_S
        for k in range(STRIKES):
            rows.append((t0 + k * PERIOD_S, t0 + (k + 1) * PERIOD_S - gap, key, 80.0))
            first.append(k == 0)
    return np.asarray(rows, np.float64), np.asarray(first)


def known_renderer(name: str) -> bool:
    """sfN with N a General MIDI program (0-127), or a synthesis voice engine."""
    if name.startswith("sf"):
        return name[2:].isdigit() and 0 <= int(name[2:]) <= 127
    return name in ENGINES


def render(renderer: str, notes: np.ndarray) -> np.ndarray:
    """float32 mono audio at 44.1 kHz of `notes` played by `renderer` (sfN or a voice)."""
    if renderer.startswith("sf"):
        import pretty_midi

        from jaxmir.data.synth.render import render_midi

        pm = pretty_midi.PrettyMIDI()
        inst = pretty_midi.Instrument(int(renderer[2:]))
        inst.notes = [pretty_midi.Note(int(v), int(p), a, b) for a, b, p, v in notes]
        pm.instruments.append(inst)
        return render_midi(pm, SR)
    from jaxmir.data.synth.voices import random_voice, render_notes

    n = int((notes[:, 1].max() + 1.0) * SR)
    y = render_notes(
        random_voice(renderer, np.random.default_rng(1)), notes, SR, n, np.random.default_rng(0)
    )
    return (0.5 * y / max(float(np.abs(y).max()), 1e-9)).astype(np.float32)


def onset_peaks(probs: np.ndarray, notes: np.ndarray, fps: int = 50) -> np.ndarray:
    """The highest key-mean onset posterior within 2 frames of each note's onset."""
    onset = probs[:, :, 2].reshape(len(probs), 88, 4).mean(axis=-1)
    out = []
    for start, _, pitch, _ in notes:
        frame = int(round(start * fps))
        out.append(float(onset[max(frame - 2, 0) : frame + 3, int(pitch) - 21].max()))
    return np.asarray(out)


def measure(workdir: Path | None, renderers: list[str], gaps: list[float], keys=KEYS) -> dict:
    import soundfile as sf

    from jaxmir.engine.run import make_predict
    from jaxmir.shipped import load_for_inference
    from jaxmir.tasks.base import get_task

    task = get_task("music")
    cfg, mesh, state = load_for_inference(task, workdir)
    if cfg.data.label_mode not in ("note", "note-offset"):
        raise SystemExit(
            f"label mode {cfg.data.label_mode!r}: onsets are channel 2 only in note modes"
        )
    predict = make_predict(mesh, state)
    threshold = cfg.decode.onset_threshold
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for renderer in renderers:
            for gap in gaps:
                notes, first = strike_notes(gap, keys)
                path = Path(tmp) / f"{renderer}-{gap}.wav"
                sf.write(path, render(renderer, notes), SR)
                x = task.input_features(path, cfg)
                _, probs = next(iter(task.posteriors_many(predict, iter([(x, None)]), cfg)))
                peaks = onset_peaks(probs, notes)
                row = {
                    "renderer": renderer,
                    "gap_s": gap,
                    "first_median": round(float(np.median(peaks[first])), 3),
                    "repeat_median": round(float(np.median(peaks[~first])), 3),
                    "repeats_over_threshold": round(float(np.mean(peaks[~first] > threshold)), 3),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    return {"model": str(workdir or "shipped"), "onset_threshold": threshold, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.repeated_notes", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--workdir", type=Path, default=None, help="a run or model folder (default: shipped)"
    )
    p.add_argument(
        "--renderers",
        default="sf0,sf6,sf40,struck,pluck,additive",
        help="sfN (the soundfont's General MIDI program N, 0-127) or a synthesis voice "
        "(additive, fm, pluck, bowed, struck); comma-separated (default %(default)s)",
    )
    p.add_argument("--gaps", default="0,0.04", help="seconds of silence before each repeat")
    add_name_option(p, "repeated-notes")
    args = p.parse_args(argv)
    renderers = [r.strip() for r in args.renderers.split(",") if r.strip()]
    bad = [r for r in renderers if not known_renderer(r)]
    if bad or not renderers:
        p.error(f"--renderers: sfN (N in 0-127) or one of {list(ENGINES)}, got {bad or 'none'}")
    try:
        gaps = [float(g) for g in args.gaps.split(",")]
    except ValueError:
        p.error(f"--gaps: seconds such as 0,0.04, got {args.gaps!r}")
    require_folders(p, workdir=args.workdir)
    result = measure(args.workdir, renderers, gaps)
    save_result(args.name, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
