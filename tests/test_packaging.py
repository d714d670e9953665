"""A wheel carries every file a shipped model loads: the package-data patterns of
pyproject.toml match them all (an editable install reads the source tree and would not notice)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "jaxmir" / "models"
CURVES = {"metrics.jsonl", "curves.png"}  # for people to read; nothing loads them


def test_package_data_covers_every_shipped_model_file():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["jaxmir.models"]
    files = [p for p in MODELS.rglob("*") if p.is_file() and p.suffix != ".py"]
    needed = [p.relative_to(MODELS).as_posix() for p in files if p.name not in CURVES]
    assert needed, f"{MODELS}: no shipped model files"
    missing = [n for n in needed if not any(fnmatch.fnmatch(n, pat) for pat in patterns)]
    assert missing == [], f"shipped model files a wheel would leave out: {missing}"
