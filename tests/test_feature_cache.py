"""`jaxmir features`: incremental after a kill, bad inputs named and skipped, nothing corrupted."""

import dataclasses
import functools
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from jaxmir.cli import main
from jaxmir.data.cache import CacheError, FeatureCache
from jaxmir.data.featurize import featurize
from jaxmir.data.synth.corpus import read_corpus
from jaxmir.tasks.base import source_of
from jaxmir.tasks.music.task import music_features


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so featurize does not treat it as a bad file."""


def test_kill_midway_then_rerun_finishes_without_redoing(synth_corpus, tmp_path):
    pieces = read_corpus(synth_corpus)
    calls = []

    def dying(piece):
        if len(calls) == 2:
            raise Killed
        calls.append(piece.name)
        return music_features(piece)

    out = tmp_path / "cache"
    cache = FeatureCache.create(out, "music", {"test": 1})
    with pytest.raises(Killed):
        featurize(pieces, dying, cache, progress=False)
    done = FeatureCache(out).names()
    assert sorted(done) == sorted(calls)  # the two finished pieces are in the manifest
    mtimes = {n: (out / FeatureCache(out).entry(n)["x"]).stat().st_mtime_ns for n in done}
    assert not list(out.rglob("*.tmp"))  # no half-written file left behind

    summary = featurize(pieces, music_features, FeatureCache(out), progress=False)
    assert summary["skipped"] == 2 and summary["written"] == len(pieces) - 2
    again = FeatureCache(out)
    assert sorted(again.names()) == sorted(p.name for p in pieces)
    for n in done:
        assert (out / again.entry(n)["x"]).stat().st_mtime_ns == mtimes[n]
        assert again.is_complete(n)


def test_corrupt_and_truncated_inputs_are_named_and_skipped(synth_corpus, tmp_path, capsys):
    root = tmp_path / "corpus"
    shutil.copytree(synth_corpus, root)
    pieces = read_corpus(root)
    bad = pieces[0].audio
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    truncated = pieces[1].audio
    truncated.write_bytes(truncated.read_bytes()[:2000])
    out = tmp_path / "f"
    code = main(["features", "music", "--dataset", "synth", "--root", str(root), "--out", str(out)])
    assert code == 1  # the others written
    err = capsys.readouterr().err
    assert bad.name in err and truncated.name in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["pieces"]) == len(pieces) - 2
    assert {f["path"] for f in manifest["failures"]} == {str(bad), str(truncated)}


def test_a_damaged_corpus_folder_is_named_not_a_traceback(synth_corpus, tmp_path, capsys):
    """A truncated labels file left the command with a BadZipFile traceback (exit 1); it is now
    one piece left out with its reason. A garbled corpus.json is one line, exit 2."""
    root = tmp_path / "corpus"
    shutil.copytree(synth_corpus, root)
    pieces = read_corpus(root)
    labels = root / f"{pieces[0].name}.labels.npz"
    labels.write_bytes(labels.read_bytes()[:100])
    out = tmp_path / "f"
    argv = ["features", "music", "--dataset", "synth", "--root", str(root), "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"skipped {labels}: unreadable labels" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["pieces"]) == len(pieces) - 1
    for garbled in ("{not json", '{"pieces": [{"nme": "x"}]}', '{"pieces": ["x"]}'):
        (root / "corpus.json").write_text(garbled)
        assert main([*argv, "--out", str(tmp_path / "g")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "corpus.json: not a corpus index" in err[0], err


def test_damaged_cache_piece_is_rebuilt(music_cache, tmp_path, synth_corpus):
    out = tmp_path / "copy"
    shutil.copytree(music_cache, out)
    cache = FeatureCache(out)
    name = cache.names()[0]
    path = out / cache.entry(name)["x"]
    path.write_bytes(path.read_bytes()[:1000])  # truncated on disk
    assert not cache.is_complete(name)
    summary = featurize(read_corpus(synth_corpus), music_features, cache, progress=False)
    assert summary["written"] == 1
    x = FeatureCache(out).features(name)
    assert np.isfinite(np.asarray(x)).all()
    # a labels file cut short: BadZipFile, a traceback from is_complete, so never rebuilt
    labels = out / cache.entry(name)["labels"]
    labels.write_bytes(labels.read_bytes()[:300])
    cache = FeatureCache(out)
    assert not cache.is_complete(name)
    with pytest.raises(CacheError, match=f"{re.escape(str(labels))}: unreadable label file"):
        cache.labels(name)
    assert (
        featurize(read_corpus(synth_corpus), music_features, cache, progress=False)["written"] == 1
    )
    assert FeatureCache(out).labels(name)  # read back whole


@dataclasses.dataclass
class _Piece:
    name: str
    delay: float
    split: str = "train"


def _slow_when_told(piece: _Piece):
    """Features of a piece after `piece.delay` seconds (module level: workers unpickle it)."""
    time.sleep(piece.delay)
    return np.full((3, 2), len(piece.name), np.float32), {"y": np.zeros(3, np.float32)}


def test_parallel_features_are_written_in_the_pieces_order(tmp_path):
    # the first piece finishes last: the cache's order (a run's data order) is still the input's
    pieces = [_Piece("a-slow", 1.5)] + [_Piece(f"b{i}", 0.0) for i in range(5)]
    cache = FeatureCache.create(tmp_path / "cache", "demo", {"v": 1})
    summary = featurize(pieces, _slow_when_told, cache, workers=2, progress=False)
    assert summary["written"] == 6 and not summary["failed"]
    assert FeatureCache(tmp_path / "cache").names() == [p.name for p in pieces]


@dataclasses.dataclass
class _Labelled:
    name: str
    labels: np.ndarray
    audio: Path
    split: str = "train"


def _from_labels(piece: _Labelled):
    return piece.labels[:, None].astype(np.float32), {"y": piece.labels.astype(np.float32)}


def test_two_commands_writing_one_cache_take_turns_and_keep_each_others_pieces(tmp_path):
    """Each command saved the manifest it had read, and the later one dropped the pieces the
    other had written since; now the second waits for the first's lock and reads again."""
    import fcntl
    import threading

    def piece(name: str) -> _Labelled:
        return _Labelled(name, np.arange(3.0), tmp_path / f"{name}.wav")

    first = FeatureCache.create(tmp_path / "cache", "demo", {"v": 1})
    second = FeatureCache(tmp_path / "cache")  # opened by another command, before the first wrote
    assert featurize([piece("a")], _from_labels, first, progress=False)["written"] == 1
    assert featurize([piece("b")], _from_labels, second, progress=False)["written"] == 1
    assert FeatureCache(tmp_path / "cache").names() == ["a", "b"]
    # a command holding the lock: the next one waits for it
    fd = os.open(tmp_path / "cache" / ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    done = []
    waiting = threading.Thread(
        target=lambda: done.append(featurize([piece("c")], _from_labels, first, progress=False))
    )
    waiting.start()
    waiting.join(1.0)
    assert waiting.is_alive() and not done
    os.close(fd)
    waiting.join(10.0)
    assert done and done[0]["written"] == 1
    assert FeatureCache(tmp_path / "cache").names() == ["a", "b", "c"]


def test_files_a_reader_left_out_are_recorded_under_the_lock_and_only_when_they_change(
    tmp_path,
):
    """The reader's failures were saved after the lock was given back, from the manifest read
    under it: another command's pieces written in between were dropped. A cache with nothing
    to do and the same failures is not written (it may be read-only)."""
    cache = FeatureCache.create(tmp_path / "cache", "demo", {"v": 1})
    a = _Labelled("a", np.arange(3.0), tmp_path / "a.wav")
    left_out = [("b.mid", "truncated")]
    summary = featurize([a], _from_labels, cache, progress=False, failures=left_out)
    assert summary["failed"] == left_out and cache.failures() == left_out
    manifest = tmp_path / "cache" / "manifest.json"
    before = manifest.stat().st_mtime_ns
    time.sleep(0.01)
    summary = featurize([a], _from_labels, cache, progress=False, failures=left_out)
    assert summary == {"written": 0, "skipped": 1, "failed": left_out, "out": str(cache.root)}
    assert manifest.stat().st_mtime_ns == before
    featurize([a], _from_labels, cache, progress=False)  # b.mid reads again
    assert FeatureCache(tmp_path / "cache").failures() == []


def test_pieces_whose_names_make_one_file_name_keep_their_own_files(tmp_path):
    """ "a b" and "a_b" both made x/a_b.npy: the second overwrote the first's features, and
    both manifest entries read the same piece."""
    pieces = [
        _Labelled("a b", np.arange(4.0), tmp_path / "x.wav"),
        _Labelled("a_b", np.arange(7.0), tmp_path / "y.wav"),
    ]
    cache = FeatureCache.create(tmp_path / "cache", "demo", {"v": 1})
    assert featurize(pieces, _from_labels, cache, progress=False)["written"] == 2
    cache = FeatureCache(tmp_path / "cache")
    assert cache.features("a b").shape == (4, 1) and cache.features("a_b").shape == (7, 1)
    assert cache.entry("a b")["x"] != cache.entry("a_b")["x"]


def test_a_piece_is_featurised_again_when_its_source_changed(tmp_path):
    """By name alone a corrected annotation, a replaced audio file, or another file that took
    the piece's name was "already cached" and kept stale; the cache now compares a fingerprint
    of each piece's labels and files."""
    audio = tmp_path / "song.wav"
    audio.write_bytes(b"0" * 10)
    piece = _Labelled("song", np.arange(4.0), audio)
    cache = FeatureCache.create(tmp_path / "cache", "demo", {"v": 1})
    run = functools.partial(featurize, extra_of=source_of, progress=False)  # as tasks call it
    assert run([piece], _from_labels, cache)["written"] == 1
    assert run([piece], _from_labels, cache)["skipped"] == 1
    fixed = dataclasses.replace(piece, labels=np.arange(4.0) + 1)  # the annotation corrected
    assert run([fixed], _from_labels, cache)["written"] == 1
    np.testing.assert_array_equal(
        FeatureCache(tmp_path / "cache").labels("song")["y"], [1, 2, 3, 4]
    )
    audio.write_bytes(b"1" * 12)  # the audio replaced
    assert run([fixed], _from_labels, cache)["written"] == 1
    # the same folder given by another path: the same files, nothing to do
    elsewhere = dataclasses.replace(fixed, audio=tmp_path / ".." / tmp_path.name / "song.wav")
    assert run([elsewhere], _from_labels, cache)["skipped"] == 1
    # a task's own record of the audio (`source_of`: "source") stays beside the fingerprint
    entry = FeatureCache(tmp_path / "cache").entry("song")
    assert entry["source"] == str(audio) and entry["made_from"] != entry["source"]
    # an entry written before entries carried a fingerprint is kept as it is
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    del manifest["pieces"][0]["made_from"]
    (tmp_path / "cache" / "manifest.json").write_text(json.dumps(manifest))
    cache = FeatureCache(tmp_path / "cache")
    assert run([piece], _from_labels, cache)["skipped"] == 1


def test_an_embedded_cache_with_failed_pieces_is_built_again_by_the_next_command(
    tmp_path, monkeypatch
):
    """A piece that failed left the cache marked complete: no later command tried it again
    (and training then said the corpus was too small for a split). Now the next command
    tries once more; a piece that fails again is left out and the cache is complete."""
    from jaxmir.tasks.base import get_task

    task = get_task("music")
    cfg = task.preset("tiny")
    builds = []

    def build(cfg, out, cache_root, progress, failures):
        builds.append(out)
        FeatureCache.create(out, task.name, task.cache_params("synth")).record_failures(failures)

    monkeypatch.setattr(task, "build_default", lambda *a: build(*a, [("a.wav", "truncated")]))
    out = task.default_data(cfg, tmp_path)
    assert not FeatureCache(out).manifest.get("complete")
    assert task.default_data(cfg, tmp_path) == out and len(builds) == 2  # failed again
    assert FeatureCache(out).manifest["complete"]
    task.default_data(cfg, tmp_path)
    assert len(builds) == 2  # complete: not built again
    # repaired by the second try (a stem rendered again): complete at once
    other = task.preset("demo")
    monkeypatch.setattr(task, "build_default", lambda *a: build(*a, [("a.wav", "truncated")]))
    fresh = task.default_data(other, tmp_path)
    monkeypatch.setattr(task, "build_default", lambda *a: build(*a, []))
    task.default_data(other, tmp_path)
    assert FeatureCache(fresh).manifest["complete"] and not FeatureCache(fresh).failures()


def test_embedded_corpus_cache_is_named_by_its_features_too(tmp_path, monkeypatch):
    """A change of a task's features (e.g. music's 46-ms channel, cache version 2) names a new
    default cache: a complete cache of the old features is never reused for the new ones."""
    from jaxmir.tasks.base import get_task

    task = get_task("music")
    cfg = task.presets()["tiny"]
    new = task.default_cache_dir(cfg, tmp_path)
    assert task.default_cache_dir(cfg, tmp_path) == new  # stable
    assert new.parent == tmp_path / "music"
    old_params = {"feature": "cfp", "params": {}, "version": 1}
    monkeypatch.setattr(type(task), "cache_params", lambda self, dataset: old_params)
    assert task.default_cache_dir(cfg, tmp_path) != new


def test_files_written_atomically_are_as_readable_as_any_other_new_file(tmp_path):
    """The temporary file behind an atomic write is created private (0600); the file in place
    must have the mode the process gives new files, so a cache or a model folder shared with
    other users stays readable."""
    import os
    import stat

    from jaxmir.data.cache import atomic_write_bytes, atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    expected = stat.S_IMODE(plain.stat().st_mode)
    atomic_write_bytes(tmp_path / "a.bin", b"\x00")
    atomic_write_text(tmp_path / "a.json", "{}")
    cache = FeatureCache.create(tmp_path / "cache", "beat", {"version": 1})
    for path in [tmp_path / "a.bin", tmp_path / "a.json", cache.root / "manifest.json"]:
        assert stat.S_IMODE(os.stat(path).st_mode) == expected, path
    assert expected & stat.S_IROTH  # the default umask (022): readable by others


def test_a_file_that_cannot_be_written_is_named_not_its_temporary(tmp_path):
    """Where the temporary file cannot be made (a read-only folder, a name near the file
    system's limit), the error named `manifest.json.muef00ee.tmp`, a file the user never
    asked for; it now names the file being written."""
    from jaxmir.data.cache import atomic_write_text

    target = tmp_path / ("m" * 250)  # a name the folder takes, its temporary's it does not
    with pytest.raises(OSError) as info:
        atomic_write_text(target, "{}")
    assert info.value.filename == str(target)
