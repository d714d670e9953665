"""What every benchmark process shares: model specs, statistics, memory, the worker protocol.

Standard library only (no jax, torch or tensorflow here): the suite's parent process imports it
without initialising any framework, so each worker subprocess can set its own XLA flags and
thread counts before its framework starts.

Worker protocol. A worker is ``python -m benchmarks.worker FRAMEWORK --spec JSON``. It builds its
model, compiles and warms up, then prints one line ``@@BENCH {"ready": ...}`` on stdout and waits
for commands on stdin: ``run N`` times N training steps and answers ``@@BENCH {"times": [...]}``;
``call METHOD {json}`` runs an extra measurement method of the bench and answers
``@@BENCH {"result": ...}``; ``quit`` answers ``@@BENCH {"final": ...}`` (peak memory) and
exits. The parent keeps several
workers alive at once and sends ``run`` to each in turn (A/B/A/B), so slow drifts of the machine's
load hit every framework alike. Idle workers wait on stdin and use no CPU.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
PREFIX = "@@BENCH "

# Per-sample shapes and parameter counts shared by jaxmir and every peer ("the same network").
# `batch` is the global batch of a full run, `quick_batch` that of --quick (same for all sides),
# `paper_batch` the preset's training batch (--paper-batch); `peers` (optional) the peer
# frameworks that have the model, all of them when absent.
MODELS: dict[str, dict] = {
    "music": {
        "title": "music U-Net attn (paper preset)",
        "input": (256, 352, 2),
        "output": (256, 352, 23),
        "params": 8_333_687,
        "state": 10_880,  # BatchNorm moving statistics
        "batch": 4,
        "quick_batch": 1,
        "paper_batch": 8,
    },
    "beat": {
        "title": "beat BLSTM (paper preset)",
        "input": (1000, 178),
        "output": (1000, 2),
        "params": 100_058_356,
        "state": 0,
        "batch": 16,
        "quick_batch": 16,
        "paper_batch": 64,
    },
    "patch_cnn": {
        "title": "patch CNN (omnizart)",
        "input": (25, 25, 1),
        "output": (2,),
        "params": 175_778,
        "state": 0,
        "batch": 256,
        "quick_batch": 256,
        "paper_batch": 32,
    },
    "vocal_contour": {
        "title": "vocal contour ASPP U-Net (paper preset)",
        "input": (128, 384, 1),
        "output": (128, 384, 2),
        "params": 17_619_202,
        "state": 21_248,  # BatchNorm moving statistics
        "batch": 4,
        "quick_batch": 1,
        "paper_batch": 12,  # omnizart's
        "peers": (),  # no torch or TF vocal_contour model: jaxmir's numbers only
    },
    "vocal": {
        "title": "vocal PyramidNet-110 + ShakeDrop + VAT (paper preset)",
        "input": (19, 174, 9),
        "output": (19, 6),
        "params": 28_529_666,
        "state": 49_226,  # BatchNorm moving statistics
        "batch": 8,
        "quick_batch": 4,
        "paper_batch": 64,  # omnizart's
        "peers": (),  # no torch or TF PyramidNet: jaxmir's numbers only
    },
    "chord": {
        "title": "chord Harmony Transformer (paper preset: 1 decoder block)",
        "input": (100, 504),
        "output": (100, 27),  # 26 class logits + the change logit
        "params": 11_059_050,  # 11,054,610 as omnizart counts + 4,440 learned relative tables
        "state": 1,  # the change slope
        "batch": 32,
        "quick_batch": 8,
        "paper_batch": 32,  # omnizart's
        "peers": (),  # no torch or TF Harmony Transformer: jaxmir's numbers only
    },
    "drum": {
        "title": "drum spectral-norm ResNet + self-attention (paper preset)",
        "input": (4, 120, 120),
        "output": (4, 13),
        "params": 7_752_741,  # omnizart's 7,752,740 + the attention's gamma
        "state": 1_026,  # spectral-norm vectors and norms
        "batch": 8,
        "quick_batch": 4,
        "paper_batch": 32,  # omnizart's
        "peers": (),  # no torch or TF model: jaxmir's numbers only
    },
}
# The presets' learning rates (the same for jaxmir and its peers).
LEARNING_RATES = {
    "music": 1e-3,
    "beat": 1e-3,
    "patch_cnn": 1e-5,
    "vocal_contour": 1e-3,
    "vocal": 1e-4,
    "chord": 1e-4,
    "drum": 2e-5,
}

# Peer frameworks that have a model of each name (`peers_torch`, `peers_tf`); a model without
# a "peers" entry has all of them. A requested peer is required for the models it has.
ALL_PEERS = ("torch", "tf")


def save_result(name: str, result: dict) -> Path:
    """Write `result` to ``results/<name>.json`` and print where."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    write_json(out, result, indent=1)
    print(out)
    return out


def write_json(path: Path, payload: dict, indent: int = 1, **kwargs) -> None:
    """`payload` as JSON at `path`, through a temporary file beside it: a kill mid-write leaves
    the file it had (a demos run rewrites its file after every task)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=indent, **kwargs) + "\n")
    os.replace(tmp, path)


def model_peers(model: str) -> tuple[str, ...]:
    """The peer frameworks with an implementation of `model` ("torch", "tf")."""
    return tuple(MODELS[model].get("peers", ALL_PEERS))


# Dense peak throughput (TFLOP/s) by device kind, from the vendors' data sheets: bf16 and tf32 on
# the tensor cores, dense (no sparsity), and fp32 on the CUDA cores. Used for MFU on GPUs. JAX's
# default fp32 matmul precision on these GPUs may use TF32, so fp32 runs report MFU against both.
GPU_PEAKS_TFLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bf16": 989.0, "tf32": 494.5, "fp32": 67.0},
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0},
    "H100 NVL": {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0},
    "H200": {"bf16": 989.0, "tf32": 494.5, "fp32": 67.0},
    "GH200": {"bf16": 989.0, "tf32": 494.5, "fp32": 67.0},
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L4": {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "A10": {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2},
    "V100": {"bf16": 125.0, "tf32": 15.7, "fp32": 15.7},  # fp16 tensor cores; no bf16/tf32
}


def gpu_peak_tflops(device_kind: str, precision: str) -> tuple[str, float] | None:
    """(matched name, peak TFLOP/s) for a JAX ``device_kind`` such as "NVIDIA H100 80GB HBM3";
    `precision` is "bf16", "tf32" or "fp32" (CUDA cores)."""
    kind = device_kind.upper()
    words = set(re.split(r"[\s_-]+", kind))  # whole names: an L40S is no L4, an A10G no A10
    if "H100" in words:
        name = "H100 PCIe" if "PCIE" in kind else ("H100 NVL" if "NVL" in kind else "H100 SXM")
    elif "GH200" in words:
        name = "GH200"
    else:
        name = next((k for k in GPU_PEAKS_TFLOPS if k.upper() in words), None)
    if name is None:
        return None
    return name, GPU_PEAKS_TFLOPS[name][precision]


def stats(times: list[float]) -> dict:
    """Median/min/max/mean of step times in seconds."""
    if not times:
        return {"n": 0}
    return {
        "n": len(times),
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "mean_s": statistics.fmean(times),
    }


def status_mb(field: str) -> float | None:
    """A field of /proc/self/status (VmRSS, VmHWM) in MB, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    hwm = status_mb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


def loadavg() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def host_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg": loadavg(),
    }


# -- worker side ------------------------------------------------------------------------------
def emit(obj: dict) -> None:
    sys.stdout.write(PREFIX + json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve(bench) -> None:
    """Run `bench` (setup() -> dict, run(n) -> [seconds], finish() -> dict) under the protocol."""
    try:
        emit({"ready": bench.setup()})
    except Exception as e:  # report, don't hang the parent
        import traceback

        emit({"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]})
        return
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "run":
            try:
                emit({"times": bench.run(int(cmd[1]))})
            except Exception as e:
                emit({"error": f"{type(e).__name__}: {e}"})
                return
        elif cmd[0] == "call":  # call METHOD {json kwargs}: an extra measurement of the bench
            try:
                kwargs = json.loads(line.split(None, 2)[2]) if len(cmd) > 2 else {}
                emit({"result": getattr(bench, cmd[1])(**kwargs)})
            except Exception as e:
                emit({"result": {"error": f"{type(e).__name__}: {e}"}})
        elif cmd[0] == "quit":
            break
    emit({"final": bench.finish()})


# -- parent side ------------------------------------------------------------------------------
class WorkerError(RuntimeError):
    pass


class Worker:
    """A benchmark subprocess speaking the protocol above."""

    def __init__(self, framework: str, spec: dict, env: dict | None = None, label: str = ""):
        self.framework = framework
        self.label = label or framework
        self.spec = spec
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.env = env or {}
        self.t_start = time.perf_counter()
        # stderr goes to a file: a pipe nobody reads would block a chatty worker (TF's logs).
        self._err = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", framework, "--spec", json.dumps(spec)],
            cwd=ROOT,
            env=full_env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
            bufsize=1,
        )
        self.ready: dict | None = None
        self.times: list[float] = []

    def stderr_tail(self, n: int = 3000) -> str:
        try:
            self._err.seek(0)
            return self._err.read()[-n:]
        except (OSError, ValueError):
            return ""

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                msg = json.loads(line[len(PREFIX) :])
                if "error" in msg:
                    self.close()
                    raise WorkerError(f"{self.label}: {msg['error']}\n{msg.get('traceback', '')}")
                return msg
        self.proc.wait()
        raise WorkerError(
            f"{self.label}: worker exited (rc {self.proc.returncode}) without answering\n"
            + self.stderr_tail()
        )

    def wait_ready(self) -> dict:
        if self.ready is None:
            self.ready = self._read()["ready"]
            self.ready["startup_s"] = round(time.perf_counter() - self.t_start, 3)
        return self.ready

    def run(self, n: int) -> list[float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"run {n}\n")
        self.proc.stdin.flush()
        times = self._read()["times"]
        self.times.extend(times)
        return times

    def call(self, method: str, **kwargs) -> dict:
        """An extra measurement in the worker (e.g. JaxBench.pipeline); {"error": ...} if it
        failed there."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"call {method} {json.dumps(kwargs)}\n")
        self.proc.stdin.flush()
        return self._read()["result"]

    def finish(self) -> dict:
        final: dict = {}
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                final = self._read()["final"]
            except (WorkerError, BrokenPipeError, OSError):
                pass
        self.close()
        return final

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # type: ignore[union-attr]
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        try:
            self._err.close()
        except OSError:
            pass


def run_one(framework: str, spec: dict, steps: int, env: dict | None = None) -> dict:
    """Start one worker, time `steps` steps, stop it; the merged ready/final info and stats."""
    w = Worker(framework, spec, env)
    try:
        info = dict(w.wait_ready())
        w.run(steps)
        info.update(w.finish())
    finally:
        w.close()
    if steps:  # a probe keeps its own fields (its "n" is its matrix size)
        info.update(stats(w.times))
        info["times_s"] = [round(t, 5) for t in w.times]
    return info


def add_name_option(parser, default: str, also: str = "") -> None:
    """`--name`: the results file `benchmarks/results/NAME.json` (and `also`, e.g. " and .png")."""
    parser.add_argument(
        "--name", default=default, help=f"results/NAME.json{also} (default {default})"
    )


def require_folders(parser, **flags) -> None:
    """`parser.error` (one line, exit 2) for the first of `flags` (`--name`: path or None)
    given as a folder that is not there: said before any model loads or piece is built."""
    for flag, path in flags.items():
        if path is not None and not Path(path).is_dir():
            parser.error(f"--{flag.replace('_', '-')} {path}: no such folder")


def fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    if s >= 1.0:
        return f"{s:.2f} s"
    return f"{s * 1000:.1f} ms"
