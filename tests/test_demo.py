"""The demo's request handling without a browser: results, bad input answered in the page, concurrent requests."""

import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from promptseg.demo import DemoSession, legend_html
from promptseg.methods import list_methods

pytest.importorskip("gradio", reason="the demo extra is not installed: pip install 'promptseg[demo]'")


@pytest.fixture(scope="module")
def session():
    return DemoSession("shapes", device="cpu")


@pytest.fixture
def scene(tmp_path):
    from promptseg.data.shapes_world import render_sample

    path = tmp_path / "scene.png"
    Image.fromarray(render_sample("test", 3).image).save(path)
    return str(path)


def _huge_png(path, side=20000):
    """A PNG whose header says side x side pixels (the pixel data is not needed to be refused)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return str(path)


def test_a_request_gives_overlay_maps_legend_and_files(session, scene):
    out = session.run(scene, "circle, square|box, sky", "baseline", "none")
    assert out.overlay is not None and out.overlay.width >= 256  # enlarged for the page
    assert [name for _, name in out.heatmaps] == ["circle", "square", "sky"]
    assert "circle" in out.legend and "square" in out.legend and "Error" not in out.status
    assert len(out.files) == 2 and out.files[0].endswith(".png") and out.files[1].endswith("_masks.json")
    again = session.run(scene, "circle, square|box, sky", "baseline", "none")
    assert np.array_equal(np.asarray(again.overlay), np.asarray(out.overlay))  # same model, same answer


def test_a_refiner_redraws_the_map_and_says_so(session, scene):
    plain = session.run(scene, "circle, square, sky", "baseline", "none", refine_name="none")
    refined = session.run(scene, "circle, square, sky", "baseline", "none", refine_name="pamr")
    assert "refiner pamr" in refined.status and "redrew" in refined.status and "refiner none" in plain.status
    assert not np.array_equal(np.asarray(refined.overlay), np.asarray(plain.overlay))


def test_long_methods_report_progress_per_step(session, scene):
    seen = []
    out = session.run(scene, "circle, sky", "invseg", "none", lambda value, desc=None: seen.append((value, desc)))
    assert out.overlay is not None
    steps = [desc for _, desc in seen if desc and desc.startswith("step ")]
    assert steps[0] == "step 1 of 15" and steps[-1] == "step 15 of 15"
    values = [value for value, _ in seen]
    assert values == sorted(values) and values[-1] == 1.0
    assert session.method("invseg").on_step is None  # unhooked after the request


def test_bad_input_is_answered_in_the_page(session, scene, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    cases = {
        "not an image": session.run(str(text), "circle", "baseline", "none"),
        "nothing uploaded": session.run(None, "circle", "baseline", "none"),
        "no labels": session.run(scene, "  ", "baseline", "none"),
        "empty label": session.run(scene, "circle,,sky", "baseline", "none"),
        "huge": session.run(_huge_png(tmp_path / "huge.png"), "circle", "baseline", "none"),
    }
    for case, out in cases.items():
        assert out.status.startswith("**Error:**") and out.overlay is None, case
        assert "Traceback" not in out.status, case
    assert "notes.png" in cases["not an image"].status
    assert "decompression bomb" in cases["huge"].status
    assert "type at least one label" in cases["no labels"].status
    assert session.run(scene, "circle, sky", "baseline", "none").overlay is not None  # still serving


def test_concurrent_requests_do_not_mix(session, scene):
    expected = {labels: session.run(scene, labels, "baseline", "none") for labels in ("circle, sky", "square, grass")}
    results = {}

    def go(labels):
        results[labels] = session.run(scene, labels, "baseline", "none")

    threads = [threading.Thread(target=go, args=(labels,)) for labels in expected for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for labels, out in results.items():
        assert np.array_equal(np.asarray(out.overlay), np.asarray(expected[labels].overlay))


def test_every_method_that_runs_on_the_backbone_is_offered():
    import gradio as gr

    from promptseg.demo import build_app

    def offered(model: str) -> set:
        app = build_app(DemoSession(model, device="cpu"))
        dropdowns = [b for b in app.blocks.values() if isinstance(b, gr.Dropdown)]
        return {choice[0] if isinstance(choice, tuple) else choice for d in dropdowns for choice in d.choices}

    on_unet = offered("shapes")
    assert set(list_methods()) - {"conceptattention"} <= on_unet and "conceptattention" not in on_unet
    assert "conceptattention" in offered("shapes-dit")  # a transformer's joint attention: offered with a DiT
    assert {"none", "clip", "diffusion"} <= on_unet
    assert {"pamr", "sam"} <= on_unet  # the refiners
    assert legend_html(["background", "cat"]).count("legend-item") == 2


def test_referring_tab_answers_an_expression(session, scene):
    pytest.importorskip("spacy")
    out = session.refer(scene, "the circle", "baseline")
    assert out.overlay is not None and "Concept words: circle" in out.status
    assert [name for _, name in out.heatmaps] == ["referent map"]
    assert any(f.endswith("_mask.png") for f in out.files) and "legend-item" in out.legend
    assert "Error" in session.refer(scene, "  ", "baseline").status
    assert "Error" in session.refer(None, "the circle", "baseline").status
    assert "does not answer" in session.refer(scene, "the circle", "fastseg").status
