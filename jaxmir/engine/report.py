"""Where a run's numbers go: metrics.jsonl, TensorBoard events, the progress bar and curves.png."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from tqdm import tqdm

# omnizart's bar layout: "Train    - 42% |████      | 420/1000 [00:10<00:14, 41.2it/s, loss: 0.1, acc: 0.9]"
PROGRESS_BAR_FORMAT = (
    "{desc} - {percentage:3.0f}% |{bar:40}| {n_fmt}/{total_fmt} "
    "[{elapsed}<{remaining},{rate_fmt}{postfix}]"
)

# Metrics shown in the bar, with their short names (the rest go to metrics.jsonl only).
_POSTFIX_NAMES = {"loss": "loss", "accuracy": "acc"}


def progress_bar(total: int, title: str, enabled: bool = True) -> tqdm:
    return tqdm(
        total=total, desc=title, bar_format=PROGRESS_BAR_FORMAT, disable=not enabled, leave=True
    )


def bar_postfix(metrics: dict[str, float]) -> str:
    """ "loss: 0.12345, acc: 0.87654" from the running means."""
    parts = [f"{short}: {metrics[k]:.5f}" for k, short in _POSTFIX_NAMES.items() if k in metrics]
    return ", ".join(parts)


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


class MetricsWriter:
    """Appends one JSON object per line to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, workdir: Path, tensorboard: bool = True, resume_step: int | None = None):
        """`resume_step`: the step the run restarts from; records past it (written by a killed
        attempt after its last checkpoint, or a torn last line) are dropped first."""
        self.path = Path(workdir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            _keep_until(self.path, resume_step)
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, kind: str, step: int, epoch: int, split: str, metrics: dict[str, float]):
        record = {"kind": kind, "step": int(step), "epoch": int(epoch), "split": split}
        record["time"] = time.time()
        record.update({k: _clean(float(v)) for k, v in metrics.items()})
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            # an epoch's training means are not the step's values: under their own tags (they
            # were plotted at the epoch's last step under the step records' tags)
            prefix = f"{split}_epoch" if kind == "epoch" and split == "train" else split
            for k, v in metrics.items():  # "val/loss", not "val/val_loss"
                self._tb.add_scalar(f"{prefix}/{k.removeprefix(split + '_')}", float(v), int(step))

    def close(self):
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _keep_until(path: Path, step: int) -> None:
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line torn by a kill
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(k + "\n" for k in kept))
    tmp.replace(path)


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill: skip it, keep the rest
    return out


def plot_curves(metrics_path: Path, out_path: Path) -> Path | None:
    """curves.png: train/val loss and every epoch-level metric, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_metrics(metrics_path) if r["kind"] == "epoch"]
    if not records:
        return None
    # a split's metrics are named "<split>_<metric>" (the training batches' plainly): one panel
    # per metric, one line per split (train, val, and any `train.watch_splits`)
    skip = {"kind", "step", "epoch", "split", "time"}
    splits = list(dict.fromkeys(r["split"] for r in records))
    curves: dict[str, dict[str, list]] = {}
    for r in records:
        split = r["split"]
        for key, value in r.items():
            if key in skip or not isinstance(value, int | float):
                continue
            if key.startswith(f"{split}_"):
                key = key.removeprefix(f"{split}_")
            elif split != "train":
                continue
            curves.setdefault(key, {}).setdefault(split, []).append((r["epoch"], value))
    fig, axes = plt.subplots(len(curves), 1, figsize=(7, 2.2 * len(curves)), squeeze=False)
    for ax, name in zip(axes[:, 0], sorted(curves), strict=True):
        for split in splits:
            if curves[name].get(split):
                ax.plot(*zip(*curves[name][split], strict=True), marker="o", label=split)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
