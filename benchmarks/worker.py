"""A benchmark worker process: ``python -m benchmarks.worker FRAMEWORK --spec JSON``.

FRAMEWORK is ``jax`` (jaxmir), ``torch``, ``tf`` or ``probe`` (the matmul peak); the protocol is
described in :mod:`benchmarks.common`. Set XLA_FLAGS and thread counts through the environment
(the parent does): they must be in place before the framework initialises.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.common import emit, serve


class _Probe:
    def __init__(self, **spec):
        self.spec = spec

    def setup(self) -> dict:
        import jax

        from benchmarks.jaxmir_side import matmul_peak

        if jax.default_backend() != "cpu":  # an accelerator: a bigger GEMM, and bf16 as well
            return matmul_peak(**{"n": 8192, "dtypes": ("float32", "bfloat16"), **self.spec})
        return matmul_peak(**self.spec)

    def run(self, n: int) -> list[float]:
        return []

    def finish(self) -> dict:
        return {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    ap.add_argument("framework", choices=("jax", "torch", "tf", "probe"))
    ap.add_argument("--spec", default="{}", help="JSON keyword arguments of the bench")
    args = ap.parse_args(argv)
    spec = json.loads(args.spec)
    try:
        if args.framework == "jax":
            from benchmarks.jaxmir_side import JaxBench as Bench
        elif args.framework == "torch":
            from benchmarks.peers_torch import TorchBench as Bench
        elif args.framework == "tf":
            from benchmarks.peers_tf import TFBench as Bench
        else:
            Bench = _Probe
        bench = Bench(**spec)
    except Exception as e:
        emit({"error": f"{type(e).__name__}: {e}"})
        return 1
    serve(bench)
    return 0


if __name__ == "__main__":
    sys.exit(main())
