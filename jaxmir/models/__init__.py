"""Shipped trained models, one folder per task (see `jaxmir.shipped`)."""
