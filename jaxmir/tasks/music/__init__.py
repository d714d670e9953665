"""Piano and multi-instrument note transcription (omnizart's `music`)."""

from jaxmir.tasks.base import train_function

train = train_function("music")
