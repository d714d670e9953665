"""Bad input through the command line: exit 2, one line naming the file or key and the reason,
no traceback, nothing written. Also: one run per workdir, and a resume without config.json."""

import json
import shutil
import struct

import numpy as np
import pretty_midi
import pytest
import soundfile as sf

from jaxmir.cli import main
from jaxmir.engine.run import WorkdirLock

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


def make_bad_file(kind: str, folder):
    if kind == "empty.wav":
        path = folder / kind
        path.write_bytes(b"")
    elif kind == "text.wav":
        path = folder / kind
        path.write_text("this is not audio\n")
    elif kind == "truncated.wav":
        path = folder / kind
        path.write_bytes(_wav_header(64000) + b"\0" * 100)
    elif kind == "zero-samples.wav":
        path = folder / kind
        path.write_bytes(_wav_header(0))
    elif kind == "nan.wav":
        path = folder / kind
        sf.write(path, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    elif kind == "random.mid":
        path = folder / kind
        path.write_bytes(np.random.default_rng(0).bytes(300))
    elif kind == "corrupt.mid":
        pm = pretty_midi.PrettyMIDI()
        inst = pretty_midi.Instrument(0)
        inst.notes.append(pretty_midi.Note(90, 60, 0.0, 1.0))
        pm.instruments.append(inst)
        good = folder / "good.mid"
        pm.write(str(good))
        path = folder / kind
        path.write_bytes(good.read_bytes()[:30])
    elif kind == "no-notes.mid":
        path = folder / kind
        pretty_midi.PrettyMIDI().write(str(path))
    elif kind == "audio.wav":
        path = folder / kind
        sf.write(path, np.zeros(16000, np.float32), 16000)
    return path


def assert_one_line_exit_2(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for needle in needles:
        assert needle in err[0], (needle, err[0])


@pytest.mark.parametrize(
    "task, kind",
    [
        ("patch_cnn", "empty.wav"),
        ("patch_cnn", "text.wav"),
        ("patch_cnn", "truncated.wav"),
        ("patch_cnn", "zero-samples.wav"),
        ("patch_cnn", "nan.wav"),
        ("beat", "audio.wav"),
        ("beat", "random.mid"),
        ("beat", "corrupt.mid"),
        ("beat", "no-notes.mid"),
    ],
)
def test_bad_input_files(task, kind, request, tmp_path, capsys):
    wd = request.getfixturevalue("beat_run" if task == "beat" else "pcnn_run")
    path = make_bad_file(kind, tmp_path)
    argv = ["transcribe", task, str(path), "--workdir", str(wd), "-o", str(tmp_path / "out")]
    assert_one_line_exit_2(argv, capsys, str(path))


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.batch_size=0", "train.batch_size"),
        ("optim.learning_rate=-1e-3", "optim.learning_rate"),
        ("train.epochs=-1", "train.epochs"),
        ("train.steps_per_epoch=0", "train.steps_per_epoch"),
    ],
)
def test_unusable_config_values(override, key, beat_cache, tmp_path, capsys):
    wd = tmp_path / "run"
    argv = [
        "train",
        "beat",
        "--workdir",
        str(wd),
        "--data",
        str(beat_cache),
        *TINY_BEAT,
        "--set",
        override,
    ]
    assert_one_line_exit_2(argv, capsys, key)
    assert not (wd / "config.json").exists()


def test_unknown_split(beat_run, capsys):
    assert_one_line_exit_2(
        ["eval", "beat", "--workdir", str(beat_run), "--split", "nosuch"], capsys, "nosuch"
    )
    assert not (beat_run / "eval" / "nosuch.json").exists()


def test_a_second_run_on_a_busy_workdir_exits_2_naming_the_holder(beat_run, beat_cache, capsys):
    import os

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
    assert main([*base, "--set", "train.epochs=3"]) == 0  # a schedule key may change
    resumed = json.loads((wd / "config.json").read_text())
    assert resumed["model"] == saved["model"] and resumed["train"]["epochs"] == 3
