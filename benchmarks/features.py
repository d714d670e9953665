"""Time the CFP features: numpy vs JAX (music parameters) on synthetic audio.

    python -m benchmarks.features [--seconds 60] [--repeats 3]

Each method runs in its own subprocess, so peak-RSS deltas are not shared:

* numpy in float64 (omnizart's precision), one thread;
* numpy in float32, one thread;
* numpy in float64 on two threads over frame chunks;
* numpy in float64 with ``backend="numpy"`` (np.fft only, no scipy);
* JAX (float32) on the default backend.

Each method gets one warm-up call, then ``--repeats`` timed calls, and the median is reported.
JAX's first call includes compilation, and ``compile_s`` is that call minus the median.

For each method the benchmark prints:

* wall and CPU seconds per minute of audio. On a shared machine, CPU time is the steadier of
  the two;
* the peak-RSS delta over the warm-up and the timed runs. On Linux the high-water mark
  (VmHWM) is reset first, so building the audio does not count; elsewhere ``ru_maxrss`` is
  used;
* for numpy, the tracemalloc peak of one call.

The results go to ``benchmarks/results/features.json``.

It exits 0 with a message if librosa or soundfile is missing. The compute imports only numpy
and JAX; `cfp_numpy` also uses scipy.fft and scipy.sparse when they are installed. The
``numpy-f64-npfft`` method leaves scipy out. The audio is synthesised here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import status_mb, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "features.json"
METHODS = ("numpy-f64", "numpy-f32", "numpy-f64-2threads", "numpy-f64-npfft", "jax-f32")
ROOT = Path(__file__).resolve().parents[1]


def synth_audio(seconds: float, fs: int = 44100, seed: int = 0, noise: float = 0.1):
    """Three harmonic tones with 5 Hz vibrato, an onset every 0.5 s, plus white noise (float32).

    The noise makes the signal broadband, so the only all-zero bins are the structural ones.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * fs))) / fs
    x = np.zeros_like(t)
    for f0, amp in ((220.0, 0.3), (329.6, 0.2), (523.3, 0.15)):
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))) / fs
        for h in range(1, 8):
            x += amp / h * np.sin(h * phase)
    x *= 0.6 + 0.4 * np.exp(-((t % 0.5) * 8))
    x += noise * rng.standard_normal(len(t))
    return x.astype(np.float32)


def _peak_start() -> tuple[float, str]:
    """Start a peak-RSS measurement. Returns the baseline in MB and the method used.

    On Linux the high-water mark is reset (``/proc/self/clear_refs``), so the audio synthesis
    does not count. Elsewhere the process-lifetime ``ru_maxrss`` is used.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        rss = status_mb("VmRSS")
        if rss is not None:
            return rss, "VmHWM"
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (r / 1024.0 if sys.platform != "darwin" else r / 2**20), "ru_maxrss"


def _peak_mb(method: str) -> float:
    if method == "VmHWM":
        return status_mb("VmHWM") or 0.0
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


def _worker(method: str, seconds: float, repeats: int) -> dict:
    import numpy as np

    from jaxmir.data.features import cfp

    audio = synth_audio(seconds, cfp.MUSIC.fs)
    info: dict = {"method": method}
    if method.startswith("jax"):
        import jax

        def run():
            return jax.block_until_ready(cfp.cfp_jax(audio, cfp.MUSIC))

        info["backend"] = jax.default_backend()
        info["device"] = str(jax.devices()[0])
    else:
        dtype = np.float32 if "f32" in method else np.float64
        workers = 2 if "2threads" in method else 1
        backend = "numpy" if "npfft" in method else "auto"

        def run():
            return cfp.cfp_numpy(audio, cfp.MUSIC, dtype, workers=workers, backend=backend)

    rss0, rss_method = _peak_start()
    t0 = time.perf_counter()
    out = run()
    warm = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = run()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    rss1 = _peak_mb(rss_method)
    med = statistics.median(times)
    out = np.asarray(out)
    info.update(
        shape=list(out.shape),
        dtype=str(out.dtype),
        warmup_s=round(warm, 4),
        times_s=[round(v, 4) for v in times],
        median_s=round(med, 4),
        s_per_min=round(med * 60.0 / seconds, 4),
        cpu_s_per_min=round(statistics.median(cpu) * 60.0 / seconds, 4),
        peak_rss_delta_mb=round(rss1 - rss0, 1),
        peak_rss_method=rss_method,
        zero_bins=[int(v) for v in (np.abs(out).max(axis=0) == 0).sum(axis=0)],
    )
    if method.startswith("jax"):
        info["compile_s"] = round(max(warm - med, 0.0), 4)
    else:
        import tracemalloc

        tracemalloc.start()
        run()
        info["tracemalloc_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.stop()
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.features", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--seconds", type=float, default=60.0, help="audio length (default 60)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    ap.add_argument(
        "--methods", default=",".join(METHODS), help="comma list of " + ", ".join(METHODS)
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON output path")
    ap.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(_worker(args.worker, args.seconds, args.repeats)))
        return 0

    missing = [m for m in ("librosa", "soundfile") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"benchmarks.features: skipped, missing {', '.join(missing)}")
        return 0

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    results = []
    print(f"CFP (music, 44.1 kHz, 352 bins) on {args.seconds:g} s of synthetic audio")
    print(
        f"{'method':<20}{'s/min':>9}{'CPU s/min':>11}{'warm-up s':>11}{'peak RSS +MB':>14}  extra"
    )
    for m in methods:
        cmd = [sys.executable, "-m", "benchmarks.features", "--worker", m]
        cmd += ["--seconds", str(args.seconds), "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            print(f"{m:<20} failed: {proc.stderr.strip().splitlines()[-1:]}")
            results.append({"method": m, "error": proc.stderr[-2000:]})
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        extra = (
            f"compile {r['compile_s']:.2f} s on {r['device']}"
            if "compile_s" in r
            else f"tracemalloc peak {r['tracemalloc_peak_mb']:.0f} MB"
        )
        print(
            f"{m:<20}{r['s_per_min']:>9.3f}{r['cpu_s_per_min']:>11.3f}{r['warmup_s']:>11.3f}"
            f"{r['peak_rss_delta_mb']:>14.0f}  {extra}"
        )
    ok = [r for r in results if "zero_bins" in r]
    if ok:
        print(
            f"all-zero bins [Z, Spec, GCoS, Ceps]: {ok[0]['zero_bins']} (T={ok[0]['shape'][0]}); "
            "omnizart's 2998-frame reference: [58, 21, 21, 38]"
        )
    payload = {
        "feature": "cfp-music",
        "seconds": args.seconds,
        "repeats": args.repeats,
        "host": {
            "machine": platform.machine(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, payload, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
