"""Benchmarks for jaxmir.

``python -m benchmarks [--quick] [--levers] [--gpu] ...`` runs the suite (:mod:`benchmarks.suite`):
jaxmir's training steps side by side with PyTorch and TF-Keras peers, speed levers, scaling over
simulated devices, the input pipeline and feature extraction. ``benchmarks/gpu.sh`` runs it on an
accelerator. Single benchmarks run as ``python -m benchmarks.<name>`` (e.g. ``features``).
"""
