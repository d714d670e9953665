"""Segment posteriors -> chord intervals, and the files a transcription writes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from jaxmir.tasks.chord.labels import N_CLASSES, class_name

# omnizart's triads: root position in the bass octave (C:maj -> C2, G2, E3; C:min -> C2, G2, Eb3)
MAJOR_TRIAD = (36, 43, 52)
MINOR_TRIAD = (36, 43, 51)


def segment_bounds(times: np.ndarray, duration: float) -> np.ndarray:
    """(S, 2) intervals of segments centred on `times`: boundaries half-way between centres,
    the first from 0, the last to `duration`."""
    times = np.asarray(times, np.float64)
    mids = (times[1:] + times[:-1]) / 2
    starts = np.concatenate([[0.0], mids])
    ends = np.concatenate([mids, [max(duration, times[-1])]]) if len(times) else np.zeros(0)
    return np.stack([starts, ends], axis=1)


def decode_chords(
    probs: np.ndarray,
    times: np.ndarray,
    duration: float,
    min_seconds: float = 0.1,
    *,
    end: float | None = None,
) -> tuple[np.ndarray, list[str]]:
    """(intervals (K, 2), labels) from per-segment class posteriors (S, >= 25): argmax over
    the 25 classes (an X output, if the model has one, is never chosen), equal neighbours
    merged, a chord shorter than `min_seconds` merged into the one before it (omnizart's rule).
    `end` (the audio's duration, when known): segments are cut there, and those starting at
    or after it dropped, before merging."""
    classes = np.argmax(np.asarray(probs)[:, :N_CLASSES], axis=-1)
    bounds = segment_bounds(times, duration)
    if end is not None:
        bounds = np.minimum(bounds, end)
        keep = bounds[:, 1] > bounds[:, 0]
        bounds, classes = bounds[keep], classes[keep]
    runs: list[list] = []  # [start, end, class]: runs of equal neighbours
    for (start, stop), c in zip(bounds, classes, strict=True):
        if runs and runs[-1][2] == c:
            runs[-1][1] = stop
        else:
            runs.append([start, stop, int(c)])
    merged: list[list] = []
    for start, stop, c in runs:
        if merged and (merged[-1][2] == c or stop - start < min_seconds):
            merged[-1][1] = stop
        else:
            merged.append([start, stop, c])
    out = np.asarray([m[:2] for m in merged], np.float64).reshape(-1, 2)
    return out, [class_name(m[2]) for m in merged]


def write_chords_csv(path: Path, intervals: np.ndarray, labels: list[str]) -> Path:
    """CSV with header start,end,chord (seconds)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["start", "end", "chord"])
        for (start, end), label in zip(intervals, labels, strict=True):
            writer.writerow([f"{start:.6f}", f"{end:.6f}", label])
    return path


def chords_to_midi(intervals: np.ndarray, labels: list[str]):
    """A `pretty_midi.PrettyMIDI` playing each major/minor chord as a root-position triad."""
    import pretty_midi

    from jaxmir.tasks.chord.labels import label_index

    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0, name="Chords")
    for (start, end), label in zip(intervals, labels, strict=True):
        c = label_index(label)
        if c >= 24 or end <= start:  # N, X
            continue
        triad = MAJOR_TRIAD if c < 12 else MINOR_TRIAD
        for pitch in triad:
            piano.notes.append(pretty_midi.Note(100, pitch + c % 12, float(start), float(end)))
    midi.instruments.append(piano)
    return midi


def plot_chords(
    chroma: np.ndarray,
    frame_times: np.ndarray,
    intervals: np.ndarray,
    labels: list[str],
    path: Path,
    title: str = "",
) -> Path:
    """A PNG of the bass and treble chroma with the chord segments named above them."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: safe in `transcribe`'s writer thread

    from jaxmir.data.features.chroma import CHROMA_PITCH_CLASSES

    end = float(frame_times[-1]) if len(frame_times) else 0.0
    if end <= 0.0:  # one segment (a fraction of a second): no span of its own, its chord's
        # (an image from 0 to 0 s is singular: matplotlib warns "identical low and high xlims")
        spans = np.asarray(intervals, np.float64).reshape(-1, 2)[:, 1]
        end = float(spans.max()) if len(spans) and spans.max() > 0 else 1.0
    fig = Figure(figsize=(14, 5))
    top, ax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 5]})
    ax.imshow(
        np.asarray(chroma).T,
        origin="lower",
        aspect="auto",
        cmap="magma",
        extent=(0.0, end, 0, 24),
        interpolation="nearest",
    )
    ax.axhline(12, color="white", linewidth=0.8)
    names = list(CHROMA_PITCH_CLASSES)
    ax.set_yticks(
        np.arange(24) + 0.5,
        [f"bass {n}" if i < 12 else n for i, n in enumerate(names + names)],
        fontsize=6,
    )
    colours = matplotlib.colormaps["tab20"]
    for k, ((start, stop), label) in enumerate(zip(intervals, labels, strict=True)):
        top.axvspan(start, stop, color=colours(k % 20), alpha=0.6)
        if stop - start > end / 80:
            top.text(
                (start + stop) / 2,
                0.5,
                label,
                ha="center",
                va="center",
                fontsize=7,
                rotation=90 if stop - start < end / 30 else 0,
            )
    top.set_yticks([])
    top.set_title(title or path.stem)
    ax.set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
