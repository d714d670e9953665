"""Frame-level targets and training losses for note transcription (omnizart's `music`).

Targets follow omnizart's ``music/labels.py``, re-derived from its definition and built per note
with numpy slices (no per-frame Python loop). Frames are 20 ms (``FPS = 50``); the pitch axis has
``N_BINS = 352`` bins, 4 per semitone for the 88 piano keys, and a note writes **all 4 bins** of its
key (omnizart's ``output[t, pitch*4:(pitch+1)*4]``), not only the centre one.

Per note (frames ``round(onset * FPS) .. round(offset * FPS) - 1``, Python/numpy
half-to-even rounding as omnizart's ``round``):

* frame value 1 on every frame;
* onset value 1 on the first 2 frames (omnizart: ``round(0.03 s / 0.02 s) = 2``), then
  ``1 / idx**2`` at frame ``idx`` of the note (``idx >= 2``), until the offset. omnizart stops
  updating the value once it falls to ``1e-5`` or below, so from ``idx = 317`` on it stays at
  ``1 / 317**2``; that detail is kept (`onset_curve`).

Channel layouts (`LABEL_MODES`), ``bg`` = background:

====================  ========  ========================================================
mode                  channels  layout
====================  ========  ========================================================
note, frame           3         [bg, frame - onset, onset]
true-frame            2         [bg, frame]
note-offset           4         [bg, frame - onset, onset, offset] (not in omnizart)
note-stream,          23        [bg, dura_0, onset_0, ..., dura_10, onset_10] for the 11
frame-stream                    programs of `STREAM_PROGRAMS` (dura = frame - onset)
pop-note-stream       13        [bg, dura_0, onset_0, ..., dura_5, onset_5] for the 6
                                groups of `POP_GROUPS`
true-frame-stream     12        [bg, frame_0, ..., frame_10]
====================  ========  ========================================================

``bg = clip(1 - sum(other channels), 0, 1)``.

Deliberate differences from omnizart (each fixes a bug or an undefined case):

* **Non-stream modes take every pitched note.** omnizart builds the *frame* of ``note``/``frame``/
  ``true-frame`` only from the 11 MusicNet programs but the *onset* from all 128 programs, so a
  note of e.g. program 1 got an onset without a frame and ``frame - onset`` went negative. Here
  every note except drums (program 128) counts, including unknown programs (-1).
* **Stream modes drop notes whose program has no channel**, as omnizart does (its
  ``label_conversion`` skips them; it maps nothing to a "nearest family member"). That means
  programs outside `STREAM_PROGRAMS` for ``note-stream``/``frame-stream``/``true-frame-stream``,
  and drums / unknown programs for every stream mode (``pop-note-stream``'s "others" group holds
  every other GM program 0-127).
* **Background is clipped to [0, 1].** omnizart writes ``1 - sum`` unclipped, which is negative
  where two instruments sound the same pitch.
* **Overlapping notes on one (frame, bin, channel) keep the larger onset value.** omnizart lets the
  later write win (dict overwrite); for notes sorted by onset the two agree except for ties.
* **Pitches outside MIDI 21-108 are dropped.** omnizart's negative slice for pitch < 21 wrote
  some of them into the top bins (e.g. MIDI 19 -> bins 344-347). Fractional pitches are rounded.
* Notes past ``n_frames`` are cut at ``n_frames``; zero-frame notes write nothing (as omnizart).

Losses (`smooth_bce`, `focal_loss`, `bce_label_smoothing`) are in ``jax.numpy`` on logits; see
their docstrings for how each relates to omnizart's ``music/losses.py`` and ``music/app.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

FPS = 50
"""Label frames per second (20 ms, omnizart's CFP hop)."""

HOP_S = 1.0 / FPS
"""Seconds per label frame."""

LOWEST_PITCH = 21
"""MIDI pitch of the first key (A0)."""

N_KEYS = 88
"""Piano keys A0 (21) .. C8 (108)."""

BINS_PER_KEY = 4
"""Pitch bins per semitone (48 bins per octave CFP)."""

N_BINS = N_KEYS * BINS_PER_KEY
"""Pitch axis of features and labels: 352."""

ONSET_FRAMES = 2
"""Leading frames of a note whose onset value is 1 (omnizart: ``round(0.03 / 0.02)``)."""

ONSET_FLOOR_IDX = 317
"""First frame index at which omnizart's onset decay stops: smallest ``idx`` with
``1 / idx**2 <= 1e-5``; later frames keep ``1 / 317**2``."""

DRUM_PROGRAM = 128

STREAM_PROGRAMS = (0, 6, 40, 41, 42, 43, 60, 68, 70, 71, 73)
"""MusicNet's 11 GM programs, one instrument stream each (omnizart
``MUSICNET_INSTRUMENT_PROGRAMS``): piano, harpsichord, violin, viola, cello, contrabass,
French horn, oboe, bassoon, clarinet, flute."""

POP_GROUPS = (
    ("guitar", tuple(range(24, 32))),
    ("bass", tuple(range(32, 40))),
    ("strings", tuple(range(40, 56))),
    ("organ", tuple(range(16, 24))),
    ("piano", tuple(range(0, 8))),
    ("others", tuple(p for p in range(128) if not (0 <= p < 8 or 16 <= p < 56))),
)
"""``pop-note-stream``'s 6 instrument groups in channel order (omnizart
``_init_pop_channel_mapping``): GM programs per group; "others" is every other program 0-127."""

POP_PROGRAMS = (24, 32, 40, 16, 0, 56)
"""The GM program a decoded ``pop-note-stream`` group is written with. omnizart's
``POP_INSTRUMENT_PROGRAMES = [24, 32, 40, 0, 56]`` has only 5 entries for 6 groups and is out of
order (organ's channel would become piano, piano's trumpet, and "others" raised IndexError); here
each group gets its own first program (organ 16, piano 0) and "others" keeps omnizart's 56."""

LABEL_MODES = {
    "note": 3,
    "note-offset": 4,
    "note-stream": 23,
    "pop-note-stream": 13,
    "frame": 3,
    "frame-stream": 23,
    "true-frame": 2,
    "true-frame-stream": 12,
}
"""Label mode -> number of output channels (omnizart ``LabelType.mode_mapping``)."""

STREAM_MODES = ("note-stream", "frame-stream", "true-frame-stream", "pop-note-stream")
TRUE_FRAME_MODES = ("true-frame", "true-frame-stream")


def check_mode(mode: str) -> str:
    if mode not in LABEL_MODES:
        raise ValueError(f"unknown music label mode {mode!r}; choose from {sorted(LABEL_MODES)}")
    return mode


def n_classes(mode: str) -> int:
    """Output channels of a label mode."""
    return LABEL_MODES[check_mode(mode)]


def mode_programs(mode: str) -> tuple[int, ...]:
    """The GM program of each instrument stream of `mode` (``(0,)`` for non-stream modes)."""
    check_mode(mode)
    if mode == "pop-note-stream":
        return POP_PROGRAMS
    if mode in STREAM_MODES:
        return STREAM_PROGRAMS
    return (0,)


def program_channels(programs: np.ndarray, mode: str) -> np.ndarray:
    """Instrument-stream index of each GM program under `mode`; -1 where the note is dropped."""
    check_mode(mode)
    programs = np.rint(np.asarray(programs, np.float64)).astype(np.int64)
    out = np.full(programs.shape, -1, np.int64)
    if mode == "pop-note-stream":
        for idx, (_, members) in enumerate(POP_GROUPS):
            out[np.isin(programs, members)] = idx
    elif mode in STREAM_MODES:
        for idx, prog in enumerate(STREAM_PROGRAMS):
            out[programs == prog] = idx
    else:
        out[programs != DRUM_PROGRAM] = 0
    return out


def notes_for_mode(notes: np.ndarray, mode: str) -> np.ndarray:
    """The notes a `mode` can represent, with each program replaced by its stream's program.

    Drops notes `music_labels` would not write (program without a stream, drums, pitch outside
    21-108 after rounding); the rest get `mode_programs(mode)[stream]` (0 for non-stream modes).
    This is the reference to score a decoder against, e.g. per program for ``pop-note-stream``.
    """
    notes = np.asarray(notes, np.float64).reshape(-1, 5)
    chan = program_channels(notes[:, 4], mode)
    key = np.rint(notes[:, 2]) - LOWEST_PITCH
    keep = (chan >= 0) & (key >= 0) & (key < N_KEYS)
    out = notes[keep].copy()
    out[:, 4] = np.asarray(mode_programs(mode), np.float64)[chan[keep]]
    return out


def onset_curve(length: int) -> np.ndarray:
    """omnizart's onset values for a note `length` frames long (float32, shape ``(length,)``)."""
    idx = np.arange(max(int(length), 0), dtype=np.float64)
    curve = 1.0 / np.square(np.minimum(np.maximum(idx, 1.0), ONSET_FLOOR_IDX))
    curve[:ONSET_FRAMES] = 1.0
    return curve.astype(np.float32)


OFFSET_FRAMES = 2
"""``note-offset``: the offset channel is 1 on the note's last frame and the frame after it."""


def offset_triangle(end_s: float, lo: int, hi: int, spread: float) -> np.ndarray:
    """The ``note-offset`` channel's soft target on frames ``lo .. hi - 1`` of a note that ends
    at `end_s` seconds: ``max(0, 1 - |frame - end_s * FPS| / spread)``, 1 at the exact end
    (a frame ``f`` begins at ``f / FPS``; a note's decoded end is the frame where it stops).

    Not in omnizart: the regression-style targets of high-resolution piano transcription
    (Kong et al., 2021). Two frames of 1 ask a model to place the end to the frame; a triangle
    grades a near miss, and its peak, found between frames by a parabola, gives the end."""
    frames = np.arange(lo, hi, dtype=np.float64)
    return np.maximum(0.0, 1.0 - np.abs(frames - end_s * FPS) / spread).astype(np.float32)


def _writable_notes(
    notes: np.ndarray, mode: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(notes, start frame, end frame, key 0-87, stream) of the rows of `notes` ``(N, 5)``
    that `mode` can write: finite times and pitch, a key of the piano, a stream."""
    notes = np.asarray(notes, np.float64).reshape(-1, 5)
    notes = notes[np.all(np.isfinite(notes[:, :3]), axis=1)]
    key = np.rint(notes[:, 2]).astype(np.int64) - LOWEST_PITCH
    chan = program_channels(notes[:, 4], mode)
    ok = (chan >= 0) & (key >= 0) & (key < N_KEYS)
    notes, key, chan = notes[ok], key[ok], chan[ok]
    start = np.rint(notes[:, 0] * FPS).astype(np.int64)
    end = np.rint(notes[:, 1] * FPS).astype(np.int64)
    return notes, start, end, key, chan


def _rolls(
    notes: np.ndarray, n_frames: int, mode: str, offset_spread: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-key rolls ``frame`` (0/1), ``onset`` (decaying) and ``offset`` (0/1, or with
    `offset_spread` > 0 frames the soft `offset_triangle`), each ``(n_frames, 88, I)``."""
    n_inst = len(mode_programs(mode))
    frame = np.zeros((n_frames, N_KEYS, n_inst), np.float32)
    onset = np.zeros((n_frames, N_KEYS, n_inst), np.float32)
    offset = np.zeros((n_frames, N_KEYS, n_inst), np.float32)
    written, start, end, key, chan = _writable_notes(notes, mode)
    if len(key) == 0 or n_frames == 0:
        return frame, onset, offset
    keep = (end > start) & (start < n_frames)
    max_len = int((end[keep] - start[keep]).max()) if keep.any() else 0
    curve = onset_curve(max_len)
    rows = zip(start[keep], end[keep], key[keep], chan[keep], written[keep, 1], strict=True)
    for s, e, k, c, end_s in rows:
        lo, hi = max(s, 0), min(e, n_frames)
        if hi <= lo:
            continue
        frame[lo:hi, k, c] = 1.0
        seg = curve[lo - s : hi - s]
        np.maximum(onset[lo:hi, k, c], seg, out=onset[lo:hi, k, c])
        if offset_spread > 0:  # the triangle's frames, within the note's first frame on
            a = max(lo, int(np.ceil(end_s * FPS - offset_spread)))
            b = min(int(np.floor(end_s * FPS + offset_spread)) + 1, n_frames)
            if b > a:
                tri = offset_triangle(end_s, a, b, offset_spread)
                np.maximum(offset[a:b, k, c], tri, out=offset[a:b, k, c])
            continue
        a, b = max(e - 1, lo), min(e - 1 + OFFSET_FRAMES, n_frames)
        offset[a:b, k, c] = 1.0
    return frame, onset, offset


REPEAT_GAP_S = 0.05
"""A note *re-strikes* its key when a note of the same key (and stream) ended less than this
before its onset, or still sounds (`repeat_onsets`)."""


def repeat_onsets(notes: np.ndarray, n_frames: int, mode: str) -> np.ndarray:
    """``float32 (n_frames, 88)``: 1 on the onset frames (the first `ONSET_FRAMES`) of every
    note that re-strikes a key that was sounding (`REPEAT_GAP_S`), 0 elsewhere.

    Not in omnizart. On the embedded corpus about a fifth of the notes re-strike a sounding
    key; their attack is a small rise on a key that is already loud, and a model trained with
    every onset weighted alike learns to miss nearly all of them (docs/music.md)."""
    out = np.zeros((int(n_frames), N_KEYS), np.float32)
    notes, _, _, key, chan = _writable_notes(notes, mode)
    if len(notes) < 2 or n_frames <= 0:
        return out
    order = np.lexsort((notes[:, 0], key, chan))
    latest_end = -np.inf
    for a, b in zip(order[:-1], order[1:], strict=True):
        same = key[a] == key[b] and chan[a] == chan[b]
        latest_end = max(latest_end, notes[a, 1]) if same else -np.inf
        if same and notes[b, 0] - latest_end < REPEAT_GAP_S and notes[b, 0] > notes[a, 0]:
            s = int(np.rint(notes[b, 0] * FPS))
            lo, hi = max(s, 0), min(s + ONSET_FRAMES, int(n_frames))
            out[lo:hi, key[b]] = 1.0
    return out


RELEASE_FRAMES = 5
"""Frames after a note's end (100 ms) that `release_frames` marks."""


def release_frames(
    notes: np.ndarray, n_frames: int, mode: str, frames: int = RELEASE_FRAMES
) -> np.ndarray:
    """``float32 (n_frames, 88)``: 1 on the `frames` frames after each note's last frame where
    no note of that key (and stream) sounds, 0 elsewhere.

    Not in omnizart. These are the frames a model most often keeps "on": the sound of a
    released key decays over them, and with the note positives weighted (`weighted_bce`) an
    uncertain frame leans towards "on", so short notes were decoded ending late
    (docs/music.md). Weighing the negatives here (`weighted_bce`'s `release_weight`) asks the
    model to hear the release."""
    out = np.zeros((int(n_frames), N_KEYS), np.float32)
    notes, start, end, key, _ = _writable_notes(notes, mode)
    if len(notes) == 0 or n_frames <= 0:
        return out
    sounding = _rolls(notes, int(n_frames), mode)[0].any(axis=-1)
    ok = (end > start) & (end < n_frames)
    for e, k in zip(end[ok], key[ok], strict=True):  # e < 0: a note ended before the window
        out[max(e, 0) : max(e + frames, 0), k] = 1.0
    out[sounding] = 0.0
    return out


TAIL_START = 25
"""Frames after a note's onset (0.5 s) where `tail_frames` starts marking it."""


def tail_frames(notes: np.ndarray, n_frames: int, mode: str, start: int = TAIL_START) -> np.ndarray:
    """``float32 (n_frames, 88)``: 1 on each note's frames from `start` frames after its onset
    to its end, 0 elsewhere.

    Not in omnizart. A long note's last frames are the ones a model most often calls "off": a
    struck or plucked note decays towards silence before its key is released, and on the
    shipped model most long notes that end early end where the frame posterior falls, not at
    the offset channel (docs/music.md). Weighing these frames' positives (`weighted_bce`'s
    `tail_weight`) asks the model to hold a note it can barely hear."""
    out = np.zeros((int(n_frames), N_KEYS), np.float32)
    _, first, end, key, _ = _writable_notes(notes, mode)
    for s, e, k in zip(first + start, end, key, strict=True):
        lo, hi = max(s, 0), min(e, int(n_frames))
        out[lo:hi, k] = 1.0
    return out


def music_labels(
    notes: np.ndarray, n_frames: int, mode: str = "note-stream", offset_spread: float = 0.0
) -> np.ndarray:
    """Frame targets ``float32 (n_frames, 352, LABEL_MODES[mode])`` for notes ``(N, 5)``.

    `notes` rows are ``onset_s, offset_s, MIDI pitch, velocity, GM program`` (velocity unused).
    See the module docstring for the channel layouts and the differences from omnizart.
    `offset_spread` (frames, ``note-offset`` mode): 0 marks a note's last frame and the next
    (`OFFSET_FRAMES`); above 0, the soft `offset_triangle` of that half-width.
    """
    check_mode(mode)
    if offset_spread < 0 or (offset_spread > 0 and mode != "note-offset"):
        raise ValueError(f"offset_spread {offset_spread} needs mode 'note-offset' and >= 0")
    n_frames = int(n_frames)
    frame, onset, offset = _rolls(notes, n_frames, mode, offset_spread)
    keys = np.zeros((n_frames, N_KEYS, LABEL_MODES[mode]), np.float32)
    if mode in TRUE_FRAME_MODES:
        keys[..., 1:] = frame
    elif mode == "note-offset":
        keys[..., 1:2] = frame - onset
        keys[..., 2:3] = onset
        keys[..., 3:4] = offset
    else:
        keys[..., 1::2] = frame - onset
        keys[..., 2::2] = onset
    sounding = keys[..., 1:3] if mode == "note-offset" else keys[..., 1:]  # not the offsets
    keys[..., 0] = np.clip(1.0 - sounding.sum(axis=-1), 0.0, 1.0)
    return np.repeat(keys, BINS_PER_KEY, axis=1)  # each key fills its 4 bins


# ----------------------------------------------------------------------------------------------
# Losses (jax.numpy, on logits)


def _reduce(loss: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean of `loss`, or its mean weighted by `mask` (broadcast against `loss` from the left)."""
    if mask is None:
        return jnp.mean(loss)
    mask = jnp.asarray(mask, loss.dtype)
    mask = mask.reshape(mask.shape + (1,) * (loss.ndim - mask.ndim))
    mask = jnp.broadcast_to(mask, loss.shape)
    return jnp.sum(loss * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def log_sigmoids(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(log(sigmoid(x)), log(1 - sigmoid(x)))`` from one ``log_sigmoid``: the second is
    ``log_sigmoid(x) - x``. The same values (absolute error below float32's resolution of the
    first) at half the transcendentals -- the losses run over every (frame, bin, channel)."""
    ls = jax.nn.log_sigmoid(logits)
    return ls, ls - logits


def smooth_bce(
    logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None, gamma: float = 0.25
) -> jax.Array:
    """omnizart's default ``smooth`` loss: label-smoothed sigmoid cross-entropy, averaged.

    With ``K = clip(C, 8, 25)`` (``C`` = channels, the last axis) and
    ``q(v) = (1 - gamma) * v + gamma / K``, the per-entry loss is
    ``-q(y) * log(sigmoid(x)) - q(1 - y) * log(1 - sigmoid(x))``. As in omnizart
    (``smooth_loss``, called with ``gamma=0.25, total_chs=out_classes``) the negative target is
    ``q(1 - y)``, not ``1 - q(y)``, so the two weights sum to ``1 - gamma + 2 gamma / K`` rather
    than 1; the optimum is still ``sigmoid(x) = q(y) / (q(y) + q(1 - y))``.

    Differences: logs are taken with a stable ``log_sigmoid`` instead of clipping probabilities
    to ``[1e-9, 1]`` (omnizart's clip zeroes the gradient beyond |logit| ~ 20.7); `mask`
    (broadcast from the left, e.g. ``(B, T)`` for padded frames) gives a weighted mean.
    """
    logits = jnp.asarray(logits, jnp.float32)
    targets = jnp.asarray(targets, jnp.float32)
    k = float(min(25, max(int(targets.shape[-1]), 8)))
    pos = (1.0 - gamma) * targets + gamma / k
    neg = (1.0 - gamma) * (1.0 - targets) + gamma / k
    log_p, log_not_p = log_sigmoids(logits)
    loss = -pos * log_p - neg * log_not_p
    return _reduce(loss, mask)


def weighted_bce(
    logits: jax.Array,
    targets: jax.Array,
    mask: jax.Array | None = None,
    pos_weight: float = 20.0,
    onset_weight: jax.Array | None = None,
    onset_channel: int = 2,
    release_weight: jax.Array | None = None,
    frame_channel: int = 1,
    offset_weight: float | None = None,
    offset_channel: int = 3,
    tail_weight: jax.Array | None = None,
) -> jax.Array:
    """Sigmoid cross-entropy with the positive term of every note channel (not the background,
    channel 0) weighted by `pos_weight`. Not in omnizart: notes cover well under 1% of the
    (frame, bin) grid, and with an unweighted mean a small model needs tens of thousands of
    steps before any note probability crosses 0.5; the weight makes it learn in hundreds.
    `onset_weight` ``(B, T, bins)``, if given, also multiplies the positive term of the onset
    channel (e.g. ``1 + (w - 1) * repeat_onsets``); `release_weight` ``(B, T, bins)`` the
    negative term of the frame channel (e.g. ``1 + (w - 1) * release_frames``); `offset_weight`
    the positive term of the offset channel (``note-offset`` mode); `tail_weight`
    ``(B, T, bins)`` the positive term of the frame channel (e.g. ``1 + (w - 1) *
    tail_frames``)."""
    logits = jnp.asarray(logits, jnp.float32)
    targets = jnp.asarray(targets, jnp.float32)
    c = targets.shape[-1]

    def on_channel(weight, channel: int) -> jax.Array:
        """`weight` (a scalar or a (B, T, bins) map) on `channel`, 1 on the others."""
        one_hot = jnp.zeros((c,), jnp.float32).at[channel].set(1.0)
        return 1.0 + (jnp.asarray(weight, jnp.float32)[..., None] - 1.0) * one_hot

    w = jnp.full((c,), pos_weight, jnp.float32).at[0].set(1.0)
    neg = jnp.ones((c,), jnp.float32)
    for weight, channel in (
        (onset_weight, onset_channel),
        (offset_weight, offset_channel),
        (tail_weight, frame_channel),
    ):
        if weight is not None:
            w = w * on_channel(weight, channel)
    if release_weight is not None:
        neg = on_channel(release_weight, frame_channel)
    log_p, log_not_p = log_sigmoids(logits)
    loss = -w * targets * log_p - neg * (1 - targets) * log_not_p
    return _reduce(loss, mask)


def focal_loss(
    logits: jax.Array,
    targets: jax.Array,
    alpha: float = 0.25,
    gamma: float = 2.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """omnizart's ``focal`` loss on sigmoid logits, averaged.

    ``p = sigmoid(x)``; positive part ``(y - p)`` where ``y >= p`` else 0; negative part ``p``
    where ``y == 0`` else 0 (so soft targets > 0 have no negative term, as in omnizart); loss
    ``-alpha * pos**gamma * log(p) - (1 - alpha) * neg**gamma * log(1 - p)``.

    Differences: argument order is ``(logits, targets)`` (omnizart's is ``(target, prediction)``);
    logs use ``log_sigmoid`` instead of clipping ``p`` to ``[1e-8, 1]``; optional `mask`.
    """
    logits = jnp.asarray(logits, jnp.float32)
    targets = jnp.asarray(targets, jnp.float32)
    p = jax.nn.sigmoid(logits)
    pos = jnp.where(targets >= p, targets - p, 0.0)
    neg = jnp.where(targets > 0, 0.0, p)
    log_p, log_not_p = log_sigmoids(logits)
    loss = -alpha * pos**gamma * log_p - (1.0 - alpha) * neg**gamma * log_not_p
    return _reduce(loss, mask)


def bce_label_smoothing(
    logits: jax.Array,
    targets: jax.Array,
    smoothing: float = 0.1,
    mask: jax.Array | None = None,
) -> jax.Array:
    """omnizart's ``bce`` option done as intended: sigmoid cross-entropy on logits against
    Keras-style smoothed targets ``y * (1 - smoothing) + 0.5 * smoothing``, averaged.

    omnizart passed the model's raw logits to ``tf.keras.losses.BinaryCrossentropy(
    label_smoothing=0.1)`` without ``from_logits=True``, so Keras treated logits as probabilities
    (clipped to ``[1e-7, 1 - 1e-7]``): a bug. Here the logits go through the sigmoid.
    """
    logits = jnp.asarray(logits, jnp.float32)
    targets = jnp.asarray(targets, jnp.float32) * (1.0 - smoothing) + 0.5 * smoothing
    log_p, log_not_p = log_sigmoids(logits)
    loss = -targets * log_p - (1.0 - targets) * log_not_p
    return _reduce(loss, mask)
