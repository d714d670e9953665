"""The music task through the command line: info, train, eval, transcribe (any audio file)."""

import json
from pathlib import Path

import numpy as np
import soundfile as sf

import jaxmir
from jaxmir.cli import main

BEAT_MODEL = Path(jaxmir.__file__).parent / "models" / "beat"


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


def test_eval_on_the_test_pieces_rendered_by_another_soundfont(tmp_path, capsys):
    from sine_soundfont import write_sine_soundfont

    sine = write_sine_soundfont(tmp_path / "sine.sf2")
    wd, folder = tmp_path / "run", tmp_path / "model"
    varied = ["corpus_voices=0.5", "corpus_instruments=both", "corpus_pieces=3"]
    varied += ["corpus_max_seconds=4.0", "corpus_piece_seconds=4.0"]
    varied += [f"corpus_test_soundfont={sine}"]
    argv = ["train", "music", "--preset", "tiny", "--workdir", str(wd), "--no-progress"]
    for key in varied + ["train.epochs=1", "train.steps_per_epoch=1"]:
        argv += ["--set", key if key.startswith("train.") else f"data.{key}"]
    assert main(argv) == 0
    capsys.readouterr()
    # the run's own corpus holds the two splits
    assert main(["eval", "music", "--workdir", str(wd), "--split", "test_sf_piano"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"note_f1", "note_with_offset_f1", "frame_f1"} <= set(result)
    assert result["test_soundfont"]["file"] == "sine.sf2"
    assert json.loads((wd / "eval" / "test_sf_piano.json").read_text()) == result

    # an exported folder does not keep the file's path; --test-soundfont brings the splits back
    assert main(["export", "music", "--workdir", str(wd), "--out", str(folder)]) == 0
    stored = json.loads((folder / "config.json").read_text())
    assert stored["data"]["corpus_test_soundfont"] is None
    exported = json.loads((folder / "model.json").read_text())
    assert exported["test_soundfont"]["file"] == "sine.sf2"  # the scores' provenance
    assert exported["eval_test_sf_piano"]["test_soundfont"]["file"] == "sine.sf2"
    capsys.readouterr()
    argv = ["eval", "music", "--workdir", str(folder), "--split", "test_sf_mixed"]
    assert main(argv) == 2
    assert "test_sf_mixed" in capsys.readouterr().err
    assert main([*argv, "--test-soundfont", str(sine), "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["test_soundfont"]["file"] == "sine.sf2"
    assert json.loads((folder / "model.json").read_text())["eval_test_sf_mixed"] == result

    # a file that is not a soundfont, --data beside it, a model without the varied corpus:
    # one line each, before any model loads
    text = tmp_path / "notes.txt"
    text.write_text("not a soundfont")
    bad = [
        (["music", "--workdir", str(wd), "--test-soundfont", str(text)], "not a SoundFont 2"),
        (["music", "--workdir", str(wd), "--test-soundfont", str(tmp_path / "x.sf2")], "x.sf2"),
        (
            ["music", "--workdir", str(wd), "--data", str(wd), "--test-soundfont", str(sine)],
            "--data",
        ),
        (["beat", "--workdir", str(BEAT_MODEL), "--test-soundfont", str(sine)], "varied corpus"),
    ]
    for args, why in bad:
        assert main(["eval", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and why in err, err


def test_transcribe_writes_over_its_own_outputs_and_never_over_a_users_files(tmp_path, capsys):
    """A dataset's ground truth `piece.mid` beside `piece.wav`, transcribed into its own folder
    (the default), was written over without a word. Now a file of an output's name that no
    earlier transcription wrote stops the command before any model runs."""
    import shutil

    folder = tmp_path / "ds"
    folder.mkdir()
    t = np.arange(22050) / 22050
    sf.write(folder / "piece.wav", 0.3 * np.sin(2 * np.pi * 440 * t), 22050)
    truth = b"MThd ground truth"
    (folder / "piece.mid").write_bytes(truth)
    argv = ["transcribe", "music", str(folder / "piece.wav"), "-o", str(folder), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'piece.mid'}: exists, and is no output of an earlier" in err
    assert (folder / "piece.mid").read_bytes() == truth
    assert sorted(p.name for p in folder.iterdir()) == ["piece.mid", "piece.wav"]
    # elsewhere, and again there: its own outputs are written over
    out = tmp_path / "out"
    assert main([*argv[:3], "-o", str(out), "--no-progress"]) == 0
    assert main([*argv[:3], "-o", str(out), "--no-progress"]) == 0
    assert (out / "piece.mid").read_bytes()[:4] == b"MThd"
    # a folder an earlier version wrote (no record): its whole sets of outputs are its own
    (out / ".jaxmir-transcribed.json").unlink()
    assert main([*argv[:3], "-o", str(out), "--no-progress"]) == 0
    # a run stopped before its record: the outputs it recorded are its own, a set cut
    # short by a kill is not whole and not recorded: named
    (out / "piece_pianoroll.png").unlink()
    (out / ".jaxmir-transcribed.json").unlink()
    capsys.readouterr()
    assert main([*argv[:3], "-o", str(out), "--no-progress"]) == 2
    assert "piece.mid: exists, and is no output" in capsys.readouterr().err
    shutil.rmtree(out)


def test_a_dc_offset_under_the_music_adds_no_notes(tmp_path, capsys):
    """Tones on a large DC offset came out with notes an octave and a twelfth above them: the
    level scaled the offset up with the sound. The shipped model hears the same notes."""
    import csv

    sr = 44100
    t = np.arange(5 * sr) / sr
    tones = np.zeros_like(t)
    for pitch, start in ((60, 0.5), (64, 1.5), (67, 2.5), (72, 3.5)):  # quiet, three partials
        f, on = 440 * 2 ** ((pitch - 69) / 12), (t >= start) & (t < start + 1.0)
        ramp = np.clip(np.minimum(t - start, start + 1.0 - t) / 0.01, 0, 1)
        partials = sum(a * np.sin(2 * np.pi * k * f * t) for k, a in ((1, 1), (2, 0.5), (3, 0.25)))
        tones += on * ramp * 0.03 * partials / 1.75
    songs = tmp_path / "songs"
    songs.mkdir()
    sf.write(songs / "clean.wav", tones, sr, subtype="FLOAT")
    sf.write(songs / "offset.wav", tones + 0.85, sr, subtype="FLOAT")
    out = tmp_path / "out"
    assert main(["transcribe", "music", str(songs), "-o", str(out), "--no-progress"]) == 0

    def pitches(stem):
        with (out / f"{stem}_notes.csv").open() as f:
            return sorted(int(row["pitch"]) for row in csv.DictReader(f))

    assert pitches("offset") == pitches("clean") == [60, 64, 67, 72]
    assert "no notes found" not in capsys.readouterr().err
    # digital silence: an empty result is said
    sf.write(tmp_path / "quiet.wav", np.zeros(sr), sr)
    assert main(["transcribe", "music", str(tmp_path / "quiet.wav"), "-o", str(out)]) == 0
    assert f"{tmp_path / 'quiet.wav'}: no notes found" in capsys.readouterr().err
