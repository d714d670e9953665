"""Symbolic beat and downbeat tracking (omnizart's `beat`)."""

from jaxmir.tasks.base import train_function

train = train_function("beat")
