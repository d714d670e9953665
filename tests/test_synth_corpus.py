"""The synthetic audio corpus: rendering, augmentation, chord reduction, labels and files."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import soundfile as sf

from jaxmir.data.records import AudioPiece
from jaxmir.data.synth import augment as aug
from jaxmir.data.synth import corpus as C

# the two shortest chorales (24 and 32 quarter notes); one train, one val
SHORT = ("bach/bwv286", "bach/bwv281")
MAX_S = 6.0


def _build(out, seed=0, workers=1):
    return C.build_corpus(
        out, None, seed, workers=workers, progress=False, max_seconds=MAX_S, ids=SHORT
    )


def _labels(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, _build(out)


# --------------------------------------------------------------------------------------------
# chord reduction
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pcs", "bass", "want"),
    [
        ((0, 4, 7), None, "C:maj"),
        ((9, 0, 4), None, "A:min"),
        ((0, 3, 7), 0, "C:min"),
        ((7, 11, 2, 5), 7, "G:maj"),  # G7
        ((7, 11, 5), 11, "G:maj"),  # G7 without its fifth, first inversion
        ((2, 5, 9, 0), None, "D:min"),  # Dm7, not F6
        ((0, 4, 7, 9), 0, "C:maj"),  # C6 over C
        ((0, 4, 7, 9), 9, "A:min"),  # Am7 over A
        ((0, 4, 7, 11, 2), 0, "C:maj"),  # Cmaj9
        ((1, 5, 8, 13, 17), None, "C#:maj"),  # doubled notes, pitch numbers above 11
        ((0, 4), 0, "C:maj"),  # a bare third over its root
        ((0, 4), None, "X"),
        ((0, 4, 8), 0, "X"),  # augmented
        ((11, 2, 5), 11, "X"),  # diminished
        ((11, 2, 5, 8), 11, "X"),  # diminished seventh
        ((11, 2, 5, 9), 11, "X"),  # half-diminished
        ((0, 5, 7), 0, "X"),  # sus4
        ((0, 7), 0, "X"),  # open fifth
        ((0,), 0, "X"),
        ((), None, "N"),
    ],
)
def test_chord_class(pcs, bass, want):
    assert C.chord_class(pcs, bass) == want


def test_chord_class_transposes_and_index():
    for k in range(12):
        assert C.chord_class([(p + k) for p in (0, 4, 7)]) == C.CHORD_LABELS[k]
        assert C.chord_class([(p + k) for p in (0, 3, 7)]) == C.CHORD_LABELS[12 + k]
    assert [C.chord_index(lab) for lab in C.CHORD_LABELS] == list(range(26))
    assert C.chord_index("Bb:maj") == 10 and C.chord_index("Db:min/b3") == 13
    assert C.chord_index("E") == 4
    with pytest.raises(ValueError):
        C.chord_index("C:7")
    with pytest.raises(ValueError):
        C.chord_index("H:maj")


# --------------------------------------------------------------------------------------------
# augmentation and rendering
# --------------------------------------------------------------------------------------------


def test_augment_keeps_length_and_is_seeded():
    sr = 16000
    t = np.arange(sr) / sr
    x = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    for s in (0.5, 1.0, 2.0):
        y = aug.augment_audio(x, sr, np.random.default_rng(1), strength=s)
        assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
        assert np.array_equal(y, aug.augment_audio(x, sr, np.random.default_rng(1), strength=s))
    assert np.array_equal(aug.augment_audio(x, sr, np.random.default_rng(1), strength=0.0), x)
    rng = np.random.default_rng(2)
    for fn in (
        lambda v: aug.random_eq(v, sr, rng),
        lambda v: aug.reverb(v, aug.room_impulse_response(sr, rng, rt60=1.5), 0.5),
        lambda v: aug.add_noise(v, 20.0, rng, "brown"),
        lambda v: aug.random_gain(v, rng),
    ):
        y = fn(x)
        assert y.shape == x.shape and np.isfinite(y).all()
    assert aug.augment_audio(np.zeros(0, np.float32), sr, rng).shape == (0,)


def test_noise_colors_and_snr():
    rng = np.random.default_rng(0)
    n = 1 << 15
    lows = {}
    for color in aug.NOISE_COLORS:
        w = aug.colored_noise(n, rng, color)
        assert w.shape == (n,) and abs(np.sqrt(np.mean(w**2)) - 1) < 1e-3
        p = np.abs(np.fft.rfft(w)) ** 2
        lows[color] = p[1 : n // 64].sum() / p.sum()  # share of power below sr/128
    assert lows["white"] < lows["pink"] < lows["brown"]
    x = np.sin(np.arange(n) * 0.05).astype(np.float32)
    y = aug.add_noise(x, 10.0, rng, "pink")
    snr = 10 * np.log10(np.mean(x**2) / np.mean((y - x) ** 2))
    assert abs(snr - 10.0) < 0.1
    with pytest.raises(ValueError):
        aug.colored_noise(8, rng, "blue")


def test_mix_pads_and_scales():
    a = np.ones(4, np.float32)
    b = np.ones(2, np.float32)
    y = aug.mix({"a": a, "b": b}, {"b": -6.0206})
    np.testing.assert_allclose(y, [1.5, 1.5, 1.0, 1.0], atol=1e-4)
    with pytest.raises(KeyError):
        aug.mix({"a": a}, {"c": 0.0})


def test_render_midi_timing():
    import pretty_midi

    from jaxmir.data.synth.render import render_midi

    pm = pretty_midi.PrettyMIDI(resolution=1000, initial_tempo=60.0)
    drums = pretty_midi.Instrument(0, is_drum=True)
    drums.notes.append(pretty_midi.Note(110, 38, 0.5, 0.6))
    pm.instruments.append(drums)
    y = render_midi(pm, 22050, tail_s=0.5)
    assert y.dtype == np.float32 and y.ndim == 1 and len(y) == round(1.1 * 22050)
    assert len(pm.instruments[0].control_changes) == 0  # the caller's object is untouched
    first = np.argmax(np.abs(y) > 1e-3 * np.abs(y).max()) / 22050
    assert 0.5 - 0.002 <= first <= 0.5 + 0.005


# --------------------------------------------------------------------------------------------
# the corpus
# --------------------------------------------------------------------------------------------


def test_reserved_works_are_excluded():
    assert C.is_reserved("palestrina/agnus_01.krn") and C.is_reserved("haydn/opus74no1/movement1")
    assert C.is_reserved("monteverdi/madrigal.3.1.mxl") and C.is_reserved("mozart/k458/movement1")
    assert not any(C.is_reserved(c) for c in C.chorale_ids())
    assert all(c.startswith("bach/") for c in C.chorale_ids())
    with pytest.raises(ValueError, match="reserved"):
        C.select_chorales(ids=["beethoven/opus18no1/movement1"])


def test_corpus_files_and_labels(built):
    out, summary = built
    assert summary["pieces"] == 2 and summary["built"] == 2 and not summary["failed"]
    manifest = json.loads((out / C.MANIFEST).read_text())
    assert [e["chorale_id"] for e in manifest["pieces"]] == list(SHORT)
    assert [e["split"] for e in manifest["pieces"]] == [C.split_of(c) for c in SHORT]
    programs = set(C.VOICE_PROGRAMS) | set(C.OMNIZART_PROGRAMS)
    pieces = C.read_corpus(out)
    assert len(pieces) == 2 and all(isinstance(p, AudioPiece) for p in pieces)
    for p, entry in zip(pieces, manifest["pieces"], strict=True):
        files = C.piece_files(out, p.name)
        assert all(f.is_file() for f in files.values())
        assert not list(out.glob("*.tmp"))
        assert set(p.stems) == {"vocals", "accompaniment", "drums"}
        mixture, sr = sf.read(p.audio, dtype="float32")
        assert sr == C.SR and mixture.ndim == 1
        dur = len(mixture) / sr
        assert abs(dur - entry["duration_s"]) < 1e-3 and dur <= MAX_S + C.TAIL_S + 1e-3
        stems = {k: sf.read(v, dtype="float32")[0] for k, v in p.stems.items()}
        assert all(len(s) == len(mixture) for s in stems.values())
        resid = mixture - sum(stems.values())  # = the additive noise (+ 16-bit rounding)
        assert np.mean(resid**2) < np.mean(mixture**2) / 10 ** (15 / 10)
        for s in stems.values():
            assert np.sqrt(np.mean(s**2)) > 1e-3  # every stem sounds

        notes = p.notes
        assert notes.shape[1] == 5 and len(notes) > 10
        assert np.all(np.diff(notes[:, 0]) >= 0)
        assert np.all(notes[:, 0] >= 0) and np.all(notes[:, 1] > notes[:, 0])
        assert notes[:, 1].max() <= MAX_S + 1e-9 and notes[:, 0].max() < MAX_S
        assert set(notes[:, 4].astype(int)) <= programs
        assert np.all((notes[:, 3] >= 1) & (notes[:, 3] <= 127))
        # beats
        assert len(p.beats) > 4 and np.all(np.diff(p.beats) > 0) and p.beats[-1] < MAX_S
        assert np.all(np.min(np.abs(p.downbeats[:, None] - p.beats[None]), axis=1) < 1e-9)
        # f0 on the 10 ms grid, following the vocal notes within a semitone
        f0 = p.f0
        n_frames = int(np.floor(dur / C.FRAME_S + 1e-9)) + 1
        assert f0.shape == (n_frames, 2)
        np.testing.assert_allclose(f0[:, 0], np.arange(n_frames) * 0.01, atol=1e-12)
        assert np.all(f0[:, 1] >= 0) and (f0[:, 1] > 0).mean() > 0.5
        voc = notes[np.isin(notes[:, 4], C.VOICE_PROGRAMS)]
        for t, hz in f0[f0[:, 1] > 0][::7]:
            j = np.searchsorted(voc[:, 0], t + 1e-9) - 1
            assert voc[j, 0] <= t + 1e-9 < voc[j, 1]
            assert abs(12 * np.log2(hz / 440) + 69 - voc[j, 2]) < 1.0
        lab = _labels(files["labels"])
        assert np.array_equal(lab["melody_f0"], f0)
        # chords cover [0, duration] contiguously with valid labels
        ch = p.chords
        assert ch[0, 0] == 0 and abs(ch[-1, 1] - dur) < 1e-6
        assert np.allclose(ch[1:, 0], ch[:-1, 1]) and np.all(ch[:, 1] > ch[:, 0])
        assert set(p.chord_labels) <= set(C.CHORD_LABELS)
        assert any(lbl.endswith((":maj", ":min")) for lbl in p.chord_labels)
        assert list(lab["chord_ids"]) == [C.chord_index(c) for c in p.chord_labels]
        # drums: within the piece, all in omnizart's 13 classes
        h = p.drum_hits
        assert h.shape[1] == 2 and len(h) > 5 and h[:, 0].min() >= 0 and h[:, 0].max() < MAX_S
        assert all(C.drum_class(n) >= 0 for n in h[:, 1])
        meta = json.loads(str(lab["meta"]))
        assert meta["config"]["max_seconds"] == MAX_S
        assert meta["programs"][meta["vocal_part"]] in C.VOICE_PROGRAMS


def test_deterministic_and_eval_pieces_ignore_seed(built, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    other = tmp_path / "other"
    _build(again, seed=0)
    _build(other, seed=1)
    for cid in SHORT:
        name = C._piece_name(cid)
        a = _labels(out / f"{name}.labels.npz")
        b = _labels(again / f"{name}.labels.npz")
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        for f in (f"{name}.wav", f"{name}.vocals.wav", f"{name}.drums.wav"):
            assert (out / f).read_bytes() == (again / f).read_bytes()  # rendering is deterministic
        c = _labels(other / f"{name}.labels.npz")
        same = all(np.array_equal(a[k], c[k]) for k in a)
        assert same == (C.split_of(cid) != "train")  # val/test draw from EVAL_SEED


def test_rerun_skips_and_rebuilds_missing_stem(built):
    out, _ = built
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".wav", ".npz")}
    s = _build(out)
    assert s["built"] == 0 and s["skipped"] == 2
    name = C._piece_name(SHORT[0])
    (out / f"{name}.drums.wav").unlink()
    s = _build(out)
    assert s["built"] == 1 and s["skipped"] == 1
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".wav", ".npz")}
    assert after == before
    # a stem cut short (a full disk, a copy) was taken as finished, and every command after
    # it skipped the piece as unreadable
    mix = out / f"{name}.wav"
    mix.write_bytes(mix.read_bytes()[:100_000])
    s = _build(out)
    assert s["built"] == 1 and s["skipped"] == 1
    assert mix.read_bytes() == before[mix.name]


def test_workers_match_sequential(built, tmp_path):
    out, _ = built
    s = _build(tmp_path, workers=2)
    assert s["built"] == 2
    for cid in SHORT:
        name = C._piece_name(cid)
        a = _labels(out / f"{name}.labels.npz")
        b = _labels(tmp_path / f"{name}.labels.npz")
        assert all(np.array_equal(a[k], b[k]) for k in a)
        assert (out / f"{name}.wav").read_bytes() == (tmp_path / f"{name}.wav").read_bytes()


def test_cli_parser(tmp_path):
    from jaxmir.data.synth.cli import add_synth_parser, cmd_synth

    p = argparse.ArgumentParser()
    add_synth_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["synth", "--out", str(tmp_path), "--pieces", "3", "-j", "2"])
    assert (args.pieces, args.workers, args.seed, args.func) == (3, 2, 0, cmd_synth)
    assert args.pieces != C.DEFAULT_PIECES
    bad = p.parse_args(["synth", "--out", str(tmp_path), "--pieces", "-1"])
    assert cmd_synth(bad) == 2
    for seconds in ("nan", "inf", "0"):  # nan failed every piece with a raw warning, exit 1
        bad = p.parse_args(["synth", "--out", str(tmp_path), "--max-seconds", seconds])
        assert cmd_synth(bad) == 2


def test_the_synth_command_renders_a_piano_corpus(tmp_path, capsys):
    from jaxmir.cli import main

    out = tmp_path / "corpus"
    argv = ["synth", "--out", str(out), "--pieces", "1", "--instruments", "piano"]
    assert main(argv + ["--max-seconds", "3", "--no-progress"]) == 0
    assert '"failed": []' in capsys.readouterr().out  # the summary on stdout
    index = json.loads((out / "corpus.json").read_text())
    assert index["instruments"] == "piano" and index["summary"]["pieces"] == 1
    (piece,) = index["pieces"]
    labels = np.load(out / f"{piece['name']}.labels.npz")
    assert len(labels["notes"]) > 0 and set(labels["notes"][:, 4]) <= set(range(8))  # GM pianos
    assert len(labels["drum_hits"]) == 0  # piano: no drum kit
    assert sf.info(out / f"{piece['name']}.wav").duration <= index["max_seconds"] + 2.0


def test_a_full_disk_stops_the_corpus_in_one_line_and_leaves_no_temporary_file(
    tmp_path, monkeypatch, capsys
):
    """A full disk was a warning per piece ("skipping chorale ...: System error."), then a
    traceback, with temporary files left behind."""
    import errno
    import os

    from jaxmir.cli import main
    from jaxmir.data import cache

    real = os.replace

    def full(src, dst):  # the rename of a finished temporary: the disk filled up on its data
        if str(dst).endswith(".wav"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        real(src, dst)

    monkeypatch.setattr(cache.os, "replace", full)
    out = tmp_path / "corpus"
    with pytest.raises(OSError) as e:
        C.build_corpus(out, None, 0, progress=False, max_seconds=2.0, ids=SHORT[:1])
    assert e.value.errno == errno.ENOSPC
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    argv = ["synth", "--out", str(out), "--pieces", "1", "--max-seconds", "2", "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device; what was finished is kept" in err[0], err


def test_partial_writes_of_unfinished_pieces_are_removed(tmp_path):
    """Workers ended mid-write (Ctrl-C on `synth -j 2`) leave their temporary files; those of
    the pieces named go, nothing else (a name that another extends, finished files)."""
    names = [
        "bach__bwv248.12.wav.ab12cd.tmp",
        "bach__bwv248.12.vocals.wav.x1.tmp",
        "bach__bwv248.12-2.wav.ef34.tmp",
        "bach__bwv248.12.wav",
        "bach__bwv269.wav.zz.tmp",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = C.remove_partial_writes(tmp_path, ["bach__bwv248.12"])
    assert sorted(p.name for p in removed) == sorted(names[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])
