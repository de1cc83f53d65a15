"""The README's VOC21 evaluation, end to end, on reduced SD-2.1-base (random weights, SD's topology): every semantic
method completes on an image holding background + person + sofa + tv monitor (the 27-synonym background line of
the bundled class names and three more labels overflow one 77-token prompt), with the true names and with the
whole 21-name vocabulary; and the background is judged as the references judge it."""

import json

import numpy as np
import pytest
from PIL import Image

from promptseg.cli import main


@pytest.fixture(scope="module")
def sd21_base(tmp_path_factory):
    from promptseg.models.sd_configs import save_sd

    return save_sd("sd21-base", tmp_path_factory.mktemp("sd21b") / "sd21-base", reduced=True)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    base = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True)
    label = np.zeros((96, 128), np.uint8)  # background, person (15), sofa (18), tv monitor (20), a void border
    label[10:60, 5:40], label[50:90, 45:120], label[5:35, 80:120], label[:, :2] = 15, 18, 20, 255
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(
        base / "JPEGImages" / "2007_000001.jpg")
    Image.fromarray(label, mode="L").save(base / "SegmentationClass" / "2007_000001.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000001\n")
    return root


CASES = [
    ("baseline", "oracle", []),
    ("fastseg", "oracle", []),
    ("invseg", "oracle", ["--set", "steps=1"]),
    # DPSeg encodes each synonym apart (no 77-token prompt to overflow) but draws a visual prompt for each synonym
    # and template: with the bundled background line that is 81 images for one class, so here it reads a class
    # file whose background line is "background" alone
    ("dpseg", "oracle", ["--set", "weights=shapes-dpseg", "--set", "other_backbone=true", "--set", "prompt_images=1",
                         "--set", "generation_steps=1"]),
    ("baseline", "all", ["--filter", "none", "--background", "prompt"]),  # the 27-synonym line prompted
    ("fastseg", "all", ["--filter", "none", "--background", "prompt"]),
]


@pytest.mark.parametrize("method,names,extra", CASES, ids=[f"{m}-{n}" for m, n, _ in CASES])
def test_the_voc21_evaluation_completes(sd21_base, voc_root, tmp_path, method, names, extra):
    if method == "dpseg":
        from promptseg.data.base import bundled_class_names

        names_file = tmp_path / "voc21_short.txt"
        names_file.write_text("\n".join(["background"] + bundled_class_names("voc21")[1:]) + "\n")
        extra = extra + ["--set", f"cache_dir={tmp_path / 'prompts'}", "--class-names", str(names_file)]
    out = tmp_path / "run"
    code = main(["eval", "--dataset", "voc21", "--root", str(voc_root), "--method", method, "--model", str(sd21_base),
                 "--names", names, "--out", str(out), "--device", "cpu", "--refine", "none", *extra])
    report = json.loads((out / "report.json").read_text())
    assert code == 0 and report["n_images"] == 1 and report["n_failed"] == 0, report.get("failed")
    assert 0.0 <= report["miou"] <= 1.0


def test_the_background_is_judged_by_the_references_threshold_unless_prompted(sd21_base, voc_root, tmp_path):
    runs = {}
    for mode in ("threshold", "prompt"):
        out = tmp_path / mode
        assert main(["eval", "--dataset", "voc21", "--root", str(voc_root), "--method", "fastseg", "--model",
                     str(sd21_base), "--out", str(out), "--device", "cpu", "--refine", "none", "--background", mode]) == 0
        record = json.loads(next((out / "images").glob("*.json")).read_text())
        runs[mode] = (json.loads((out / "report.json").read_text()), record)
    report, record = runs["threshold"]
    assert record["classes"] == [15, 18, 20]  # background (0) is not prompted: the threshold decides it
    assert report["settings"]["background_threshold"] == 0.55  # FA-Seg's VOC value
    report, record = runs["prompt"]
    assert record["classes"] == [0, 15, 18, 20]
