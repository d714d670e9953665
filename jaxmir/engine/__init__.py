"""The engine: TrainState, pure steps and callbacks, the epoch driver and its checkpoints."""

from jaxmir.engine.run import RunResult, train

__all__ = ["RunResult", "train"]
