"""Chord recognition with the Harmony Transformer (omnizart's `chord`)."""

from jaxmir.tasks.base import train_function

train = train_function("chord")
