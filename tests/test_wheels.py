"""The two distributions this repository builds: the library's wheel (code and small tables, under 10 MB) and the
bundled models' (`zoo/`, promptseg-models), whose sizes the README states."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheels")
    for project in (ROOT, ROOT / "zoo"):  # no isolation: the build backend is the dev install's setuptools
        done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out),
                               str(project)], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    return {w.name.split("-")[0]: w for w in out.glob("*.whl")}


def _readme_mb(pattern: str) -> float:
    return float(re.search(pattern, (ROOT / "README.md").read_text()).group(1))


def test_the_library_wheel_holds_the_code_and_no_model(wheels):
    wheel = wheels["promptseg"]
    names = zipfile.ZipFile(wheel).namelist()
    assert "promptseg/pipeline.py" in names and "promptseg/models/activations.json" in names
    assert "promptseg/data/classnames/shapes.txt" in names
    assert not [n for n in names if n.endswith(".safetensors")]
    size = wheel.stat().st_size / 1e6
    assert size < 10 and abs(size - _readme_mb(r"a ([0-9.]+) MB wheel")) <= 0.1 + 0.2 * size


def test_the_models_wheel_holds_every_bundled_model(wheels):
    from promptseg.models.zoo import BUNDLED

    wheel = wheels["promptseg_models"]
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in BUNDLED.values():
        for path in model.folder.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                assert f"promptseg_models/{path.relative_to(model.folder.parent).as_posix()}" in names
    size = wheel.stat().st_size / 1e6
    assert abs(size - _readme_mb(r"the bundled models \(([0-9.]+) MB\)")) <= 0.05 * size
