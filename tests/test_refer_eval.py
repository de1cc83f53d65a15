"""`promptseg eval --task refer` and `promptseg refer`: resumable runs, the report, and the command line."""

import json

import numpy as np
import pytest
from PIL import Image

from promptseg.cli import main
from promptseg.eval.refer_runner import ReferRun, evaluate_refer

pytest.importorskip("spacy")


def test_refer_run_reports_the_field_metrics_and_resumes(tmp_path):
    run = ReferRun(dataset="shapes_ref", method="baseline", model="shapes", out=str(tmp_path / "r"), split="val",
                   limit=14, device="cpu")
    report = evaluate_refer(run, progress=False)
    assert report["n_samples"] == 14 and report["n_no_target"] >= 1
    assert {"ciou", "giou", "n_acc", "t_acc", "seconds_per_expression"} <= set(report)
    assert report["n_acc"] == 0.0  # the baseline never answers "nothing"
    records = sorted((tmp_path / "r" / "samples").glob("*.json"))
    assert len(records) == 14
    ious = [json.loads(p.read_text())["iou"] for p in records]
    assert report["giou"] == pytest.approx(np.mean(ious))
    records[0].unlink()  # a kill before this sample was written
    again = evaluate_refer(run, progress=False)
    assert again["ciou"] == pytest.approx(report["ciou"]) and again["giou"] == pytest.approx(report["giou"])
    with pytest.raises(ValueError, match="other"):
        evaluate_refer(ReferRun(**{**run.__dict__, "settings": {"timestep": 50}}), progress=False)


def test_methods_without_refer_are_refused(tmp_path):
    with pytest.raises(ValueError, match="does not answer referring"):
        evaluate_refer(ReferRun(dataset="shapes_ref", method="fastseg", model="shapes", out=str(tmp_path)))


def test_refer_command_writes_mask_overlay_and_rle(tmp_path):
    image = tmp_path / "img.png"
    from promptseg.data.shapes_world import render_sample

    Image.fromarray(render_sample("val", 0).image).save(image)
    out = tmp_path / "out"
    code = main(["refer", str(image), "the red triangle", "--method", "baseline", "--model", "shapes", "--out",
                 str(out), "--device", "cpu"])
    assert code == 0
    mask = np.asarray(Image.open(out / "img_mask.png"))
    record = json.loads((out / "img_refer.json").read_text())
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    assert record["expression"] == "the red triangle" and record["area"] == int((mask > 0).sum())
    assert (out / "img_overlay.png").exists()
    assert main(["refer", str(image), "  ", "--method", "baseline", "--model", "shapes", "--out", str(out)]) == 2
    assert main(["eval", "--task", "refer", "--dataset", "shapes_ref", "--names", "all", "--model", "shapes"]) == 2
