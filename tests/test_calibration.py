"""Decoding thresholds chosen at the end of training: stored in the workdir, used by eval and
transcribe, overridden by an explicit `--set decode.*`; and the shipped-model round trip."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf

from jaxmir.cli import main
from jaxmir.tasks.music.decode import OFFSET_TIMES
from jaxmir.tasks.music.task import TIMINGS

# the overrides of the `quality` preset that trained the shipped music ensemble's first member
# (docs/music.md: "The shipped model")
SHIPPED_MUSIC_FIRST_MEMBER = [
    "train.seed=3",
    "data.offset_spread=3.0",
    "decode.offset_time=peak",
]
# what a music calibration chooses (`calibrate_pieces`)
CALIBRATED_KEYS = {
    "onset_threshold",
    "frame_threshold",
    "offset_threshold",
    "onset_delay",
    "onset_time",
    "offset_time",
    "offset_gate",
}


@pytest.fixture(scope="module")
def music_run(music_cache, tmp_path_factory):
    wd = tmp_path_factory.mktemp("calibrated") / "run"
    argv = ["train", "music", "--preset", "tiny", "--workdir", str(wd), "--data", str(music_cache)]
    argv += ["--no-progress", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=2"]
    argv += ["--set", 'train.watch_splits=["train"]']
    argv += ["--set", "train.monitor=val_note_f1_calibrated"]  # as the quality preset
    assert main(argv) == 0
    return wd


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    t = np.arange(int(16000 * 1.2)) / 16000
    path = tmp_path_factory.mktemp("audio") / "song.wav"
    sf.write(path, 0.3 * np.sin(2 * np.pi * 261.63 * t), 16000)
    return path


def _set_thresholds(wd, value: float) -> None:
    path = wd / "decode.json"
    saved = json.loads(path.read_text())
    saved["decode"] = {
        k: value if k.endswith("threshold") else v for k, v in saved["decode"].items()
    }
    path.write_text(json.dumps(saved))


def _n_notes(csv_path) -> int:
    with open(csv_path) as fh:
        return len(list(csv.reader(fh))) - 1


def test_training_stores_calibrated_thresholds(music_run):
    saved = json.loads((music_run / "decode.json").read_text())
    assert set(saved["decode"]) == CALIBRATED_KEYS
    assert saved["decode"]["offset_time"] in OFFSET_TIMES
    timing = (saved["decode"]["onset_time"], saved["decode"]["onset_delay"])
    assert timing in [(t, pytest.approx(d)) for t, d in TIMINGS]
    assert saved["val_pieces"] >= 1
    # coordinate ascent from the configured values (which are on the grids) never loses
    total = {
        k: v["note_f1"] + v["note_with_offset_f1"]
        for k, v in saved.items()
        if k in ("before", "after")
    }
    assert total["after"] >= total["before"] - 1e-9
    assert isinstance(saved["step"], int)


def test_checkpoints_are_ranked_by_their_calibrated_validation_score(music_run):
    rows = [json.loads(line) for line in (music_run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["kind"] == "epoch" and r["split"] == "val"]
    assert val and all("val_note_f1_calibrated" in r for r in val)
    assert all("val_note_with_offset_f1_calibrated" in r for r in val)
    # the calibration after training, on the one (best) checkpoint, is the one logged for it
    saved = json.loads((music_run / "decode.json").read_text())
    assert saved["after"]["note_f1"] == pytest.approx(val[-1]["val_note_f1_calibrated"], abs=1e-6)
    # the watched split is scored with the thresholds as configured, not calibrated on itself
    watched = [r for r in rows if r["kind"] == "epoch" and r["split"] == "train"]
    assert not any(k.endswith("_calibrated") for r in watched for k in r)


def test_calibration_finds_notes_that_the_configured_threshold_misses():
    from jaxmir.config import apply_overrides
    from jaxmir.tasks.base import get_task
    from jaxmir.tasks.music.labels import music_labels
    from jaxmir.tasks.music.task import calibrate_pieces

    cfg = get_task("music").presets()["demo"]
    cfg = apply_overrides(cfg, ["decode.onset_threshold=0.5", "decode.onset_delay=0.0"])
    rng = np.random.default_rng(0)
    pieces = []
    for _ in range(3):
        on = np.sort(rng.uniform(0.0, 8.0, 12))
        notes = np.column_stack([on, on + 0.5, rng.integers(40, 80, 12), np.full(12, 80), 0 * on])
        y = music_labels(notes, 500, "note-offset")
        y[..., 2] *= 0.35  # onsets the model is unsure of: under the configured 0.5
        pieces.append((y, {"notes": notes}))
    result = calibrate_pieces(pieces, cfg)
    assert result["before"]["note_f1"] == 0.0
    assert result["after"]["note_f1"] > 0.95
    assert result["decode"]["onset_threshold"] < 0.35
    assert result["val_pieces"] == 3


def test_eval_uses_the_stored_thresholds_unless_set(music_run, capsys):
    _set_thresholds(music_run, 0.37)
    assert main(["eval", "music", "--workdir", str(music_run)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["decode"]["onset_threshold"] == 0.37
    assert out["decode"]["frame_threshold"] == 0.37
    argv = ["eval", "music", "--workdir", str(music_run), "--set", "decode.onset_threshold=0.9"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["decode"]["onset_threshold"] == 0.9  # the explicit value wins
    assert out["decode"]["frame_threshold"] == 0.37  # the rest stay calibrated


def test_transcribe_uses_the_stored_thresholds_unless_set(music_run, song, tmp_path):
    def notes_with(value: float, *extra: str) -> int:
        _set_thresholds(music_run, value)
        out = tmp_path / f"out-{value}-{len(extra)}"
        argv = ["transcribe", "music", str(song), "--workdir", str(music_run), "-o", str(out)]
        assert main([*argv, *extra]) == 0
        return _n_notes(out / "song_notes.csv")

    # probabilities lie in (0, 1): over 0 everything starts a note, over 1 nothing does
    assert notes_with(0.0) == 88
    assert notes_with(1.0) == 0
    assert notes_with(1.0, "--set", "decode.onset_threshold=0.0") == 88


def test_a_run_exports_as_a_shipped_model(music_run, song, tmp_path):
    from jaxmir.engine.run import make_predict, restore_for_inference
    from jaxmir.shipped import load_model
    from jaxmir.tasks.base import get_task

    task = get_task("music")
    folder = tmp_path / "model"
    # every split's scores that `jaxmir eval` wrote travel with the model (beat: test_unseen),
    # validation's not
    (music_run / "eval").mkdir(exist_ok=True)
    for split in ("test_unseen", "val"):
        (music_run / "eval" / f"{split}.json").write_text(json.dumps({"split": split}))
    argv = ["export", "music", "--workdir", str(music_run), "--out", str(folder)]
    assert main(argv) == 0
    meta = json.loads((folder / "model.json").read_text())
    assert meta["eval_test_unseen"] == {"split": "test_unseen"} and "eval_val" not in meta
    names = {p.name for p in folder.iterdir()}
    assert names >= {"config.json", "variables.msgpack", "model.json", "curves.png"}
    assert (folder / "metrics.jsonl").read_text() == (music_run / "metrics.jsonl").read_text()
    meta = json.loads((folder / "model.json").read_text())
    assert meta["calibration"] == json.loads((music_run / "decode.json").read_text())
    cfg, mesh, state, _ = restore_for_inference(task, music_run)
    cfg2, mesh2, state2 = load_model(task, folder)
    assert cfg2.decode == cfg.decode
    x = np.random.default_rng(0).normal(size=(8, *task.input_spec(cfg).shape)).astype(np.float32)
    np.testing.assert_allclose(
        make_predict(mesh2, state2)(x), make_predict(mesh, state)(x), rtol=1e-5, atol=1e-5
    )
    # `transcribe --workdir` takes the folder as it takes the run, with the same notes (every
    # key starts one; where each ends follows the model's frame posteriors)
    for source in (music_run, folder):
        out = tmp_path / f"out-{source.name}"
        argv = ["transcribe", "music", str(song), "--workdir", str(source), "-o", str(out)]
        argv += ["--set", "decode.onset_threshold=0.0", "--no-progress"]
        assert main(argv) == 0
    run_csv, folder_csv = (tmp_path / f"out-{n}" / "song_notes.csv" for n in ("run", "model"))
    assert _n_notes(folder_csv) == 88
    assert folder_csv.read_text() == run_csv.read_text()


def test_runs_export_as_an_ensemble_that_averages_their_outputs(
    music_run, music_cache, tmp_path, capsys
):
    """`jaxmir export --member RUN` adds another run's best model; the folder then loads as
    one model whose output is the mean of both, with decoding calibrated again and the test
    splits scored for the ensemble. A run of another model config is refused by name, and a
    later export without members leaves no stale member behind."""
    import shutil

    from jaxmir.engine.ensemble import members_of
    from jaxmir.engine.run import make_predict, restore_for_inference
    from jaxmir.shipped import load_model
    from jaxmir.tasks.base import get_task

    task = get_task("music")
    other = tmp_path / "seed1"
    argv = ["train", "music", "--preset", "tiny", "--workdir", str(other), "--data"]
    argv += [str(music_cache), "--no-progress", "--set", "train.epochs=1"]
    argv += ["--set", "train.steps_per_epoch=2", "--set", "train.seed=1"]
    assert main(argv) == 0
    folder = tmp_path / "ensemble"
    argv = ["export", "music", "--workdir", str(music_run), "--out", str(folder), "--no-progress"]
    assert main([*argv, "--member", str(other)]) == 0
    assert (folder / "variables-1.msgpack").is_file()
    meta = json.loads((folder / "model.json").read_text())
    assert [m["run"] for m in meta["members"]] == ["run", "seed1"]
    assert set(meta["calibration"]["decode"]) >= {"onset_threshold", "frame_threshold"}
    assert "eval_test_unseen" not in meta  # the first run's scores are not the ensemble's
    assert 0.0 <= meta["eval_test"]["note_f1"] <= 1.0
    cfg, mesh, state = load_model(task, folder)
    assert members_of(state) == 2
    saved = {k: cfg.decode.__dict__[k] for k in meta["calibration"]["decode"]}
    assert saved == meta["calibration"]["decode"]
    x = np.random.default_rng(0).normal(size=(8, *task.input_spec(cfg).shape)).astype(np.float32)
    outs = []
    for run in (music_run, other):
        _, mesh_k, state_k, _ = restore_for_inference(task, run)
        outs.append(make_predict(mesh_k, state_k)(x))
    np.testing.assert_allclose(
        make_predict(mesh, state)(x), (outs[0] + outs[1]) / 2, rtol=1e-5, atol=1e-5
    )

    odd = tmp_path / "odd"
    shutil.copytree(other, odd)
    stored = json.loads((odd / "config.json").read_text())
    stored["model"]["dropout"] = 0.5
    (odd / "config.json").write_text(json.dumps(stored))
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert main([*argv, "--member", str(odd)]) == 2
    assert f"{odd}: its model config differs" in capsys.readouterr().err
    # a failed export leaves the model already there as it was (it lost its member and
    # weights), and leaves nothing beside it
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    stored["model"]["dropout"] = json.loads((other / "config.json").read_text())["model"]["dropout"]
    stored["data"]["label_mode"] = "frame"  # outputs that mean something else
    (odd / "config.json").write_text(json.dumps(stored))
    assert main([*argv, "--member", str(odd)]) == 2
    assert f"{odd}: its data config differs" in capsys.readouterr().err

    assert main(argv) == 0
    assert not (folder / "variables-1.msgpack").exists()
    assert members_of(load_model(task, folder)[2]) == 1

    # a member may also be an exported model folder: here the first run's, re-exported alone
    both = tmp_path / "from-a-folder"
    argv = ["export", "music", "--workdir", str(other), "--out", str(both), "--no-progress"]
    assert main([*argv, "--member", str(folder)]) == 0
    _, mesh, state = load_model(task, both)
    np.testing.assert_allclose(
        make_predict(mesh, state)(x), (outs[0] + outs[1]) / 2, rtol=1e-5, atol=1e-5
    )
    assert json.loads((both / "model.json").read_text())["members"][1]["run"] == "run"


def test_transcribe_without_a_workdir_uses_the_shipped_model(song, tmp_path):
    from jaxmir.shipped import has_model, model_dir

    assert has_model("music"), f"{model_dir('music')}: the package ships a music model"
    out = tmp_path / "out"
    assert main(["transcribe", "music", str(song), "-o", str(out)]) == 0
    for name in ("song.mid", "song_notes.csv", "song_pianoroll.png"):
        assert (out / name).stat().st_size > 0
    meta = json.loads((model_dir("music") / "model.json").read_text())
    assert meta["task"] == "music" and meta["preset"] == "quality"
    # docs/music.md's recipe re-trains it: an ensemble of the `quality` preset (seed 2) and, first,
    # the same preset with offset triangles (seed 3); the config is the first member's
    from jaxmir.config import apply_overrides
    from jaxmir.tasks.base import get_task

    task = get_task("music")
    shipped = task.config_from_dict(json.loads((model_dir("music") / "config.json").read_text()))
    first = apply_overrides(task.presets()["quality"], SHIPPED_MUSIC_FIRST_MEMBER)
    assert (shipped.model, shipped.data, shipped.train) == (first.model, first.data, first.train)
    assert [m["run"] for m in meta["members"]] == ["music-tri-seed3", "music-q-seed2-on3"]
    assert (model_dir("music") / "variables-1.msgpack").is_file()


def test_a_task_without_a_shipped_model_asks_for_a_workdir(song, tmp_path, capsys):
    assert main(["transcribe", "chord", str(song), "-o", str(tmp_path)]) == 2
    assert "pass --workdir" in capsys.readouterr().err


def test_watched_splits_are_scored_each_epoch_for_their_curves(music_run, music_cache, capsys):
    from jaxmir.engine.report import read_metrics

    rows = [r for r in read_metrics(music_run / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["split"] for r in rows] == ["train", "train", "val"]  # watched, batches, val
    watched = rows[0]
    assert watched["epoch"] == 1 and 0.0 <= watched["train_note_f1"] <= 1.0
    assert "train_note_with_offset_f1" in watched and "val_note_f1" in rows[2]
    assert (music_run / "curves.png").stat().st_size > 1000
    wd = music_run.parent / "no-such-split"
    argv = ["train", "music", "--preset", "tiny", "--workdir", str(wd), "--data", str(music_cache)]
    argv += ["--no-progress", "--set", 'train.watch_splits=["test_heldout"]']
    assert main(argv) == 2
    assert "train.watch_splits" in capsys.readouterr().err
    assert not wd.exists()  # refused before anything is written


def test_beat_training_calibrates_its_decoding(beat_cache, tmp_path, capsys):
    """The beat task chooses its method, thresholds and minimum distance on the validation
    pieces; eval decodes with them, and `--set` still wins."""
    wd = tmp_path / "beat"
    argv = ["train", "beat", "--preset", "tiny", "--workdir", str(wd), "--data", str(beat_cache)]
    assert main([*argv, "--no-progress", "--set", "train.eval_pieces_each_epoch=false"]) == 0
    saved = json.loads((wd / "decode.json").read_text())
    assert set(saved["decode"]) == {
        "method",
        "beat_threshold",
        "min_distance",
        "downbeats",
        "downbeat_threshold",
        "tagger",
        "level_tagger",
        "level_threshold",
    }
    assert saved["decode"]["downbeats"] == "peaks"  # the tiny preset has no tagger
    assert saved["decode"]["level_tagger"] == "" and saved["decode"]["level_threshold"] == 0
    assert saved["decode"]["method"] in ("peaks", "track", "dbn")
    assert saved["after"]["beat_f_measure"] >= saved["before"]["beat_f_measure"] - 1e-9
    capsys.readouterr()
    evaluate = ["eval", "beat", "--workdir", str(wd), "--data", str(beat_cache), "--split", "val"]
    assert main(evaluate) == 0
    decode = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["decode"]
    assert {k: decode[k] for k in saved["decode"]} == saved["decode"]
    assert main([*evaluate, "--set", "decode.method=peaks"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["decode"]["method"] == (
        "peaks"
    )


def test_beat_transcribes_without_a_workdir_with_the_shipped_model(tmp_path, capsys):
    import pretty_midi

    from jaxmir.shipped import has_model, model_dir

    assert has_model("beat"), f"{model_dir('beat')}: the package ships a beat model"
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    piano = pretty_midi.Instrument(0)
    for i in range(48):  # quarter notes at 120 bpm, a bass note on each bar's first beat
        piano.notes.append(pretty_midi.Note(70, 60 + i % 5, 0.5 * i, 0.5 * i + 0.4))
        if i % 4 == 0:
            piano.notes.append(pretty_midi.Note(90, 36, 0.5 * i, 0.5 * i + 1.9))
    pm.instruments.append(piano)
    pm.write(str(tmp_path / "piece.mid"))
    out = tmp_path / "out"
    assert main(["transcribe", "beat", str(tmp_path / "piece.mid"), "-o", str(out)]) == 0
    # the file carries its own meter map (pretty_midi writes a 4/4): the beats are compared
    # with it (tests/test_beat_agreement.py)
    err = capsys.readouterr().err
    assert "piece.mid: against its own meter map (a beat every 0.50 s, 120 per minute)" in err
    beats = np.loadtxt(out / "piece_beats.csv", skiprows=1, ndmin=1)
    assert len(beats) >= 4 and np.all(np.diff(beats) > 0) and beats.max() <= 24.0
    # the shipped model's downbeats come from its tagger: some of the tracked beats
    downbeats = np.loadtxt(out / "piece_downbeats.csv", skiprows=1, ndmin=1)
    assert len(downbeats) >= 1 and set(downbeats) <= set(np.round(beats, 6))
    meta = json.loads((model_dir("beat") / "model.json").read_text())
    assert meta["task"] == "beat" and meta["preset"] == "quality"
    assert meta["calibration"]["decode"]["downbeats"] == "tagger"
    assert (model_dir("beat") / "tagger" / "variables.msgpack").is_file()
    # and its beats are checked for sub-beats by its level tagger
    assert meta["calibration"]["decode"]["level_tagger"] == "level"
    assert meta["calibration"]["decode"]["level_threshold"] > 0
    assert (model_dir("beat") / "level" / "variables.msgpack").is_file()
    # the decoding docs/beat.md gives for it ("Missed beats", "A tempo that drifts")
    stored = json.loads((model_dir("beat") / "config.json").read_text())["decode"]
    assert {k: stored[k] for k in ("method", "beat_threshold", "min_distance")} == {
        "method": "dbn",
        "beat_threshold": 0.3,
        "min_distance": 0.2,
    }
    assert (stored["tagger_threshold"], stored["level_threshold"]) == (0.6, 0.15)
    assert (stored["bar_change"], stored["bar_hold"]) == (0.1, 0.1)  # "Whole bars"
    assert {"eval_test", "eval_test_unseen"} <= set(meta)
    # `jaxmir train beat --preset quality` is the recipe that re-trains it
    # (docs/beat.md: "The shipped beat model")
    from jaxmir.tasks.base import get_task

    task = get_task("beat")
    shipped = task.config_from_dict(json.loads((model_dir("beat") / "config.json").read_text()))
    preset = task.presets()["quality"]
    assert (shipped.model, shipped.data, shipped.train) == (preset.model, preset.data, preset.train)
    # ... where its frame model was trained otherwise (before the preset's meter changes),
    # model.json records how; a folder re-shipped by that recipe records nothing
    trained = meta.get("trained_on")
    if trained is not None:
        changes = trained["frame_model"]["data.corpus_meter_changes"]
        assert changes != preset.data.corpus_meter_changes
    tagger = json.loads((model_dir("beat") / "tagger" / "tagger.json").read_text())
    assert tagger["members"] == preset.model.tagger_members


def test_calibrate_chooses_the_thresholds_again(music_run, music_cache, tmp_path, capsys):
    """`jaxmir calibrate` writes the calibration that training ends with, from the best
    checkpoint (the one its calibrated validation score was logged for; other tests edit the
    run's own decode.json); a folder that is not a run is a usage error naming the file."""
    import shutil

    wd = tmp_path / "copy"
    shutil.copytree(music_run, wd)
    (wd / "decode.json").unlink()
    argv = ["calibrate", "music", "--workdir", str(wd), "--data", str(music_cache)]
    assert main([*argv, "--no-progress"]) == 0
    saved = json.loads((wd / "decode.json").read_text())
    rows = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["kind"] == "epoch" and r["split"] == "val"]
    assert saved["step"] == val[-1]["step"]
    assert saved["after"]["note_f1"] == pytest.approx(val[-1]["val_note_f1_calibrated"], abs=1e-6)
    assert saved["after"]["note_with_offset_f1"] == pytest.approx(
        val[-1]["val_note_with_offset_f1_calibrated"], abs=1e-6
    )
    assert set(saved["decode"]) == CALIBRATED_KEYS
    capsys.readouterr()
    assert main(["calibrate", "music", "--workdir", str(tmp_path / "none")]) == 2
    assert "config.json: no such file" in capsys.readouterr().err


def test_calibrate_chooses_a_model_folders_decoding_again(music_run, music_cache, tmp_path):
    """`jaxmir calibrate --workdir MODEL_FOLDER`: from the folder's stored settings, the
    decoding is chosen again and written to config.json (load_model then decodes with it)
    and model.json, with test scores of that decoding in place of the old ones."""
    from jaxmir.shipped import load_model
    from jaxmir.tasks.base import get_task

    task = get_task("music")
    folder = tmp_path / "model"
    assert main(["export", "music", "--workdir", str(music_run), "--out", str(folder)]) == 0
    stored = json.loads((folder / "config.json").read_text())
    stored["decode"].update(onset_threshold=0.8, onset_delay=0.0, onset_time="first")
    (folder / "config.json").write_text(json.dumps(stored))
    meta = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**meta, "eval_test_old": {"note_f1": 1.0}}))
    argv = ["calibrate", "music", "--workdir", str(folder), "--data", str(music_cache)]
    assert main([*argv, "--no-progress"]) == 0
    meta = json.loads((folder / "model.json").read_text())
    chosen = meta["calibration"]["decode"]
    assert set(chosen) == CALIBRATED_KEYS
    cfg, _mesh, _state = load_model(task, folder)
    assert {k: getattr(cfg.decode, k) for k in chosen} == chosen
    assert "eval_test_old" not in meta and set(meta["eval_test"]) >= {"note_f1", "frame_f1"}
    assert meta["run"] == music_run.name  # provenance stays
    total = {
        k: v["note_f1"] + v["note_with_offset_f1"]
        for k, v in meta["calibration"].items()
        if k in ("before", "after")
    }
    assert total["after"] >= total["before"] - 1e-9


def test_eval_scores_a_model_folder_and_records_its_test_scores(
    music_run, music_cache, tmp_path, capsys, monkeypatch
):
    """`jaxmir eval --workdir MODEL_FOLDER` scores the folder's model with its stored decoding
    (the run's scores: the same model) and, on the cache its scores were made on (model.json
    names it: the run's), writes them over that split's in model.json; on another cache, or
    with --set decode.*, it prints them and records nothing. The package's own model.json is
    never written (it was, as calibrate's refusal said it must not be)."""
    import shutil

    folder = tmp_path / "model"
    assert main(["export", "music", "--workdir", str(music_run), "--out", str(folder)]) == 0
    meta = json.loads((folder / "model.json").read_text())
    assert meta["data"] == str(music_cache.resolve())  # the run's cache (its run.json)
    unrecorded = {**meta, "eval_test": {"note_f1": -1.0}}
    (folder / "model.json").write_text(json.dumps(unrecorded))
    data = ["--data", str(music_cache), "--no-progress"]
    other = tmp_path / "other-cache"  # the same pieces elsewhere: not the scores' cache
    shutil.copytree(music_cache, other)

    def last_json() -> dict:
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    def recorded() -> dict:
        return json.loads((folder / "model.json").read_text())

    assert main(["eval", "music", "--workdir", str(music_run), *data]) == 0
    run_scores = last_json()
    own = ["eval", "music", "--workdir", str(folder)]
    assert main([*own, "--data", str(other), "--no-progress"]) == 0
    printed = last_json()
    assert recorded() == unrecorded  # another cache: printed only
    assert printed["decode"] == run_scores["decode"]
    for key in ("note_f1", "note_with_offset_f1", "frame_f1"):
        assert printed[key] == pytest.approx(run_scores[key], abs=1e-6)
    nothing = ["--set", "decode.onset_threshold=1.0"]  # probabilities never exceed 1
    assert main([*own, *data, *nothing]) == 0
    assert last_json()["decode"]["onset_threshold"] == 1.0
    assert recorded() == unrecorded  # --set: printed only
    assert main([*own, "--no-progress"]) == 0  # no --data: the cache model.json names
    assert last_json() == printed
    assert recorded()["eval_test"] == printed and recorded()["run"] == meta["run"]
    monkeypatch.setattr("jaxmir.shipped.MODELS_DIR", tmp_path)  # as if the package's own
    (folder / "model.json").write_text(json.dumps(unrecorded))
    assert main([*own, "--no-progress"]) == 0
    assert last_json() == printed and recorded() == unrecorded
    monkeypatch.undo()
    argv = ["export", "music", "--workdir", str(music_run), "--out", str(tmp_path / "again")]
    assert main([*argv, "--data", str(other)]) == 2  # --data scores members only
    assert "--member" in capsys.readouterr().err
    assert main([*own, "--step", "2", *data]) == 2
    assert "model folder" in capsys.readouterr().err


def test_key_posteriors_decode_and_calibrate_as_the_bins_do():
    """Calibration keeps each piece's per-key means (a quarter of the memory): the same notes
    and the same chosen thresholds as from all 352 bins, and omnizart's decoder refuses them."""
    from jaxmir.tasks.base import get_task
    from jaxmir.tasks.music.decode import decode_notes, key_posteriors
    from jaxmir.tasks.music.labels import music_labels
    from jaxmir.tasks.music.task import calibrate_pieces

    cfg = get_task("music").presets()["demo"]
    rng = np.random.default_rng(3)
    pieces = []
    for _ in range(2):
        on = np.sort(rng.uniform(0.0, 8.0, 16))
        notes = np.column_stack([on, on + rng.uniform(0.1, 1.0, 16), rng.integers(30, 90, 16)])
        notes = np.column_stack([notes, np.full(16, 80), 0 * on])
        y = music_labels(notes, 500, "note-offset")
        noisy = np.clip(y * rng.uniform(0.3, 1.0, y.shape) + rng.uniform(0, 0.3, y.shape), 0, 1)
        pieces.append((noisy.astype(np.float32), {"notes": notes}))
    probs = pieces[0][0]
    keys = key_posteriors(probs)
    assert keys.shape == (500, 88, 4) and keys.dtype == np.float32
    th = dict(onset_threshold=0.5, frame_threshold=0.6, offset_threshold=0.7, min_gap=5)
    a = decode_notes(probs, "note-offset", method="simple", **th)
    b = decode_notes(keys, "note-offset", method="simple", **th)
    assert len(a) > 0
    np.testing.assert_allclose(a, b)
    per_key = [(key_posteriors(p), labels) for p, labels in pieces]
    assert calibrate_pieces(per_key, cfg) == calibrate_pieces(pieces, cfg)
    with pytest.raises(ValueError, match="352 bins"):
        decode_notes(keys, "note-offset", method="omnizart")


def test_calibration_starts_notes_at_onset_peaks_when_the_attacks_vary():
    """Onset posteriors that peak 30 ms after each onset but rise over 60-400 ms, to heights
    of 0.75-1.0: the first frame over a threshold the heights allow (0.6 or less) leads the
    peak by 5 to 160 ms, more than one delay can take back within the 50-ms tolerance; the
    peak is always 30 ms late."""
    from jaxmir.config import apply_overrides
    from jaxmir.tasks.base import get_task
    from jaxmir.tasks.music.labels import music_labels
    from jaxmir.tasks.music.task import calibrate_pieces

    cfg = get_task("music").presets()["demo"]
    assert cfg.decode.onset_time == "first"
    cfg = apply_overrides(cfg, ["decode.onset_threshold=0.5", "decode.onset_delay=0.0"])
    rng = np.random.default_rng(1)
    frames = np.arange(600)
    pieces = []
    for _ in range(3):
        on = np.arange(1.0, 11.0)
        notes = np.column_stack([on, on + 0.5, rng.integers(40, 80, 10), np.full(10, 80), 0 * on])
        y = music_labels(notes, len(frames), "note-offset")
        y[..., 2] = 0.0  # the onsets' sharp labels give way to the bumps
        for start, _, pitch, _, _ in notes:
            top, width = start * 50 + 1.5, rng.uniform(3.0, 20.0)  # frames
            bump = rng.uniform(0.75, 1.0) * np.clip(1 - np.abs(frames - top) / width, 0, None)
            k = (int(pitch) - 21) * 4
            y[:, k : k + 4, 2] = np.maximum(y[:, k : k + 4, 2], bump[:, None])
        pieces.append((y, {"notes": notes}))
    result = calibrate_pieces(pieces, cfg)
    assert result["decode"]["onset_time"] == "peak"
    assert -0.05 <= result["decode"]["onset_delay"] <= 0.0
    assert result["after"]["note_f1"] == 1.0 > result["before"]["note_f1"] + 0.1


def test_calibration_chooses_where_notes_end_in_their_offset_runs():
    """Soft offset triangles (half-width 8 frames) of heights 0.35-1.0 peaking at each note's
    end, on 0.3-s notes whose frames sound on 0.3 s past it (so only the offset channel ends
    them): a threshold low enough for the weakest triangle is crossed by the strongest 5.6
    frames early, beyond the 50-ms tolerance, so the first frame over it loses offsets that
    the run's peak keeps. Two-frame binary offsets are found by either rule, and the
    configured one stays."""
    from jaxmir.config import apply_overrides
    from jaxmir.tasks.base import get_task
    from jaxmir.tasks.music.labels import music_labels
    from jaxmir.tasks.music.task import calibrate_pieces

    cfg = get_task("music").presets()["quality"]
    assert cfg.decode.offset_time == "first"
    rng = np.random.default_rng(2)

    def pieces(spread: float) -> list:
        out = []
        for _ in range(3):
            on = np.arange(1.0, 11.0)
            pitch = rng.integers(40, 80, len(on))
            notes = np.column_stack([on, on + 0.3, pitch, np.full(len(on), 80), 0 * on])
            y = music_labels(notes, 600, "note-offset", offset_spread=spread)
            for start, end, p, _, _ in notes:
                k = (int(p) - 21) * 4
                key = y[int(round(start * 50)) : int(round(end * 50)) + 15, k : k + 4]  # a view
                key[..., 3] *= rng.uniform(0.35, 1.0)
                key[..., 1] = np.maximum(key[..., 1], 1.0 - key[..., 2])
            out.append((y, {"notes": notes}))
        return out

    soft = calibrate_pieces(pieces(8.0), cfg)
    assert soft["decode"]["offset_time"] == "peak"
    assert soft["after"]["note_with_offset_f1"] == 1.0
    first = apply_overrides(cfg, [f"decode.{k}={json.dumps(v)}" for k, v in soft["decode"].items()])
    first = apply_overrides(first, ["decode.offset_time=first", "decode.calibrate=false"])
    ends = calibrate_pieces(pieces(8.0), first)  # the thresholds chosen, the old rule kept
    assert ends["before"]["note_with_offset_f1"] < 0.9
    assert calibrate_pieces(pieces(0.0), cfg)["decode"]["offset_time"] == "first"


def test_calibration_gates_offsets_that_rise_inside_sounding_notes():
    """Posteriors whose offset channel bumps (0.6) inside each sounding note and marks the true
    end faintly (0.25), with a frame tail no frame threshold cuts: no offset threshold ends
    the notes right without the gate (too low: cut at the bump; too high: 0.3 s late), so
    calibration gates them, and ends every note right."""
    from test_music_labels import gated_offset_posteriors

    from jaxmir.tasks.base import get_task
    from jaxmir.tasks.music.decode import decode_notes
    from jaxmir.tasks.music.metrics import note_f1_scores
    from jaxmir.tasks.music.task import GATE_GRID, calibrate_pieces

    cfg = get_task("music").presets()["quality"]
    rng = np.random.default_rng(3)
    pieces = [gated_offset_posteriors(8, rng) for _ in range(3)]
    result = calibrate_pieces([(y, {"notes": notes}) for y, notes in pieces], cfg)
    chosen = result["decode"]
    assert chosen["offset_gate"] in GATE_GRID and 1.0 < chosen["offset_gate"] < 1.4
    assert result["after"]["note_with_offset_f1"] == 1.0
    ungated = {**chosen, "offset_gate": None, "min_gap": 5}
    for y, notes in pieces:
        est = decode_notes(y, "note-offset", method="simple", **ungated)
        assert note_f1_scores(notes, est)["note_with_offset_f1"] == 0.0


def test_ensemble_members_must_share_the_label_mode_not_the_corpus():
    from jaxmir.shipped import _label_fields
    from jaxmir.tasks.music.task import TASK as MUSIC

    data = MUSIC.preset("quality").data
    other_corpus = dataclasses.replace(data, offset_spread=data.offset_spread + 1, corpus_seed=7)
    assert _label_fields(other_corpus) == _label_fields(data) == {"label_mode": data.label_mode}
    assert _label_fields(dataclasses.replace(data, label_mode="frame")) != _label_fields(data)


def test_a_run_scored_on_another_cache_says_so_and_export_leaves_it_out(
    music_run, music_cache, tmp_path, capsys
):
    """`jaxmir eval --workdir RUN --data OTHER` names OTHER in eval/SPLIT@OTHER-DIGEST.json;
    `jaxmir export` leaves that score out of model.json, which keeps only scores of the run's
    own data."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(music_run, run)
    other = tmp_path / "other-cache"
    shutil.copytree(music_cache, other)
    own = ["eval", "music", "--workdir", str(run), "--no-progress"]

    def exported(name: str) -> dict:
        folder = tmp_path / name
        assert main(["export", "music", "--workdir", str(run), "--out", str(folder)]) == 0
        return json.loads((folder / "model.json").read_text())

    assert main([*own, "--data", str(music_cache)]) == 0  # the run's own cache, named or not
    assert "data" not in json.loads((run / "eval" / "test.json").read_text())
    assert "eval_test" in exported("model")
    own_score = (run / "eval" / "test.json").read_text()
    assert main([*own, "--data", str(other)]) == 0
    # written beside the run's own score, which it replaced (export then had no test score)
    assert (run / "eval" / "test.json").read_text() == own_score
    (elsewhere,) = (run / "eval").glob("test@other-cache-*.json")
    assert json.loads(elsewhere.read_text())["data"] == str(other.resolve())
    capsys.readouterr()
    assert "eval_test" in exported("model-after")
    assert f"{elsewhere}: scored on {other.resolve()}" in capsys.readouterr().err
