"""Melody f0 from CFP patches (omnizart's `patch_cnn`)."""

from jaxmir.tasks.base import train_function

train = train_function("patch_cnn")
