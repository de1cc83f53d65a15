"""The web demo driven in a real browser (headless Chromium through Playwright), as a person would use it.

Needs the `demo` extra, Playwright and Debian's `chromium` (installed by `make test`); skipped, with the reason,
only where those cannot be had.
"""

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser
pytest.importorskip("gradio", reason="the demo extra is not installed: pip install 'promptseg[demo]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium executable (Debian: apt-get install chromium)", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "shapes_test_5.png"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "promptseg.cli", "demo", "--port", str(port), "--device", "cpu"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the demo exited with {proc.returncode}:\n{(tmp_path / 'server.log').read_text()}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"the demo did not answer in 180 s:\n{(tmp_path / 'server.log').read_text()}")
                time.sleep(1)
        yield url
    finally:  # stopped whatever happens
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _image_from_src(page, src: str) -> np.ndarray:
    if src.startswith("data:"):
        data = base64.b64decode(src.split(",", 1)[1])
    else:
        data = page.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_segment_an_example_and_see_an_error_for_a_non_image(server, tmp_path):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(server)
            page.locator("#image-input input[type=file]").set_input_files(str(EXAMPLE))
            page.locator("#labels textarea").fill("triangle, square, sand")
            page.locator("#filter input").click()
            page.get_by_role("option", name="none", exact=True).click()  # every typed label reaches the method
            page.locator("#segment").click()
            page.wait_for_selector("#overlay img", timeout=120_000)
            page.wait_for_function("document.querySelector('#promptseg-legend') !== null", timeout=30_000)
            legend = page.locator("#promptseg-legend").inner_text()
            status = page.locator("#status").inner_text()
            shown = _image_from_src(page, page.locator("#overlay img").get_attribute("src"))

            page.goto(server)
            bad = tmp_path / "notes.png"
            bad.write_text("this is not an image")
            page.locator("#image-input input[type=file]").set_input_files(str(bad))
            page.locator("#segment").click()
            page.wait_for_function("document.querySelector('#status').innerText.includes('Error')", timeout=60_000)
            error = page.locator("#status").inner_text()
        finally:
            browser.close()
    # the overlay differs from the input picture (scaled to the same size), and the legend names the labels
    original = np.asarray(Image.open(EXAMPLE).convert("RGB").resize((shown.shape[1], shown.shape[1]), Image.BICUBIC))
    top = shown[: original.shape[0]].astype(int)
    assert np.abs(top - original).mean() > 10
    assert [name for name in ("triangle", "square", "sand") if name in legend] == ["triangle", "square", "sand"]
    assert "baseline" in status and "filter none" in status
    assert "notes.png" in error and "Traceback" not in error
