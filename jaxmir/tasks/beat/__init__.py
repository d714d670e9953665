"""Symbolic beat and downbeat tracking (omnizart's `beat`)."""

from __future__ import annotations


def train(cfg, workdir=None, data=None, **kwargs):
    """Train the beat model described by `cfg` (see `TASK.preset(...)`); returns a RunResult."""
    from jaxmir.engine import train as engine_train
    from jaxmir.tasks.beat.task import TASK

    return engine_train(TASK, cfg, workdir, data, **kwargs)
