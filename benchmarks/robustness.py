"""How a music model holds up when a test split's audio is changed: gain, noise, a room, a bass
or treble cut, another sample rate.

    python -m benchmarks.robustness --data CACHE [--workdir RUN_OR_MODEL] [--splits S1,S2]
                                    [--changes as-rendered,gain:-20,...] [--name NAME]

For each change and split, every piece's audio (the cache's `source` file, as rendered) is
changed, written as a float WAV and transcribed as `jaxmir transcribe` does (its features,
batched windows, the model's stored decoding), then scored against the cache's labels; the
mean scores per split are printed and written to ``benchmarks/results/<name>.json`` (default
``robustness``). The model is the run or model folder in `--workdir` (default: the shipped one).

Changes (`KIND` or `KIND:VALUE`):
- ``as-rendered``: the audio unchanged;
- ``gain:DB``: scaled by DB decibels (no clipping: the file is float);
- ``noise:SNR``: white noise at SNR dB against the piece's mean power;
- ``room:RT60``: the corpus's synthetic room (`augment.room_impulse_response`) of RT60 seconds,
  mixed in at 40 % (`augment.reverb`);
- ``highpass:HZ`` / ``lowpass:HZ``: 4th-order Butterworth filters (a small loudspeaker's missing
  bass; a dull recording);
- ``resample:SR``: down to SR Hz and read back (the model reads 44.1 kHz).
Random changes draw from a generator seeded by the piece's position, so a run is repeatable.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import add_name_option, require_folders, save_result

KINDS = ("as-rendered", "gain", "noise", "room", "highpass", "lowpass", "resample")
ROOM_WET = 0.4
SCORES = ("note_f1", "note_precision", "note_recall", "note_with_offset_f1", "frame_f1")


def parse_change(change: str) -> tuple[str, float | None]:
    """("gain", -20.0) from "gain:-20"; ("as-rendered", None) from "as-rendered"."""
    kind, _, value = change.partition(":")
    if kind not in KINDS or (kind == "as-rendered") != (value == ""):
        raise ValueError(
            f"{change!r}: not a change ({', '.join(KINDS)}; KIND:VALUE but as-rendered)"
        )
    return kind, (float(value) if value else None)


def apply_change(x: np.ndarray, sr: int, change: str, rng: np.random.Generator):
    """(changed mono float32 audio, its sample rate)."""
    import scipy.signal

    from jaxmir.data.audio import resample
    from jaxmir.data.synth import augment as aug

    kind, value = parse_change(change)
    x = np.asarray(x, np.float32)
    if kind == "as-rendered":
        return x.copy(), sr
    if kind == "gain":
        return (x * np.float32(aug.db_to_gain(value))).astype(np.float32), sr
    if kind == "noise":
        return aug.add_noise(x, value, rng, "white"), sr
    if kind == "room":
        return aug.reverb(x, aug.room_impulse_response(sr, rng, value), ROOM_WET), sr
    if kind in ("highpass", "lowpass"):
        sos = scipy.signal.butter(4, value, btype=kind[:-4], fs=sr, output="sos")
        return scipy.signal.sosfilt(sos, x).astype(np.float32), sr
    return resample(x, sr, int(value)), int(value)


def measure(cache_dir: Path, workdir: Path | None, splits: list[str], changes: list[str]) -> dict:
    import soundfile as sf

    from jaxmir.data.audio import load_audio
    from jaxmir.data.cache import FeatureCache
    from jaxmir.engine.run import make_predict
    from jaxmir.shipped import load_for_inference
    from jaxmir.tasks.base import get_task, mean_scores

    for change in changes:
        parse_change(change)  # every change checked before the model is restored
    task = get_task("music")
    cfg, mesh, state = load_for_inference(task, workdir)
    predict = make_predict(mesh, state)
    cache = FeatureCache(cache_dir)
    sr = 44100
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for split in splits:
            names = cache.names(split)
            if not names:
                raise SystemExit(f"{cache_dir}: no pieces in split {split!r}")
            for change in changes:
                paths = []
                for i, name in enumerate(names):
                    x = load_audio(cache.entry(name)["source"], sr)
                    y, rate = apply_change(x, sr, change, np.random.default_rng(i))
                    paths.append(Path(tmp) / f"{i}.wav")
                    sf.write(paths[-1], y, rate, subtype="FLOAT")
                pieces = ((task.input_features(p, cfg), p) for p in paths)
                posteriors = task.posteriors_many(predict, pieces, cfg)
                scores = mean_scores(
                    task.score(task.decode(probs, cfg), cache.labels(name), cfg)
                    for name, (_, probs) in zip(names, posteriors, strict=True)
                )
                row = {"split": split, "change": change, "pieces": len(names)}
                row.update({k: round(float(scores[k]), 4) for k in SCORES})
                print(json.dumps(row), flush=True)
                rows.append(row)
    return {"model": str(workdir or "shipped"), "data": str(cache_dir), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.robustness", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--data", type=Path, required=True, help="a music feature cache")
    p.add_argument("--workdir", type=Path, default=None, help="a run or model folder")
    p.add_argument(
        "--splits", default="test_piano,test_mixed", help="the cache's splits (default %(default)s)"
    )
    p.add_argument(
        "--changes",
        default="as-rendered,gain:-20,noise:20,room:2.0,highpass:200",
        help="KIND or KIND:VALUE, comma-separated, of as-rendered, gain:DB, noise:SNR, "
        "room:RT60, highpass:HZ, lowpass:HZ, resample:SR (default %(default)s)",
    )
    add_name_option(p, "robustness")
    args = p.parse_args(argv)
    require_folders(p, data=args.data, workdir=args.workdir)
    try:
        result = measure(args.data, args.workdir, args.splits.split(","), args.changes.split(","))
    except ValueError as e:
        p.error(str(e))
    save_result(args.name, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
