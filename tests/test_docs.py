"""The README's and the getting-started page's commands and snippets: each fenced block is marked runnable (and is
run here, on the bundled models) or says why it is not run; none is left unmarked."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "getting-started.md"]
BLOCK = re.compile(r"(?:<!-- (runnable|not run: [^>]+?) -->\n)?```(bash|python)\n(.*?)```", re.S)


def blocks() -> list[tuple[str, int, str | None, str, str]]:
    """(page, index, marker, language, code) of every bash and python block of the pages."""
    return [(page.relative_to(ROOT).as_posix(), i, m.group(1), m.group(2), m.group(3))
            for page in PAGES for i, m in enumerate(BLOCK.finditer(page.read_text()))]


RUNNABLE = [b for b in blocks() if b[2] == "runnable"]


def test_every_block_is_run_or_says_why_not():
    unmarked = [f"{page} block {i}" for page, i, marker, *_ in blocks() if marker is None]
    assert not unmarked, f"mark these <!-- runnable --> or <!-- not run: why -->: {unmarked}"
    assert len(RUNNABLE) >= 3


@pytest.mark.parametrize("page, index, marker, language, code", RUNNABLE, ids=[f"{b[0]}-{b[1]}" for b in RUNNABLE])
def test_a_runnable_block_runs_on_the_bundled_models(page, index, marker, language, code, tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    shutil.copy(ROOT / "src" / "promptseg" / "data" / "classnames" / "shapes.txt", tmp_path / "classes.txt")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT / "src")}
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{page} block {index} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    for out in re.findall(r"--out (\S+)", code):  # every output folder a command names was written
        assert any((tmp_path / out).rglob("*")), f"{page} block {index}: nothing written to {out}"
