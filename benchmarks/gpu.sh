#!/usr/bin/env bash
# jaxmir's benchmark suite on an accelerator, in under 8 minutes including compilation:
# jaxmir's training step for music, beat and the patch CNN in fp32 and bf16 mixed precision,
# step times, samples/s, TFLOP/s and MFU against the card's peak (benchmarks/common.py's table).
#
#   bash benchmarks/gpu.sh [--out DIR] [--models music,beat] [more python -m benchmarks options]
#
# Needs only jax, flax, optax and numpy (plus this checkout); everything else is skipped with a
# message. PYTHON picks the interpreter (default python3). A hard timeout of 470 s guards the
# 8-minute limit; JAXMIR_BENCH_BUDGET_S (default 420) skips models that would start too late.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" - <<'PYEOF'
import jax
print("jax", jax.__version__, "devices:", jax.devices())
PYEOF
export JAXMIR_BENCH_BUDGET_S="${JAXMIR_BENCH_BUDGET_S:-420}"
exec timeout 470 "$PY" -m benchmarks --gpu --precision fp32,bf16 --rounds 5 "$@"
