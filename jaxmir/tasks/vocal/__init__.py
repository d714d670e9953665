"""Vocal note transcription (omnizart's `vocal`)."""

from jaxmir.tasks.base import train_function

train = train_function("vocal")
