"""Refiners: the SAM relabelling and prompting rules on synthetic scores and masks, PAMR's edges, the registry, and
the wiring into segment / eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from promptseg.methods.base import SegmentationResult
from promptseg.refiners import apply_refiner, build_refiner, list_refiners, refiner_config
from promptseg.refiners.base import REFINERS
from promptseg.refiners.sam import (
    SamRefiner,
    SamRefinerConfig,
    fallback_labels,
    name_mask,
    relabel_proposals,
)
from promptseg.text import is_stuff


def box_mask(shape, x0, y0, x1, y1):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def scene():
    """Labels [grass, circle, square] on 20x20: the method says circle on a blurry 10x10 block (its true object is
    the 6x6 block inside it) and square on another block; scores favour each label where the map has it."""
    shape = (20, 20)
    label_map = np.zeros(shape, np.int32)
    label_map[2:12, 2:12] = 1
    label_map[14:18, 14:18] = 2
    scores = np.full((3, *shape), 0.1, np.float32)
    scores[0] = 0.5
    scores[1][label_map == 1] = 0.9
    scores[2][label_map == 2] = 0.9
    return label_map, scores


class FakeSam:
    """Stands in for `SamPredictor`: fixed proposals, and for prompts the masks it was told to give."""

    def __init__(self, proposals=None, masks=None):
        self.proposals = proposals if proposals is not None else np.zeros((0, 20, 20), bool)
        self.masks = masks
        self.calls = []

    def propose(self, image, *args, **kwargs):
        return self.proposals, np.ones(len(self.proposals), np.float32)

    def predict(self, image, boxes=None, points=None, labels=None):
        self.calls.append("box" if boxes is not None else "point")
        return self.masks[: len(boxes if boxes is not None else points)], np.ones(len(self.masks), np.float32)


def result_of(label_map, scores, labels=("grass", "circle", "square")):
    return SegmentationResult(label_map=label_map.copy(), scores=scores, labels=list(labels))


def test_a_proposal_takes_the_label_with_the_best_mean_score():
    label_map, scores = scene()
    scores[2][4:8, 4:8] = 1.0  # the square's score wins inside this block, though the map says circle
    proposal = box_mask(label_map.shape, 4, 4, 8, 8)
    out, info = relabel_proposals(label_map, scores, proposal[None], things={1, 2}, confine=False)
    assert (out[proposal] == 2).all() and info[0]["label"] == 2
    assert (out[~proposal] == label_map[~proposal]).all()  # uncovered pixels keep the method's label


def test_confine_cuts_the_blur_around_an_object_sam_found_and_spares_the_others():
    label_map, scores = scene()
    proposal = box_mask(label_map.shape, 4, 4, 10, 10)  # the true circle inside the method's blurry block
    out, _ = relabel_proposals(label_map, scores, proposal[None], things={1, 2}, confine=True)
    assert (out[proposal] == 1).all()
    assert (out[(label_map == 1) & ~proposal] == 0).all()  # the blur falls to the stuff around it
    assert (out[label_map == 2] == 2).all()  # the square won no proposal: its region is kept as it was


def test_no_proposal_keeps_the_label_map_and_says_so():
    label_map, scores = scene()
    refiner = SamRefiner(None, SamRefinerConfig(sam="fake", mode="proposals"), predictor=FakeSam())
    refined = apply_refiner(refiner, Image.new("RGB", (20, 20)), result_of(label_map, scores))
    assert (refined.label_map == label_map).all()
    assert any("SAM proposed no region" in w for w in refined.warnings)
    assert refined.extra["refine"]["name"] == "sam" and refined.extra["refine"]["regions"] == []


def test_prompted_masks_replace_their_regions_and_a_disagreeing_mask_is_rejected():
    label_map, scores = scene()
    circle = box_mask(label_map.shape, 4, 4, 10, 10)  # agrees with the circle's region (IoU 0.36)
    elsewhere = box_mask(label_map.shape, 0, 18, 4, 20)  # nothing to do with the square's region
    fake = FakeSam(masks=np.stack([circle, elsewhere]))
    refiner = SamRefiner(None, SamRefinerConfig(sam="fake", prompt="box", min_agreement=0.3, min_region=0.0),
                         predictor=fake)
    refined = apply_refiner(refiner, Image.new("RGB", (20, 20)), result_of(label_map, scores))
    out = refined.label_map
    assert (out[circle] == 1).all() and (out[(label_map == 1) & ~circle] == 0).all()
    assert (out[label_map == 2] == 2).all() and (out[elsewhere] == 0).all()  # rejected: the region stays
    regions = refined.extra["refine"]["regions"]
    assert [r["label"] for r in regions] == ["circle", "square"] and [r["accepted"] for r in regions] == [True, False]
    assert regions[0]["box"] == [2, 2, 12, 12] and fake.calls == ["box"]
    assert refined.extra["refine"]["erased"] == []


def test_stuff_is_never_prompted():
    label_map, scores = scene()
    fake = FakeSam(masks=np.zeros((3, 20, 20), bool))
    refiner = SamRefiner(None, SamRefinerConfig(sam="fake", min_region=0.0), predictor=fake)
    refiner(Image.new("RGB", (20, 20)), result_of(label_map, scores))
    assert len(fake.calls) == 1  # one batch: the circle's and the square's regions, not grass
    assert is_stuff("grass", refiner.config.stuff) and is_stuff("blue sky", refiner.config.stuff)
    assert is_stuff("background", ()) and not is_stuff("circle", refiner.config.stuff)


def test_an_erased_label_is_reported():
    label_map, scores = scene()
    proposal = box_mask(label_map.shape, 1, 1, 13, 13)  # covers the whole circle region
    scores[0][proposal] = 0.95  # and is best named grass: nothing of the circle is left
    evidence = np.full_like(scores, -np.inf)
    assert name_mask(proposal, scores, {1, 2}, evidence) == 0  # stuff by the scores, whatever the evidence
    refiner = SamRefiner(None, SamRefinerConfig(sam="fake", mode="proposals"), predictor=FakeSam(proposal[None]))
    refined = apply_refiner(refiner, Image.new("RGB", (20, 20)), result_of(label_map, scores))
    assert refined.extra["refine"]["erased"] == ["circle"] and (refined.label_map[label_map == 2] == 2).all()
    assert any("left no pixels to ['circle']" in w for w in refined.warnings)


def test_evidence_names_a_thing_mask_and_fallback_skips_excluded_labels():
    label_map, scores = scene()
    mask = box_mask(label_map.shape, 2, 2, 12, 12)
    evidence = np.zeros_like(scores)
    evidence[2][mask] = 1.0  # the denoising evidence says square where the scores say circle
    assert name_mask(mask, scores, {1, 2}) == 1
    assert name_mask(mask, scores, {1, 2}, evidence) == 2
    fallback = fallback_labels(scores, {1, 2}, label_map)
    assert (fallback == 0).all()
    assert (fallback_labels(scores, {0, 1, 2}, label_map) == label_map).all()


def test_pamr_moves_a_blurry_boundary_onto_the_image_edge():
    h, w = 24, 24
    image = np.zeros((h, w, 3), np.uint8)
    image[:, 12:] = 255  # a sharp vertical edge at x = 12
    xs = np.arange(w, dtype=np.float32)
    right = np.clip((xs - 6) / 12, 0, 1)[None].repeat(h, 0)  # the method's boundary sits near x = 12 but is blurred
    scores = np.stack([1 - right, right]).astype(np.float32)
    label_map = np.zeros((h, w), np.int32)
    label_map[:, 9:] = 1  # the method's boundary three pixels off
    refiner = build_refiner("pamr", dilations=[1, 2, 4])
    refined = apply_refiner(refiner, Image.fromarray(image), result_of(label_map, scores, ("left", "right")))
    truth = np.zeros((h, w), np.int32)
    truth[:, 12:] = 1
    assert (refined.label_map == truth).mean() == 1.0 and (label_map == truth).mean() < 0.9
    assert refined.scores.shape == scores.shape and refined.extra["refine"]["name"] == "pamr"


def test_pamr_first_gives_sam_the_sharper_map():
    h, w = 20, 20
    image = np.zeros((h, w, 3), np.uint8)
    image[:, 10:] = 255
    right = np.clip((np.arange(w, dtype=np.float32) - 4) / 12, 0, 1)[None].repeat(h, 0)
    scores = np.stack([1 - right, right]).astype(np.float32)
    label_map = (right > 0.3).astype(np.int32)  # the method's boundary at x = 8, the image's at x = 10
    config = SamRefinerConfig(sam="fake", mode="proposals", pamr_first=True, pamr_dilations=(1, 2, 4))
    refined = SamRefiner(None, config, predictor=FakeSam())(Image.fromarray(image), result_of(label_map, scores,
                                                                                                ("left", "right")))
    assert (refined.label_map[:, 10:] == 1).all() and (refined.label_map[:, :10] == 0).all()
    assert refined.scores is not None and refined.scores.shape == scores.shape


def test_registry_lists_refiners_and_refuses_bad_names_and_settings():
    assert {"none", "pamr", "sam"} <= set(list_refiners())
    with pytest.raises(ValueError, match="unknown refiner 'crf'; available"):
        refiner_config("crf")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['iters'\] for refiner 'pamr'"):
        refiner_config("pamr", iters=3)
    with pytest.raises(ValueError, match="mode must be 'prompts' or 'proposals', got 'grid'"):
        refiner_config("sam", mode="grid")
    with pytest.raises(ValueError, match="classify must be"):
        refiner_config("sam", classify="clip")
    with pytest.raises(ValueError, match="needs the diffusion backbone"):
        SamRefiner(None, SamRefinerConfig(sam="fake", classify="denoising"), predictor=FakeSam())
    resolve = lambda model, name, overrides: REFINERS.resolve(model, name, overrides, "refine", "refiners")  # noqa: E731
    assert resolve({}, None, {}) == ("none", {})
    model = {"refine": "sam", "refiners": {"sam": {"sam": "shapes-sam", "mode": "proposals"}}}
    assert resolve(model, None, {"mode": "prompts"}) == ("sam", {"sam": "shapes-sam", "mode": "prompts"})
    assert resolve(model, "pamr", {}) == ("pamr", {})


def test_the_bundled_sam_redraws_a_blurry_object_from_its_box():
    """shapes-sam, prompted by the box of a region that overshoots a test object, returns the object."""
    from promptseg.data.shapes_world import render_sample

    sample = render_sample("test", 3)
    inst = sample.instance_map == 1
    true = int(np.bincount(sample.class_map[inst]).argmax())
    ys, xs = np.nonzero(inst)
    blurry = box_mask(inst.shape, max(xs.min() - 4, 0), max(ys.min() - 4, 0), xs.max() + 5, ys.max() + 5)
    label_map = np.where(blurry, 1, 0).astype(np.int32)
    scores = np.stack([1.0 - blurry, blurry.astype(np.float32)]).astype(np.float32)
    names = ["sky", "thing"]
    result = result_of(label_map, scores, names)
    refined = apply_refiner(build_refiner("sam", sam="shapes-sam"), Image.fromarray(sample.image), result)
    iou = lambda a, b: (a & b).sum() / (a | b).sum()  # noqa: E731
    assert iou(refined.label_map == 1, inst) > 0.85 > iou(blurry, inst)
    assert true >= 4  # a shape class: the refined object is a thing


def test_eval_and_segment_take_a_refiner_and_record_it(tmp_path, capsys):
    from promptseg.cli import main
    from promptseg.data.shapes_world import render_sample

    args = ["eval", "--dataset", "shapes", "--model", "shapes", "--limit", "3", "--device", "cpu", "--names", "all"]
    assert main(args + ["--out", str(tmp_path / "none"), "--refine", "none"]) == 0
    assert main(args + ["--out", str(tmp_path / "pamr"), "--refine", "pamr", "--refine-set", "iterations=3"]) == 0
    plain = json.loads((tmp_path / "none" / "report.json").read_text())
    refined = json.loads((tmp_path / "pamr" / "report.json").read_text())
    assert plain["refine"] == "none" and refined["refine"] == "pamr"
    assert refined["refine_settings"]["iterations"] == 3 and refined["miou"] != plain["miou"]
    assert "refiner: `pamr`" in (tmp_path / "pamr" / "report.md").read_text()
    assert main(args + ["--out", str(tmp_path / "none"), "--refine", "pamr"]) == 2  # other settings, same folder
    assert "resume with the same settings" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "x"), "--refine", "crf"]) == 2
    assert "unknown refiner 'crf'" in capsys.readouterr().err

    image = tmp_path / "scene.png"
    Image.fromarray(render_sample("test", 0).image).save(image)
    assert main(["segment", str(image), "--labels", "grass,sand,water,sky,circle,square,triangle", "--model", "shapes",
                 "--device", "cpu", "--out", str(tmp_path / "seg"), "--refine", "sam",
                 "--refine-set", "sam=shapes-sam"]) == 0
    record = json.loads((tmp_path / "seg" / "scene_masks.json").read_text())
    assert record["refine"]["name"] == "sam" and record["refine"]["regions"]
    assert {"label", "source", "area"} <= set(record["refine"]["regions"][0])
    assert main(["refiners"]) == 0 and "pamr" in capsys.readouterr().out
