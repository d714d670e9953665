"""Windowed inference over several pieces (`jaxmir.inference`, `PieceTask.transcribe_many`) and
`jaxmir transcribe` on several files and folders in one command."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from jaxmir.cli import UsageError, main, transcribe_inputs
from jaxmir.inference import (
    AudioProgress,
    Timings,
    default_batch_size,
    predict_piece,
    predict_pieces,
    resolve_hop,
    stitch_weights,
    window_starts,
)
from jaxmir.transcribed import written_here

T = 16  # window frames


def fake_predict(log: list | None = None):
    """A per-frame function of the input, so any stitching error shows: (B, T, F) -> (B, T, 2).
    Padding rows (all zero) would come out as exactly 1.0 in channel 1."""

    def predict(windows: np.ndarray) -> np.ndarray:
        if log is not None:
            log.append(windows.shape)
        w = np.asarray(windows, np.float32)
        return np.stack([w.sum(-1), np.cos(w[..., 0]) + w[..., 1] ** 2], axis=-1)

    return predict


def expected(x: np.ndarray) -> np.ndarray:
    return np.stack([x.sum(-1), np.cos(x[:, 0]) + x[:, 1] ** 2], axis=-1)


def pieces(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, 3)).astype(np.float32) + 1.0 for n in lengths]


LENGTHS = (1, 5, 16, 17, 40, 100)


@pytest.mark.parametrize("mode", ["average", "centre"])
@pytest.mark.parametrize("hop", [None, 4, 12, 16])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_pieces_batched_together_equal_one_at_a_time(mode, hop, batch):
    xs = pieces(LENGTHS)
    log: list = []
    together = list(
        predict_pieces(fake_predict(log), xs, timesteps=T, batch_size=batch, mode=mode, hop=hop)
    )
    assert len(together) == len(xs)
    assert all(shape == (batch, T, 3) for shape in log)  # one shape for the whole stream
    hop_, front = resolve_hop(T, mode, hop)
    windows = sum(len(window_starts(len(x), T, hop_, front)) for x in xs)
    assert len(log) == -(-windows // batch)  # only the very last batch is padded
    for x, y in zip(xs, together, strict=True):
        alone = predict_piece(fake_predict(), x, timesteps=T, batch_size=5, mode=mode, hop=hop)
        np.testing.assert_array_equal(y, alone)
        # a per-frame model: every stitching scheme gives back exactly the frame's value
        np.testing.assert_allclose(y, expected(x), rtol=1e-5, atol=1e-5)


def test_padding_never_reaches_the_outputs():
    """Zero rows (window tails past a piece's end, batch padding) must not be stitched in:
    a model that answers 1e6 on an all-zero frame shows any that are."""

    def predict(w):
        zero = np.all(w == 0, axis=-1, keepdims=True)
        return np.where(zero, 1e6, w[..., :1] * 2.0)

    xs = pieces((3, 21, 7))
    for y, x in zip(
        predict_pieces(predict, xs, timesteps=T, batch_size=4, mode="average"), xs, strict=True
    ):
        np.testing.assert_allclose(y, 2.0 * x[:, :1], rtol=1e-6)


def test_pieces_are_read_lazily_and_come_out_in_order():
    read: list[int] = []

    def source():
        for i, x in enumerate(pieces((40, 40, 40))):
            read.append(i)
            yield x

    gen = predict_pieces(fake_predict(), source(), timesteps=T, batch_size=2, mode="average")
    first = next(gen)
    assert len(first) == 40 and read == [0]  # piece 1 not read before piece 0 was done
    assert [len(y) for y in gen] == [40, 40] and read == [0, 1, 2]


def test_stitch_weights_and_hops():
    assert resolve_hop(128, "average") == (64, 0)
    assert resolve_hop(128, "centre") == (64, 32)
    w = stitch_weights(128, "centre")
    assert w[32:96].min() == 1.0 and w[:32].max() < 0.01 and w[96:].max() < 0.01
    assert (stitch_weights(128, "centre", hop=96) == 1.0).sum() == 96
    with pytest.raises(ValueError, match="hop"):
        resolve_hop(16, "average", 17)
    with pytest.raises(ValueError, match="batch_size"):
        next(predict_pieces(fake_predict(), [np.ones((3, 2))], timesteps=T, batch_size=0))


def test_timings_split_compile_from_calls():
    t = Timings()
    calls = iter([5.0, 1.0, 1.2, 0.8])
    t.calls[(4, 16)] = list(calls)
    assert t.compile_s == pytest.approx(4.0)
    assert t.model_s == pytest.approx(4.0)  # the first call counts as a typical one


# -- inputs of `jaxmir transcribe` ---------------------------------------------------------------
def test_folders_are_expanded_sorted_with_the_tasks_file_types(tmp_path, capsys):
    d = tmp_path / "songs"
    d.mkdir()
    for name in ("b.wav", "a.FLAC", "notes.txt", ".hidden.wav", "c.mid"):
        (d / name).write_bytes(b"x")
    (d / "sub").mkdir()
    (d / "sub" / "deeper.wav").write_bytes(b"x")
    (d / "gone.wav").symlink_to(tmp_path / "moved.wav")
    one = tmp_path / "z.ogg"
    one.write_bytes(b"x")
    audio = (".wav", ".flac", ".ogg")
    assert transcribe_inputs([one, d], audio) == [one, d / "a.FLAC", d / "b.wav"]
    # what is left out and a user may look for is said, not dropped unsaid
    said = capsys.readouterr().err
    assert f"{d}: 1 subfolder(s) not read (the first: sub); 1 link(s) to no file" in said
    transcribe_inputs([d], audio, outdir=d / "sub")  # the output folder: nothing to say of it
    assert "subfolder" not in capsys.readouterr().err
    assert transcribe_inputs([d], (".mid", ".midi")) == [d / "c.mid"]
    with pytest.raises(UsageError, match="not a file, and holds no .mid/.midi"):
        transcribe_inputs([d / "sub"], (".mid", ".midi"))
    with pytest.raises(UsageError, match="no such file"):
        transcribe_inputs([tmp_path / "nosuch.wav"], audio)
    (tmp_path / "b.flac").write_bytes(b"x")
    with pytest.raises(UsageError, match="same name as"):
        transcribe_inputs([d, tmp_path / "b.flac"], audio)
    # the same file twice, or in a folder given too, is taken once, where first given
    assert transcribe_inputs([one, d / "b.wav", d, one], audio) == [one, d / "b.wav", d / "a.FLAC"]
    # a name too long for the outputs written beside it: refused before anything is written
    long = tmp_path / ("x" * 245 + ".wav")
    long.write_bytes(b"x")
    with pytest.raises(UsageError, match="name is too long for the files written from it"):
        transcribe_inputs([long], audio)
    # a file of the other kind, named before any model is restored
    with pytest.raises(UsageError, match=r"z.ogg: is audio, and this task reads MIDI files"):
        transcribe_inputs([one], (".mid", ".midi"))
    with pytest.raises(UsageError, match=r"c.mid: is MIDI, and this task reads audio files"):
        transcribe_inputs([d / "c.mid"], audio)
    loud = tmp_path / "Y.WAV"
    loud.write_bytes(b"x")
    with pytest.raises(UsageError, match=r"Y.WAV: is audio"):
        transcribe_inputs([loud], (".mid", ".midi"))
    assert transcribe_inputs([loud, d / "c.mid"], (*audio, ".wav", ".mid")) == [loud, d / "c.mid"]
    other = tmp_path / "notes.kar"  # a suffix of neither kind: tried, as before
    other.write_bytes(b"x")
    assert transcribe_inputs([other], (".mid", ".midi")) == [other]


def _song(path: Path, f0: float, seconds: float) -> Path:
    t = np.arange(int(22050 * seconds)) / 22050
    sf.write(path, 0.3 * np.sin(2 * np.pi * f0 * t), 22050)
    return path


@pytest.fixture(scope="module")
def music_run(music_cache, tmp_path_factory):
    """A tiny music model (2 steps), trained once for this module."""
    wd = tmp_path_factory.mktemp("music-run") / "run"
    argv = ["train", "music", "--preset", "tiny", "--workdir", str(wd), "--data"]
    argv += [str(music_cache), "--no-progress", "--set", "train.epochs=1"]
    argv += ["--set", "train.steps_per_epoch=2"]
    assert main(argv) == 0
    return wd


def test_cli_transcribes_files_and_folders_in_one_command(music_run, tmp_path, capsys):
    songs = tmp_path / "songs"
    songs.mkdir()
    a = _song(songs / "a.wav", 440.0, 1.5)
    _song(songs / "b.flac", 330.0, 2.3)
    c = _song(tmp_path / "c.wav", 262.0, 0.9)
    out = tmp_path / "out"
    capsys.readouterr()
    argv = ["transcribe", "music", str(songs), str(c), "--workdir", str(music_run)]
    argv += ["-o", str(out), "--batch-size", "3", "--no-progress"]
    assert main(argv) == 0
    printed, err = capsys.readouterr()
    for stem in ("a", "b", "c"):
        for name in (f"{stem}.mid", f"{stem}_notes.csv", f"{stem}_pianoroll.png"):
            assert (out / name).stat().st_size > 0
            assert str(out / name) in printed.splitlines()
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("transcribed 3 files, 0.08 min of audio"), summary
    assert "s/min" in summary and "compile" in summary and "restore" in summary

    many = task_music().transcribe_many(
        fake_music_predict, [a, c], music_cfg(), tmp_path / "many", progress=False
    )
    assert [p.name for p in many] == [
        f"{s}{suffix}" for s in "ac" for suffix in (".mid", "_notes.csv", "_pianoroll.png")
    ]


def test_an_unreadable_file_among_several_is_skipped_and_the_others_transcribed(
    music_run, tmp_path, capsys
):
    songs = tmp_path / "songs"
    songs.mkdir()
    _song(songs / "a.wav", 440.0, 1.5)
    (songs / "b.wav").write_text("not audio")  # sorted between the two good ones
    _song(songs / "c.flac", 330.0, 1.1)
    out = tmp_path / "out"
    base = ["--workdir", str(music_run), "-o", str(out), "--no-progress"]
    capsys.readouterr()
    assert main(["transcribe", "music", str(songs), *base]) == 1
    printed, err = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        f"{s}{x}" for s in "ac" for x in (".mid", "_notes.csv", "_pianoroll.png")
    )
    assert set(written_here(out)) == {
        f"{s}{x}" for s in "ac" for x in (".mid", "_notes.csv", "_pianoroll.png")
    }
    assert len(printed.splitlines()) == 6
    lines = err.strip().splitlines()
    skipped = [line for line in lines if line.startswith("jaxmir transcribe: skipped ")]
    assert len(skipped) == 1 and "b.wav" in skipped[0] and "cannot decode" in skipped[0]
    assert any(line.startswith("transcribed 2 files") for line in lines), lines
    assert lines[-1] == ("jaxmir transcribe: error: 1 of 3 inputs could not be read (named above)")
    # none readable: exit 2, nothing written; one input alone: its error, as before
    (songs / "d.wav").write_bytes(b"")
    none = tmp_path / "none"
    argv = ["transcribe", "music", str(songs / "b.wav"), str(songs / "d.wav"), *base[:2]]
    assert main([*argv, "-o", str(none), "--no-progress"]) == 2
    assert not none.exists()
    assert "2 of 2 inputs" in capsys.readouterr().err
    assert main(["transcribe", "music", str(songs / "b.wav"), *base]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxmir transcribe: error: ") and "b.wav" in err[0]


def test_skipping_a_bad_file_keeps_each_file_with_its_own_posteriors(tmp_path):
    """The files after a skipped one get their own windows' outputs (the stream of windows
    is not shifted), and without `on_unreadable` the error is raised."""
    from jaxmir.data.audio import AudioError

    a, c = _song(tmp_path / "a.wav", 440.0, 1.2), _song(tmp_path / "c.wav", 262.0, 0.7)
    bad = tmp_path / "b.wav"
    bad.write_text("junk")
    task, cfg = task_music(), music_cfg()
    alone = task.transcribe_many(fake_music_predict, [a, c], cfg, tmp_path / "alone", False)
    seen = []
    got = list(
        task.transcribe_iter(
            fake_music_predict,
            [a, bad, c],
            cfg,
            tmp_path / "with-bad",
            False,
            on_unreadable=lambda path, e: seen.append((path, type(e))),
        )
    )
    assert seen == [(bad, AudioError)] and [p for p, _ in got] == [a, c]
    for written in (p for _, paths in got for p in paths if p.suffix == ".csv"):
        assert written.read_text() == (tmp_path / "alone" / written.name).read_text()
    assert [p.name for p in alone if p.suffix == ".csv"] == ["a_notes.csv", "c_notes.csv"]
    with pytest.raises(AudioError, match="b.wav"):
        task.transcribe_many(fake_music_predict, [a, bad, c], cfg, tmp_path / "raises", False)


def test_the_progress_bar_moves_with_the_windows_in_seconds_of_audio(tmp_path):
    """Seconds spread over each file's windows, never past the files read; a file written or
    skipped settles the bar at the seconds done."""
    a, b = _song(tmp_path / "a.wav", 440.0, 1.0), _song(tmp_path / "b.wav", 330.0, 2.0)
    bad = tmp_path / "bad.wav"
    bad.write_text("junk")  # no header: 0 s
    bar = AudioProgress([a, bad, b], enabled=True)
    assert bar.seconds == pytest.approx([1.0, 0.0, 2.0]) and bar.bar.total == pytest.approx(3.0)
    bar.file_read(0, 4)
    bar.windows_done(3)
    assert bar.bar.n == pytest.approx(0.75)
    bar.windows_done(4)  # one window of a, then nothing read yet: capped at a's end
    assert bar.bar.n == pytest.approx(1.0)
    bar.file_skipped(1)
    bar.file_read(2, 2)
    bar.windows_done(1)  # half of b
    assert bar.bar.n == pytest.approx(2.0)
    bar.file_done(0)
    assert bar.bar.n == pytest.approx(2.0)
    bar.windows_done(4)  # the last batch's padding counts nothing past the total
    bar.file_done(2)
    assert bar.bar.n == pytest.approx(3.0)
    bar.close()
    off = AudioProgress([a, b], enabled=False)  # no headers read for a bar nobody sees
    assert off.seconds == [0.0, 0.0] and off.bar.disable


def task_music():
    from jaxmir.tasks.base import get_task

    return get_task("music")


def music_cfg():
    return task_music().preset("tiny")


def fake_music_predict(windows):
    """(B, T, 352, 2) -> (B, T, 352, 3) "note" logits from Spec (no model needed)."""
    return np.repeat(windows[..., :1] * 4.0 - 2.0, 3, axis=-1)


def test_a_task_that_overrides_transcribe_is_called_file_by_file(tmp_path):
    calls = []
    base = type(task_music())

    class OwnTranscribe(base):
        def transcribe(self, predict, path, cfg, outdir):
            calls.append(Path(path).name)
            return [Path(outdir) / f"{Path(path).stem}.txt"]

    t = Timings()
    written = OwnTranscribe().transcribe_many(
        fake_music_predict, ["x.wav", "y.wav"], music_cfg(), tmp_path, False, timings=t
    )
    assert calls == ["x.wav", "y.wav"] and [p.name for p in written] == ["x.txt", "y.txt"]
    assert t.files == 2


def test_a_task_that_overrides_posteriors_is_called_piece_by_piece():
    seen = []
    base = type(task_music())

    class OwnPosteriors(base):
        def posteriors(self, predict, x, cfg, source=None):
            seen.append(source)
            return np.zeros(len(x))

    xs = [(np.zeros((5, 352, 4), np.float32), "a"), (np.zeros((9, 352, 4), np.float32), "b")]
    out = list(OwnPosteriors().posteriors_many(fake_music_predict, xs, music_cfg(), 4))
    assert seen == ["a", "b"] and [len(p) for _, p in out] == [5, 9]


def test_evaluate_streams_the_split_like_one_piece_at_a_time(music_run, music_cache):
    """`evaluate` (several pieces in one stream) scores what `posteriors` gives piece by
    piece."""
    from jaxmir.data.cache import FeatureCache
    from jaxmir.engine.run import make_predict, restore_for_inference
    from jaxmir.tasks.base import get_task

    task = get_task("music")
    cfg, mesh, state, _ = restore_for_inference(task, music_run)
    predict = make_predict(mesh, state)
    cache = FeatureCache(music_cache)
    names = cache.names("train")
    assert len(names) >= 2
    streamed = list(
        task.posteriors_many(predict, ((cache.features(n), None) for n in names), cfg, 8)
    )
    for name, (x, probs) in zip(names, streamed, strict=True):
        alone = task.posteriors(predict, cache.features(name), cfg)
        assert probs.shape == alone.shape == (len(x), *alone.shape[1:])
        np.testing.assert_allclose(probs, alone, atol=1e-5)


def test_music_transcription_features_skip_only_what_the_model_does_not_read(tmp_path):
    """Transcription computes only the layers the model reads: a 2-layer CFP for Spec and Ceps,
    the 46-ms spectrum only for SpecShort. Each channel read equals the training features' of
    the file read at one level (`AudioPiece.input`) exactly; the others are zero; a model that
    reads GCoS gets the full CFP."""
    import dataclasses

    from jaxmir.data.records import AudioPiece
    from jaxmir.tasks.music.task import FEATURE_CHANNELS

    task = task_music()
    song = _song(tmp_path / "s.wav", 440.0, 1.2)
    trained = task.piece_features(AudioPiece.input(song))[0]
    assert trained.shape[-1] == len(FEATURE_CHANNELS) == 5 and trained.any(axis=(0, 1)).all()
    cfg = music_cfg()

    def features(*channels):
        model = dataclasses.replace(cfg.model, channels=channels)
        return task.input_features(song, dataclasses.replace(cfg, model=model))

    assert tuple(cfg.model.channels) == ("Spec", "Ceps")
    for channels in [("Spec", "Ceps"), ("Spec", "Ceps", "SpecShort"), ("SpecShort",)]:
        fast = features(*channels)
        read = [FEATURE_CHANNELS[c] for c in channels]
        rest = [i for i in range(5) if i not in read]
        assert fast.shape == trained.shape
        np.testing.assert_array_equal(fast[..., read], trained[..., read])
        assert not fast[..., rest].any() and trained[..., rest].any()
    np.testing.assert_array_equal(features("GCoS")[..., :4], trained[..., :4])


def test_music_keeps_window_centres_at_three_quarter_hops():
    cfg = music_cfg()
    task = task_music()
    assert task.stitch == "centre" and task.inference_hop(cfg) == cfg.model.timesteps * 3 // 4


def test_default_inference_batch_is_4_windows_on_cpu_and_16_elsewhere():
    import jax

    assert default_batch_size("cpu") == 4
    assert default_batch_size("gpu") == default_batch_size("tpu") == 16
    assert default_batch_size() == default_batch_size(jax.default_backend())


def test_sigmoid_is_the_logistic_in_float32_and_leaves_its_input_alone():
    from jaxmir.inference import sigmoid

    for dtype in (np.float32, np.float64):
        x = np.linspace(-80, 80, 1601).astype(dtype)
        before = x.copy()
        y = sigmoid(x)
        assert y.dtype == np.float32 and np.array_equal(x, before)
        np.testing.assert_allclose(y, 1 / (1 + np.exp(-x.astype(np.float64))), atol=1e-6)


def test_a_long_pieces_piano_roll_is_drawn_from_as_many_columns_as_it_can_show(
    tmp_path, monkeypatch
):
    """matplotlib resampled every frame of a long piece in float64 RGBA (1.2 GB for 20
    minutes); the picture now holds at most PLOT_COLUMNS columns, each the maximum of its
    frames, so a note of one frame still shows."""
    from matplotlib.axes import Axes

    from jaxmir.tasks.music.task import PLOT_COLUMNS, plot_piano_roll

    drawn = []
    imshow = Axes.imshow
    monkeypatch.setattr(
        Axes, "imshow", lambda self, a, **kw: drawn.append(a) or imshow(self, a, **kw)
    )
    probs = np.zeros((3 * PLOT_COLUMNS + 5, 352, 3), np.float32)
    probs[1000, 4 * 39 : 4 * 40, 1:] = 1.0  # one frame of key 39
    plot_piano_roll(probs, np.zeros((0, 5)), tmp_path / "roll.png", mode="note")
    assert (tmp_path / "roll.png").stat().st_size > 0
    (image,) = drawn
    assert image.shape[0] == 88 and image.shape[1] <= PLOT_COLUMNS
    assert image.max() == 1.0 and np.flatnonzero(image.max(axis=1)).tolist() == [39]
    short = np.zeros((500, 352, 3), np.float32)  # a short piece: every frame, as before
    plot_piano_roll(short, np.zeros((0, 5)), tmp_path / "short.png", mode="note")
    assert drawn[1].shape == (88, 500)


def test_two_transcriptions_into_one_folder_keep_each_others_records(tmp_path):
    """The record was read, changed and written back through one temporary name: two runs at
    once lost each other's entries and one failed on the other's rename."""
    import threading

    from jaxmir.tasks.music.task import TASK
    from jaxmir.transcribed import record_written

    errors: list[Exception] = []

    def run(prefix: str) -> None:
        try:
            for i in range(40):
                stem = f"{prefix}{i}"
                written = [tmp_path / name for name in TASK.output_names(stem)]
                for path in written:
                    path.write_text(stem)
                record_written(TASK, Path(f"{stem}.wav"), written, tmp_path)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(p,)) for p in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(written_here(tmp_path)) == 2 * 40 * 3
