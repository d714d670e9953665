"""Drum transcription from mini-beat CQT patches (omnizart's `drum`)."""

from jaxmir.tasks.base import train_function

train = train_function("drum")
