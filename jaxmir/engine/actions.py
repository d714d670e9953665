"""What callbacks ask the driver to do. Plain frozen dataclasses: callbacks never do I/O."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Save:
    """Write a checkpoint of the current state. `metrics` ranks it among the best ones."""

    metrics: dict[str, float] | None = None
    reason: str = "epoch"


@dataclasses.dataclass(frozen=True)
class Stop:
    """End training after this epoch (or this step, for step-level callbacks). `failed`: the
    run cannot go on (its loss is NaN): nothing more is saved and the command exits 1."""

    reason: str
    failed: bool = False


@dataclasses.dataclass(frozen=True)
class Log:
    """A message for the console and the run's log."""

    message: str


Action = Save | Stop | Log
