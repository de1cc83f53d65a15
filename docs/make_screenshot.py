"""Make docs/demo.png, the README's picture of `promptseg demo` (needs the demo extra, playwright, chromium).

    python docs/make_screenshot.py

Starts the app on a free loopback port with the bundled model, segments an example image with the whole shapes
vocabulary and the model's default filter, and screenshots the page in headless Chromium.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from playwright.sync_api import sync_playwright

from promptseg.demo import DemoSession, build_app

HERE = Path(__file__).parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(DemoSession("shapes", device="cpu"))
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, footer_links=[])
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 960})
            page.goto(f"http://127.0.0.1:{port}/")
            page.locator("#image-input input[type=file]").set_input_files(str(HERE.parent / "examples" / "shapes_test_5.png"))
            page.locator("#method input").click()
            page.get_by_role("option", name="fastseg", exact=True).click()
            page.locator("#segment").click()
            page.wait_for_function("document.querySelector('#promptseg-legend') !== null", timeout=120_000)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(HERE / "demo.png"), full_page=True)
            browser.close()
    finally:
        app.close()
    print(f"wrote {HERE / 'demo.png'}")


if __name__ == "__main__":
    main()
