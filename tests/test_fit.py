"""`jaxmir.engine.fit`: the README's model of one's own, on an in-memory Grain dataset, run as
written, then killed mid-run and resumed bit-identically."""

import json
import os
import re
from pathlib import Path

import jax
import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"
CONFIG_LINE = "log_every=5"


def readme_example() -> str:
    text = README.read_text()
    block = re.search(r"### A model of your own.*?```python\n(.*?)```", text, re.S)
    assert block is not None, "README has no 'A model of your own' example"
    return block.group(1)


def run(code: str, cwd: Path) -> dict:
    cwd.mkdir(parents=True, exist_ok=True)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        namespace: dict = {"__name__": "readme_example"}
        exec(compile(code, str(README), "exec"), namespace)
    finally:
        os.chdir(old)
    return namespace


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_readme_example_runs_as_written_and_learns(tmp_path):
    ns = run(readme_example(), tmp_path)
    result = ns["result"]
    assert result.status == "finished"
    assert result.history["validate"][-1]["accuracy"] > 0.6  # chance is 1/3
    for name in ("config.json", "metrics.jsonl", "curves.png", "checkpoints"):
        assert (tmp_path / result.workdir / name).exists(), name
    events = list((tmp_path / result.workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0  # the README's "TensorBoard"
    # load_fitted: the best checkpoint's predictions, any batch size
    from jaxmir.engine.checkpoint import Checkpointer

    best = Checkpointer(tmp_path / result.workdir / "checkpoints", monitor="val_accuracy")
    assert ns["step"] == best.best_step()
    assert ns["predict"](ns["x"][:3]).shape == (3, 16, 3)


def test_killed_and_resumed_is_bit_identical(tmp_path):
    code = readme_example()
    assert CONFIG_LINE in code
    full = run(code, tmp_path / "full")["result"]
    # SIGTERM to this process right after step 14 (mid-epoch 2): the run saves and exits
    cut = run(code.replace(CONFIG_LINE, f"{CONFIG_LINE}, interrupt_at_step=14"), tmp_path / "cut")
    assert cut["result"].status.startswith("interrupted")
    resumed = run(code, tmp_path / "cut")["result"]
    assert resumed.status == "finished"
    assert int(resumed.state.step) == int(full.state.step) == 30
    for a, b in zip(leaves(full.state.params), leaves(resumed.state.params), strict=True):
        np.testing.assert_array_equal(a, b)
    # the resumed result holds the whole run's epochs, as the uninterrupted one (it held the
    # resumed call's alone, and the README's snippet run again on a finished run had none)
    assert len(resumed.history["validate"]) == len(full.history["validate"]) == 3
    for a, b in zip(full.history["validate"], resumed.history["validate"], strict=True):
        assert a.keys() == b.keys() and a["accuracy"] == b["accuracy"]
    again = run(code, tmp_path / "cut")["result"]
    assert again.history["validate"][-1]["accuracy"] == full.history["validate"][-1]["accuracy"]
    for a, b in zip(leaves(full.state.opt_state), leaves(resumed.state.opt_state), strict=True):
        np.testing.assert_array_equal(a, b)


def _tiny_fit(workdir: Path, evaluate=None, train_data=None, **train):
    """The README's tagger on 32 examples, 2 steps an epoch."""
    import flax.linen as nn
    import grain
    import optax

    from jaxmir.config import OptimConfig, TrainConfig
    from jaxmir.engine import fit

    class Tagger(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(3)(x)

    def loss(apply_fn, variables, batch, rng, train):
        logits = apply_fn(variables, batch["x"], train=train)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), ({}, {})

    x = np.random.default_rng(0).normal(size=(32, 4, 6)).astype(np.float32)
    examples = [{"x": a, "y": a[:, :3].argmax(-1).astype(np.int32)} for a in x]
    settings = dict(epochs=3, steps_per_epoch=2, val_steps=1, batch_size=8, val_batch_size=8)
    logged: list[str] = []
    result = fit(
        Tagger(),
        loss,
        grain.MapDataset.source(examples) if train_data is None else train_data,
        workdir=workdir,
        train=TrainConfig(**{**settings, **train}),
        optim=OptimConfig(learning_rate=1e-2),
        evaluate=evaluate,
        progress=False,
        log=logged.append,
    )
    return result, logged


def rising_score():
    """An `evaluate` whose score (a name the engine cannot place) rises every epoch."""
    calls = []

    def evaluate(predict):
        calls.append(1)
        return {"mAP": 0.1 * len(calls)}

    return evaluate


def test_a_score_of_ones_own_is_maximised_when_told_and_the_guess_is_said(tmp_path):
    """`val_mAP` was minimised unsaid: early stopping ended a rising run and the best
    checkpoint was the worst model."""
    from jaxmir.engine.checkpoint import Checkpointer

    told, logged = _tiny_fit(
        tmp_path / "told", rising_score(), monitor="val_mAP", monitor_mode="max",
        early_stop_patience=1,
    )  # fmt: skip
    assert told.status == "finished" and not any("lower is taken" in x for x in logged)
    best = Checkpointer(tmp_path / "told" / "checkpoints", monitor="val_mAP", mode="max")
    assert best.best_step() == 6
    guessed, logged = _tiny_fit(
        tmp_path / "guessed", rising_score(), monitor="val_mAP", early_stop_patience=1
    )
    assert "train.monitor val_mAP: lower is taken as better" in "\n".join(logged)
    assert guessed.status.startswith("stopped")
    # called again: nothing to train, and the run's history, not an empty one (the README's
    # `result.history["validate"][-1]` failed)
    again, logged = _tiny_fit(
        tmp_path / "guessed", rising_score(), monitor="val_mAP", early_stop_patience=1
    )
    assert again.status == "stopped" and "nothing to resume" in "\n".join(logged)
    assert again.history["validate"][-1]["mAP"] == guessed.history["validate"][-1]["mAP"]
    assert len(again.history["validate"]) == len(guessed.history["validate"]) == 2


def test_fit_refuses_what_it_cannot_train_on_before_making_the_workdir(tmp_path):
    import grain
    import pytest

    from jaxmir.config import ConfigError

    cases = [
        (dict(train_data=grain.MapDataset.source([])), "train_data: the dataset has no examples"),
        (dict(train_data=grain.MapDataset.source([{"y": 1}])), "an 'x' entry"),
        (  # the last example shorter: a batch cannot stack it
            dict(
                train_data=grain.MapDataset.source(
                    [{"x": np.zeros((4, 6))}] * 9 + [{"x": np.zeros((3, 6))}]
                )
            ),
            "train_data: example 9 is {'x': (3, 6)}, example 0 {'x': (4, 6)}",
        ),
        (dict(watch_splits=("test",)), "train.watch_splits"),
        # held to the types a --set is (a traceback, or a float epoch count failing once the
        # workdir was written)
        (dict(epochs="3"), "train.epochs: expected an integer, got '3'"),
        (dict(epochs=2.5), "train.epochs: expected an integer, got 2.5"),
        (dict(terminate_on_nan="yes"), "train.terminate_on_nan: expected true or false"),
        # a validation score with no validation: known before the first epoch, not after it
        (dict(val_steps=0, monitor="val_accuracy"), "train.monitor: val_accuracy is never"),
        (dict(val_steps=0), "train.monitor: val_loss is never logged: train.val_steps is 0 ("),
    ]
    for i, (kwargs, message) in enumerate(cases):
        with pytest.raises(ConfigError, match=re.escape(message)):
            _tiny_fit(tmp_path / str(i), **kwargs)
        assert not (tmp_path / str(i)).exists()
    for i, (returned, message) in enumerate(
        [
            ({"f1": "0.5"}, "'f1' is str, expected a number"),
            (None, "returned NoneType"),
            ({"loss": 1.0}, "'loss' names the validation loss"),
        ]
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            _tiny_fit(tmp_path / f"ev{i}", lambda predict, r=returned: r)


def tensorboard_scalars(folder: Path) -> list[tuple[str, int]]:
    """(tag, step) of every scalar in the event files under `folder` (TFRecord framing:
    length, its CRC, the event, its CRC)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (n,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + n])
            out += [(v.tag, event.step) for v in event.summary.value]
            at += 12 + n + 4
    return out


def test_tensorboard_keeps_the_epoch_means_apart_from_the_step_values(tmp_path):
    """The epoch's mean training loss was written under the step records' tag at the same
    step: two points of two quantities on one curve."""
    _tiny_fit(tmp_path / "run", log_every=1)
    scalars = tensorboard_scalars(tmp_path / "run" / "tensorboard")
    assert len(scalars) == len(set(scalars)), sorted(scalars)
    tags = {tag for tag, _ in scalars}
    assert {"train/loss", "train_epoch/loss", "val/loss"} <= tags, tags
    assert sorted(s for tag, s in scalars if tag == "train_epoch/loss") == [2, 4, 6]
    # metrics.jsonl: a step's record and its epoch's record number the epoch alike (the
    # step records counted from 0, the epoch records from 1)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    epochs = {(r["kind"], r["step"]): r["epoch"] for r in records if r["split"] == "train"}
    assert epochs[("step", 2)] == epochs[("epoch", 2)] == 1
    assert epochs[("step", 3)] == epochs[("epoch", 4)] == 2


def test_a_model_of_ones_own_is_not_refused_by_the_tasks_model_checks(tmp_path):
    """A task's model is built abstractly before training, its errors turned into one line;
    a model of one's own is not: one that draws noise in every call (its loss passing
    `rngs=`) trained, and was then refused for want of a PRNG; one with a shape bug keeps its
    own error (it became an AttributeError of the check's message)."""
    import flax.linen as nn
    import grain
    import jax
    import jax.numpy as jnp
    import optax
    import pytest

    from jaxmir.config import TrainConfig
    from jaxmir.engine import fit

    class Noisy(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            noise = jax.random.normal(self.make_rng("noise"), x.shape) * 0.01
            return nn.Dense(3)(x + noise)

    class Misshapen(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(4)(x) @ jnp.ones((5, 2))

    def loss(apply_fn, variables, batch, rng, train):
        logits = apply_fn(variables, batch["x"], train=train, rngs={"noise": rng})
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), ({}, {})

    x = np.random.default_rng(0).normal(size=(16, 4, 6)).astype(np.float32)
    data = grain.MapDataset.source([{"x": a, "y": np.zeros(4, np.int32)} for a in x])
    settings = TrainConfig(epochs=1, steps_per_epoch=2, val_steps=1, batch_size=8, val_batch_size=8)
    kwargs = dict(train=settings, progress=False, log=lambda line: None)
    result = fit(Noisy(), loss, data, workdir=tmp_path / "noisy", **kwargs)
    assert result.status == "finished", result.status
    with pytest.raises(TypeError, match="dot_general"):
        fit(Misshapen(), loss, data, workdir=tmp_path / "misshapen", **kwargs)


def test_settings_built_in_python_are_checked_as_a_set_is():
    import pytest

    from jaxmir.config import ConfigError, OptimConfig, TrainConfig, checked_section

    assert checked_section(OptimConfig(learning_rate=1), "optim").learning_rate == 1.0
    for section, name, message in (
        ({"epochs": 1}, "train", "train: a TrainConfig, got dict"),
        (OptimConfig(learning_rate="1e-3"), "optim", "optim.learning_rate: expected a number"),
        (TrainConfig(seed=None), "train", "train.seed: expected an integer, got None"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            checked_section(section, name)


def test_validation_that_does_not_read_each_example_once_is_said(tmp_path):
    _, logged = _tiny_fit(tmp_path / "first", val_steps=1, val_batch_size=8)
    assert "Validation reads 1 x 8 = 8 examples of the 32 in train_data: only the first 8" in (
        "\n".join(logged)
    )
    _, logged = _tiny_fit(tmp_path / "twice", val_steps=5, val_batch_size=8)
    assert "= 40 examples of the 32 in train_data: some count more than others" in (
        "\n".join(logged)
    )
    _, logged = _tiny_fit(tmp_path / "once", val_steps=4, val_batch_size=8)
    assert not any("Validation reads" in line for line in logged)


def test_predict_takes_a_batch_of_any_size_on_several_devices(tmp_path):
    """`evaluate`'s `predict` on 2 devices with 7 rows: it failed to split them (after the
    first epoch had trained)."""
    import subprocess
    import sys

    code = (
        "import sys, json, numpy as np\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_fit import _tiny_fit\n"
        "rows = np.zeros((7, 4, 6), np.float32)\n"
        "ev = lambda predict: {'rows': float(predict(rows).shape[0])}\n"
        f"result, _ = _tiny_fit({str(tmp_path / 'run')!r}, ev, epochs=1)\n"
        "print(json.dumps(result.history['validate'][-1]))\n"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["rows"] == 7.0


def test_a_tasks_train_refuses_another_tasks_config(tmp_path):
    """`beat.train` with music's config failed deep inside (an AttributeError of the model's
    settings); nothing is written now either."""
    import pytest

    import jaxmir.tasks.beat as beat
    from jaxmir.config import ConfigError
    from jaxmir.tasks.music.task import TASK as MUSIC

    with pytest.raises(ConfigError, match="the config is task 'music''s, not 'beat''s"):
        beat.train(MUSIC.preset("tiny"), workdir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_model_or_loss_that_fails_only_once_training_runs_is_refused_first(tmp_path):
    """A model needing a collection fit does not keep failed inside flax after the workdir was
    made; a metric of more than one number failed at the first log line without its name; a
    metric named `loss` replaced the loss, an `evaluate` score named like a metric replaced
    the metric, both unsaid."""
    import flax.linen as nn
    import grain
    import jax.numpy as jnp
    import optax
    import pytest

    from jaxmir.config import ConfigError, TrainConfig
    from jaxmir.engine import fit

    class Tagger(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(3)(x)

    class Counting(nn.Module):  # a collection of its own, read in every call
        @nn.compact
        def __call__(self, x, train=False):
            seen = self.variable("counts", "seen", jnp.zeros, ())
            return nn.Dense(3)(x) + 0 * seen.value

    def loss_with(metrics):
        def loss(apply_fn, variables, batch, rng, train):
            logits = apply_fn(variables, batch["x"], train=train)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
            return ce.mean(), (metrics(logits, ce), {})

        return loss

    accuracy = loss_with(lambda logits, ce: {"acc": (logits.argmax(-1) == 0).mean()})
    x = np.random.default_rng(0).normal(size=(16, 4, 6)).astype(np.float32)
    data = grain.MapDataset.source([{"x": a, "y": np.zeros(4, np.int32)} for a in x])
    settings = TrainConfig(epochs=1, steps_per_epoch=2, val_steps=1, batch_size=8, val_batch_size=8)
    kwargs = dict(train=settings, progress=False, log=lambda line: None)
    cases = [
        (Counting(), accuracy, "model: its variable collection(s) ['counts'] are not kept"),
        (Tagger(), loss_with(lambda _, ce: {"rows": ce.mean(-1)}), "metric 'rows' has shape (8,)"),
        (Tagger(), loss_with(lambda _, ce: {"loss": ce.sum()}), "a metric named 'loss'"),
        (Tagger(), lambda *a: accuracy(*a)[0], "loss: returned ShapeDtypeStruct, expected ("),
        (Tagger(), lambda *a: (a[2]["x"].sum(-1), ({}, {})), "the loss has shape (8, 4)"),
    ]
    for i, (model, loss, message) in enumerate(cases):
        with pytest.raises(ConfigError, match=re.escape(message)):
            fit(model, loss, data, workdir=tmp_path / str(i), **kwargs)
        assert not (tmp_path / str(i)).exists()
    with pytest.raises(ConfigError, match="'acc' names a metric the loss returns"):
        fit(
            Tagger(),
            accuracy,
            data,
            workdir=tmp_path / "ev",
            evaluate=lambda p: {"acc": 1.0},
            **kwargs,
        )
    # the same model and loss train as before; so does a loss returning a list, examples of
    # several lengths one a batch, and a score named like a metric with no validation batches
    result = fit(Tagger(), accuracy, data, workdir=tmp_path / "ok", **kwargs)
    listed = loss_with(lambda logits, ce: {"acc": (logits.argmax(-1) == 0).mean()})

    def as_list(*args):
        value, (metrics, state) = listed(*args)
        return value, [metrics, state]

    no_val = TrainConfig(epochs=1, steps_per_epoch=2, val_steps=0, batch_size=8, monitor="loss")
    kwargs_no_val = dict(train=no_val, progress=False, log=lambda line: None)
    other = fit(
        Tagger(),
        as_list,
        data,
        workdir=tmp_path / "list",
        evaluate=lambda p: {"acc": 0.5},
        **kwargs_no_val,
    )
    assert other.status == "finished"
    from jaxmir.engine.fitting import _check_data

    lengths = grain.MapDataset.source([{"x": a[: 2 + i % 3]} for i, a in enumerate(x)])
    _check_data(lengths, "train_data", batch_size=1)  # one a batch: nothing to stack
    with pytest.raises(ConfigError, match="example 8 is"):
        _check_data(lengths, "train_data", batch_size=2)
    assert result.status == "finished" and set(result.history["validate"][-1]) >= {"acc", "loss"}


def test_load_fitted_restores_the_step_asked_for(tmp_path):
    """`load_fitted(..., step=N)`: that checkpoint's weights, not the best one's."""
    import flax.linen as nn

    from jaxmir.engine import load_fitted
    from jaxmir.engine.checkpoint import Checkpointer

    result, _ = _tiny_fit(tmp_path / "run", keep_latest=3)
    steps = Checkpointer(tmp_path / "run" / "checkpoints").manager.all_steps()
    assert len(steps) == 3

    class Tagger(nn.Module):  # `_tiny_fit`'s model
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(3)(x)

    x = np.random.default_rng(0).normal(size=(4, 4, 6)).astype(np.float32)
    outputs = {}
    for step in steps:
        predict, restored = load_fitted(Tagger(), tmp_path / "run", {"x": x[0]}, step=step)
        assert restored == step
        outputs[step] = predict(x)
    assert not np.allclose(outputs[steps[0]], outputs[steps[-1]])
