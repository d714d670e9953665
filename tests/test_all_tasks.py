"""Every task trains its tiny preset from the embedded corpus through the command line, in one
test: `jaxmir train T --preset tiny` for the seven tasks (no --data: each renders and
featurises its own corpus into the session's cache)."""

import json

from jaxmir.cli import main
from jaxmir.tasks.base import TASK_MODULES

SEVEN = ("beat", "chord", "drum", "music", "patch_cnn", "vocal", "vocal_contour")


def test_train_tiny_for_all_seven_tasks(tmp_path):
    assert tuple(sorted(TASK_MODULES)) == SEVEN
    for task in SEVEN:
        wd = tmp_path / task
        assert (
            main(["train", task, "--preset", "tiny", "--workdir", str(wd), "--no-progress"]) == 0
        ), task
        records = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
        epochs = [r for r in records if r["kind"] == "epoch" and r["split"] == "train"]
        assert [r["epoch"] for r in epochs] == [1, 2], task
        assert all(abs(r["loss"]) < float("inf") for r in epochs), task
        assert any(r["kind"] == "epoch" and r["split"] == "val" for r in records), task
        assert any(p.name.isdigit() for p in (wd / "checkpoints").iterdir()), task
