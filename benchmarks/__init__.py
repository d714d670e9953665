"""Benchmarks for jaxmir (run each as ``python -m benchmarks.<name>``)."""
