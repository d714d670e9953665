"""Note- and frame-level transcription metrics (mir_eval conventions).

`note_metrics` compares two note arrays ``(N, 5)`` (onset_s, offset_s, MIDI pitch, velocity, GM
program; velocity is not scored):

* ``note_precision/recall/f1``: ``mir_eval.transcription.precision_recall_f1_overlap`` with
  pitches in Hz (``mir_eval.util.midi_to_hz``), onset tolerance 50 ms, pitch tolerance 50 cents,
  ``offset_ratio=None`` (onsets only). Program-agnostic.
* ``note_with_offset_precision/recall/f1``: the same with ``offset_ratio=0.2``,
  ``offset_min_tolerance=0.05``.
* ``frame_precision/recall/f1``: framewise P/R/F1 of binary piano rolls (128 MIDI pitches,
  pitch rounded) sampled every 10 ms, frame ``k`` active for a note when
  ``round(onset / 0.01) <= k < round(offset / 0.01)``; counts summed over the whole piece
  (Onsets-and-Frames practice). This equals ``mir_eval.multipitch.metrics`` precision/recall on
  the same 10 ms frames for integer pitches, except that a pitch sounding twice at once (two
  programs) counts once here; it is used instead of ``multipitch`` because it is vectorised.
* ``note_f1/<program>``: onset-only note F1 restricted to the notes of one GM program in either
  array, for each program present (stream modes). Computed when ``per_program`` is True, or, by
  default, when reference and estimate together hold more than one program.
* ``n_ref``, ``n_est``: note counts.

Empty reference or estimate gives 0 for every score (never an exception). Notes are cleaned
before scoring, since mir_eval raises on them: rows with non-finite values or pitch <= 0 are
dropped, negative times clipped to 0, and zero/negative-length notes given a 1 ms duration.
"""

from __future__ import annotations

import warnings

import numpy as np

FRAME_HOP_S = 0.01


def _clean(notes: np.ndarray | None) -> np.ndarray:
    notes = np.zeros((0, 5)) if notes is None else np.asarray(notes, np.float64).reshape(-1, 5)
    notes = notes[np.all(np.isfinite(notes[:, :3]), axis=1) & (notes[:, 2] > 0)].copy()
    notes[:, :2] = np.maximum(notes[:, :2], 0.0)
    notes[:, 1] = np.maximum(notes[:, 1], notes[:, 0] + 1e-3)
    return notes


def _prf(ref: np.ndarray, est: np.ndarray, offset_ratio: float | None, **kw) -> tuple:
    if len(ref) == 0 or len(est) == 0:
        return 0.0, 0.0, 0.0
    import mir_eval

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, r, f, _ = mir_eval.transcription.precision_recall_f1_overlap(
            ref[:, :2],
            mir_eval.util.midi_to_hz(ref[:, 2]),
            est[:, :2],
            mir_eval.util.midi_to_hz(est[:, 2]),
            offset_ratio=offset_ratio,
            **kw,
        )
    return float(p), float(r), float(f)


def _roll(notes: np.ndarray, n_frames: int, hop: float) -> np.ndarray:
    roll = np.zeros((n_frames + 1, 128), np.int32)  # +1: difference-array sentinel
    if len(notes):
        start = np.clip(np.rint(notes[:, 0] / hop).astype(np.int64), 0, n_frames)
        end = np.clip(np.rint(notes[:, 1] / hop).astype(np.int64), 0, n_frames)
        pitch = np.clip(np.rint(notes[:, 2]).astype(np.int64), 0, 127)
        keep = end > start
        np.add.at(roll, (start[keep], pitch[keep]), 1)
        np.add.at(roll, (end[keep], pitch[keep]), -1)
    return np.cumsum(roll, axis=0)[:n_frames] > 0


def frame_scores(
    ref_notes: np.ndarray, est_notes: np.ndarray, hop: float = FRAME_HOP_S
) -> tuple[float, float, float]:
    """Framewise (precision, recall, f1) of the notes' piano rolls at `hop` seconds."""
    ref, est = _clean(ref_notes), _clean(est_notes)
    if len(ref) == 0 or len(est) == 0:
        return 0.0, 0.0, 0.0
    n_frames = int(np.rint(max(ref[:, 1].max(), est[:, 1].max()) / hop)) + 1
    r, e = _roll(ref, n_frames, hop), _roll(est, n_frames, hop)
    tp = float(np.sum(r & e))
    n_est, n_ref = float(e.sum()), float(r.sum())
    p = tp / n_est if n_est else 0.0
    rc = tp / n_ref if n_ref else 0.0
    f = 2 * p * rc / (p + rc) if p + rc else 0.0
    return p, rc, f


def note_metrics(
    ref_notes: np.ndarray,
    est_notes: np.ndarray,
    *,
    onset_tolerance: float = 0.05,
    pitch_tolerance: float = 50.0,
    offset_ratio: float = 0.2,
    offset_min_tolerance: float = 0.05,
    frame_hop: float = FRAME_HOP_S,
    per_program: bool | None = None,
) -> dict[str, float]:
    """Note, note-with-offset, frame and per-program scores (module docstring)."""
    ref, est = _clean(ref_notes), _clean(est_notes)
    tol = {"onset_tolerance": onset_tolerance, "pitch_tolerance": pitch_tolerance}
    out: dict[str, float] = {"n_ref": float(len(ref)), "n_est": float(len(est))}
    p, r, f = _prf(ref, est, None, **tol)
    out.update(note_precision=p, note_recall=r, note_f1=f)
    p, r, f = _prf(ref, est, offset_ratio, offset_min_tolerance=offset_min_tolerance, **tol)
    out.update(note_with_offset_precision=p, note_with_offset_recall=r, note_with_offset_f1=f)
    p, r, f = frame_scores(ref, est, frame_hop)
    out.update(frame_precision=p, frame_recall=r, frame_f1=f)
    programs = np.unique(np.rint(np.concatenate([ref[:, 4], est[:, 4]])).astype(np.int64))
    if per_program or (per_program is None and len(programs) > 1):
        for prog in programs:
            sub_r = ref[np.rint(ref[:, 4]) == prog]
            sub_e = est[np.rint(est[:, 4]) == prog]
            out[f"note_f1/{int(prog)}"] = _prf(sub_r, sub_e, None, **tol)[2]
    return out


def note_f1_scores(
    ref_notes: np.ndarray,
    est_notes: np.ndarray,
    *,
    onset_tolerance: float = 0.05,
    pitch_tolerance: float = 50.0,
    offset_ratio: float = 0.2,
    offset_min_tolerance: float = 0.05,
) -> dict[str, float]:
    """Only ``note_f1`` and ``note_with_offset_f1`` (what threshold calibration maximises),
    with `note_metrics`' conventions; no frame or per-program scores."""
    ref, est = _clean(ref_notes), _clean(est_notes)
    tol = {"onset_tolerance": onset_tolerance, "pitch_tolerance": pitch_tolerance}
    with_off = _prf(ref, est, offset_ratio, offset_min_tolerance=offset_min_tolerance, **tol)
    return {"note_f1": _prf(ref, est, None, **tol)[2], "note_with_offset_f1": with_off[2]}
