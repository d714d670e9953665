"""The varied corpus: procedural pieces, the held-out engine, the note-offset labels and their
decoder, and the warm-up + cosine schedule."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from jaxmir.config import OptimConfig
from jaxmir.data.synth import textures as T
from jaxmir.engine.optim import learning_rate_schedule
from jaxmir.tasks.music.decode import decode_notes_simple
from jaxmir.tasks.music.labels import FPS, music_labels


@pytest.mark.parametrize("seed", range(12))
def test_texture_pieces_are_valid_and_varied(seed):
    p = T.texture_piece(np.random.default_rng(seed), seconds=20.0)
    n = p.notes
    assert len(n) > 10
    assert np.all((n[:, 2] >= 21) & (n[:, 2] <= 108))
    assert np.all(n[:, 1] > n[:, 0]) and np.all(n[:, 0] >= 0)
    assert np.all((n[:, 3] >= 1) & (n[:, 3] <= 127))
    assert np.all(np.diff(n[:, 0]) >= 0)
    assert len(p.beats) >= 4 and np.all(np.diff(p.beats) > 0)
    assert set(np.round(p.downbeats, 9)) <= set(np.round(p.beats, 9))
    # a key never sounds twice at once in one hand (the renderer's channels need that)
    for hand in np.unique(n[:, 4]):
        for key in np.unique(n[n[:, 4] == hand, 2]):
            rows = n[(n[:, 4] == hand) & (n[:, 2] == key)]
            assert np.all(rows[1:, 0] >= rows[:-1, 1] - 1e-9) or len(rows) < 2
    assert p.meta["meter"] in {f"{a}/{b}" for a, b in T.METERS}


def test_textures_cover_meters_tempi_and_the_keyboard():
    pieces = [T.texture_piece(np.random.default_rng(s), seconds=15.0) for s in range(40)]
    meters = {p.meta["meter"] for p in pieces}
    assert {"6/8", "2/2", "3/4", "4/4"} <= meters
    bpm = [p.meta["bpm"] for p in pieces]
    assert min(bpm) < 70 and max(bpm) > 160
    keys = np.concatenate([p.notes[:, 2] for p in pieces])
    assert keys.min() <= 26 and keys.max() >= 100
    vel = np.concatenate([p.notes[:, 3] for p in pieces])
    assert vel.min() < 30 and vel.max() > 110


def test_pedal_holds_notes_until_it_lifts_or_the_key_returns():
    notes = np.array(
        [[0.0, 0.2, 60, 80, 0], [0.5, 0.6, 64, 80, 0], [0.7, 0.8, 60, 80, 0]], np.float64
    )
    out = T._pedal(notes, np.array([1.0, 2.0]))
    assert out[0, 1] == pytest.approx(0.7)  # held, cut where key 60 is struck again
    assert out[1, 1] == pytest.approx(1.0)  # held to the lift
    assert out[2, 1] == pytest.approx(1.0)


def test_random_pieces_reach_every_polyphony_and_duration():
    p = T.random_piece(np.random.default_rng(3), seconds=60.0)
    polys = {s["polyphony"] for s in p.meta["segments"]}
    assert polys <= set(range(1, 9)) and len(polys) >= 4
    dur = p.notes[:, 1] - p.notes[:, 0]
    assert dur.min() < 0.1 and dur.max() > 1.0
    assert len(p.beats) == 0


def test_note_offset_labels_mark_the_last_frame_and_the_next():
    notes = np.array([[0.1, 0.5, 60, 90, 0]])  # frames 5 .. 24
    y = music_labels(notes, 40, "note-offset")
    assert y.shape == (40, 352, 4)
    k = (60 - 21) * 4
    off = y[:, k, 3]
    assert list(np.flatnonzero(off)) == [24, 25]
    on = y[:, k, 2]
    assert on[5] == on[6] == 1.0
    frame = y[:, k, 1] + y[:, k, 2]
    assert list(np.flatnonzero(frame > 0.5)) == list(range(5, 25))
    # the offset channel is not part of the background's complement
    assert y[25, k, 0] == 1.0 and y[10, k, 0] == 0.0


def test_decoder_ends_notes_at_the_offset_channel():
    notes = np.array([[0.1, 0.5, 60, 90, 0]])
    post = music_labels(notes, 40, "note-offset")
    post[:, :, 1] = np.where(np.arange(40)[:, None] < 35, post[:, :, 1] + post[:, :, 3], 0.0)
    post[24:35, (60 - 21) * 4 : (61 - 21) * 4, 1] = 1.0  # frames say the note goes on to 35
    est = decode_notes_simple(post, "note-offset", offset_threshold=0.5)
    assert len(est) == 1
    assert est[0, 0] == pytest.approx(5 / FPS) and est[0, 1] == pytest.approx(25 / FPS)
    late = decode_notes_simple(post, "note-offset", offset_threshold=1.1)  # offsets ignored
    assert late[0, 1] == pytest.approx(35 / FPS)


def test_warmup_cosine_schedule():
    cfg = OptimConfig(
        learning_rate=1e-3, lr_schedule="warmup_cosine", warmup_steps=10, decay_steps=110
    )
    lr = learning_rate_schedule(cfg)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == pytest.approx(1e-3)
    assert float(lr(60)) == pytest.approx(5e-4, rel=1e-4)
    assert float(lr(110)) == pytest.approx(0.0, abs=1e-9)


def test_varied_corpus_holds_one_engine_out_of_training(tmp_path):
    from jaxmir.data.synth import corpus as C

    variety = C.Variety(voices=1.0, holdout="fm", piece_seconds=3.0)
    kwargs = dict(max_seconds=3.0, instruments="both", variety=variety, textures=3)
    kwargs.update(random_pieces=3, progress=False)
    summary = C.build_corpus(tmp_path, 3, 0, **kwargs)
    assert not summary["failed"]
    splits = summary["splits"]
    assert splits["test"] == splits["test_piano"] == splits["test_mixed"] == splits["test_heldout"]
    manifest = json.loads((tmp_path / "corpus.json").read_text())
    seen: dict[str, set] = {}
    for e in manifest["pieces"]:
        with np.load(tmp_path / e["files"]["labels"]) as z:
            meta = json.loads(str(z["meta"]))
            notes = z["notes"]
        engines = {v["engine"] for v in meta.get("voices", {}).values()}
        seen.setdefault(e["split"], set()).update(engines)
        if meta["subset"] != "mixed":
            assert np.all(notes[:, 4] == 0)  # piano and held-out labels: program 0
    assert seen["test_heldout"] == {"fm"}
    assert "fm" not in seen["train"] | seen["val"] | seen["test_mixed"]
    # rebuilding finds every piece finished
    again = C.build_corpus(tmp_path, 3, 0, **kwargs)
    assert again["built"] == 0


def test_reserved_works_are_never_chosen():
    from jaxmir.data.synth import corpus as C

    ids = C.work_ids()
    assert len(ids) > 50
    assert not [i for i in ids if C.is_reserved(i)]
    assert len({i.split("/")[0] for i in ids[:20]}) >= 15  # interleaved across composers


def test_beat_textures_keep_unseen_meters_and_tempi_out_of_training():
    from jaxmir.tasks.beat.task import BeatDataConfig, texture_pieces

    d = BeatDataConfig(corpus_textures=24, corpus_unseen=6, corpus_bpm=(40.0, 220.0))
    pieces = list(texture_pieces(d))
    assert sum(s == "test_unseen" for _, s in pieces) == 6
    for piece, split in pieces:
        ibi = np.median(np.diff(piece.beats))
        bpm = 60.0 / ibi
        if split == "test_unseen":
            assert bpm < 41.0 or bpm > 200.0  # outside the training range (rubato aside)
        else:
            assert 30.0 < bpm < 260.0
        assert len(piece.downbeats) >= 2 and piece.notes.shape[1] == 4


def test_meter_changes_give_bars_of_several_lengths_on_one_beat():
    from jaxmir.data.synth.textures import METERS, meter_beats, texture_piece

    lengths_seen = set()
    for seed in range(12):
        p = texture_piece(np.random.default_rng(seed), 40.0, meter_change=0.9)
        meters = p.meta["meters"]
        beat_q = meter_beats(*map(int, p.meta["meter"].split("/")))[1]
        # one beat unit throughout, every bar's meter a training meter, four-bar phrases
        assert {meter_beats(*map(int, m.split("/")))[1] for m in meters} == {beat_q}
        assert {tuple(map(int, m.split("/"))) for m in meters} <= set(METERS)
        assert all(len(set(meters[i : i + 4])) == 1 for i in range(0, len(meters), 4))
        # each downbeat is a beat, and a bar holds its meter's beats
        idx = np.searchsorted(p.beats, p.downbeats)
        assert np.allclose(p.beats[idx], p.downbeats)
        bar_beats = [meter_beats(*map(int, m.split("/")))[0] for m in meters]
        assert list(np.diff(idx)) == bar_beats[: len(idx) - 1]
        lengths_seen.update(np.diff(idx).tolist())
    assert len(lengths_seen) >= 3
    # without changes no bar-by-bar meters are recorded, and one bar length is kept
    p = texture_piece(np.random.default_rng(3), 40.0)
    assert "meters" not in p.meta
    assert len(set(np.diff(np.searchsorted(p.beats, p.downbeats)).tolist())) == 1


def test_beat_meter_changes_reach_training_textures_only():
    from jaxmir.tasks.beat.task import TASK, BeatDataConfig, texture_pieces

    plain = BeatDataConfig(corpus_textures=40, corpus_unseen=4, corpus_bpm=(40.0, 220.0))
    changed = dataclasses.replace(plain, corpus_meter_changes=0.9)
    a, b = list(texture_pieces(plain)), list(texture_pieces(changed))
    assert [s for _, s in a] == [s for _, s in b]
    varied = 0
    for (pa, split), (pb, _) in zip(a, b, strict=True):
        same = np.array_equal(pa.downbeats, pb.downbeats) and np.array_equal(pa.notes, pb.notes)
        if split != "train":
            assert same  # as without changes: the pieces drawn before (test below)
        else:
            varied += len(set(np.diff(np.searchsorted(pb.beats, pb.downbeats)).tolist())) > 1
    assert varied >= 5
    # a corpus without changes keeps its cache's name; with them it gets its own
    assert "meter_changes" not in TASK.corpus_params(TASK.preset("wide"))
    assert TASK.corpus_params(TASK.preset("quality"))["meter_changes"] == 0.5


# sha256 (first 16 hex digits) of the notes, beats and downbeats, rounded to 1e-6, that the
# generator drew for seeds 0-3 before meter changes existed (training meters; unseen ones)
TEXTURES_BEFORE = {
    0: ("44aa79df5539d75c", "f92fcf53d78a27de"),
    1: ("5ee1589d2c9f16d4", "2eca1a0069448366"),
    2: ("60cd896f0f3ef990", "5ed273adbcea0a94"),
    3: ("10bc5a0c72ad7263", "55468e9ad8087ade"),
}


@pytest.mark.parametrize("seed", sorted(TEXTURES_BEFORE))
def test_textures_without_meter_changes_are_the_pieces_drawn_before(seed):
    import hashlib

    def digest(p: T.ProceduralPiece) -> str:
        h = hashlib.sha256()
        for a in (p.notes, p.beats, p.downbeats):
            h.update(np.round(np.asarray(a, np.float64), 6).tobytes())
        return h.hexdigest()[:16]

    seen = T.texture_piece(np.random.default_rng(seed), 40.0)
    unseen = T.texture_piece(np.random.default_rng(seed), 40.0, T.UNSEEN_METERS, T.UNSEEN_TEMPI)
    assert (digest(seen), digest(unseen)) == TEXTURES_BEFORE[seed]


def _overtone_share(audio: np.ndarray, notes: np.ndarray, sr: int) -> float:
    """The share of the spectrum's energy near the sounding notes' overtones (2-6 times the
    fundamental) and not near the fundamental of a note sounding or ringing out, over 93-ms frames in the middle of
    notes: about 0 for pure sines, clearly more for instruments."""
    n = 4096
    window = np.hanning(n)
    freqs = np.fft.rfftfreq(n, 1 / sr)[1:, None]
    shares = []
    for t in np.arange(0.2, len(audio) / sr - 0.2, 0.25):
        sounding = notes[(notes[:, 0] < t - 0.1) & (notes[:, 1] > t + 0.1)]
        if not len(sounding):
            continue
        i = int(t * sr) - n // 2
        power = np.abs(np.fft.rfft(audio[i : i + n] * window))[1:] ** 2
        f0 = 440.0 * 2 ** ((sounding[:, 2] - 69) / 12)
        partials = (f0[:, None] * np.arange(2, 7)).ravel()
        around = notes[(notes[:, 0] < t + 0.3) & (notes[:, 1] > t - 0.3)]  # releases too
        fundamentals = 440.0 * 2 ** ((around[:, 2] - 69) / 12)

        def near(f):  # within a quarter tone, or the window's main lobe (25 Hz)
            width = np.maximum(f * (2 ** (1 / 24) - 1), 25.0)
            return np.any(np.abs(freqs - f[None, :]) < width[None, :], axis=1)

        shares.append(power[near(partials) & ~near(fundamentals)].sum() / power.sum())
    return float(np.mean(shares))


def test_a_test_soundfont_plays_its_own_renderings_of_the_test_pieces(tmp_path):
    import soundfile as sf
    from sine_soundfont import write_sine_soundfont

    from jaxmir.data.synth import corpus as C
    from jaxmir.data.synth.render import soundfont_digest

    sine = write_sine_soundfont(tmp_path / "sine.sf2")
    variety = C.Variety(voices=0.5, holdout=None, piece_seconds=4.0, test_soundfont=str(sine))
    kwargs = dict(max_seconds=4.0, instruments="both", variety=variety, progress=False)
    kwargs.update(augment=False)  # dry: no reverb or noise to blur the spectra
    summary = C.build_corpus(tmp_path / "corpus", 3, 0, **kwargs)
    assert not summary["failed"]
    splits = summary["splits"]
    assert splits["test"] == splits["test_sf_piano"] == splits["test_sf_mixed"] == 1
    manifest = json.loads((tmp_path / "corpus" / "corpus.json").read_text())
    by_split = {e["split"]: e for e in manifest["pieces"] if e["split"].startswith("test")}
    share = {}
    for split, e in by_split.items():
        with np.load(tmp_path / "corpus" / e["files"]["labels"]) as z:
            meta = json.loads(str(z["meta"]))
            notes = z["notes"]
        audio, sr = sf.read(tmp_path / "corpus" / e["files"]["mixture"])
        share[split] = _overtone_share(audio, notes, sr)
        if split.startswith("test_sf_"):
            assert "voices" not in meta  # the soundfont alone
            assert meta["config"]["soundfont"] == soundfont_digest(sine)
        else:
            assert "soundfont" not in meta["config"]
    # only the sine soundfont's renderings have no overtones
    assert share["test_sf_piano"] < 0.01 and share["test_sf_mixed"] < 0.01, share
    assert share["test_piano"] > 0.05 and share["test_mixed"] > 0.05, share


def test_a_test_soundfont_leaves_every_other_rendering_as_it_was(tmp_path):
    from sine_soundfont import write_sine_soundfont

    from jaxmir.data.synth import corpus as C
    from jaxmir.data.synth.render import SoundfontError
    from jaxmir.tasks.base import ConfigError, corpus_params, params_digest
    from jaxmir.tasks.music.task import TASK

    sine = write_sine_soundfont(tmp_path / "sine.sf2")
    plain = C._Job("bach/bwv66.6", "train", "out", 0, None, True, "both", C.Variety())
    with_sf = C._Job(
        "bach/bwv66.6", "train", "out", 0, None, True, "both", C.Variety(test_soundfont=str(sine))
    )
    assert plain.config() == with_sf.config()  # the pieces already rendered stay valid
    assert "test_soundfont" not in plain.config()["variety"]

    quality = TASK.preset("quality").data
    digest = params_digest(corpus_params(quality))
    moved = tmp_path / "elsewhere.sf2"
    moved.write_bytes(sine.read_bytes())
    sf_params = [
        corpus_params(dataclasses.replace(quality, corpus_test_soundfont=str(p)))
        for p in (sine, moved)
    ]
    assert sf_params[0] == sf_params[1]  # the file's content names the corpus, not its path
    assert params_digest(sf_params[0]) != digest

    not_sf2 = tmp_path / "notes.txt"
    not_sf2.write_text("not a soundfont")
    for bad, why in ((not_sf2, "not a SoundFont 2 file"), (tmp_path / "none.sf2", "cannot read")):
        with pytest.raises(SoundfontError, match=why) as e:
            corpus_params(dataclasses.replace(quality, corpus_test_soundfont=str(bad)))
        assert str(bad) in str(e.value)
    chorales = TASK.preset("paper").data
    with pytest.raises(ConfigError, match="varied corpus"):
        corpus_params(dataclasses.replace(chorales, corpus_test_soundfont=str(sine)))


def test_wide_programs_reach_beyond_omnizarts_classes_in_training_only():
    from jaxmir.data.synth import corpus as C
    from jaxmir.tasks.base import ConfigError, corpus_params
    from jaxmir.tasks.music.task import TASK

    wide = C.Variety(programs="wide", piece_seconds=5.0)
    drawn = {}
    for split in ("train", "val", "test"):
        programs = set()
        for i in range(30):
            job = C._Job(f"texture/{i:04d}", split, "out", i, 5.0, True, "mixed", wide)
            programs |= set(C._arrange_procedural(job, "mixed").programs)
        drawn[split] = programs
    assert drawn["train"] <= set(C.WIDE_PROGRAMS) and drawn["val"] <= set(C.WIDE_PROGRAMS)
    assert len(drawn["train"] - set(C.OMNIZART_PROGRAMS)) > 20
    assert drawn["test"] <= set(C.OMNIZART_PROGRAMS)  # the test splits stay as they were
    assert not {47, 55, *range(96, 104), *range(112, 128)} & (drawn["train"] | drawn["val"])
    # the default leaves every piece's config as it was before the choice existed
    job = C._Job("bach/bwv66.6", "train", "out", 0, None, True, "both", C.Variety())
    assert "programs" not in job.config()["variety"]
    assert dataclasses.replace(job, variety=wide).config()["variety"]["programs"] == "wide"

    quality = TASK.preset("quality")
    as_wide = dataclasses.replace(quality.data, corpus_programs="wide")
    assert corpus_params(as_wide)["programs"] == "wide"
    assert "programs" not in corpus_params(quality.data)
    streams = dataclasses.replace(
        quality, data=dataclasses.replace(as_wide, label_mode="note-stream")
    )
    with pytest.raises(ConfigError, match="note-stream"):
        TASK.corpus_params(streams)
    with pytest.raises(ConfigError, match="unknown set 'all'"):
        corpus_params(dataclasses.replace(quality.data, corpus_programs="all"))
    with pytest.raises(ConfigError, match="varied corpus"):
        corpus_params(dataclasses.replace(TASK.preset("paper").data, corpus_programs="wide"))


def check_corpus_option(key: str, value: float, bad: float, bad_reason: str) -> None:
    """A corpus option of the varied corpus (`data.corpus_<key>`): absent from the corpus
    parameters by default (corpora built before keep their digest), named when set, `bad`
    refused with `bad_reason`, and refused on the chorale-only corpus."""
    from jaxmir.tasks.base import ConfigError, corpus_params
    from jaxmir.tasks.music.task import TASK

    field = f"corpus_{key}"
    quality = TASK.preset("quality").data
    assert key not in corpus_params(quality)
    assert corpus_params(dataclasses.replace(quality, **{field: value}))[key] == value
    with pytest.raises(ConfigError, match=bad_reason):
        corpus_params(dataclasses.replace(quality, **{field: bad}))
    with pytest.raises(ConfigError, match="varied corpus"):
        corpus_params(dataclasses.replace(TASK.preset("paper").data, **{field: value}))


def test_part_eq_gives_training_parts_their_own_instrument_body_and_leaves_test_pieces_alone():
    import pretty_midi

    from jaxmir.data.synth import augment as aug
    from jaxmir.data.synth import corpus as C
    from jaxmir.data.synth.render import render_midi

    def render(split: str, part_eq: float):
        variety = C.Variety(voices=0.0, holdout=None, piece_seconds=4.0, part_eq=part_eq)
        job = C._Job("texture/0003", split, "out", 0, 4.0, False, "mixed", variety)
        audio, labels = C._synthesize(job)
        return job, audio["accompaniment"], labels

    def band_db(x: np.ndarray) -> np.ndarray:  # energy in 12 log-spaced bands, 150 Hz-5 kHz
        spec = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1.0 / C.SR)
        edges = np.geomspace(150.0, 5000.0, 13)
        return np.array(
            [
                10 * np.log10(spec[(f >= lo) & (f < hi)].sum() + 1e-12)
                for lo, hi in zip(edges[:-1], edges[1:], strict=True)
            ]
        )

    job0, plain, labels0 = render("train", 0.0)
    job1, shaped, labels1 = render("train", 1.0)
    meta1 = json.loads(str(labels1["meta"]))
    n_parts = len(meta1["programs"])
    assert n_parts >= 2 and len(meta1["part_eq"]) == n_parts  # p = 1: every part
    assert "part_eq" not in json.loads(str(labels0["meta"]))
    np.testing.assert_array_equal(labels0["notes"], labels1["notes"])  # the labels stay exact
    assert not np.array_equal(shaped, plain)
    # a part keeps its level through its body; its spectrum is re-weighted, not scaled
    part = pretty_midi.PrettyMIDI(resolution=1000, initial_tempo=60.0)
    inst = pretty_midi.Instrument(40, name="part0")
    inst.notes = [pretty_midi.Note(90, 48 + 7 * i, 0.5 * i, 0.5 * i + 0.4) for i in range(6)]
    part.instruments.append(inst)
    n = int(4.0 * C.SR)
    alone = C._fit(render_midi(part, C.SR, tail_s=C.TAIL_S), n)
    bodied, names = C._render_stem(part, job1, n, np.random.default_rng(0))
    assert names == ["part0"]
    assert abs(C._rms_db(bodied) - C._rms_db(alone)) < 0.01
    assert np.ptp(band_db(bodied) - band_db(alone)) > 3.0
    assert job1.config()["variety"]["part_eq"] == 1.0 and "part_eq" not in job0.config()["variety"]

    job_t, test_audio, test_labels = render("test", 1.0)
    _, test_plain, _ = render("test", 0.0)
    np.testing.assert_array_equal(test_audio, test_plain)  # test pieces never
    assert "part_eq" not in json.loads(str(test_labels["meta"]))
    assert "part_eq" not in job_t.config()["variety"]  # the rendered test pieces stay valid

    sos = aug.timbre_eq_sos(C.SR, np.random.default_rng(0))
    np.testing.assert_array_equal(sos, aug.timbre_eq_sos(C.SR, np.random.default_rng(0)))
    assert all(np.all(np.abs(np.roots([1.0, *s[4:]])) < 1.0) for s in sos)  # stable

    check_corpus_option("part_eq", 0.5, 1.5, "probability")


def test_rt60_max_gives_training_pieces_longer_rooms_and_leaves_test_pieces_alone():
    """With `Variety.rt60_max` a train or val piece's room is drawn from 0.2 s to that many
    seconds from the same random draw (the same piece gets its room's time stretched; the
    draws after it, wet mix and noise, follow from the longer response); test pieces are
    bit-identical with and without."""
    from jaxmir.data.synth import augment as aug
    from jaxmir.data.synth import corpus as C

    def render(split: str, rt60_max: float | None, seed: int = 1):
        variety = C.Variety(voices=0.0, holdout=None, piece_seconds=3.0, rt60_max=rt60_max)
        job = C._Job("texture/0003", split, "out", seed, 3.0, True, "mixed", variety)
        audio, labels = C._synthesize(job)
        return job, audio["mixture"], json.loads(str(labels["meta"]))

    job0, plain, meta0 = render("train", None)
    job1, roomy, meta1 = render("train", 3.0)
    lo, hi = aug.RT60_RANGE
    assert "rt60" in meta0["audio"]  # this piece is reverberated (80 % are)
    u = (meta0["audio"]["rt60"] - lo) / (hi - lo)
    assert abs(meta1["audio"]["rt60"] - (lo + u * (3.0 - lo))) < 1e-9
    assert not np.array_equal(plain, roomy)
    assert (
        job1.config()["variety"]["rt60_max"] == 3.0 and "rt60_max" not in job0.config()["variety"]
    )

    job_t, test_roomy, _ = render("test", 3.0)
    _, test_plain, _ = render("test", None)
    np.testing.assert_array_equal(test_roomy, test_plain)  # test pieces never
    assert "rt60_max" not in job_t.config()["variety"]  # the rendered test pieces stay valid

    check_corpus_option("rt60_max", 3.0, 0.1, "seconds")


def test_the_wide_beat_corpus_writes_works_textures_and_both_extra_test_splits(tmp_path):
    """`BeatTask.build_default` with every source on: chorales, other music21 works (an eighth
    as many again for validation and test), textures, `test_sparse` (each test score thinned)
    and `test_unseen` (textures in meters no training piece has)."""
    from jaxmir.config import apply_overrides
    from jaxmir.data.cache import FeatureCache
    from jaxmir.tasks.beat.task import TASK, texture_piece_of

    sizes = {"train": 2, "val": 1, "test": 1, "works": 8, "textures": 4, "unseen": 2}
    overrides = [f"data.corpus_{k}={v}" for k, v in sizes.items()]
    overrides += ["data.corpus_part_subsets=0.5", "data.corpus_variants=1"]
    cfg = apply_overrides(TASK.preset("tiny"), overrides)
    cache = FeatureCache(TASK.default_data(cfg, tmp_path, progress=False))
    names = {s: cache.names(s) for s in ("train", "val", "test", "test_sparse", "test_unseen")}
    chorales = {s: [n for n in v if n.startswith("bach__")] for s, v in names.items()}
    assert [len(chorales[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    works = {
        s: [n for n in v if not n.startswith(("bach__", "texture__"))] for s, v in names.items()
    }
    assert [len(works[s]) for s in ("train", "val", "test")] == [8, 1, 1]
    assert sum(n.startswith("texture__") for s in ("train", "val", "test") for n in names[s]) == 4
    assert sorted(names["test_sparse"]) == sorted(
        f"{n}__sparse" for n in names["test"] if not n.startswith("texture__")
    )
    assert names["test_unseen"] == ["unseen__0000", "unseen__0001"]

    def beats_per_bar(name: str) -> int:
        labels = cache.labels(name)
        beats, downbeats = labels["beats"], labels["downbeats"]
        return int(np.median(np.diff(np.searchsorted(beats, downbeats))))

    trained = {
        beats_per_bar(n)
        for s in ("train", "val", "test")
        for n in names[s]
        if n.startswith("texture__")
    }
    assert trained <= {1, 2, 3, 4, 5}
    assert {beats_per_bar(n) for n in names["test_unseen"]} <= {2, 3, 7}
    for i, name in enumerate(names["test_unseen"]):  # the draws of meters training never has
        piece, meta = texture_piece_of(f"unseen/{i:04d}", cfg.data, unseen=True)
        assert meta["meter"] in {"3/2", "6/4", "7/4"}
        np.testing.assert_allclose(cache.labels(name)["beats"], piece.beats)
    for name in names["test_sparse"]:  # the same score, some parts left out
        assert len(cache.labels(name)["notes"]) < len(
            cache.labels(name[: -len("__sparse")])["notes"]
        )
