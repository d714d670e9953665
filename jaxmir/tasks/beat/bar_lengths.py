"""Downbeats as whole bars: a hidden Markov model over each beat's place in its bar.

Not in omnizart. The downbeat tagger (:mod:`jaxmir.tasks.beat.bars`) gives every tracked beat a
probability that it starts a bar; marking each beat over a threshold decides beat by beat, so
one doubtful beat can add a downbeat in mid-bar or drop one. On meters the tagger never trained
on (7/4) and on music unlike its corpus, it is often doubtful. Bars are regular: a piece keeps
its bar length for many bars. The model here reads the tagger's probabilities as evidence and
finds the most likely sequence of places in bars of 1-7 beats (`BAR_LENGTHS`), where a bar of
another length follows a bar with probability `change`, and a beat that does not count (a
fermata's extra tracked beat, a beat the tracker inserted) repeats a place in mid-bar with
probability `hold`. The beats at a bar's first place are the downbeats. madmom's bar tracker
follows the same idea over its own beat-synchronous features with one meter per piece.

Where the tagger hears no bar at all (a run of identical notes) the cheapest path still starts
a bar every 7 beats, at no particular beat; in a piece of a few beats it may start none.
`whole_bars` keeps the path only where it starts a bar and its downbeats stand out
(`MIN_CONTRAST`).
"""

from __future__ import annotations

import numpy as np

BAR_LENGTHS = tuple(range(1, 8))
"""Beats per bar the model tries: the tagger's 2-7 steps, and 1 for beats tracked a bar apart
(a tracker that followed the bars, or a half-bar level that the tagger marks throughout)."""

_EPS = 1e-4  # no probability is taken as certain

MIN_CONTRAST = 0.01
"""`whole_bars` keeps a path whose middle downbeat (the lower middle) has a probability at
least this much above the middle of the other beats (the higher middle). Files where nothing
marks a bar (identical notes, block chords at one velocity) give 0.0000-0.0002 on the shipped
taggers; of 407 corpus, fresh and left-out pieces the lowest is 0.020 (then 0.024, 0.039, 0.105).
Middles, not means: one sure beat among none does not make bars of the rest."""


def _states(lengths: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(length, place) of every state, one row each."""
    rows = [(n, k) for n in lengths for k in range(n)]
    return np.array([n for n, _ in rows]), np.array([k for _, k in rows])


def transition_logs(
    change: float, hold: float, lengths: tuple[int, ...] = BAR_LENGTHS
) -> np.ndarray:
    """(S, S) log probability of moving from state i (row) to j (column) at the next beat."""
    length, place = _states(lengths)
    n = len(length)
    t = np.zeros((n, n))
    starts = {m: int(np.flatnonzero((length == m) & (place == 0))[0]) for m in lengths}
    others = len(lengths) - 1
    if not others:  # one length: a bar can only be followed by another like it
        change = 0.0
    for i in range(n):
        stay = hold if place[i] > 0 else 0.0
        t[i, i] += stay
        if place[i] < length[i] - 1:
            t[i, i + 1] += 1.0 - stay
            continue
        for m in lengths:
            same = m == length[i]
            t[i, starts[m]] += (1.0 - stay) * ((1.0 - change) if same else change / others)
    with np.errstate(divide="ignore"):
        return np.log(t)


def bar_downbeats(
    probs: np.ndarray, change: float, hold: float, lengths: tuple[int, ...] = BAR_LENGTHS
) -> np.ndarray:
    """bool (len(probs),): which beats start a bar on the most likely path of places (Viterbi),
    given each beat's downbeat probability `probs`, in bars of the `lengths` (in beats). The
    first beat may fall anywhere in a bar (a pickup). `change` and `hold` in [0, 1)."""
    if not (0.0 <= change < 1.0 and 0.0 <= hold < 1.0):
        raise ValueError(f"bar model: change {change} and hold {hold} must lie in [0, 1)")
    p = np.asarray(probs, np.float64)
    if not np.isfinite(p).all():
        raise ValueError("bar model: a downbeat probability is not a number")
    p = np.clip(p, _EPS, 1.0 - _EPS)
    if len(p) == 0:
        return np.zeros(0, bool)
    _, place = _states(lengths)
    first = place == 0
    log_t = transition_logs(change, hold, lengths)
    emit = np.where(first[None, :], np.log(p)[:, None], np.log1p(-p)[:, None])
    score = emit[0] - np.log(len(place))
    back = np.zeros((len(p), len(place)), np.int64)
    for i in range(1, len(p)):
        moves = score[:, None] + log_t
        back[i] = np.argmax(moves, axis=0)
        score = moves[back[i], np.arange(len(place))] + emit[i]
    path = np.empty(len(p), np.int64)
    path[-1] = int(np.argmax(score))
    for i in range(len(p) - 1, 0, -1):
        path[i - 1] = back[i, path[i]]
    return first[path]


def whole_bars(
    probs: np.ndarray, change: float, hold: float, lengths: tuple[int, ...] = BAR_LENGTHS
) -> np.ndarray | None:
    """`bar_downbeats`, or None where its path starts no bar or its downbeats do not stand out
    from the other beats by `MIN_CONTRAST` (fewer than 2 beats: None), so that bars are not
    read into music where the tagger hears none. Where every beat starts a bar (bars of 1), the
    other beats' middle counts as 0."""
    p = np.asarray(probs, np.float64)
    if len(p) < 2:
        return None
    marks = bar_downbeats(p, change, hold, lengths)
    if not marks.any():  # a few doubtful beats: no bar starts on the cheapest path
        return None
    rest = np.quantile(p[~marks], 0.5, method="higher") if (~marks).any() else 0.0
    return marks if np.quantile(p[marks], 0.5, method="lower") - rest >= MIN_CONTRAST else None
