"""The engine: TrainState, pure steps and callbacks, the epoch driver and its checkpoints.

`jaxmir.engine.train` (a task) and `jaxmir.engine.fit` (a model of your own) are imported lazily so that the pure modules (state, step, sharding, optim)
import with jax, flax and optax alone (e.g. on an accelerator host without the data stack).
"""

__all__ = ["RunResult", "fit", "load_fitted", "train"]


def __getattr__(name: str):
    if name in ("fit", "load_fitted"):
        from jaxmir.engine import fitting

        return getattr(fitting, name)
    if name in __all__:
        from jaxmir.engine import run

        return getattr(run, name)
    raise AttributeError(f"module 'jaxmir.engine' has no attribute {name!r}")
