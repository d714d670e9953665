"""The `jaxmir` command's contract: info, exit codes, features, eval and transcribe."""

import io
import json
import os
import re
import sys

import numpy as np
import pretty_midi
import pytest

from jaxmir.cli import main
from jaxmir.config import ConfigError


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_info_beat_paper_param_count(capsys):
    assert main(["info", "beat", "--preset", "paper"]) == 0
    info = last_json(capsys)
    assert info["params"] == 100_058_356
    assert info["input_shape"] == [1000, 178]
    assert info["output_shape"] == [1000, 2]
    assert {"task", "preset", "model", "params", "input_shape", "output_shape"} <= set(info)


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["info", "nosuchtask"], "unknown task"),
        (["info", "beat", "--preset", "huge"], "unknown preset"),
        (["info", "beat", "--set", "model.nosuch=1"], "model.nosuch"),
        (["info", "beat", "--set", "model.hidden=abc"], "model.hidden"),
        (["info", "beat", "--set", "train.epochs=1.5"], "train.epochs"),
    ],
)
def test_usage_errors_exit_2_with_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def write_meterless_midi(path):
    """pretty_midi always writes a 4/4 event; write a file without one through mido."""
    import mido

    mid = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000, time=0)])
    for _ in range(8):
        track += [
            mido.Message("note_on", note=60, velocity=90, time=0),
            mido.Message("note_off", note=60, velocity=0, time=480),
        ]
    mid.tracks.append(track)
    mid.save(str(path))


def write_midi(path, meter=(4, 4), seconds=8.0, bpm=100.0):
    pm = pretty_midi.PrettyMIDI(initial_tempo=bpm)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(*meter, 0.0))
    inst = pretty_midi.Instrument(program=0)
    period = 60.0 / bpm
    for i, t in enumerate(np.arange(0, seconds, period)):
        for p in (48, 60, 64) if i % meter[0] == 0 else (62,):
            inst.notes.append(pretty_midi.Note(90, p, t, t + period * 0.9))
    pm.instruments.append(inst)
    pm.write(str(path))


def test_features_midi_skips_and_names_bad_files(tmp_path, capsys):
    root = tmp_path / "midis"
    root.mkdir()
    for i in range(3):
        write_midi(root / f"good{i}.mid", bpm=90 + 10 * i)
    (root / "broken.mid").write_bytes(b"MThd\x00\x00garbage" + bytes(range(50)))
    write_meterless_midi(root / "nometer.mid")
    out = tmp_path / "cache"
    argv = ["features", "beat", "--dataset", "midi", "--root", str(root), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 1  # some skipped (as transcribe)
    captured = capsys.readouterr()
    assert "broken.mid" in captured.err and "nometer.mid" in captured.err
    assert "features:" not in captured.err  # no bar
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(p["name"] for p in manifest["pieces"]) == ["good0", "good1", "good2"]
    assert len(manifest["failures"]) == 2
    # a re-run skips what is cached; -j beyond the CPUs runs one worker per CPU, and says so
    assert main([*argv, "-j", "512"]) == 1  # the two still unreadable
    captured = capsys.readouterr()
    assert "0 pieces written, 3 already cached, 2 failed" in captured.out
    assert f"-j 512: this machine has {os.cpu_count()} CPUs" in captured.err


def test_worker_count_is_capped_at_the_cpus():
    from jaxmir.usage import UsageError, worker_count

    assert worker_count(2, cpus=4) == (2, None)
    assert worker_count(64, cpus=4) == (4, "-j 64: this machine has 4 CPUs, so 4 workers run")
    with pytest.raises(UsageError):
        worker_count(0, cpus=4)


def test_features_empty_folder_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = [
        "features",
        "beat",
        "--dataset",
        "midi",
        "--root",
        str(tmp_path / "empty"),
        "--out",
        str(tmp_path / "c"),
    ]
    assert main(argv) == 2
    assert "empty" in capsys.readouterr().err


def test_train_eval_transcribe(beat_cache, tmp_path, capsys):
    wd = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "beat",
                "--preset",
                "tiny",
                "--workdir",
                str(wd),
                "--data",
                str(beat_cache),
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["eval", "beat", "--workdir", str(wd), "--split", "test"]) == 0
    metrics = last_json(capsys)
    assert {"beat_f_measure", "downbeat_f_measure", "beat_cmlt", "beat_amlt"} <= set(metrics)
    assert main(["eval", "beat", "--workdir", str(wd), "--split", "test", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1]) == metrics and "Evaluate test" not in err
    assert json.loads((wd / "eval" / "test.json").read_text()) == metrics
    song = tmp_path / "song.mid"
    write_midi(song)
    out = tmp_path / "out"
    assert main(["transcribe", "beat", str(song), "--workdir", str(wd), "-o", str(out)]) == 0
    assert (out / "song_beats.mid").is_file()
    assert (out / "song_beats.csv").read_text().startswith("time")
    assert (out / "song_downbeats.csv").is_file()


def test_tempo_bounds_are_for_decoding_not_for_training(beat_cache, tmp_path, capsys):
    argv = ["train", "beat", "--preset", "tiny", "--workdir", str(tmp_path / "run")]
    argv += ["--data", str(beat_cache), "--set", "decode.max_bpm=100", "--no-progress"]
    assert main(argv) == 2
    assert "decode.min_bpm, decode.max_bpm: bounds for decoding a piece" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_sigterm_saves_and_the_same_command_resumes(beat_cache, tmp_path):
    """A real process gets SIGTERM mid-epoch: it saves, exits 75 (resume me), and the rerun
    finishes."""
    import subprocess
    import sys

    wd = tmp_path / "run"
    base = [
        sys.executable,
        "-m",
        "jaxmir",  # the console path: re-executes itself with the malloc tuning (same PID)
        "train",
        "beat",
        "--preset",
        "tiny",
        "--workdir",
        str(wd),
        "--data",
        str(beat_cache),
        "--no-progress",
        "--set",
        "train.eval_pieces_each_epoch=false",
    ]
    first = subprocess.run(
        [*base, "--set", "train.interrupt_at_step=5"], capture_output=True, text=True, timeout=300
    )
    assert first.returncode == 75, first.stderr
    assert "Interrupted; checkpoint saved" in first.stdout
    assert (wd / "checkpoints" / "5").is_dir()
    second = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "Resuming" in second.stdout and "from step 5" in second.stdout
    assert (wd / "checkpoints" / "8").is_dir()


def test_train_help_names_every_task_and_preset():
    from jaxmir.cli import TASKS_HELP, _parser
    from jaxmir.tasks.base import TASK_MODULES, get_task

    assert set(TASKS_HELP.split(" | ")) == set(TASK_MODULES)
    train = _parser()._subparsers._group_actions[0].choices["train"]
    preset_help = next(a.help for a in train._actions if a.dest == "preset")
    for name in TASK_MODULES:
        for preset in get_task(name).presets():
            assert preset in preset_help, (name, preset)


def test_help_gives_the_exit_status_and_an_unknown_key_the_known_ones(capsys):
    """The exit codes were in the module's docstring alone; `--set decode.nope=1` said
    "unknown config key" without the keys there are (drum's decode has one)."""
    from jaxmir.cli import EXIT_INTERRUPTED, EXIT_STATUS, main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert EXIT_STATUS.strip() in out
    codes = [line.split()[0] for line in EXIT_STATUS.splitlines() if line[:3].strip().isdigit()]
    assert codes == ["0", "1", "2", str(EXIT_INTERRUPTED), "130"]
    assert main(["info", "drum", "--preset", "tiny", "--set", "decode.nope=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("unknown config key decode.nope (decode has: threshold)"), err
    assert main(["info", "drum", "--preset", "tiny", "--set", "nope.x=1"]) == 2
    assert "(sections: model, data, decode, train, optim)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.base=12", "attention heads"),
        ('model.channels=["Foo"]', "model.channels"),
    ],
)
def test_a_model_config_error_stops_training_before_anything_is_written(
    override, needle, tmp_path, capsys
):
    wd = tmp_path / "run"
    argv = ["train", "music", "--preset", "tiny", "--workdir", str(wd), "--set", override]
    assert main([*argv, "--no-progress"]) == 2
    assert needle in capsys.readouterr().err
    assert not wd.exists()
    assert main(["info", "music", "--preset", "quality", "--set", override]) == 2


def test_sigterm_during_start_up_exits_75_and_gives_the_handler_back(
    beat_cache, tmp_path, monkeypatch, capsys
):
    """A SIGTERM before the training loop's own handler (reading data, restoring) killed the
    process with 143, which a re-queueing launcher script takes for a failure (and in a
    multi-process job jax's notifier swallowed it: the run went on). Now `train` exits 75."""
    import signal

    import jaxmir.engine.run

    def start_up(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # a pre-emption notice while the run starts
        raise AssertionError("SIGTERM did not stop the start-up")

    monkeypatch.setattr(jaxmir.engine.run, "train", start_up)
    before = signal.getsignal(signal.SIGTERM)
    argv = ["train", "beat", "--preset", "tiny", "--workdir", str(tmp_path / "run")]
    assert main([*argv, "--data", str(beat_cache), "--no-progress"]) == 75
    assert "stopped by SIGTERM outside the training steps" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_while_restoring_moves_no_checkpoint_aside(beat_cache, tmp_path, monkeypatch):
    """The restore skips a step that does not read back (moved aside as corrupt); a SIGTERM
    inside it was taken for such a step: the newest good checkpoint moved aside, exit 0."""
    import signal

    from jaxmir.engine.checkpoint import Checkpointer

    wd = tmp_path / "run"
    argv = ["train", "beat", "--preset", "tiny", "--workdir", str(wd), "--data", str(beat_cache)]
    argv += ["--no-progress", "--set", "train.eval_pieces_each_epoch=false"]
    assert main([*argv, "--set", "train.epochs=1"]) == 0
    read = Checkpointer.restore

    def restore(self, *args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return read(self, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "restore", restore)
    assert main([*argv, "--set", "train.epochs=2"]) == 75
    assert not (wd / "corrupt-checkpoints").exists()


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_become_the_loops_stop_flag(name):
    """Both signals stop training at the next step (the loop polls this flag); the handlers
    before are put back afterwards."""
    import os
    import signal

    from jaxmir.engine.loop import StopSignal

    sig = getattr(signal, name)
    before = signal.getsignal(sig)
    with StopSignal() as stop:
        assert stop.poll() is None
        os.kill(os.getpid(), sig)
        assert stop.poll() == name
    assert signal.getsignal(sig) == before


def test_default_workdir_and_cache(monkeypatch, tmp_path):
    from jaxmir.engine.run import cache_root, default_workdir
    from jaxmir.tasks.base import get_task

    wd = default_workdir(get_task("beat").preset("demo"))
    assert wd.parent.as_posix() == "runs" and wd.name.startswith("beat-demo-")
    monkeypatch.setenv("JAXMIR_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("JAXMIR_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "jaxmir"


def test_a_missing_input_among_several_is_skipped_and_named(tmp_path, capsys):
    """Of several inputs, one that does not exist is skipped with its reason, the others are
    transcribed, exit 1; none existing: exit 2 before any model loads, nothing written; a
    single missing input stays exit 2 (the shipped beat model: no training)."""
    song = tmp_path / "song.mid"
    write_midi(song, seconds=4.0)
    out = tmp_path / "out"
    argv = ["transcribe", "beat", str(song), str(tmp_path / "missing.mid"), "-o", str(out)]
    assert main([*argv, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "skipped" in err and "missing.mid: no such file" in err
    assert "1 of 2 inputs could not be read" in err
    assert (out / "song_beats.csv").is_file()
    nothing = tmp_path / "nothing"
    argv = ["transcribe", "beat", str(tmp_path / "a.mid"), str(tmp_path / "b.mid")]
    assert main([*argv, "-o", str(nothing), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "a.mid: no such file" in err and "b.mid: no such file" in err
    assert "2 of 2 inputs could not be read" in err and not nothing.exists()
    argv = ["transcribe", "beat", str(tmp_path / "a.mid"), "-o", str(nothing), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a.mid: no such file" in err[0]
    # a missing input given twice (once by another spelling) is one input, named once
    twice = [str(song), str(tmp_path / "a.mid"), str(tmp_path / "x" / ".." / "a.mid")]
    assert main(["transcribe", "beat", *twice, "-o", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("no such file") == 1 and "1 of 2 inputs could not be read" in err


def test_features_names_the_cached_pieces_its_root_no_longer_has(tmp_path, capsys):
    """A root re-made with fewer pieces: "0 written, 1 already cached", and training went on
    reading the pieces the root no longer had, unsaid."""
    root, out = tmp_path / "midi", tmp_path / "cache"
    root.mkdir()
    for name in ("a", "b"):
        write_midi(root / f"{name}.mid", seconds=4.0)
    argv = ["features", "beat", "--dataset", "midi", "--root", str(root), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    assert "not under" not in capsys.readouterr().err
    (root / "b.mid").unlink()
    assert main([*argv, "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"1 pieces of {out} are not under {root} (the first: b)" in err, err


def test_written_paths_are_lines_of_their_own_beside_the_progress_bar(tmp_path, monkeypatch):
    """stdout and stderr on one terminal: each written path was printed onto the bar's line."""
    songs = [tmp_path / f"song{i}.mid" for i in range(3)]
    for song in songs:
        write_midi(song, seconds=4.0)
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["transcribe", "beat", *map(str, songs), "-o", str(tmp_path / "out")]) == 0
    pieces = re.split(r"[\r\n]", terminal.getvalue())
    assert "Transcribe" in terminal.getvalue()
    for song in songs:
        for name in (f"{song.stem}_beats.mid", f"{song.stem}_beats.csv"):
            assert str(tmp_path / "out" / name) in pieces, name


@pytest.mark.parametrize("task", ["music", "beat"])
def test_eval_refuses_a_split_the_embedded_corpus_cannot_hold_before_building_it(
    task, tmp_path, monkeypatch, capsys
):
    """A mistyped split of the shipped model's embedded corpus fails at once, naming the
    splits there are, with nothing rendered (it used to render and featurise the whole
    corpus first: minutes and gigabytes)."""
    from jaxmir.shipped import model_dir

    monkeypatch.setenv("JAXMIR_CACHE", str(tmp_path / "cache"))
    folder = model_dir(task)
    meta = (folder / "model.json").read_text()
    assert main(["eval", task, "--workdir", str(folder), "--split", "tets"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'tets'" in err[0] and "test" in err[0], err
    assert "--test-soundfont" not in err[0]
    if task == "music":  # a soundfont split without its soundfont: the flag that renders it
        assert main(["eval", task, "--workdir", str(folder), "--split", "test_sf_piano"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--test-soundfont FILE.sf2" in err[0], err
    assert not (tmp_path / "cache").exists()
    assert (folder / "model.json").read_text() == meta


def test_beat_output_never_overwrites_its_input(tmp_path, capsys):
    """Transcribed into its own folder (the default `-o` is the current one), the input MIDI
    file is left as it was: the beats' MIDI is `STEM_beats.mid`, and the meter line still
    reads the user's file."""
    song = tmp_path / "song.mid"
    write_midi(song, seconds=4.0)
    before = song.read_bytes()
    assert main(["transcribe", "beat", str(song), "-o", str(tmp_path), "--no-progress"]) == 0
    assert song.read_bytes() == before
    names = {"song_beats.mid", "song_beats.csv", "song_downbeats.csv"}
    assert names <= {p.name for p in tmp_path.iterdir()}
    assert "song.mid: against its own meter map" in capsys.readouterr().err


def test_batch_sizes_out_of_range_and_out_of_memory_are_one_line(tmp_path, monkeypatch, capsys):
    """`--batch-size` above the limit is refused before any model loads; memory running out
    during transcription (numpy's or XLA's) is one line naming the batch size, not a
    traceback (100,000 music windows asked numpy for 50 GiB)."""
    import jaxmir.engine.run as run

    song = tmp_path / "song.mid"
    write_midi(song, seconds=4.0)
    argv = ["transcribe", "beat", str(song), "-o", str(tmp_path / "out"), "--no-progress"]
    assert main([*argv, "--batch-size", "100000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--batch-size: 1 to 1024, got 100000" in err[0]

    def starved(mesh, state, fn=None):
        def predict(windows):
            raise MemoryError("Unable to allocate 50.4 GiB for an array")

        return predict

    monkeypatch.setattr(run, "make_predict", starved)
    assert main([*argv, "--batch-size", "512"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of memory (Unable to allocate 50.4 GiB" in err[0], err
    assert "a smaller --batch-size than 512 needs less" in err[0]


def test_beats_written_earlier_are_not_read_again_and_a_users_file_is_never_written_over(
    tmp_path, capsys
):
    """Transcribing a folder into itself twice: the second run leaves out the first run's
    `STEM_beats.mid` (named; no `STEM_beats_beats.*` pile up) and exits 0. A user's own file
    of that name is refused before anything is written, and kept as it was."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_midi(folder / "song.mid", seconds=4.0)
    argv = ["transcribe", "beat", str(folder), "-o", str(folder), "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    assert "song_beats.mid: written by an earlier transcription of" in capsys.readouterr().err
    assert not list(folder.glob("*_beats_beats*"))
    mine = tmp_path / "mine"
    mine.mkdir()
    write_midi(mine / "song.mid", seconds=4.0)
    write_midi(mine / "song_beats.mid", seconds=2.0, bpm=60.0)
    before = (mine / "song_beats.mid").read_bytes()
    assert main(["transcribe", "beat", str(mine), "-o", str(mine), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "song_beats.mid: transcribing" in err[0] and "write over it" in err[0]
    assert (mine / "song_beats.mid").read_bytes() == before
    assert not (mine / "song_beats.csv").exists()


def test_a_finished_run_is_not_calibrated_again_and_a_stop_while_calibrating_is_resumable(
    beat_cache, tmp_path, capsys
):
    """The same train command on a finished run trains nothing and keeps its decode.json; a
    stop signal during the end-of-training calibration (it used to kill the process: no
    message, no decode.json) is raised at the next model call with nothing written, and the
    same train command then calibrates."""
    import jaxmir.engine.run as run
    from jaxmir.engine.loop import Interrupted, StopSignal
    from jaxmir.tasks.base import get_task

    wd = tmp_path / "run"
    argv = ["train", "beat", "--preset", "tiny", "--workdir", str(wd), "--data", str(beat_cache)]
    assert main([*argv, "--no-progress"]) == 0
    decode = wd / run.DECODE_FILE
    assert decode.is_file()
    first = decode.read_text()
    capsys.readouterr()
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Nothing left to train" in out
    assert "epochs trained (step" in out and "Resuming" not in out  # not "epoch 3" of 2
    assert decode.read_text() == first
    decode.unlink()
    stop = StopSignal()
    stop.requested = "SIGTERM"
    with pytest.raises(Interrupted):
        run.calibrate_decoding(
            get_task("beat"), wd, run.resolve_data(get_task("beat"), None, beat_cache), stop=stop
        )
    assert not decode.exists()
    assert main([*argv, "--no-progress"]) == 0
    assert decode.is_file()


def test_export_keeps_only_this_models_scores_and_never_writes_over_other_files(
    beat_cache, tmp_path, capsys
):
    """model.json carries a split's score only where `jaxmir eval` scored the exported model as
    it decodes (a `--set decode.*` score stored 0.0 with a threshold the folder does not use);
    `--out` may not be the run itself nor a folder of other files."""
    wd = tmp_path / "run"
    argv = ["train", "beat", "--preset", "tiny", "--workdir", str(wd), "--data", str(beat_cache)]
    assert main([*argv, "--no-progress"]) == 0
    assert main(["eval", "beat", "--workdir", str(wd), "--split", "test", "--no-progress"]) == 0
    out = tmp_path / "model"
    assert main(["export", "beat", "--workdir", str(wd), "--out", str(out), "--no-progress"]) == 0
    assert "eval_test" in json.loads((out / "model.json").read_text())
    odd = ["--set", "decode.beat_threshold=0.95", "--no-progress"]
    assert main(["eval", "beat", "--workdir", str(wd), "--split", "test", *odd]) == 0
    capsys.readouterr()
    assert main(["export", "beat", "--workdir", str(wd), "--out", str(out), "--no-progress"]) == 0
    assert "eval_test" not in json.loads((out / "model.json").read_text())
    assert (
        "test.json: scored with other decoding than the exported model" in capsys.readouterr().out
    )
    for bad, words in ((wd, "the run's own workdir"), (tmp_path, "holds files and is no model")):
        assert main(["export", "beat", "--workdir", str(wd), "--out", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


def test_a_run_resumed_on_other_data_is_refused(beat_cache, tmp_path, capsys):
    """Resuming with `--data` of another cache than the run began on used to train on it
    silently (and rewrite run.json); it is refused in one line, run.json as it was."""
    import shutil

    wd = tmp_path / "run"
    argv = ["train", "beat", "--preset", "tiny", "--workdir", str(wd), "--no-progress"]
    assert main([*argv, "--data", str(beat_cache)]) == 0
    record = (wd / "run.json").read_text()
    other = tmp_path / "other"
    shutil.copytree(beat_cache, other)
    more = ["--set", "train.epochs=3"]
    assert main([*argv, "--data", str(other), *more]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the run began on" in err[0] and "train in a new workdir" in err[0]
    assert (wd / "run.json").read_text() == record
    assert main([*argv, "--data", str(beat_cache), *more]) == 0  # its own: resumed


def test_a_decode_setting_given_to_train_and_replaced_by_calibration_is_named(
    beat_cache, tmp_path, capsys
):
    """`train --set decode.beat_threshold=0.45`: calibration chooses its own, which eval and
    transcribe then use; the command says so (it was replaced without a word)."""
    wd = tmp_path / "run"
    argv = ["train", "beat", "--preset", "tiny", "--workdir", str(wd), "--data", str(beat_cache)]
    assert main([*argv, "--no-progress", "--set", "decode.beat_threshold=0.45"]) == 0
    chosen = json.loads((wd / "decode.json").read_text())["decode"]["beat_threshold"]
    assert chosen != 0.45  # not on calibration's grid
    err = capsys.readouterr().err
    assert f"decode.beat_threshold=0.45 was given to train, and calibration chose {chosen}" in err


def test_a_cache_without_validation_pieces_is_refused_before_the_workdir_is_written(
    beat_cache, tmp_path, capsys
):
    """Training reads the train and val splits: a cache lacking one used to fail after the
    first epoch, with config.json and checkpoints/ written; now one line and nothing written."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(beat_cache, cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    for piece in manifest["pieces"]:
        piece["split"] = "train" if piece["split"] == "val" else piece["split"]
    (cache / "manifest.json").write_text(json.dumps(manifest))
    wd = tmp_path / "run"
    argv = ["train", "beat", "--preset", "tiny", "--workdir", str(wd), "--data", str(cache)]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no pieces in split(s) ['val'], which training reads" in err[0], err
    assert not wd.exists()
    # the Python API checks first too (it made the workdir, then failed)
    from jaxmir.engine.run import train
    from jaxmir.tasks.base import get_task

    task = get_task("beat")
    with pytest.raises(ConfigError, match=r"no pieces in split\(s\) \['val'\]"):
        train(task, task.preset("tiny"), wd, cache, progress=False)
    assert not wd.exists()
    # the pieces that failed may be the missing ones: the line names the first
    manifest["failures"] = [{"path": "/x/val-piece.mid", "reason": "truncated file"}]
    (cache / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="1 of its pieces failed, the first: /x/val-piece.mid"):
        train(task, task.preset("tiny"), wd, cache, progress=False)
