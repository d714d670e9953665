"""The music task through the command line: info, train, eval, transcribe (any audio file)."""

import json

import numpy as np
import soundfile as sf

from jaxmir.cli import main


def test_info_music_paper_and_aspp(capsys):
    assert main(["info", "music", "--preset", "paper"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["params"] == 8_333_687
    assert info["input_shape"] == [256, 352, 2] and info["output_shape"] == [256, 352, 23]
    argv = [
        "info",
        "music",
        "--preset",
        "paper",
        "--set",
        "model.name=aspp",
        "--set",
        "model.base=128",
    ]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["params"] == 17_628_183


def test_music_train_eval_transcribe(music_cache, tmp_path, capsys):
    wd = tmp_path / "run"
    argv = [
        "train",
        "music",
        "--preset",
        "tiny",
        "--workdir",
        str(wd),
        "--data",
        str(music_cache),
        "--no-progress",
        "--set",
        "train.epochs=1",
        "--set",
        "train.steps_per_epoch=2",
        "--set",
        "train.batch_size=8",
        "--set",
        "train.val_batch_size=8",
    ]
    assert main(argv) == 0
    assert main(["eval", "music", "--workdir", str(wd)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"note_f1", "note_with_offset_f1", "frame_f1"} <= set(metrics)
    # any rate, stereo, FLAC
    t = np.arange(int(22050 * 1.5)) / 22050
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    song = tmp_path / "song.flac"
    sf.write(song, np.stack([tone, tone], axis=1), 22050)
    out = tmp_path / "out"
    assert main(["transcribe", "music", str(song), "--workdir", str(wd), "-o", str(out)]) == 0
    for name in ("song.mid", "song_notes.csv", "song_pianoroll.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "song_notes.csv").read_text().startswith("onset,offset,pitch")
