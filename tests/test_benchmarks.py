"""Smoke test of the benchmark harness (nothing about speed is asserted)."""

import pytest

from benchmarks.common import MODELS, gpu_peak_tflops, model_peers, stats
from benchmarks.jaxmir_side import _build_light, build, time_jaxmir
from benchmarks.suite import lever_variants, parse_args, peers_needed, split_peers

KEYS = {
    "framework",
    "model",
    "batch",
    "params",
    "compile_s",
    "first_step_s",
    "flops_per_step",
    "median_s",
    "min_s",
    "max_s",
    "samples_per_s",
    "gflops_per_s",
    "pct_peak",
    "peak_rss_mb",
    "precision_path",
}


def test_time_jaxmir_tiny_beat():
    r = time_jaxmir("beat", 2, preset="tiny", steps=2, devices=1, peak_gflops=100.0)
    assert KEYS <= set(r)
    assert r["framework"] == "jaxmir" and r["n"] == 2 and len(r["times_s"]) == 2
    assert r["input"] == [2, 64, 178] and r["n_devices"] == 1
    # the LSTM scans' time steps are added to XLA's count (which sees a loop body once)
    assert r["flops_scan_correction"] > 0
    assert r["flops_per_step"] == r["flops_xla"] + r["flops_scan_correction"]


def test_helpers():
    assert stats([3.0, 1.0, 2.0])["median_s"] == 2.0
    assert gpu_peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == ("H100 SXM", 989.0)
    assert gpu_peak_tflops("NVIDIA H200", "fp32") == ("H200", 67.0)
    assert gpu_peak_tflops("cpu", "fp32") is None
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == ("A100", 312.0)
    # whole names only: an L40S is not an L4 (3x the MFU), an A10G not an A10
    assert gpu_peak_tflops("NVIDIA L40S", "bf16") is None
    assert gpu_peak_tflops("NVIDIA A10G", "bf16") is None
    assert gpu_peak_tflops("NVIDIA L4", "bf16") == ("L4", 121.0)
    labels = [v[0] for v in lever_variants("beat", quick=True)]
    assert labels[0] == "default" and "ynn fusion off" in labels
    args = parse_args(["--quick", "--models", "beat,patch_cnn", "--peers", "none"])
    assert args.models == ["beat", "patch_cnn"] and args.peers == [] and args.name == "quick"
    with pytest.raises(SystemExit):
        parse_args(["--models", "nope"])
    # vocal_contour and vocal are in the model table, on request only, and have no peer
    assert set(MODELS) == {"music", "beat", "patch_cnn", "vocal_contour", "vocal", "chord", "drum"}
    assert "vocal" not in parse_args([]).models and model_peers("vocal") == ()
    for model in ("chord", "drum"):  # on request only, no peer
        assert model not in parse_args([]).models and model_peers(model) == ()
    assert "vocal_contour" not in parse_args([]).models
    # a run of models no peer has needs neither torch nor TF installed
    assert peers_needed(["vocal_contour", "chord"], ["torch", "tf"]) == []
    assert peers_needed(["vocal_contour", "beat"], ["torch", "tf"]) == ["torch", "tf"]
    for bad in (["--devices", "a"], ["--devices", "0,2"], ["--precision", "fp64", "--gpu"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    with pytest.raises(SystemExit):  # the CPU side by side is fp32 only: refused, not ignored
        parse_args(["--precision", "bf16"])
    assert parse_args(["--gpu", "--precision", "fp32,bf16"]).precision == ["fp32", "bf16"]
    assert parse_args(["--quick", "--models", "vocal_contour"]).models == ["vocal_contour"]
    assert model_peers("vocal_contour") == () and model_peers("music") == ("torch", "tf")
    assert split_peers("vocal_contour", ["torch"], ["torch", "tf"]) == ([], ["torch", "tf"])
    assert split_peers("beat", ["torch"], ["torch", "tf"]) == (["torch"], [])
    assert "conv_impl=matmul" in [v[0] for v in lever_variants("vocal_contour", quick=True)]


@pytest.mark.parametrize("builder", [build, _build_light], ids=["task", "light"])
def test_vocal_contour_paper_size(builder):
    """The paper model's size and shapes, from shapes alone (nothing is initialised or run)."""
    import jax
    import numpy as np

    built = builder("vocal_contour", "paper", ())
    spec = MODELS["vocal_contour"]
    assert built.input_shape == spec["input"] == (128, 384, 1)
    x = jax.ShapeDtypeStruct((1, *built.input_shape), np.float32)
    variables = jax.eval_shape(
        lambda r, x: built.module.init(r, x, train=False), jax.random.PRNGKey(0), x
    )

    def count(tree):
        return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))

    assert count(variables["params"]) == spec["params"] == 17_619_202
    assert count(variables["batch_stats"]) == spec["state"] == 21_248
    out = jax.eval_shape(lambda v, x: built.module.apply(v, x, train=False), variables, x)
    assert out.shape == (1, *spec["output"])
    assert built.optim.learning_rate == 1e-3


def test_a_requested_peer_that_cannot_be_imported_fails_the_run(monkeypatch, capsys):
    import benchmarks.suite as suite

    monkeypatch.setattr(suite, "_peer_available", lambda p: (p != "tf", f"{p}: skipped, x"))
    assert suite.main(["--quick", "--models", "patch_cnn", "--peers", "torch,tf"]) == 3
    assert "tf: missing" in capsys.readouterr().out


def _paper_variables(model: str):
    """(built, variables as shapes, sizes by collection) of the suite's paper-size `model`."""
    import jax
    import numpy as np

    built = build(model, "paper", ())
    x = jax.ShapeDtypeStruct((1, *built.input_shape), np.float32)
    variables = jax.eval_shape(
        lambda r, x: built.module.init(r, x, train=False), jax.random.PRNGKey(0), x
    )
    sizes = {
        k: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v)) for k, v in variables.items()
    }
    return built, variables, sizes


def test_vocal_paper_size():
    """The vocal PyramidNet-110 as the suite builds it (the task path), from shapes alone."""
    built, _, sizes = _paper_variables("vocal")
    spec = MODELS["vocal"]
    assert built.input_shape == spec["input"] == (19, 174, 9)
    assert sizes == {"params": spec["params"], "batch_stats": spec["state"]}
    assert built.optim.learning_rate == 1e-4 and built.cfg.data.vat  # the step includes VAT


@pytest.mark.parametrize("model", ["chord", "drum"])
def test_chord_and_drum_paper_steps_are_sized_from_shapes(model):
    """The suite's chord and drum rows: the task's paper model, its counts as the table says,
    and the loss runs on the suite's synthetic batch (shapes only, nothing computed)."""
    import jax

    from benchmarks.jaxmir_side import synthetic_batch

    built, variables, sizes = _paper_variables(model)
    spec = MODELS[model]
    assert built.input_shape == spec["input"]
    assert sizes == {"params": spec["params"], "batch_stats": spec["state"]}
    batch = synthetic_batch(built, 2, spec["output"])
    loss, _ = jax.eval_shape(
        lambda v, b: built.loss_fn(built.module.apply, v, b, jax.random.PRNGKey(0), True),
        variables,
        batch,
    )
    assert loss.shape == ()


def test_repeated_notes_measures_first_and_repeated_onsets():
    import numpy as np

    from benchmarks.repeated_notes import STRIKES, measure, onset_peaks, strike_notes
    from jaxmir.tasks.music.labels import music_labels

    notes, first = strike_notes(0.0, keys=(48, 60))
    assert len(notes) == 2 * STRIKES and first.sum() == 2
    assert np.all(notes[~first, 0] == notes[np.flatnonzero(~first) - 1, 1])  # touching repeats
    gapped, _ = strike_notes(0.04, keys=(48, 60))
    assert np.allclose(gapped[~first, 0] - gapped[np.flatnonzero(~first) - 1, 1], 0.04)
    # the measurement reads label-perfect posteriors as onsets everywhere, repeats included
    labels = music_labels(np.column_stack([notes, np.zeros(len(notes))]), 400, "note-offset")
    assert np.all(onset_peaks(labels, notes) == 1.0)
    # and runs end to end on the shipped model (values are the model's, not asserted)
    result = measure(None, ["struck"], [0.0], keys=(60,))
    (row,) = result["rows"]
    assert row["renderer"] == "struck" and row["gap_s"] == 0.0
    for key in ("first_median", "repeat_median", "repeats_over_threshold"):
        assert 0.0 <= row[key] <= 1.0


def test_robustness_changes_the_audio_as_named_and_a_gain_leaves_the_notes(music_cache):
    import numpy as np

    from benchmarks.robustness import apply_change, measure, parse_change

    for bad in ("gain", "as-rendered:3", "echo:1", "noise:loud"):
        with pytest.raises(ValueError):
            parse_change(bad)
    sr = 16000
    t = np.arange(sr) / sr
    x = (0.1 * np.sin(2 * np.pi * 50.0 * t) + 0.1 * np.sin(2 * np.pi * 2000.0 * t)).astype(
        np.float32
    )
    rng = np.random.default_rng(0)
    quiet, rate = apply_change(x, sr, "gain:-20", rng)
    assert rate == sr and np.allclose(quiet, 0.1 * x, rtol=1e-6)
    noisy, _ = apply_change(x, sr, "noise:20", rng)
    snr = 10 * np.log10(np.mean(x**2) / np.mean((noisy - x) ** 2))
    assert abs(snr - 20.0) < 0.5

    def band_db(y, f):
        spec = np.abs(np.fft.rfft(y[sr // 4 :]))  # past the filter's start-up
        k = int(round(f * len(y[sr // 4 :]) / sr))
        return 20 * np.log10(spec[k - 2 : k + 3].max())

    cut, _ = apply_change(x, sr, "highpass:200", rng)
    assert band_db(x, 50) - band_db(cut, 50) > 30 and abs(band_db(x, 2000) - band_db(cut, 2000)) < 1
    dull, _ = apply_change(x, sr, "lowpass:500", rng)
    assert (
        band_db(x, 2000) - band_db(dull, 2000) > 30 and abs(band_db(x, 50) - band_db(dull, 50)) < 1
    )
    low, rate = apply_change(x, sr, "resample:8000", rng)
    assert rate == 8000 and abs(len(low) - sr // 2) <= 1
    roomy, _ = apply_change(x, sr, "room:1.0", rng)
    assert len(roomy) == len(x) and not np.allclose(roomy, x)
    # end to end on the shipped model: its features read every input at one level, so a
    # recording 30 dB quieter scores as it did (the scores themselves are the model's)
    result = measure(music_cache, None, ["test"], ["as-rendered", "gain:-30"])
    plain, quieter = result["rows"]
    assert (plain["change"], quieter["change"]) == ("as-rendered", "gain:-30")
    assert {k: v for k, v in plain.items() if k != "change"} == {
        k: v for k, v in quieter.items() if k != "change"
    }
    assert plain["pieces"] == 1 and 0.0 <= plain["note_f1"] <= 1.0


def test_beat_unseen_builds_fresh_pieces_in_the_unseen_meters_and_tempi_and_scores_variants(
    monkeypatch, tmp_path
):
    import json
    from collections import Counter

    import numpy as np

    from benchmarks.beat_unseen import fresh_pieces, main, measure, parse_variant, plot_pieces
    from jaxmir.data.synth.textures import UNSEEN_METERS, UNSEEN_TEMPI

    for bad in ("fill", "fill:", ":decode.fill_level=false", "x:train.seed=1"):
        with pytest.raises(ValueError):
            parse_variant(bad)
    assert parse_variant("a:decode.x=1,decode.y=2") == ("a", ["decode.x=1", "decode.y=2"])
    # a key the beat task lacks, a value it refuses, a missing model: refused before any work
    for argv in (
        ["--variant", "x:decode.nope=1"],
        ["--variant", "x:decode.method=zz"],
        ["--workdir", "no/such/run"],
    ):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2, argv
    pieces = list(fresh_pieces(6))
    assert [p.name for p, _, _ in pieces] == [f"select__{i:04d}" for i in range(6)]
    for piece, meter, pace in pieces:
        assert tuple(int(v) for v in meter.split("/")) in UNSEEN_METERS
        bpm = 60.0 / np.median(np.diff(piece.beats))
        lo, hi = UNSEEN_TEMPI[0] if pace == "slow" else UNSEEN_TEMPI[1]
        assert 0.85 * lo < bpm < 1.15 * hi  # drawn in that range, with rubato
    assert {pace for _, _, pace in pieces} == {"slow", "fast"}
    # the same ids give the same pieces: a decision made on them can be checked again
    np.testing.assert_array_equal(next(fresh_pieces(1))[0].notes, pieces[0][0].notes)
    # ... and another set is other pieces, numbered on
    beside = list(fresh_pieces(2, first=4))
    assert [p.name for p, _, _ in beside] == ["select__0004", "select__0005"]
    np.testing.assert_array_equal(beside[0][0].notes, pieces[4][0].notes)
    # end to end on the shipped beat model: the stored decoding and a variant, per group
    result = measure(None, 2, [parse_variant("no-level:decode.level_threshold=0")], told=1.25)
    rows = result["rows"]
    assert {r["variant"] for r in rows} == {"stored", "no-level", "told-tempo-x1.25"}
    overall = [r for r in rows if r["pieces"] == "all"]
    assert [r["n"] for r in overall] == [2, 2, 2]
    # told each piece's tempo within 25 %, the tracker keeps to its level (a piece's tempo
    # may still slip: "other")
    told = result["levels"]["told-tempo-x1.25"]
    assert told["beat"] + told["other"] == 2 and told["beat"] >= 1
    assert result["variants"]["told-tempo-x1.25"] == [
        "decode.min_bpm=tempo/1.25",
        "decode.max_bpm=tempo*1.25",
    ]
    assert all(0.0 <= r[k] <= 1.0 for r in rows for k in ("beat_f_measure", "beat_amlt"))
    assert json.loads(json.dumps(result)) == result
    assert set(result["levels"]) == {"stored", "no-level", "told-tempo-x1.25"}
    assert all(sum(c.values()) == 2 for c in result["levels"].values())
    assert [r["piece"] for r in result["per_piece"]] == ["select__0000", "select__0001"]
    # the per-piece records are the stored decoding's: its level counts and its mean scores
    stored = result["levels"]["stored"]
    assert Counter(r["level"] for r in result["per_piece"]) == {
        k: v for k, v in stored.items() if v
    }
    stored_all = next(r for r in overall if r["variant"] == "stored")
    for key in ("beat_f_measure", "downbeat_f_measure", "beat_at_level"):
        mean = np.mean([r[key] for r in result["per_piece"]])
        assert mean == pytest.approx(stored_all[key], abs=1e-3)
    assert result["first"] == 0
    png = plot_pieces(result, tmp_path / "pieces.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_meter = plot_pieces(result, tmp_path / "by-meter.png", "meter", "two pieces")  # as works
    assert by_meter.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for names in (["stored:decode.fill_level=false"], ["a:decode.x=1", "a:decode.y=2"]):
        with pytest.raises(SystemExit):  # refused before any piece is built
            main(["--pieces", "1", *(f"--variant={v}" for v in names)])
    with pytest.raises(SystemExit):
        main(["--pieces", "1", "--first", "-1"])
    with pytest.raises(SystemExit):  # a factor that bounds nothing, or excludes every tempo
        main(["--pieces", "1", "--told-tempo", "1"])
    # --first reaches the measurement
    import benchmarks.beat_unseen as bu

    asked = {}
    monkeypatch.setattr(bu, "measure", lambda *a: asked.setdefault("args", a) and {})
    monkeypatch.setattr(bu, "save_result", lambda name, result: tmp_path / f"{name}.json")
    monkeypatch.setattr(bu, "plot_pieces", lambda result, path: path)
    assert main(["--pieces", "5", "--first", "3"]) == 0
    assert asked["args"] == (None, 5, [], 3, None)


def test_demos_runs_each_command_and_records_its_time_memory_and_scores(
    tmp_path, monkeypatch, capsys
):
    import json

    import benchmarks.common
    from benchmarks.demos import commands, main

    # the vocal demo: a contour run, a vocal run, scored with the contour run's pitch and without
    labels = [label for label, _ in commands("vocal", tmp_path)]
    assert labels[:2] == ["train vocal_contour", "train vocal"] and len(labels) == 4
    assert (
        f"decode.contour_workdir={tmp_path / 'vocal_contour-demo'}"
        in commands("vocal", tmp_path)[2][1]
    )

    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path / "results")
    root = tmp_path / "runs"
    assert main(["--tasks", "beat", "--preset", "tiny", "--root", str(root)]) == 0
    # named by its tasks: a run of some does not replace the file of every task's
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["demos-beat.json"]
    result = json.loads((tmp_path / "results" / "demos-beat.json").read_text())
    train, score = result["beat"]["commands"]
    assert train["exit"] == 0 and score["exit"] == 0
    assert train["seconds"] > 0 and train["peak_rss_mb"] > 100
    assert score["scores"]["split"] == "test" and 0 <= score["scores"]["beat_f_measure"] <= 1
    assert (root / "cache").is_dir() and (root / "beat-tiny" / "config.json").is_file()
    assert result["fresh_cache"] is True
    # a second run into the same folder would resume the runs: refused, nothing run
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--tasks", "beat", "--preset", "tiny", "--root", str(root), "--name", "t2"])
    assert f"{root / 'beat-tiny'}: exists already" in capsys.readouterr().err
    assert not (tmp_path / "results" / "t2.json").exists()


def _repeat_score():
    """A 3/4 tune at 90 quarters per minute: a one-beat pickup, bars 1-2 repeated, then bar 3
    at 60."""
    from music21 import bar, meter, note, stream, tempo

    part = stream.Part()
    pickup = stream.Measure(number=0)
    pickup.append([meter.TimeSignature("3/4"), tempo.MetronomeMark(number=90)])
    pickup.append(note.Note("G4", quarterLength=1))
    pickup.paddingLeft = 2
    part.append(pickup)
    for i, pitch in enumerate(["C5", "D5", "E5"]):
        m = stream.Measure(number=i + 1)
        m.append([note.Note(pitch, quarterLength=2), note.Note("B4", quarterLength=1)])
        if i == 0:
            m.leftBarline = bar.Repeat(direction="start")
        if i == 1:
            m.rightBarline = bar.Repeat(direction="end")
        if i == 2:
            m.insert(0, tempo.MetronomeMark(number=60))
        part.append(m)
    score = stream.Score()
    score.insert(0, part)
    return score


def test_beat_works_exports_a_score_as_a_user_would_and_keeps_its_beats_on_the_files_tempo(
    tmp_path, monkeypatch
):
    import numpy as np

    import jaxmir.data.datasets.midi as midi
    from benchmarks.beat_works import exported_piece

    piece = exported_piece(_repeat_score().expandRepeats(), "tune", tmp_path)
    # music21's MIDI file, read back by jaxmir's reader: the repeat played twice
    assert (tmp_path / "tune.mid").is_file()
    assert piece.notes[:, 2].tolist() == [67, 72, 71, 74, 71, 72, 71, 74, 71, 76, 71]
    quarter = 60.0 / 90.0
    bar3 = 13 * quarter  # the pickup and four bars at 90, then a quarter a second
    onsets = [quarter * q for q in (0, 1, 3, 4, 6, 7, 9, 10, 12)] + [bar3, bar3 + 2]
    np.testing.assert_allclose(piece.notes[:, 0], onsets, atol=1e-4)
    # every quarter is a beat from the pickup on; bars start after the pickup, every 3 beats
    beats = [quarter * q for q in range(13)] + [bar3, bar3 + 1, bar3 + 2]
    np.testing.assert_allclose(piece.beats, beats, atol=1e-4)
    np.testing.assert_allclose(
        piece.downbeats, [quarter * b for b in (1, 4, 7, 10)] + [bar3], atol=1e-4
    )
    # a file whose notes are not the score's is refused, not scored against the score's beats
    read = midi.read_midi_notes
    monkeypatch.setattr(midi, "read_midi_notes", lambda p: read(p) + [0.1, 0.1, 0, 0])
    with pytest.raises(ValueError, match="not the score's"):
        exported_piece(_repeat_score().expandRepeats(), "late", tmp_path)


def test_beat_works_scores_works_no_split_holds_and_names_those_it_skips(tmp_path, monkeypatch):
    import benchmarks.beat_works as bw
    from jaxmir.data.synth.corpus import is_reserved, work_ids
    from jaxmir.shipped import load_for_inference
    from jaxmir.tasks.beat.task import TASK, BeatDataConfig, work_counts

    d = load_for_inference(TASK, None)[0].data  # the shipped model's corpus
    used = bw.corpus_works(d)
    assert len(used) == sum(work_counts(d).values()) > 0 and used <= set(work_ids())
    assert bw.corpus_works(BeatDataConfig(corpus_works=0)) == set()
    left = bw.left_out_works(used)
    assert not used & set(left) and not any(is_reserved(c) for c in left)
    assert len(left) + len(used) == len(work_ids())
    # a position: the same works for any model whose corpus does not reach them
    assert bw.left_out_works(used, 100) == bw.left_out_works(set(), 100) == work_ids()[100:]
    saved = {}
    monkeypatch.setattr(bw, "save_result", lambda name, r: saved.setdefault(name, r) and tmp_path)

    def score_pieces(w, built, v, told, sources):  # exported files, there while scored
        return {"built": built, "files": all(f.is_file() for f in sources.values())}

    monkeypatch.setattr(bw, "score_pieces", score_pieces)
    monkeypatch.setattr(bw, "plot_pieces", lambda *a: tmp_path / "x.png")
    # from the position of a work music21 cannot read into measures: named, then skipped
    first = work_ids().index("josquin/fortunaDunGranTempo.abc")
    assert bw.main(["--pieces", "1", "--first", str(first)]) == 0
    result = saved["beat-works-exported"]
    assert result["skipped"][0]["work"] == "josquin/fortunaDunGranTempo.abc"
    assert "measures" in result["skipped"][0]["reason"]
    ((piece, groups),) = result["built"]
    assert result["files"]
    assert groups["folder"] == piece.name.split("__")[0] and groups["meter"].count("/") == 1
    assert groups["parts"] in ("one part", "several parts")
    assert len(piece.beats) > 8 and set(piece.downbeats) <= set(piece.beats)
    with pytest.raises(SystemExit):  # nothing left from there: refused, not a crash
        bw.main(["--pieces", "1", "--first", str(len(work_ids()))])


def test_share_near_counts_times_within_the_tolerance_of_another_set():
    import numpy as np

    from benchmarks.beat_works import share_near

    b = np.array([0.0, 1.0, 2.0])
    assert share_near(np.array([0.004, 0.5, 1.996, 3.0]), b, 0.005) == 0.5
    assert share_near(np.array([-0.004, 2.004]), b, 0.005) == 1.0  # before the first, past the last
    assert share_near(np.array([0.01]), np.array([0.0]), 0.005) == 0.0


def test_the_inference_benchmark_reads_both_summary_lines():
    """`jaxmir transcribe`'s summary line, split (features / model / decode+write) and as a
    task that transcribes each file in one call prints it, parsed by `benchmarks.inference`."""
    from benchmarks.inference import parse_summary
    from jaxmir.cli import transcribe_summary
    from jaxmir.inference import Timings

    t = Timings(files=2, audio_s=120.0, features_s=1.0, write_s=0.5)
    t.calls[(4, 128)] = [3.0, 1.0, 1.0]  # compile 2 s, model 3 s
    split = parse_summary("noise\n" + transcribe_summary(t, 10.0, 1.0, 0.5))
    assert split == {
        "files": 2.0,
        "minutes": 2.0,
        "total_s": 10.0,
        "compute_s_per_min": 3.25,
        "features_s_per_min": 0.5,
        "model_s_per_min": 1.5,
        "write_s_per_min": 0.25,
        "startup_s": 0.5,
        "restore_s": 1.0,
        "compile_s": 2.0,
    }
    t.features_s = t.write_s = 0.0
    t.unsplit_s = 3.0
    unsplit = parse_summary(transcribe_summary(t, 10.0, 1.0, 0.5))
    assert unsplit["unsplit_s_per_min"] == 1.5 and unsplit["model_s_per_min"] == 1.5
    assert "features_s_per_min" not in unsplit and "model_alone" not in unsplit
    # one call of a shape: its run counts as compilation, and the line says so; under a
    # second of audio no rate is printed (a 1-sample file read 734178 s/min)
    t.calls[(1, 128)] = [0.4]
    assert transcribe_summary(t, 10.0, 1.0, 0.5).endswith(
        "compile 2.4 s (with the model's only call of a batch shape)"
    )
    t.audio_s = 0.5
    short = transcribe_summary(t, 10.0, 1.0)
    assert ": - s/min (features+decode+write -, model -)" in short
    rates = parse_summary(short)  # the benchmark reads such a line too, with no rates
    assert rates["compute_s_per_min"] is None and rates["model_s_per_min"] is None
    assert rates["files"] == 2.0 and rates["compile_s"] == 2.4


def test_the_accelerator_path_saves_each_model_as_it_finishes(tmp_path):
    """`gpu.sh` ends the run at a hard timeout, and the results were written only at the end:
    a model that started late lost every model before it. The same path on this CPU: each
    finished model is handed to `save` before the next starts."""
    import json

    from benchmarks.gpu import run_gpu
    from benchmarks.suite import parse_args

    args = parse_args(["--gpu", "--precision", "fp32", "--rounds", "1"])
    args.models = ["patch_cnn", "vocal_contour"]
    parts = []
    args.batch = {"patch_cnn": 8, "vocal_contour": 2}
    saved = lambda part: parts.append(json.loads(json.dumps(part)))  # noqa: E731 - as written
    result = run_gpu(args, {"jax_backend": "cpu"}, lambda line: None, save=saved)
    assert [list(p["rows"]) for p in parts] == [["patch_cnn"], ["patch_cnn", "vocal_contour"]]
    assert parts[-1]["rows"] == result["rows"]
    assert result["rows"]["patch_cnn"]["fp32"]["median_s"] > 0
