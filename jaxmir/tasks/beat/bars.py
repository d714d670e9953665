"""The downbeat tagger's inputs, targets and network: one decision per beat, not per frame.

Not in omnizart. omnizart (and this task's frame model) reads downbeats off a second channel of
the 10-ms frame network, which must count beats at 100 frames per second to find where a bar
starts. On the wide corpus's test pieces the shipped frame model's downbeat activation hardly
tells a downbeat from another beat (median 0.25 against 0.05-0.13), so that even with the
true beats given, keeping those whose activation passes a threshold scores downbeat F 0.52.

The tagger works a level up, as madmom's downbeat trackers do: once the beats are known, each
beat gets a short description of the music between it and the next (which pitch classes start
and sound, the bass, how many notes start on the beat and how long they last, what is held over
from before, how far the harmony moved), and a small BiLSTM over the sequence of beats says
which beats start a bar. A bar is 2-7 steps of that sequence, so meter is a short-range pattern.

Pure functions and the Flax module live here; training and loading are in
:mod:`jaxmir.tasks.beat.tagger`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxmir.tasks.beat.labels import DURATION_COLS, FPS, LOWEST_PITCH, ONSET_COLS
from jaxmir.tasks.beat.model import BiLSTM

N_BAR_FEATURES = 46
"""Columns of `bar_features` (see there)."""

PITCH_CLASS_BLOCKS = (slice(0, 12), slice(12, 24), slice(24, 36))
"""The columns of `bar_features` that are indexed by pitch class (transposed together)."""

WINDOW = 64
"""Beats per training window of the tagger (8-32 bars)."""

DOWNBEAT_TOLERANCE = 0.07
"""Seconds: a beat is the bar's start when it lies this close to a true downbeat (mir_eval's
F-measure window), the nearest beat to each downbeat only."""


def notes_from_features(x: np.ndarray, fps: int = FPS) -> np.ndarray:
    """(N, 3) onset_s, offset_s, MIDI pitch recovered from beat features `x` (T, >=176): a note
    starts at each onset-roll entry and lasts while its duration-roll column stays on, up to
    the next onset of the same pitch. Frame resolution, so `bar_features` can be computed from
    the same input the frame model reads (a cached piece or a MIDI file alike)."""
    onset = np.asarray(x[:, ONSET_COLS]) > 0
    sounding = np.asarray(x[:, DURATION_COLS]) > 0
    n_frames = len(onset)
    rows = []
    for col in np.flatnonzero(onset.any(axis=0)):
        starts = np.flatnonzero(onset[:, col])
        # a note ends at the first later frame that is silent or strikes the key again
        stops = np.flatnonzero(~sounding[:, col] | onset[:, col])
        nxt = np.searchsorted(stops, starts, side="right")
        ends = np.append(stops, n_frames)[nxt]
        rows.append(np.stack([starts, ends, np.full(len(starts), col + LOWEST_PITCH)], axis=1))
    if not rows:
        return np.zeros((0, 3), np.float64)
    notes = np.concatenate(rows).astype(np.float64)
    notes[:, :2] /= fps
    return notes[np.lexsort((notes[:, 2], notes[:, 0]))]


def bar_features(notes: np.ndarray, beats: np.ndarray) -> np.ndarray:
    """float32 (len(beats), `N_BAR_FEATURES`): what happens at and after each beat.

    Beat ``i``'s span runs from a tenth of its interval before it to a tenth before the next
    beat (so notes played a little early count for their beat). Columns:

    ======  ========================================================================
    0-11    pitch classes that start in the span, weighted by log(1 + duration in
            beats), scaled so the largest is 1
    12-23   pitch classes sounding just after the beat (0/1)
    24-35   the lowest sounding pitch's class (one-hot; zeros when nothing sounds)
    36-38   log(1 + count) of notes starting in the span, on the beat, and held over
            the beat from before the span
    39-40   log(1 + duration in beats): the longest note starting on the beat, the
            mean of those starting in the span
    41-42   lowest and highest sounding pitch, (pitch - 60) / 24
    43      log(this beat's interval / the piece's median interval)
    44      1 when no note starts in the span
    45      harmonic change: 1 - cosine similarity of columns 12-23 with the previous beat's
    ======  ========================================================================
    """
    beats = np.asarray(beats, np.float64).ravel()
    n = len(beats)
    out = np.zeros((n, N_BAR_FEATURES), np.float32)
    notes = np.asarray(notes, np.float64).reshape(-1, np.shape(notes)[-1] if np.size(notes) else 3)
    if n == 0:
        return out
    gaps = np.diff(beats)
    median = float(np.median(gaps)) if len(gaps) else 0.5
    interval = np.append(gaps, gaps[-1] if len(gaps) else median)
    interval = np.maximum(interval, 1e-3)
    tol = 0.1 * interval
    span_start = beats - tol
    span_end = np.append(span_start[1:], beats[-1] + interval[-1] - tol[-1])
    if len(notes):
        on, off = notes[:, 0], np.maximum(notes[:, 1], notes[:, 0] + 1e-3)
        pc = np.rint(notes[:, 2]).astype(np.int64) % 12
        pitch = np.rint(notes[:, 2])
    for i in range(n):
        out[i, 43] = np.log(interval[i] / max(median, 1e-3))
        if not len(notes):
            out[i, 44] = 1.0
            continue
        in_span = (on >= span_start[i]) & (on < span_end[i])
        on_beat = np.abs(on - beats[i]) <= tol[i]
        after = beats[i] + tol[i]
        sounding = (on <= after) & (off > after)
        held = (on < span_start[i]) & (off > after)
        length = (off - on) / interval[i]
        starts = np.zeros(12)
        np.add.at(starts, pc[in_span], np.log1p(length[in_span]))
        out[i, 0:12] = starts / starts.max() if starts.max() > 0 else 0.0
        out[i, 12 + pc[sounding]] = 1.0
        if sounding.any():
            low = np.argmin(np.where(sounding, pitch, np.inf))
            out[i, 24 + pc[low]] = 1.0
            out[i, 41] = (pitch[sounding].min() - 60) / 24
            out[i, 42] = (pitch[sounding].max() - 60) / 24
        out[i, 36] = np.log1p(in_span.sum())
        out[i, 37] = np.log1p(on_beat.sum())
        out[i, 38] = np.log1p(held.sum())
        out[i, 39] = np.log1p(length[on_beat].max()) if on_beat.any() else 0.0
        out[i, 40] = np.log1p(length[in_span].mean()) if in_span.any() else 0.0
        out[i, 44] = float(not in_span.any())
    now = out[:, 12:24]
    before = np.vstack([np.zeros((1, 12), np.float32), now[:-1]])
    norms = np.linalg.norm(now, axis=1) * np.linalg.norm(before, axis=1)
    out[:, 45] = 1.0 - (now * before).sum(axis=1) / np.maximum(norms, 1e-6)
    return out


def transpose(features: np.ndarray, semitones: int) -> np.ndarray:
    """`bar_features` of the same music transposed by `semitones` (the pitch-class columns
    rotated; the register columns 41-42 are left as they are)."""
    out = np.array(features, copy=True)
    for block in PITCH_CLASS_BLOCKS:
        out[..., block] = np.roll(features[..., block], semitones, axis=-1)
    return out


def downbeat_targets(
    beats: np.ndarray, downbeats: np.ndarray, tolerance: float = DOWNBEAT_TOLERANCE
) -> np.ndarray:
    """float32 (len(beats),): 1 at the beat nearest each downbeat when it lies within
    `tolerance` seconds of it, else 0 (tracked beats may miss a downbeat: it then has no beat)."""
    beats = np.asarray(beats, np.float64).ravel()
    downbeats = np.asarray(downbeats, np.float64).ravel()
    out = np.zeros(len(beats), np.float32)
    if not len(beats) or not len(downbeats):
        return out
    nearest = np.abs(beats[:, None] - downbeats[None, :]).argmin(axis=0)
    close = np.abs(beats[nearest] - downbeats) <= tolerance
    out[nearest[close]] = 1.0
    return out


SUBDIVISIONS = (2, 3)
"""How many steps the level tagger learns to find in one beat: a beat sequence with the
midpoint, or the two thirds, of each interval inserted (`subdivided`)."""


def subdivided(beats: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(times, is_beat): `beats` with `k` - 1 evenly spaced points inserted into each interval,
    and float32 1 at the beats, 0 at the points: what a tracker gives when it follows a
    sub-beat (eighth notes under quarter-note beats, say). The level tagger learns from it."""
    beats = np.asarray(beats, np.float64).ravel()
    if len(beats) < 2 or k < 2:
        return beats, np.ones(len(beats), np.float32)
    steps = beats[:-1, None] + np.diff(beats)[:, None] * (np.arange(k) / k)[None, :]
    times = np.append(steps.ravel(), beats[-1])
    is_beat = np.zeros(len(times), np.float32)
    is_beat[::k] = 1.0
    return times, is_beat


def windows(
    features: np.ndarray, targets: np.ndarray, window: int = WINDOW
) -> list[dict[str, np.ndarray]]:
    """Training examples of one piece: windows of `window` beats overlapping by half, the last
    padded with zeros (``mask`` 0)."""
    n = len(features)
    out = []
    for start in range(0, max(n - window // 2, 1), window // 2):
        x = np.zeros((window, features.shape[1]), np.float32)
        y = np.zeros(window, np.float32)
        mask = np.zeros(window, np.float32)
        k = min(window, n - start)
        x[:k], y[:k], mask[:k] = features[start : start + k], targets[start : start + k], 1.0
        out.append({"x": x, "y": y, "mask": mask})
    return out


class BarTagger(nn.Module):
    """LayerNorm, a Dense projection to `hidden`, `num_layers` BiLSTMs of `hidden` units, and
    one logit per beat: (batch, beats, `N_BAR_FEATURES`) -> (batch, beats)."""

    hidden: int = 32
    num_layers: int = 2
    lstm_impl: str = "fused"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.LayerNorm(name="input_norm")(x)
        x = nn.Dense(self.hidden, name="project")(x)
        for layer in range(self.num_layers):
            x = BiLSTM(self.hidden, impl=self.lstm_impl, name=f"blstm_{layer}")(x)
        return nn.Dense(1, name="head")(x)[..., 0]


class TaggerEnsemble(nn.Module):
    """`members` :class:`BarTagger` s of the same size, each with its own weights (drawn from
    its own initialisation), run side by side: (batch, beats, `N_BAR_FEATURES`) -> logits
    (members, batch, beats). Trained together on the same batches, each member by its own
    loss; a beat's downbeat probability is the mean of the members' (`ensemble_probs`).

    Why: taggers that differ only in their seed disagree by up to 0.09 downbeat F on the
    same test beats; the mean of several is steadier and better than most of its members."""

    members: int = 4
    hidden: int = 32
    num_layers: int = 2
    lstm_impl: str = "fused"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        # Separate submodules, not `nn.vmap`: the jitted initialisation of vmapped 64-unit
        # taggers never finished on the CPU backend (jax 0.10.2; 8 units did), and the
        # members are independent computations for XLA either way.
        return jnp.stack(
            [
                BarTagger(self.hidden, self.num_layers, self.lstm_impl, name=f"member_{k}")(
                    x, train
                )
                for k in range(self.members)
            ]
        )


def ensemble_probs(logits: jax.Array) -> jax.Array:
    """Downbeat probabilities from a tagger's logits: (batch, beats) from one
    :class:`BarTagger`, the mean of the members' probabilities from a
    :class:`TaggerEnsemble` ((members, batch, beats))."""
    probs = jax.nn.sigmoid(logits)
    return probs if probs.ndim == 2 else probs.mean(axis=0)
