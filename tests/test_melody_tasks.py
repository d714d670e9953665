"""vocal_contour and patch_cnn end to end: sizes, the labels -> loss -> decode -> mir_eval chain
(a tiny model overfits two short pieces), and the command line."""

import json

import jax
import numpy as np
import pytest

from jaxmir.cli import main
from jaxmir.config import apply_overrides
from jaxmir.data.cache import FeatureCache
from jaxmir.data.features.vocal import extract_patches, patch_at
from jaxmir.engine.run import init_state, make_callbacks, make_predict
from jaxmir.engine.sharding import make_mesh, put_batch
from jaxmir.engine.step import make_train_step
from jaxmir.inference import sigmoid
from jaxmir.melody import frame_times
from jaxmir.metrics import melody_scores

ONE = jax.devices()[:1]


@pytest.mark.parametrize(
    "task, params, shape_in, shape_out",
    [
        ("vocal_contour", 17_619_202, [128, 384, 1], [128, 384, 2]),
        ("patch_cnn", 175_778, [25, 25, 1], [2]),
    ],
)
def test_info_paper_sizes(task, params, shape_in, shape_out, capsys):
    assert main(["info", task, "--preset", "paper"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["params"] == params
    assert info["input_shape"] == shape_in and info["output_shape"] == shape_out


def test_patch_at_is_the_extracted_patch():
    rng = np.random.default_rng(0)
    z = rng.random((40, 60)).astype(np.float32)
    patches, frames, rows = extract_patches(z, 25)
    for i in rng.choice(len(patches), 50, replace=False):
        np.testing.assert_array_equal(patch_at(z, frames[i], rows[i], 25), patches[i])


def _train(task, cfg, batch, steps, check):
    mesh = make_mesh(ONE)
    state = init_state(task, cfg, mesh, make_callbacks(cfg))
    step = make_train_step(task.bind_loss(cfg), mesh)
    placed = put_batch(batch, mesh)
    score = None
    for i in range(1, steps + 1):
        state, _ = step(state, placed)
        if i % 25 == 0:
            score = check(make_predict(mesh, state))
            if score >= 0.9:
                break
    return score, i


def test_vocal_contour_tiny_model_overfits_two_pieces(contour_cache):
    from jaxmir.tasks.vocal_contour.task import TASK

    cache = FeatureCache(contour_cache)
    names = cache.names("train")
    assert len(names) == 2
    t = 32
    cfg = apply_overrides(
        TASK.preset("tiny"),
        [
            f"model.timesteps={t}",
            "model.base=8",
            "model.bn_momentum=0.9",
            "optim.learning_rate=1e-2",
            "train.val_batch_size=4",
        ],
    )
    reader = TASK.window_reader(cfg, cache, names)
    windows = [(i, s) for i in range(2) for s in (20, 120)]
    examples = [reader.random_map(np.array(w), None) for w in windows]
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    assert batch["x"].shape == (4, t, 384, 1) and batch["y"].shape == (4, t, 384, 2)
    assert batch["y"][..., 1].sum() > 25  # the sung line is voiced in these windows
    refs = []
    for i, s in windows:
        f0 = cache.labels(names[i])["f0"]
        times = frame_times(s + t, 0.02)[s:]
        keep = (f0[:, 0] >= times[0] - 1e-9) & (f0[:, 0] <= times[-1] + 1e-9)
        refs.append((f0[keep], times))

    def check(predict):
        probs = sigmoid(predict(batch["x"]))
        scores = [
            melody_scores(ref, times, TASK.decode(p, cfg)[1])
            for (ref, times), p in zip(refs, probs, strict=True)
        ]
        return float(np.mean([s["raw_pitch_accuracy"] for s in scores]))

    rpa, steps = _train(TASK, cfg, batch, 400, check)
    assert rpa >= 0.9, f"raw pitch accuracy {rpa:.3f} after {steps} steps"


def test_patch_cnn_tiny_model_overfits_two_pieces(patch_cache):
    from jaxmir.tasks.patch_cnn.task import TASK, PatchReader

    cache = FeatureCache(patch_cache)
    names = cache.names("train")
    n_frames = 60
    cfg = apply_overrides(TASK.preset("tiny"), ["model.dropout=0.0", "train.val_batch_size=512"])
    xs, ys, posts, refs = [], [], [], []
    for name in names:
        z = np.asarray(cache.features(name))[:n_frames]
        post = TASK.posteriors(lambda b: np.zeros((len(b), 2), np.float32), z, cfg)
        labels = cache.labels(name)
        index = np.stack([np.zeros_like(post["frames"]), post["frames"], post["rows"]], 1)
        r = PatchReader(str(cache.root), [name])
        ex = [r.random_map(row, None) for row in index]
        xs.append(np.stack([e["x"] for e in ex]))
        ys.append(np.stack([e["y"] for e in ex]))
        posts.append(post)
        times = frame_times(n_frames, 0.02)
        f0 = labels["f0"]
        refs.append((f0[f0[:, 0] <= times[-1] + 1e-9], times))
    assert sum((y[:, 1] == 1).sum() for y in ys) > 40  # melody peaks among the patches
    batch = {"x": np.concatenate(xs), "y": np.concatenate(ys)}

    def rpa(probs_of):
        scores = []
        for post, (ref, times), x, y in zip(posts, refs, xs, ys, strict=True):
            post = dict(post, probs=probs_of(x, y))
            scores.append(melody_scores(ref, times, TASK.decode(post, cfg)[1]))
        return float(np.mean([s["raw_pitch_accuracy"] for s in scores]))

    # the best any patch classifier can do here: the labels themselves as posteriors (frames
    # whose melody lies between peaks cannot be hit)
    ceiling = rpa(lambda x, y: y[:, 1])
    assert ceiling > 0.8

    def check(predict):
        score = rpa(lambda x, y: np.asarray(jax.nn.softmax(np.asarray(predict(x)), -1))[:, 1])
        return score / ceiling

    share, steps = _train(TASK, cfg, batch, 600, check)
    assert share >= 0.9, f"{share:.3f} of the attainable raw pitch accuracy after {steps} steps"


@pytest.mark.parametrize("task", ["vocal_contour", "patch_cnn"])
def test_train_eval_transcribe(task, mixed_corpus, contour_cache, patch_cache, tmp_path, capsys):
    data = contour_cache if task == "vocal_contour" else patch_cache
    wd = tmp_path / "run"
    argv = [
        "train",
        task,
        "--preset",
        "tiny",
        "--workdir",
        str(wd),
        "--data",
        str(data),
        "--no-progress",
        "--set",
        "train.epochs=1",
    ]
    assert main(argv) == 0
    assert main(["eval", task, "--workdir", str(wd)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    keys = {
        "raw_pitch_accuracy",
        "raw_chroma_accuracy",
        "voicing_recall",
        "voicing_false_alarm",
        "overall_accuracy",
    }
    assert keys <= set(metrics) and all(0.0 <= metrics[k] <= 1.0 for k in keys)
    song = next(mixed_corpus.glob("*.vocals.wav"))
    out = tmp_path / "out"
    assert main(["transcribe", task, str(song), "--workdir", str(wd), "-o", str(out)]) == 0
    stem = song.stem
    csv = np.loadtxt(out / f"{stem}_f0.csv", delimiter=",", skiprows=1)
    assert csv.shape[1] == 2 and np.all(csv[:, 1] >= 0) and np.all(np.diff(csv[:, 0]) > 0)
    assert (out / f"{stem}_f0.png").stat().st_size > 0


@pytest.mark.parametrize(
    "task, dataset, accepted",
    [
        ("music", "medleydb", "synth, maestro, maps, musicnet"),
        ("vocal_contour", "billboard", "synth, mir1k, medleydb, tonas"),
        ("patch_cnn", "maestro", "synth, mir1k, medleydb, tonas"),
        ("beat", "maestro", "midi, musicnet"),
    ],
)
def test_unaccepted_dataset_exits_2_listing_the_accepted(task, dataset, accepted, tmp_path, capsys):
    argv = [
        "features",
        task,
        "--dataset",
        dataset,
        "--root",
        str(tmp_path),
        "--out",
        str(tmp_path / "out"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert dataset in err and f"accepted: {accepted}" in err
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize("task", ["music", "vocal_contour", "patch_cnn"])
def test_features_rerun_on_the_same_cache_resumes(task, mixed_corpus, tmp_path, capsys):
    """A second `jaxmir features` on the same output (a killed run's resume) is accepted: the
    manifest's params (JSON lists) equal the task's (tuples)."""
    argv = [
        "features",
        task,
        "--dataset",
        "synth",
        "--root",
        str(mixed_corpus),
        "--out",
        str(tmp_path / "cache"),
    ]
    assert main(argv) == 0
    assert main(argv) == 0
    assert "4 already cached" in capsys.readouterr().out
