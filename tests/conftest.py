"""Test set-up: 8 simulated CPU devices, a private cache dir, and a tiny beat feature cache."""

import atexit
import os
import shutil
import tempfile

if "JAXMIR_CACHE" not in os.environ:  # a private cache, removed when the session ends
    os.environ["JAXMIR_CACHE"] = tempfile.mkdtemp(prefix="jaxmir-test-cache-")
    atexit.register(shutil.rmtree, os.environ["JAXMIR_CACHE"], ignore_errors=True)

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_platforms", "cpu")
# Identical computations compiled by different tests (the same tiny model's step, predict) are
# compiled once per session.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.environ["JAXMIR_CACHE"], "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

import pytest  # noqa: E402

from benchmarks.pipeline import build_beat_cache  # noqa: E402


@pytest.fixture(scope="session")
def beat_cache(tmp_path_factory):
    """A feature cache of 8 synthetic 12-s pieces: 6 train, 1 val, 1 test."""
    root = tmp_path_factory.mktemp("beat-cache")
    build_beat_cache(root, pieces=8, seconds=12.0, seed=0, held_out=True)
    return root


MUSIC_FIXTURE_IDS = ("bach/bwv269", "bach/bwv347", "bach/bwv281", "bach/bwv36.8-2")


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory):
    """4 rendered chorales cut to 6 s: 2 train, 1 val, 1 test (piano)."""
    from jaxmir.data.synth.corpus import build_corpus

    root = tmp_path_factory.mktemp("synth")
    build_corpus(
        root, None, 0, ids=MUSIC_FIXTURE_IDS, max_seconds=6.0, progress=False, instruments="piano"
    )
    return root


def featurized(task: str, corpus, tmp_path_factory):
    """The task's feature cache of a rendered corpus folder."""
    from jaxmir.tasks.base import get_task

    out = tmp_path_factory.mktemp(f"{task}-cache")
    get_task(task).featurize("synth", corpus, out, progress=False)
    return out


@pytest.fixture(scope="session")
def music_cache(synth_corpus, tmp_path_factory):
    return featurized("music", synth_corpus, tmp_path_factory)


@pytest.fixture(scope="session")
def mixed_corpus(tmp_path_factory):
    """The same 4 chorales cut to 6 s with the mixed arrangement: a sung line (exact f0),
    accompaniment and drums."""
    from jaxmir.data.synth.corpus import build_corpus

    root = tmp_path_factory.mktemp("synth-mixed")
    build_corpus(root, None, 0, ids=MUSIC_FIXTURE_IDS, max_seconds=6.0, progress=False)
    return root


@pytest.fixture(scope="session")
def contour_cache(mixed_corpus, tmp_path_factory):
    return featurized("vocal_contour", mixed_corpus, tmp_path_factory)


@pytest.fixture(scope="session")
def patch_cache(mixed_corpus, tmp_path_factory):
    return featurized("patch_cnn", mixed_corpus, tmp_path_factory)


@pytest.fixture(scope="session")
def vocal_cache(mixed_corpus, tmp_path_factory):
    return featurized("vocal", mixed_corpus, tmp_path_factory)


@pytest.fixture(scope="session")
def chord_cache(mixed_corpus, tmp_path_factory):
    return featurized("chord", mixed_corpus, tmp_path_factory)


@pytest.fixture(scope="session")
def drum_cache(mixed_corpus, tmp_path_factory):
    return featurized("drum", mixed_corpus, tmp_path_factory)
