"""Melody (single-f0) scores with ``mir_eval.melody.evaluate`` (50-cent tolerance).

`melody_scores` compares a reference contour ``(N, 2)`` (time s, Hz; <= 0 unvoiced) with an
estimate given as frame times and Hz (0 unvoiced), e.g. the output of a melody decoder at
`jaxmir.melody.frame_times`. mir_eval converts both to cents, inserts a sample at t = 0 when a
series starts later (copying its first value), and with the default ``hop=None`` resamples the
**estimate onto the reference times** (MIREX practice; voicing held from the previous estimate
frame, pitch linear). Passing ``hop`` (e.g. 0.01) makes mir_eval resample both series onto a
common grid of that hop instead. The estimate is then padded with unvoiced frames or cut to the
reference's length.

Edge cases (never an exception for unvoiced or empty inputs):

* mir_eval 0.8.2 itself defines the ratios with an empty denominator: voicing recall is 1 when
  the reference has no voiced frame; voicing false alarm is 0 when it has no unvoiced frame;
  raw pitch/chroma accuracy are 0 when it has no voiced frame (overall accuracy always has a
  denominator). These values are returned as they are.
* Any NaN that mir_eval still returns (older versions gave 0/0 for some of the cases above) is
  replaced by 0.0.
* An empty reference (no rows) scores 0.0 everywhere, mir_eval's own convention for empty
  arrays (its ``to_cent_voicing`` would raise IndexError on it). An empty estimate is scored as
  all unvoiced.
* Non-finite Hz values count as unvoiced. mir_eval's warnings (no voiced frames, non-uniform
  time grid) are suppressed.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

#: The score names returned by `melody_scores`, in a fixed order.
MELODY_KEYS: tuple[str, ...] = (
    "raw_pitch_accuracy",
    "raw_chroma_accuracy",
    "voicing_recall",
    "voicing_false_alarm",
    "overall_accuracy",
)

_MIR_EVAL_NAMES = {
    "raw_pitch_accuracy": "Raw Pitch Accuracy",
    "raw_chroma_accuracy": "Raw Chroma Accuracy",
    "voicing_recall": "Voicing Recall",
    "voicing_false_alarm": "Voicing False Alarm",
    "overall_accuracy": "Overall Accuracy",
}


def _series(
    times: np.ndarray, hz: np.ndarray, signed: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    times = np.asarray(times, np.float64).reshape(-1)
    hz = np.asarray(hz, np.float64).reshape(-1)
    if times.shape != hz.shape:
        raise ValueError(f"times and Hz differ in length: {times.shape} vs {hz.shape}")
    keep = np.isfinite(times)
    times, hz = times[keep], hz[keep]
    order = np.argsort(times, kind="stable")
    times, hz = times[order], hz[order]
    ok = np.isfinite(hz) & ((hz != 0) if signed else (hz > 0))
    return times, np.where(ok, hz, 0.0)


def melody_scores(
    ref_f0: np.ndarray,
    est_times: np.ndarray,
    est_hz: np.ndarray,
    hop: float | None = None,
) -> dict[str, float]:
    """RPA, RCA, voicing recall / false alarm and OA of an estimate against a reference.

    Args:
        ref_f0: ``(N, 2)`` reference (time s, Hz; <= 0 unvoiced).
        est_times: ``(T,)`` estimate times (s).
        est_hz: ``(T,)`` estimate f0 (Hz; 0 unvoiced; negative: unvoiced, with the pitch the
            estimator would give if it were voiced, MIREX's convention, so raw pitch accuracy
            scores the pitch apart from the voicing decision).
        hop: ``None`` (mir_eval's default): the estimate is resampled onto the reference times.
            A float: both are resampled onto a grid of that hop (s).

    Returns:
        ``{key: float}`` for every key of `MELODY_KEYS`.
    """
    import mir_eval

    ref = np.asarray(ref_f0, np.float64).reshape(-1, 2)
    ref_t, ref_hz = _series(ref[:, 0], ref[:, 1])
    est_t, est_hz = _series(est_times, est_hz, signed=True)
    if len(ref_t) == 0:
        return dict.fromkeys(MELODY_KEYS, 0.0)
    if len(est_t) == 0:  # all unvoiced: one unvoiced sample, padded by mir_eval
        est_t, est_hz = np.zeros(1), np.zeros(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = mir_eval.melody.evaluate(ref_t, ref_hz, est_t, est_hz, hop=hop)
    out = {}
    for key in MELODY_KEYS:
        value = float(scores[_MIR_EVAL_NAMES[key]])
        out[key] = 0.0 if math.isnan(value) else value
    return out
