"""Learning works end to end: labels -> loss -> steps -> decode -> mir_eval, on real features."""

import jax
import numpy as np

from jaxmir.config import apply_overrides
from jaxmir.data.cache import FeatureCache
from jaxmir.engine.run import init_state, make_callbacks, make_predict
from jaxmir.engine.sharding import make_mesh, put_batch
from jaxmir.engine.step import make_train_step
from jaxmir.inference import sigmoid
from jaxmir.tasks.music.labels import FPS, notes_for_mode
from jaxmir.tasks.music.metrics import note_metrics
from jaxmir.tasks.music.task import TASK

T = 64
STARTS = (16, 80)  # two 1.28 s windows of each piece


def window_reference(notes, start):
    ref = notes.copy()
    ref[:, :2] -= start / FPS
    ref = ref[(ref[:, 0] >= 0) & (ref[:, 0] < T / FPS - 0.05)]
    ref[:, 1] = np.minimum(ref[:, 1], T / FPS)
    return notes_for_mode(ref, "note")


def test_tiny_model_overfits_two_pieces(music_cache):
    cache = FeatureCache(music_cache)
    names = cache.names("train")
    assert len(names) == 2
    cfg = apply_overrides(
        TASK.preset("tiny"),
        [
            f"model.timesteps={T}",
            "data.loss=weighted",
            "model.bn_momentum=0.9",
            "optim.learning_rate=3e-3",
            "optim.lr_schedule=constant",
        ],
    )
    reader = TASK.window_reader(cfg, cache, names)
    windows = [(i, s) for i in range(2) for s in STARTS]
    examples = [reader.random_map(np.array(w), None) for w in windows]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    refs = [window_reference(cache.labels(names[i])["notes"], s) for i, s in windows]
    assert all(len(r) for r in refs)

    mesh = make_mesh(jax.devices()[:1])
    state = init_state(TASK, cfg, mesh, make_callbacks(cfg))
    step = make_train_step(TASK.bind_loss(cfg), mesh)
    placed = put_batch(batch, mesh)
    f1 = 0.0
    for i in range(1, 301):
        state, _ = step(state, placed)
        if i % 50 == 0:
            logits = make_predict(mesh, state)(batch["x"])
            probs = sigmoid(logits)
            f1 = np.mean(
                [
                    note_metrics(r, TASK.decode(p, cfg))["note_f1"]
                    for r, p in zip(refs, probs, strict=True)
                ]
            )
            if f1 >= 0.9:
                break
    assert f1 >= 0.9, f"note F1 {f1:.3f} after {i} steps"
