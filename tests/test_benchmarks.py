"""Smoke test of the benchmark harness (nothing about speed is asserted)."""

import pytest

from benchmarks.common import gpu_peak_tflops, stats
from benchmarks.jaxmir_side import time_jaxmir
from benchmarks.suite import lever_variants, parse_args

KEYS = {
    "framework",
    "model",
    "batch",
    "params",
    "compile_s",
    "first_step_s",
    "flops_per_step",
    "median_s",
    "min_s",
    "max_s",
    "samples_per_s",
    "gflops_per_s",
    "pct_peak",
    "peak_rss_mb",
    "precision_path",
}


def test_time_jaxmir_tiny_beat():
    r = time_jaxmir("beat", 2, preset="tiny", steps=2, devices=1, peak_gflops=100.0)
    assert KEYS <= set(r)
    assert r["framework"] == "jaxmir" and r["n"] == 2 and len(r["times_s"]) == 2
    assert r["input"] == [2, 64, 178] and r["n_devices"] == 1
    # the LSTM scans' time steps are added to XLA's count (which sees a loop body once)
    assert r["flops_scan_correction"] > 0
    assert r["flops_per_step"] == r["flops_xla"] + r["flops_scan_correction"]


def test_helpers():
    assert stats([3.0, 1.0, 2.0])["median_s"] == 2.0
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == ("H100 SXM", 989.0)
    assert gpu_peak_tflops("NVIDIA H200", "fp32") == ("H200", 67.0)
    assert gpu_peak_tflops("cpu", "fp32") is None
    labels = [v[0] for v in lever_variants("beat", quick=True)]
    assert labels[0] == "default" and "ynn fusion off" in labels
    args = parse_args(["--quick", "--models", "beat,patch_cnn", "--peers", "none"])
    assert args.models == ["beat", "patch_cnn"] and args.peers == [] and args.name == "quick"
    with pytest.raises(SystemExit):
        parse_args(["--models", "nope"])
