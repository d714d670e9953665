"""Drum targets and the omnizart loss: 13 classes on every mini-beat (8 per beat).

The classes and the General MIDI notes that map to them are `jaxmir.data.features.cqt`'s
(`DRUM_CLASSES`, `GM_TO_CLASS`): one table for the whole project.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmir.data.features.cqt import DRUM_CLASSES, GM_TO_CLASS

# omnizart's per-class loss weights (`constants/feature.py NOTE_PRIORITY_ARRAY`), in
# DRUM_CLASSES order: kick and closed hi-hat weigh most.
CLASS_PRIORITY = np.array(
    [2.0364304, 1.4848346, 0.5027617, 0.5768271, 2.8335114, 0.733738, 0.83764803,
     0.5139924, 0.4998506, 0.4733462, 0.5940674, 0.7641602, 1.148832],
    np.float32,
)  # fmt: skip
HINGE_MARGIN = 20.0  # omnizart's soft_loss_range, on targets x100
TARGET_SCALE = 100.0

# One GM note per class for the MIDI a transcription writes (omnizart's 35/38/42 for the three
# classes it output; the acoustic kit's usual notes for the others).
CLASS_NOTE = (36, 38, 37, 39, 42, 44, 46, 43, 47, 50, 49, 51, 70)
HIHAT = (4, 5, 6)  # closed, pedal, open: omnizart's inference merges them into one "hi-hat"


def class_hits(drum_hits: np.ndarray) -> list[np.ndarray]:
    """Per class, the sorted onset times of the (time, GM note) hits that map to it."""
    hits = np.asarray(drum_hits, np.float64).reshape(-1, 2)
    notes = np.rint(hits[:, 1]).astype(np.int64)
    cls = np.array([GM_TO_CLASS.get(int(n), -1) for n in notes], np.int64)
    return [np.sort(hits[cls == c, 0]) for c in range(len(DRUM_CLASSES))]


def omnizart_output(z: jax.Array) -> jax.Array:
    """The scale of omnizart's head: 70 * tanh(z) + 50, in (-20, 120) against targets 0 / 100."""
    return 70.0 * jnp.tanh(z) + 50.0


def hinge_l1_loss(z: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """omnizart's loss: max(|100 y - out| - 20, 0), averaged per class over the (example,
    mini-beat) slots inside the pieces, weighted by `CLASS_PRIORITY`, averaged over classes.
    z, y: (B, mini-beats, 13); mask: (B, mini-beats)."""
    err = jnp.maximum(jnp.abs(TARGET_SCALE * y - omnizart_output(z)) - HINGE_MARGIN, 0.0)
    per_class = jnp.sum(err * mask[..., None], axis=(0, 1)) / jnp.maximum(jnp.sum(mask), 1.0)
    return jnp.mean(per_class * CLASS_PRIORITY)


def weighted_bce_loss(z: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """Sigmoid cross-entropy on the logits z, with the same per-class weights and averaging as
    `hinge_l1_loss` (so the two differ only in the per-slot error)."""
    err = optax.sigmoid_binary_cross_entropy(z, y)
    per_class = jnp.sum(err * mask[..., None], axis=(0, 1)) / jnp.maximum(jnp.sum(mask), 1.0)
    return jnp.mean(per_class * CLASS_PRIORITY)


def activations(z: np.ndarray, loss: str) -> np.ndarray:
    """Per-slot activations in [0, 1] from the model's outputs: sigmoid(z) for the BCE model,
    omnizart's output / 100 (clipped) for the hinge model."""
    z = np.asarray(z, np.float32)
    if loss == "hinge":
        return np.clip((70.0 * np.tanh(z) + 50.0) / TARGET_SCALE, 0.0, 1.0)
    return 0.5 * (1.0 + np.tanh(0.5 * z))
