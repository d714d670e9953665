"""The sung f0 of a mixture (omnizart's `vocal_contour`)."""

from jaxmir.tasks.base import train_function

train = train_function("vocal_contour")
