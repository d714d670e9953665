"""Mini-beat activations -> drum hits, their scores and the files a transcription writes."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np

from jaxmir.data.features.cqt import DRUM_CLASSES
from jaxmir.tasks.drum.labels import CLASS_NOTE, HIHAT, class_hits

WINDOW = 0.05  # mir_eval.onset's default tolerance, seconds


def decode_hits(act: np.ndarray, mini_beats: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(H, 2) hits (time, class) from activations (M, 13) on mini-beats (M,): every slot at or
    above `threshold` that is also the larger of itself and each neighbour on the same class
    (one hit is not reported twice on adjacent mini-beats), sorted by time then class."""
    act = np.asarray(act, np.float32)
    padded = np.pad(act, ((1, 1), (0, 0)))
    peak = (act > padded[:-2]) & (act >= padded[2:])  # a plateau counts at its start
    slots, classes = np.nonzero((act >= threshold) & peak)
    hits = np.stack([np.asarray(mini_beats, np.float64)[slots], classes.astype(np.float64)], 1)
    return hits[np.lexsort((hits[:, 1], hits[:, 0]))].reshape(-1, 2)


def _per_class(hits: np.ndarray) -> list[np.ndarray]:
    hits = np.asarray(hits, np.float64).reshape(-1, 2)
    return [np.sort(hits[hits[:, 1] == c, 0]) for c in range(len(DRUM_CLASSES))]


def _merged(times: list[np.ndarray]) -> np.ndarray:
    """One onset list from several (hits closer than the tolerance count once)."""
    t = np.sort(np.concatenate(times)) if times else np.zeros(0)
    if len(t) < 2:
        return t
    keep = np.concatenate([[True], np.diff(t) > WINDOW])
    return t[keep]


def drum_scores(ref_hits: np.ndarray, est_hits: np.ndarray) -> dict[str, float]:
    """mir_eval.onset F-measure (50 ms) for kick, snare and hi-hat (closed, pedal and open
    merged, as omnizart's output; `drum_<group>_f1`), per class for each of the 13 with
    reference hits (`drum_class_<name>_f1`), and overall (matches of all 13 classes pooled).
    A class without reference hits in a piece has no per-class score there (its false alarms
    still count in the overall score); a piece with no drums and no hits found has no overall
    score either.

    ref_hits: (H, 2) time, GM note; est_hits: (H, 2) time, class."""
    import mir_eval

    ref = class_hits(ref_hits)
    est = _per_class(est_hits)
    out: dict[str, float] = {}
    groups = {"kick": ([ref[0]], [est[0]]), "snare": ([ref[1]], [est[1]])}
    groups["hihat"] = ([ref[c] for c in HIHAT], [est[c] for c in HIHAT])
    for name, (r, e) in groups.items():
        r, e = _merged(r), _merged(e)
        if len(r):
            out[f"drum_{name}_f1"] = _f_measure(r, e)
    matched = n_ref = n_est = 0
    for c, name in enumerate(DRUM_CLASSES):
        r, e = ref[c], est[c]
        matched += len(mir_eval.util.match_events(r, e, WINDOW)) if len(r) and len(e) else 0
        n_ref, n_est = n_ref + len(r), n_est + len(e)
        if len(r):  # its own prefix: "snare" is a group's name too (the group's was lost)
            out[f"drum_class_{name}_f1"] = _f_measure(r, e)
    if not n_ref and not n_est:  # no drums, none found: nothing to score
        return out
    precision = matched / n_est if n_est else 0.0
    recall = matched / n_ref if n_ref else 0.0
    total = precision + recall
    out["drum_f1"] = 2 * precision * recall / total if total else 0.0
    out["drum_precision"], out["drum_recall"] = precision, recall
    return out


def _f_measure(ref: np.ndarray, est: np.ndarray) -> float:
    """mir_eval.onset's F-measure (50 ms); no hits found scores 0 without mir_eval's warning
    ("Estimated onsets are empty"), which a piece where the model finds no hit of a class
    would print once per class."""
    import mir_eval

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Estimated onsets are empty", category=UserWarning
        )
        return float(mir_eval.onset.f_measure(ref, est, window=WINDOW)[0])


def hits_to_midi(hits: np.ndarray):
    """A GM drum track (channel 10) of 50 ms notes, one note per class (`CLASS_NOTE`)."""
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(initial_tempo=120)
    kit = pretty_midi.Instrument(program=0, is_drum=True, name="Drums")
    for time, c in np.asarray(hits, np.float64).reshape(-1, 2):
        note = CLASS_NOTE[int(c)]
        kit.notes.append(pretty_midi.Note(100, note, float(time), float(time) + 0.05))
    midi.instruments.append(kit)
    return midi


def write_hits_csv(path: Path, hits: np.ndarray) -> Path:
    """CSV with header time,class,gm_note."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["time", "class", "gm_note"])
        for time, c in np.asarray(hits, np.float64).reshape(-1, 2):
            writer.writerow([f"{time:.6f}", DRUM_CLASSES[int(c)], CLASS_NOTE[int(c)]])
    return path


def plot_hits(
    act: np.ndarray, mini_beats: np.ndarray, hits: np.ndarray, path: Path, title: str = ""
) -> Path:
    """A PNG of the 13 classes' activations on the mini-beats, the decoded hits marked."""
    from matplotlib.figure import Figure  # no pyplot: safe in `transcribe`'s writer thread

    mini_beats = np.asarray(mini_beats, np.float64)
    fig = Figure(figsize=(14, 4))
    ax = fig.subplots()
    end = float(mini_beats[-1]) if len(mini_beats) else 1.0
    ax.imshow(
        np.asarray(act).T,
        origin="lower",
        aspect="auto",
        cmap="Greys",
        vmin=0,
        vmax=1,
        extent=(float(mini_beats[0]) if len(mini_beats) else 0.0, end, -0.5, 12.5),
        interpolation="nearest",
    )
    hits = np.asarray(hits, np.float64).reshape(-1, 2)
    ax.scatter(hits[:, 0], hits[:, 1], s=12, c="red", marker="|")
    ax.set_yticks(np.arange(len(DRUM_CLASSES)), DRUM_CLASSES, fontsize=7)
    ax.set(xlabel="time (s)", title=title or path.stem)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
