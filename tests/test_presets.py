"""The presets' hyperparameters that the README and docs/ state, one row per statement: a
preset that changes without its line there fails here."""

from __future__ import annotations

import dataclasses

import pytest

from jaxmir.config import flatten
from jaxmir.tasks.base import get_task

STATED = [
    # README, the melody tasks: "focal loss, Adam 1e-3, 5 x 6000 steps of 12"
    ("vocal_contour", "paper", {"data.loss": "focal", "optim.learning_rate": 1e-3}),
    ("vocal_contour", "paper", {"train.epochs": 5, "train.steps_per_epoch": 6000}),
    ("vocal_contour", "paper", {"train.batch_size": 12}),
    # "Adam 1e-5 (demo: 1e-3)"
    ("patch_cnn", "paper", {"optim.learning_rate": 1e-5}),
    ("patch_cnn", "demo", {"optim.learning_rate": 1e-3}),
    # the vocal task: "Adam 3e-3, 6 x 200 steps of 16, VAT epsilon = 1, weight 0.3"
    ("vocal", "demo", {"optim.learning_rate": 3e-3, "train.epochs": 6}),
    ("vocal", "demo", {"train.steps_per_epoch": 200, "train.batch_size": 16}),
    ("vocal", "demo", {"data.vat": True, "data.vat_epsilon": 1.0, "data.vat_weight": 0.3}),
    ("vocal", "paper", {"data.vat_epsilon": 8.0, "optim.learning_rate": 1e-4}),
    # the chord task: "x0.96 every 1000 steps"; demo "Adam 1e-3 x 0.96 every 150 steps"
    ("chord", "paper", {"optim.lr_schedule": "exponential_steps", "optim.decay_rate": 0.96}),
    ("chord", "paper", {"optim.decay_steps": 1000, "optim.grad_clip_value": 1.0}),
    ("chord", "demo", {"optim.learning_rate": 1e-3, "optim.decay_steps": 150}),
    ("chord", "demo", {"train.epochs": 6, "train.steps_per_epoch": 150, "train.batch_size": 16}),
    # "hidden 128, 4 heads, ff 256, dropout 0.3"
    ("chord", "demo", {"model.hidden": 128, "model.heads": 4, "model.ff": 256}),
    ("chord", "demo", {"model.dropout": 0.3}),
    # the drum task: demo "16 channels, head 256, 5 x 150 of 16"; paper omnizart's diff, hinge
    ("drum", "demo", {"model.channels": 16, "model.dense": 256, "train.epochs": 5}),
    ("drum", "demo", {"train.steps_per_epoch": 150, "train.batch_size": 16}),
    ("drum", "paper", {"model.diff_axis": 2, "model.loss": "hinge"}),
    # "its difference along time appended (`model.diff_axis=1`)"; "`bce` (the default)"
    ("drum", "demo", {"model.diff_axis": 1, "model.loss": "bce"}),
    # docs/beat.md: "Four taggers, averaged (`model.tagger_members`, 4 in `quality`)"
    ("beat", "quality", {"model.tagger_members": 4}),
    # docs/music.md, the music demo: "6 x 150 steps ... the checkpoint of lowest validation loss"
    ("music", "demo", {"train.epochs": 6, "train.steps_per_epoch": 150}),
    ("music", "demo", {"train.monitor": "val_loss", "data.pos_weight": 5.0}),
]


@pytest.mark.parametrize(("task", "preset", "values"), STATED)
def test_preset_values_are_the_readmes(task, preset, values):
    cfg = flatten(dataclasses.asdict(get_task(task).preset(preset)))
    assert {k: cfg[k] for k in values} == values


def test_a_retired_key_of_an_older_run_is_dropped_and_refused_as_an_override(tmp_path):
    """Beat's `data.corpus_workers` did nothing and was removed: an older run's config.json
    that holds it still loads and resumes; `--set data.corpus_workers=N` is an unknown key."""
    import json

    from jaxmir.config import ConfigError, apply_overrides
    from jaxmir.tasks.base import get_task

    task = get_task("beat")
    stored = json.loads(task.preset("demo").to_json())  # as config.json holds it
    assert "corpus_workers" not in stored["data"]
    stored["data"]["corpus_workers"] = 2  # as runs before its removal wrote it
    cfg = task.config_from_dict(stored)
    assert cfg == task.preset("demo")
    with pytest.raises(ConfigError, match="unknown config key data.corpus_workers"):
        apply_overrides(cfg, ["data.corpus_workers=3"])
    from jaxmir.config import check_resume_compatible

    check_resume_compatible(stored, cfg)  # a run that holds it resumes
    stored["data"]["corpus_wokers"] = 2  # a typo is still refused
    with pytest.raises(ConfigError, match="corpus_wokers"):
        task.config_from_dict(stored)
    with pytest.raises(ConfigError, match="cannot resume.*corpus_wokers"):
        check_resume_compatible(stored, cfg)


def test_a_run_saved_before_a_key_was_added_resumes_while_the_key_is_at_its_default():
    """`train.monitor_mode` came after runs were saved: their config.json lacks it. At its
    default ("auto": what they ran with) they resume; set otherwise, the change is refused."""
    import json

    from jaxmir.config import ConfigError, apply_overrides, check_resume_compatible, validate
    from jaxmir.tasks.base import get_task

    task = get_task("beat")
    cfg = task.preset("demo")
    stored = json.loads(cfg.to_json())
    del stored["train"]["monitor_mode"]  # as runs before it wrote config.json
    assert task.config_from_dict(stored) == cfg
    check_resume_compatible(stored, cfg)
    with pytest.raises(ConfigError, match="cannot resume.*train.monitor_mode"):
        check_resume_compatible(stored, apply_overrides(cfg, ["train.monitor_mode=max"]))
    with pytest.raises(ConfigError, match="train.monitor_mode: unknown 'most'"):
        validate(apply_overrides(cfg, ["train.monitor_mode=most"]))
