"""Bad input through the command line: exit 2, one line naming the file or key and the reason,
no traceback, nothing written. Also: one run per workdir, and a resume without config.json."""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pretty_midi
import pytest
import soundfile as sf

from jaxmir.cli import main
from jaxmir.engine.run import WorkdirLock
from jaxmir.shipped import MODELS_DIR

TINY_BEAT = ["--preset", "tiny", "--no-progress", "--set", "train.eval_pieces_each_epoch=false"]


@pytest.fixture(scope="module")
def beat_run(beat_cache, tmp_path_factory):
    wd = tmp_path_factory.mktemp("beat-run") / "run"
    argv = ["train", "beat", "--workdir", str(wd), "--data", str(beat_cache), *TINY_BEAT]
    assert main(argv) == 0
    return wd


@pytest.fixture(scope="module")
def pcnn_run(patch_cache, tmp_path_factory):
    wd = tmp_path_factory.mktemp("pcnn-run") / "run"
    argv = [
        "train",
        "patch_cnn",
        "--preset",
        "tiny",
        "--workdir",
        str(wd),
        "--data",
        str(patch_cache),
        "--no-progress",
        "--set",
        "train.epochs=1",
    ]
    assert main(argv) == 0
    return wd


def _wav_header(n_data_bytes: int) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", 36 + n_data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", n_data_bytes)
    )


def make_bad_file(kind: str, folder: Path) -> Path:
    path = folder / kind
    if kind == "empty.wav":
        path.write_bytes(b"")
    elif kind == "text.wav":
        path.write_text("this is not audio\n")
    elif kind == "truncated.wav":
        path.write_bytes(_wav_header(64000) + b"\0" * 100)
    elif kind == "zero-samples.wav":
        path.write_bytes(_wav_header(0))
    elif kind == "unfinished.wav":  # a recorder stopped before writing its sizes
        path.write_bytes(_wav_header(0) + b"\1\0" * 16000)
    elif kind == "zero-samples-list.wav":  # empty, with an INFO list after (as ffmpeg writes)
        info = b"INFO" + b"ISFT" + struct.pack("<I", 14) + b"Lavf58.76.100\0"
        path.write_bytes(_wav_header(0) + b"LIST" + struct.pack("<I", len(info)) + info)
    elif kind == "nan.wav":
        sf.write(path, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    elif kind == "random.mid":
        path.write_bytes(np.random.default_rng(0).bytes(300))
    elif kind == "corrupt.mid":
        pm = pretty_midi.PrettyMIDI()
        inst = pretty_midi.Instrument(0)
        inst.notes.append(pretty_midi.Note(90, 60, 0.0, 1.0))
        pm.instruments.append(inst)
        good = folder / "good.mid"
        pm.write(str(good))
        path.write_bytes(good.read_bytes()[:30])
    elif kind == "no-notes.mid":
        pretty_midi.PrettyMIDI().write(str(path))
    elif kind == "empty.mid":
        path.write_bytes(b"")
    elif kind == "audio.wav":
        sf.write(path, np.zeros(16000, np.float32), 16000)
    else:
        raise ValueError(kind)
    return path


class Fx:
    """What a row builds its argv from: the fixtures, requested on first use (a row pays only
    for the runs it needs), and a fresh folder. Remembers the folders the row touched, so the
    test can check that the command left them as they were."""

    def __init__(self, request: pytest.FixtureRequest, tmp: Path) -> None:
        self._request = request
        self.tmp = tmp
        self.touched: list[Path] = [tmp]

    def _get(self, name: str) -> Path:
        path = Path(self._request.getfixturevalue(name))
        self.touched.append(path)
        return path

    @property
    def beat_run(self) -> Path:
        return self._get("beat_run")

    @property
    def pcnn_run(self) -> Path:
        return self._get("pcnn_run")

    @property
    def beat_cache(self) -> Path:
        return self._get("beat_cache")

    @property
    def patch_cache(self) -> Path:
        return self._get("patch_cache")

    @property
    def workdir(self) -> str:
        """A fresh workdir (a bad command must not even create it)."""
        return str(self.tmp / "run")

    def bad(self, kind: str) -> str:
        return str(make_bad_file(kind, self.tmp))

    def transcribe(self, task: str, path: str) -> list[str]:
        run = self.beat_run if task == "beat" else self.pcnn_run
        return ["transcribe", task, path, "--workdir", str(run), "-o", str(self.tmp / "out")]

    def train_beat(self, *extra: str) -> list[str]:
        return ["train", "beat", "--workdir", self.workdir, *TINY_BEAT, *extra]

    def train_beat_on_cache(self, *overrides: str) -> list[str]:
        sets = [a for o in overrides for a in ("--set", o)]
        return self.train_beat("--data", str(self.beat_cache), *sets)

    def run_without_checkpoints(self) -> str:
        """A run folder holding only a config.json (training never saved a checkpoint)."""
        wd = self.tmp / "fresh-run"
        wd.mkdir()
        shutil.copy(self.beat_run / "config.json", wd / "config.json")
        return str(wd)

    def a_file(self) -> str:
        """A regular file where a command is told to write a folder."""
        path = self.tmp / "afile"
        path.write_text("not a folder\n")
        return str(path)

    def shipped(self, task: str) -> str:
        from jaxmir.shipped import model_dir

        path = model_dir(task)
        self.touched.append(path)
        return str(path)

    def broken_manifest_cache(self) -> str:
        cache = self.tmp / "cache"
        cache.mkdir()
        (cache / "manifest.json").write_text('{"version": 1, "pieces": [')
        return str(cache)


def case(name: str, argv: Callable[[Fx], list[str]], *needles: str) -> Any:
    """One row: its id, its argv built from the fixtures, and what its one stderr line must
    contain (`{tmp}` stands for the row's fresh folder)."""
    return pytest.param(argv, needles, id=name)


CASES = [
    # -- a folder to write that is a file: said before any work
    case(
        "transcribe-out-is-a-file",
        lambda f: ["transcribe", "patch_cnn", f.bad("audio.wav"), "-o", f.a_file()],
        "-o {tmp}/afile",
        "must be a folder",
    ),
    case(
        "train-workdir-is-a-file",
        lambda f: ["train", "beat", "--workdir", f.a_file(), *TINY_BEAT],
        "--workdir {tmp}/afile",
        "must be a folder",
    ),
    case(
        "features-out-under-a-file",
        lambda f: (
            ["features", "beat", "--dataset", "midi", "--root", str(f.tmp)]
            + ["--out", f.a_file() + "/cache"]
        ),
        "--out {tmp}/afile/cache",
        "is a file",
    ),
    case(  # its cache's files went in among the run's
        "features-out-is-a-run",
        lambda f: (
            ["features", "beat", "--dataset", "midi", "--root", str(f.tmp)]
            + ["--out", str(f.beat_run)]
        ),
        "holds config.json",
        "not a feature cache",
    ),
    case(
        "features-no-workers",
        lambda f: (
            ["features", "beat", "--dataset", "midi", "--root", str(f.tmp)]
            + ["--out", str(f.tmp / "out"), "-j", "0"]
        ),
        "-j",
        ">= 1",
    ),
    # -- the shipped model's decoding and scores: rewritten for every later command
    case(
        "calibrate-the-shipped-model",
        lambda f: ["calibrate", "music", "--workdir", str(MODELS_DIR / "music")],
        "ships with jaxmir",
        "copy it",
    ),
    # -- configs `info` describes are checked as training checks them
    case(
        "info-music-model-name", lambda f: ["info", "music", "--set", "model.name=x"], "model.name"
    ),
    case("info-beat-model-name", lambda f: ["info", "beat", "--set", "model.name=x"], "model.name"),
    case("info-epochs", lambda f: ["info", "beat", "--set", "train.epochs=-1"], "train.epochs"),
    case("train-beat-heads", lambda f: f.train_beat("--set", "model.heads=x"), "model.heads"),
    case(
        "train-lstm-impl", lambda f: f.train_beat("--set", "model.lstm_impl=x"), "model.lstm_impl"
    ),
    # -- the run itself as an ensemble member (two copies of one model); a music option to
    # another task (a message about a corpus, after the model loaded)
    case(
        "export-the-run-as-its-own-member",
        lambda f: (
            ["export", "beat", "--workdir", str(f.beat_run), "--out", str(f.tmp / "e")]
            + ["--member", str(f.beat_run)]
        ),
        "--member",
        "is the first member",
    ),
    case(
        "test-soundfont-for-beat",
        lambda f: (["eval", "beat", "--workdir", str(f.beat_run), "--test-soundfont", f.a_file()]),
        "--test-soundfont",
        "music only",
    ),
    # -- a model folder where a run is needed, or another task's model
    case(
        "export-a-model-folder",
        lambda f: ["export", "beat", "--workdir", f.shipped("beat"), "--out", str(f.tmp / "e")],
        "no checkpoint to restore",
        "exported model folder",
    ),
    case(
        "transcribe-with-another-tasks-model",
        lambda f: (
            ["transcribe", "beat", f.bad("no-notes.mid"), "--workdir", f.shipped("music")]
            + ["-o", str(f.tmp / "out")]
        ),
        "music/config.json",
        "'music', not 'beat'",
    ),
    # -- audio and MIDI files given to `transcribe`
    case(
        "empty-wav",
        lambda f: f.transcribe("patch_cnn", f.bad("empty.wav")),
        "empty.wav",
        "empty file",
    ),
    case(
        "text-as-wav",
        lambda f: f.transcribe("patch_cnn", f.bad("text.wav")),
        "text.wav",
        "cannot decode",
    ),
    case(
        "truncated-wav",
        lambda f: f.transcribe("patch_cnn", f.bad("truncated.wav")),
        "truncated.wav",
        "truncated",
    ),
    case(
        "zero-sample-wav",
        lambda f: f.transcribe("patch_cnn", f.bad("zero-samples.wav")),
        "zero-samples.wav",
        "0 samples",
    ),
    case(
        "unfinished-wav",
        lambda f: f.transcribe("patch_cnn", f.bad("unfinished.wav")),
        "unfinished.wav",
        "the header declares no audio, yet 32000 bytes of it follow",
    ),
    case(
        "zero-sample-wav-with-a-list",
        lambda f: f.transcribe("patch_cnn", f.bad("zero-samples-list.wav")),
        "zero-samples-list.wav",
        "0 samples",
    ),
    case("nan-wav", lambda f: f.transcribe("patch_cnn", f.bad("nan.wav")), "nan.wav", "NaN"),
    case(
        "wav-to-beat",
        lambda f: f.transcribe("beat", f.bad("audio.wav")),
        "audio.wav",
        "is audio, and this task reads MIDI files (.mid, .midi)",
    ),
    case(
        "mid-to-an-audio-task",
        lambda f: f.transcribe("patch_cnn", f.bad("no-notes.mid")),
        "no-notes.mid",
        "is MIDI, and this task reads audio files",
    ),
    case(
        "random-bytes-mid",
        lambda f: f.transcribe("beat", f.bad("random.mid")),
        "random.mid",
        "cannot parse MIDI",
    ),
    case(
        "truncated-mid",
        lambda f: f.transcribe("beat", f.bad("corrupt.mid")),
        "corrupt.mid",
        "cannot parse MIDI",
    ),
    case(  # worded as for audio: it was "cannot parse MIDI (EOFError: the file ends early)"
        "empty-mid",
        lambda f: f.transcribe("beat", f.bad("empty.mid")),
        "empty.mid",
        "empty file (0 bytes)",
    ),
    case(
        "mid-without-notes",
        lambda f: f.transcribe("beat", f.bad("no-notes.mid")),
        "no-notes.mid",
        "no notes",
    ),
    case(
        "transcribe-missing-file",
        lambda f: f.transcribe("beat", str(f.tmp / "nosuch.mid")),
        "nosuch.mid",
        "no such file",
    ),
    case(
        "transcribe-a-folder",
        lambda f: f.transcribe("beat", str(f.tmp)),
        "{tmp}",
        "not a file",
    ),
    # -- config values, keys and names
    case(
        "batch-size-0",
        lambda f: f.train_beat_on_cache("train.batch_size=0"),
        "train.batch_size",
        ">= 1",
    ),
    case(
        "negative-learning-rate",
        lambda f: f.train_beat_on_cache("optim.learning_rate=-1e-3"),
        "optim.learning_rate",
        "> 0",
    ),
    case("epochs-minus-1", lambda f: f.train_beat_on_cache("train.epochs=-1"), "train.epochs"),
    case(
        "steps-per-epoch-0",
        lambda f: f.train_beat_on_cache("train.steps_per_epoch=0"),
        "train.steps_per_epoch",
    ),
    case(
        "val-batch-size-0",
        lambda f: f.train_beat_on_cache("train.val_batch_size=0"),
        "train.val_batch_size",
        ">= 1",
    ),
    case(
        "batch-size-not-divisible-by-devices",
        lambda f: f.train_beat_on_cache("train.batch_size=12"),
        "train.batch_size",
        "divisible",
    ),
    case(
        "unknown-set-key",
        lambda f: f.train_beat_on_cache("train.nosuch=1"),
        "train.nosuch",
        "unknown",
    ),
    case(
        "set-value-of-wrong-type",
        lambda f: f.train_beat_on_cache("train.epochs=three"),
        "train.epochs",
        "integer",
    ),
    case(
        "set-without-equals",
        lambda f: f.train_beat_on_cache("train.epochs"),
        "train.epochs",
        "key=value",
    ),
    case(
        "unknown-preset",
        lambda f: ["train", "beat", "--workdir", f.workdir, "--preset", "huge"],
        "huge",
        "unknown preset",
    ),
    case(
        "unknown-task",
        lambda f: ["train", "nosuch", "--workdir", f.workdir, "--preset", "tiny"],
        "nosuch",
        "unknown task",
    ),
    # -- --data: the feature cache
    case(
        "data-folder-missing",
        lambda f: f.train_beat("--data", str(f.tmp / "nosuch-cache")),
        "nosuch-cache",
        "does not exist",
    ),
    case(
        "data-is-a-file",
        lambda f: f.train_beat("--data", f.bad("audio.wav")),
        "audio.wav",
        "is not a folder",
    ),
    case(
        "data-not-a-cache",
        lambda f: f.train_beat("--data", str(f.tmp)),
        "manifest.json",
        "not a feature cache",
    ),
    case(
        "data-broken-manifest",
        lambda f: f.train_beat("--data", f.broken_manifest_cache()),
        "manifest.json",
        "unreadable",
    ),
    case(
        "beat-cache-to-music",
        lambda f: (
            ["train", "music", "--workdir", f.workdir, "--preset", "tiny"]
            + ["--data", str(f.beat_cache), "--set", "train.batch_size=8"]
            + ["--set", "train.val_batch_size=8"]
        ),
        "'beat'",
        "not 'music'",
    ),
    case(
        "beat-cache-to-patch-cnn",
        lambda f: (
            ["train", "patch_cnn", "--workdir", f.workdir, "--preset", "tiny"]
            + ["--data", str(f.beat_cache)]
        ),
        "'beat'",
        "not 'patch_cnn'",
    ),
    # -- eval
    case(
        "eval-unknown-split",
        lambda f: ["eval", "beat", "--workdir", str(f.beat_run), "--split", "nosuch"],
        "nosuch",
        "no pieces",
        "(it holds test, train, val)",
    ),
    case(
        "eval-not-a-run",
        lambda f: ["eval", "beat", "--workdir", str(f.tmp)],
        "config.json",
        "not found",
    ),
    case(
        "eval-run-without-checkpoints",
        lambda f: ["eval", "beat", "--workdir", f.run_without_checkpoints()],
        "checkpoints",
        "no checkpoint",
    ),
    case(
        "eval-missing-step",
        lambda f: ["eval", "beat", "--workdir", str(f.beat_run), "--step", "999"],
        "no checkpoint at step 999",
        "saved: [",
    ),
    # -- features
    case(
        "features-unknown-dataset",
        lambda f: (
            ["features", "beat", "--dataset", "nosuch", "--root", str(f.tmp)]
            + ["--out", str(f.tmp / "out")]
        ),
        "nosuch",
        "not accepted",
    ),
    case(
        "features-root-missing",
        lambda f: (
            ["features", "beat", "--dataset", "midi", "--root", str(f.tmp / "nosuch")]
            + ["--out", str(f.tmp / "out")]
        ),
        "nosuch",
        "does not exist",
    ),
    case(
        "features-corpus-root-missing",
        lambda f: (
            ["features", "patch_cnn", "--dataset", "synth", "--root", str(f.tmp / "nosuch")]
            + ["--out", str(f.tmp / "out")]
        ),
        "nosuch/corpus.json",
        "not found",
    ),
]


def _tree(roots: list[Path]) -> dict[str, tuple[int, int]]:
    """Every path under `roots`, with its size (files) and mtime: what a refused command must
    leave as it found it."""
    out = {}
    for root in roots:
        for p in [root, *sorted(root.rglob("*"))] if root.exists() else []:
            st = p.stat()
            out[str(p)] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("argv, needles", CASES)
def test_bad_input_exits_2_with_one_line(argv, needles, request, tmp_path, capsys):
    fx = Fx(request, tmp_path)
    args = argv(fx)
    before = _tree(fx.touched)
    capsys.readouterr()  # fixtures' own output (training the runs)
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"jaxmir {args[0]}: error: "), lines[0]
    for needle in needles:
        assert needle.format(tmp=tmp_path) in lines[0], (needle, lines[0])
    assert _tree(fx.touched) == before


def assert_one_line_exit_2(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], (needle, err[0])


def test_a_second_run_on_a_busy_workdir_exits_2_naming_the_holder(beat_run, beat_cache, capsys):
    argv = ["train", "beat", "--workdir", str(beat_run), "--data", str(beat_cache), *TINY_BEAT]
    with WorkdirLock(beat_run):
        assert_one_line_exit_2(argv, capsys, f"PID {os.getpid()}")
    assert main(argv) == 0  # released: the run (finished) resumes and ends at once


def test_missing_config_json_is_taken_from_the_checkpoint(beat_run, beat_cache, tmp_path, capsys):
    wd = tmp_path / "run"
    shutil.copytree(beat_run, wd)
    saved = json.loads((wd / "config.json").read_text())
    (wd / "config.json").unlink()
    base = ["train", "beat", "--workdir", str(wd), "--data", str(beat_cache), *TINY_BEAT]
    assert_one_line_exit_2([*base, "--set", "model.hidden=5"], capsys, "model.hidden")
    assert not (wd / "config.json").exists()
    # a schedule key may change, and a decoding setting (how validation pieces are scored)
    argv = [*base, "--set", "train.epochs=3", "--set", "decode.min_distance=0.25"]
    assert main(argv) == 0
    resumed = json.loads((wd / "config.json").read_text())
    assert resumed["model"] == saved["model"] and resumed["train"]["epochs"] == 3
    assert resumed["decode"]["min_distance"] == 0.25


def test_features_exit_2_when_no_file_could_be_read(tmp_path, capsys, recwarn):
    """Every file skipped (each named once, with its reason, and no warning besides): exit 2."""
    root = tmp_path / "midi"
    root.mkdir()
    make_bad_file("corrupt.mid", root)
    (root / "good.mid").unlink()
    argv = ["features", "beat", "--dataset", "midi", "--root", str(root)]
    assert main([*argv, "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith(f"skipped {root / 'corrupt.mid'}: ")
    assert str(root) not in err[0].split(": ", 1)[1]  # the path once
    assert "none of the pieces" in err[1]
    assert not [w for w in recwarn if "corrupt.mid" in str(w.message)]


def test_channels_that_cancel_in_the_mono_mix_are_read_as_the_first_channel(tmp_path, capsys):
    """A stereo file with one channel in opposite phase used to mix to silence (no notes,
    exit 0): the first channel is read instead, with a one-line warning naming the file; an
    ordinary stereo file mixes as before, silently."""
    import warnings

    import soundfile as sf

    from jaxmir.cli import _show_input_warnings
    from jaxmir.data.audio import InputWarning, load_audio

    sr = 22050
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(sr) / sr).astype(np.float32)
    sf.write(tmp_path / "anti.wav", np.stack([tone, -tone], 1), sr)
    sf.write(tmp_path / "wide.wav", np.stack([tone, 0.5 * tone], 1), sr)
    with pytest.warns(InputWarning, match=r"anti\.wav: its channels cancel"):
        x = load_audio(tmp_path / "anti.wav", sr)
    np.testing.assert_allclose(x, tone, atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(load_audio(tmp_path / "wide.wav", sr), 0.75 * tone, atol=1e-4)
    with warnings.catch_warnings():  # restores the filters and showwarning
        _show_input_warnings("transcribe")
        warnings.warn("x.wav: odd", InputWarning, stacklevel=1)
        # a plot's title in a script its font lacks: a box in the picture, no warning
        warnings.warn(
            "Glyph 38899 (\\N{CJK UNIFIED IDEOGRAPH-97F3}) missing from font(s) DejaVu Sans.",
            stacklevel=1,
        )
    assert capsys.readouterr().err == "jaxmir transcribe: warning: x.wav: odd\n"


def test_a_read_only_file_system_and_a_garbled_manifest_are_one_line(tmp_path, monkeypatch, capsys):
    """A workdir on a read-only file system (EROFS) and a manifest.json of random bytes used to
    end in tracebacks; both are one line naming the path, exit 2. A full disk is one line too,
    exit 1 (run again once there is space); other OS errors (a failing disk) keep their
    traceback."""
    import errno

    import jaxmir.cli as cli

    def read_only(args):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ro" / "run"))

    monkeypatch.setitem(cli.COMMANDS, "info", read_only)
    assert main(["info", "beat"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jaxmir info: error: {tmp_path / 'ro' / 'run'}: Read-only file system"]

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "x")

    monkeypatch.setitem(cli.COMMANDS, "info", full)
    assert main(["info", "beat"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "jaxmir info: error: x: No space left on device; what was finished is kept: free some "
        "space and run the same command again"
    ]

    def failing(args):
        raise OSError(errno.EIO, "Input/output error", "x")

    monkeypatch.setitem(cli.COMMANDS, "info", failing)
    with pytest.raises(OSError, match="Input/output"):
        main(["info", "beat"])
    monkeypatch.undo()

    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "manifest.json").write_bytes(bytes(range(256)))
    from jaxmir.data.cache import CacheError, FeatureCache

    with pytest.raises(CacheError, match="unreadable manifest"):
        FeatureCache(garbled)
    (garbled / "manifest.json").write_text("[1, 2]")
    with pytest.raises(CacheError, match="not a feature cache's manifest"):
        FeatureCache(garbled)


@pytest.mark.parametrize(
    "task, setting",
    [
        ("beat", "model.hidden=0"),
        ("beat", "model.timesteps=0"),
        ("beat", "optim.lr_schedule=bogus"),
        ("beat", "train.precision=fp8"),
        ("beat", "data.corpus_variants=0"),
        ("music", "model.timesteps=0"),
        ("music", "data.corpus_max_seconds=0"),
        ("music", "data.corpus_instruments=bogus"),
        ("music", "model.dropout=1.5"),
        # a traceback at the first step (a batch of 8 in 3 micro-batches), a ZeroDivisionError
        # after epoch 1, a stop after epoch 1 whatever happened, a model without an LSTM,
        # weight decay an optimizer ignores, clipping to nothing
        ("beat", "train.grad_accum=3"),
        ("beat", "optim.decay_every=0"),
        ("beat", "train.early_stop_patience=0"),
        ("beat", "model.num_layers=0"),
        ("beat", "optim.weight_decay=0.01"),
        ("beat", "optim.grad_clip_norm=0"),
        ("beat", "optim.decay_rate=0"),
        # sizes no network is built with: a traceback from info, and from train after its
        # workdir was written
        ("chord", "model.heads=3"),
        ("chord", "model.heads=0"),
        ("drum", "model.diff_axis=7"),
        ("vocal", "model.depth=3"),
        ("vocal", "model.context=-1"),
        ("drum", "model.channels=0"),
        ("music", "model.timesteps=100"),  # caught where the model refuses it
        ("beat", "train.seed=-1"),
        ("beat", "data.hop=-3"),
        ("beat", "data.hop=0"),  # was the default unsaid
        # a traceback; -3 train chorales a slice (284 of them); a reversed tempo range a
        # warning and "a corpus too small"
        ("drum", "data.corpus_pieces=-3"),
        ("beat", "data.corpus_train=-3"),
        ("beat", "data.corpus_bpm=[200,100]"),
        ("beat", "data.corpus_bpm=[60,120,180]"),
        # a whole section: an AttributeError
        ("beat", "model=null"),
        ("beat", "data={}"),
        # every task has one model: vocal_contour and patch_cnn ignored another name
        *(
            (t, "model.name=bogus")
            for t in ("chord", "drum", "vocal", "vocal_contour", "patch_cnn")
        ),
    ],
)
def test_settings_no_run_can_use_are_one_line_naming_the_key(task, setting, capsys):
    """Each ended in a traceback (division by zero, an unknown word deep in the engine or the
    corpus builder), some only after an epoch; now one line naming the key, exit 2."""
    assert main(["info", task, "--preset", "tiny", "--set", setting]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and setting.split("=")[0] in err[0], err


@pytest.mark.parametrize(
    "task, setting",
    [
        ("music", "model.conv_impl=bogus"),
        ("beat", "decode.method=bogus"),
        ("beat", "decode.downbeats=bogus"),
        ("beat", "decode.bar_change=1.5"),
        ("beat", "optim.name=bogus"),
        ("beat", "optim.ema_decay=2"),
        ("vocal", "model.depth=3"),  # a traceback after run.json was written
        ("drum", "data.corpus_instruments=piano"),  # refused after the corpus was rendered
        ("vocal", "data.corpus_instruments=piano"),
        ("beat", "data.hop=-3"),  # a traceback from the data pipeline, workdir written
        ("patch_cnn", "decode.threshold=5"),  # no frame voiced, exit 0 (eval, transcribe too)
        ("vocal_contour", "decode.threshold=-1"),  # every frame voiced, exit 0
    ],
)
def test_train_refuses_unusable_settings_before_anything_is_written(
    task, setting, beat_cache, tmp_path, capsys
):
    """`train` with each: a traceback at model init (conv_impl), one after a whole epoch with
    checkpoints written (the decode words), or run.json written first (optim); now one line
    naming the key, exit 2, and no workdir. (`train.monitor` names a metric a task logs, known
    only once an epoch has logged: a wrong one is one line after the first epoch.)"""
    wd = tmp_path / "run"
    argv = ["train", task, "--preset", "tiny", "--workdir", str(wd), "--data", str(beat_cache)]
    assert main([*argv, "--no-progress", "--set", setting]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and setting.split("=")[0] in err[0], err
    assert not wd.exists()


def test_missing_config_json_without_a_preset_resumes_with_the_checkpoints_config(
    beat_run, beat_cache, tmp_path, capsys
):
    """Without --preset, a run whose config.json is gone resumes with the config its newest
    checkpoint carries (it took the demo preset's and reported differences from a
    config.json that was not there)."""
    wd = tmp_path / "run"
    shutil.copytree(beat_run, wd)
    saved = json.loads((wd / "config.json").read_text())
    (wd / "config.json").unlink()
    argv = ["train", "beat", "--workdir", str(wd), "--data", str(beat_cache), "--no-progress"]
    assert main([*argv, "--set", "train.epochs=3"]) == 0
    resumed = json.loads((wd / "config.json").read_text())
    assert resumed["preset"] == saved["preset"] and resumed["model"] == saved["model"]
    assert resumed["train"]["epochs"] == 3


def test_a_run_trained_with_a_setting_train_now_refuses_still_evaluates(
    beat_run, beat_cache, tmp_path
):
    """The checks of how to train (patience 0, weight decay without adamw, ...) are for
    `train`: a run trained before them still scores and transcribes."""
    wd = tmp_path / "run"
    shutil.copytree(beat_run, wd)
    stored = json.loads((wd / "config.json").read_text())
    stored["train"]["early_stop_patience"] = 0
    stored["optim"]["weight_decay"] = 0.01
    (wd / "config.json").write_text(json.dumps(stored))
    argv = ["eval", "beat", "--workdir", str(wd), "--data", str(beat_cache), "--no-progress"]
    assert main(argv) == 0


def test_a_truncated_config_json_is_one_line_naming_it(beat_run, beat_cache, tmp_path, capsys):
    """A hand-edited or truncated config.json ended eval, train and calibrate in a
    JSONDecodeError traceback (exit 1); now one line naming the file, exit 2."""
    wd = tmp_path / "run"
    shutil.copytree(beat_run, wd)
    text = (wd / "config.json").read_text()
    (wd / "config.json").write_text(text[: len(text) // 2])
    for argv in (
        ["eval", "beat", "--workdir", str(wd), "--no-progress"],
        ["train", "beat", "--workdir", str(wd), "--data", str(beat_cache), "--no-progress"],
        ["calibrate", "beat", "--workdir", str(wd), "--no-progress"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{wd / 'config.json'}: not JSON" in err[0], (argv, err)


def test_features_lists_every_file_a_reader_left_out_and_goes_on(tmp_path, capsys):
    """MIR-1K with one good clip, one malformed pitch label and one clip without a label: the
    malformed file ended the whole read (exit 2, no cache); the unlabelled clip was a raw
    Python warning, missing from the summary's count and the manifest. Now both are listed
    as failures, once each, and the good clip is written."""

    def wav(name: str) -> None:
        path = tmp_path / "MIR-1K" / "Wavfile" / f"{name}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(path), np.zeros((3200, 2), np.float32), 16000)

    def pv(name: str, text: str) -> None:
        path = tmp_path / "MIR-1K" / "PitchLabel" / f"{name}.pv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    for name in ("abjones_1_01", "abjones_1_02", "abjones_1_03"):
        wav(name)
    pv("abjones_1_01", "0 \n" * 9)
    pv("abjones_1_02", "0 \n-5 \n0 \n")
    out = tmp_path / "cache"
    argv = ["features", "vocal_contour", "--dataset", "mir1k", "--no-progress"]
    assert main([*argv, "--root", str(tmp_path / "MIR-1K"), "--out", str(out)]) == 1  # some
    captured = capsys.readouterr()
    assert "1 pieces written, 0 already cached, 2 failed" in captured.out
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 2 and all(line.startswith("skipped ") for line in lines), lines
    assert any("abjones_1_02.pv: line 2: negative pitch" in line for line in lines), lines
    assert any("abjones_1_03.wav: no PitchLabel/abjones_1_03.pv" in line for line in lines)
    failures = json.loads((out / "manifest.json").read_text())["failures"]
    assert len(failures) == 2
    # with no readable piece left, the one-line error still says why each file was left out
    (tmp_path / "MIR-1K" / "PitchLabel" / "abjones_1_01.pv").write_text("x \n")
    assert main([*argv, "--root", str(tmp_path / "MIR-1K"), "--out", str(tmp_path / "c2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no MIR-1K pieces" in err[0], err
    assert "abjones_1_02.pv: line 2: negative pitch" in err[0] and "no PitchLabel" in err[0]


def test_train_refuses_a_model_folder_and_another_tasks_run(
    beat_run, tmp_path, capsys, monkeypatch
):
    """`train --workdir` on an exported (or shipped) model folder rewrote its config.json and
    added checkpoints: every later command on the folder failed. Resuming another task's run
    listed every key the two configs differ in, not the task."""
    from jaxmir.shipped import VARIABLES

    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / VARIABLES).write_bytes(b"parameters")
    (folder / "config.json").write_text("{}")
    package = tmp_path / "package"
    monkeypatch.setattr("jaxmir.shipped.MODELS_DIR", package)
    for wd, kind in ((folder, "an exported model"), (package / "beat", "a model that ships")):
        before = sorted(p.name for p in folder.iterdir())
        assert main(["train", "beat", "--preset", "tiny", "--workdir", str(wd)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and kind in err[0] and "not a training run" in err[0], err
        assert sorted(p.name for p in folder.iterdir()) == before and not package.exists()
    config = (beat_run / "config.json").read_text()
    assert main(["train", "vocal", "--preset", "tiny", "--workdir", str(beat_run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a run of task 'beat', not 'vocal'" in err[0], err
    assert (beat_run / "config.json").read_text() == config
    # config.json gone: the checkpoint's config says whose run it is, before the data is
    # read (run.json was rewritten to the other task's corpus first)
    copy = tmp_path / "copy"
    shutil.copytree(beat_run, copy)
    (copy / "config.json").unlink()
    run_json = (copy / "run.json").read_text()
    assert main(["train", "music", "--preset", "tiny", "--workdir", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a run of task 'beat', not 'music'" in err[0], err
    assert (copy / "run.json").read_text() == run_json


def test_a_config_json_without_a_section_is_one_line_naming_it():
    """A config.json without its "model" section was a KeyError traceback from eval and train."""
    from jaxmir.config import ConfigError
    from jaxmir.tasks.base import get_task

    task = get_task("drum")
    saved = json.loads(task.preset("tiny").to_json())
    del saved["model"]
    with pytest.raises(ConfigError, match=r"^run/config.json: has no model \("):
        task.config_from_dict(saved, "run/config.json")


@pytest.mark.parametrize("task, lacks", [("vocal", "sung line"), ("drum", "drums")])
def test_features_refuse_a_piano_corpus_for_a_task_whose_labels_it_lacks(
    task, lacks, tmp_path, capsys
):
    """A piano corpus has no sung line and no drums: vocal and drum wrote caches of empty
    labels from it, exit 0, unsaid. (The check reads corpus.json's "instruments" first.)"""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "corpus.json").write_text(json.dumps({"instruments": "piano", "pieces": []}))
    out = tmp_path / "cache"
    argv = ["features", task, "--dataset", "synth", "--root", str(corpus), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a piano corpus" in err[0] and f"has no {lacks}" in err[0], err
    assert not out.exists()


def test_export_into_a_folder_it_cannot_write_names_out(beat_run, tmp_path, capsys, monkeypatch):
    """The error named the staging folder beside --out (`.e.export-emga1iwm`), a name the user
    never gave. (mkdtemp refused by hand: root may write any folder.)"""

    def refused(prefix, dir):
        raise PermissionError(13, "Permission denied", f"{dir}/{prefix}emga1iwm")

    monkeypatch.setattr("jaxmir.shipped.tempfile.mkdtemp", refused)
    out = tmp_path / "ro" / "e"
    assert main(["export", "beat", "--workdir", str(beat_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"jaxmir export: error: {out}: Permission denied"], err


def test_a_config_json_that_is_a_folder_is_named_so(tmp_path, capsys):
    """It was reported as "not found"."""
    run = tmp_path / "run"
    (run / "config.json").mkdir(parents=True)
    for command in ("eval", "calibrate"):
        assert main([command, "beat", "--workdir", str(run), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "config.json: a folder, not a file" in err[0], (command, err)


def test_a_format_no_installed_decoder_reads_is_named_so(tmp_path, monkeypatch):
    """An .m4a with no ffmpeg installed ended in "librosa: NoBackendError()"."""
    import librosa

    from jaxmir.data.audio import AudioError, load_audio

    class NoBackendError(Exception):  # audioread's, when no program can decode the file
        pass

    def load(*args, **kwargs):
        raise NoBackendError()

    monkeypatch.setattr(librosa, "load", load)
    song = tmp_path / "song.m4a"
    song.write_bytes(b"\0\0\0\x20ftypM4A " + bytes(64))
    with pytest.raises(AudioError, match=r"no decoder of this format is installed \(ffmpeg"):
        load_audio(song, 16000)
