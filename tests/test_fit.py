"""`jaxmir.engine.fit`: the README's model of one's own, on an in-memory Grain dataset, run as
written, then killed mid-run and resumed bit-identically."""

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
