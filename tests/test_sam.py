"""The SAM loader and the shapes-sam and scenes-sam training scripts: prompts to masks, errors, resume."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from promptseg.data.shapes_world import render_sample
from promptseg.models.sam import load_sam
from promptseg.models.zoo import BUNDLED
from promptseg.training import shapes_sam as tss

ARGS = ["--n-train", "16", "--batch", "4", "--steps", "4", "--save-every", "2", "--threads", "1", "--n-eval", "0"]


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two short runs of the training script: one straight, one killed at step 3 and resumed."""
    root = tmp_path_factory.mktemp("sam")
    tss.main(["--work", str(root / "a"), "--out", str(root / "a_out"), *ARGS])
    real = tss.mask_loss
    calls = {"n": 0}

    def kill_at_step_3(logits, target):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed()
        return real(logits, target)

    tss.mask_loss = kill_at_step_3
    try:
        with pytest.raises(Killed):
            tss.main(["--work", str(root / "b"), "--out", str(root / "b_out"), *ARGS])
    finally:
        tss.mask_loss = real
    tss.main(["--work", str(root / "b"), "--out", str(root / "b_out"), *ARGS])
    return root


def test_resume_after_a_kill_matches_an_uninterrupted_run(trained):
    a = load_file(trained / "a_out" / "model.safetensors")
    b = load_file(trained / "b_out" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fresh = tss.build_model(0).state_dict()
    assert any(not torch.equal(a[k], fresh[k]) for k in a if k in fresh)


def test_loader_gives_masks_at_the_image_size_and_clear_errors(trained, tmp_path, monkeypatch):
    sam = load_sam(str(trained / "a_out"), device="cpu")
    image = Image.fromarray(render_sample("test", 0).image).resize((96, 80))
    masks, scores = sam.predict(image, boxes=[[10, 10, 50, 40], [0, 0, 96, 80]])
    assert masks.shape == (2, 80, 96) and masks.dtype == bool and scores.shape == (2,)
    masks, _ = sam.predict(image, points=[[[20, 30], [60, 60]]], labels=[[1, 0]])
    assert masks.shape == (1, 80, 96)
    with pytest.raises(ValueError, match="exactly one of boxes"):
        sam.predict(image)
    with pytest.raises(ValueError, match="need labels"):
        sam.predict(image, points=[[[1, 1]]])
    with pytest.raises(FileNotFoundError, match="neither a folder with config.json"):
        load_sam(str(tmp_path / "missing"))
    monkeypatch.setitem(BUNDLED, "shapes-sam", dataclasses.replace(BUNDLED["shapes-sam"], folder=tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="train it with"):
        load_sam("shapes-sam")  # a bundled name whose files are missing
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="could not load the SAM model 'nobody/no-such-sam'"):
        load_sam("nobody/no-such-sam")


def test_mask_loss_prefers_the_right_mask():
    target = torch.zeros(2, 8, 8)
    target[:, 2:6, 2:6] = 1
    right = torch.where(target > 0, 8.0, -8.0)
    assert tss.mask_loss(right, target) < 0.01 < tss.mask_loss(-right, target)


def test_bundled_shapes_sam_follows_its_prompt():
    sample = render_sample("test", 5)
    image = Image.fromarray(sample.image).resize((128, 128), Image.NEAREST)  # the processor maps it back to 64
    sam = load_sam("shapes-sam", device="cpu")
    ids = [k for k in range(1, len(sample.objects) + 1) if (sample.instance_map == k).sum() > 20]
    truths = [np.kron(sample.instance_map == k, np.ones((2, 2), bool)) for k in ids]
    boxes = [tss.box_of(t) for t in truths]
    masks, _ = sam.predict(image, boxes=boxes)
    for mask, truth in zip(masks, truths):  # each box gives its own instance, not every shape
        assert (mask & truth).sum() / (mask | truth).sum() > 0.8


def test_proposals_find_each_shape_once():
    sample = render_sample("test", 5)
    sam = load_sam("shapes-sam", device="cpu")
    masks, stability = sam.propose(Image.fromarray(sample.image), points_per_side=8)
    assert masks.shape[1:] == (64, 64) and masks.dtype == bool and len(stability) == len(masks)
    assert np.all(np.diff(stability) <= 0)  # most stable first
    for k in range(1, len(sample.objects) + 1):
        truth = sample.instance_map == k
        if truth.sum() > 20:  # a visible shape is one proposal (and not several overlapping ones)
            ious = (masks & truth).sum((1, 2)) / (masks | truth).sum((1, 2))
            assert ious.max() > 0.8 and (ious > 0.5).sum() == 1
    flat = masks.reshape(len(masks), -1).astype(float)
    inter = flat @ flat.T
    iou = inter / (flat.sum(1)[:, None] + flat.sum(1)[None] - inter)
    assert (iou[~np.eye(len(masks), dtype=bool)] < 0.7).all()  # suppressed duplicates
    none, _ = sam.propose(Image.fromarray(sample.image), min_stability=1.01)
    assert none.shape == (0, 64, 64)
    with pytest.raises(ValueError, match="points_per_side"):
        sam.propose(Image.fromarray(sample.image), points_per_side=0)


def test_scenes_sam_cuts_instances_parts_and_stuff_and_trains_at_128px(tmp_path):
    from promptseg.data.scenes_world import render_sample as render_scene
    from promptseg.training import scenes_sam as train_scenes_sam

    images, items = train_scenes_sam.masks("train", 2)
    assert images.shape == (2, 128, 128, 3)
    sample = render_scene("train", 0)
    mine = [m for i, m in items if i == 0]
    instances = [m for m in mine if np.unique(sample.instance_map[m]).size == 1 and sample.instance_map[m][0] > 0
                 and m.sum() == (sample.instance_map == sample.instance_map[m][0]).sum()]
    stuff = [m for m in mine if (sample.instance_map[m] == 0).all()]
    parts = [m for m in mine if not any(m is x for x in instances + stuff)]
    assert instances and stuff and parts
    assert all(np.unique(sample.class_map[m]).size == 1 for m in stuff)
    assert all(np.unique(sample.instance_map[m]).size == 1 for m in parts)  # a part lies inside one instance
    test_images, test_items = train_scenes_sam.instances("test", 2)
    assert all(sample_mask.sum() >= train_scenes_sam.MIN_PIXELS for _, sample_mask in test_items)
    train_scenes_sam.main(["--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--n-train", "2",
                           "--batch", "4", "--masks-per-image", "2", "--steps", "2", "--threads", "1", "--n-eval", "2"])
    sam = load_sam(str(tmp_path / "o"), device="cpu")
    masks, _ = sam.predict(Image.fromarray(test_images[0]), boxes=[[10, 10, 60, 60]])
    assert masks.shape == (1, 128, 128)
    assert {"box_miou", "point_miou"} <= set(json.loads((tmp_path / "o" / "eval.json").read_text()))


def test_scenes_sam_with_4px_patches_predicts_masks_at_the_image_size(tmp_path):
    """`--patch 4`: a 32x32 embedding grid, whose mask decoder (4x up) gives masks at 128x128 before any resize."""
    from promptseg.training import scenes_sam as train_scenes_sam

    train_scenes_sam.main(["--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--n-train", "1",
                           "--batch", "1", "--masks-per-image", "1", "--steps", "1", "--threads", "1", "--n-eval", "0",
                           "--patch", "4"])
    sam = load_sam(str(tmp_path / "o"), device="cpu")
    assert sam.model.config.vision_config.patch_size == 4
    image = np.zeros((128, 128, 3), np.uint8)
    inputs = sam.processor(images=Image.fromarray(image), input_boxes=[[[10.0, 10.0, 60.0, 60.0]]], return_tensors="pt")
    with torch.no_grad():
        low = sam.model(**inputs, multimask_output=False).pred_masks
    assert low.shape[-2:] == (128, 128)


def test_several_masks_per_image_share_one_encoding_and_a_batch_they_do_not_divide_is_refused(tmp_path):
    """SAM's recipe: a step draws batch / k images and k of each image's masks, decoded from one embedding."""
    items = [(0, None), (0, None), (1, None), (2, None), (2, None), (2, None)]
    by_image = {0: [0, 1], 1: [2], 2: [3, 4, 5]}
    pick = tss.pick_items(items, by_image, np.random.default_rng(0), 12, 3)
    groups = [pick[i:i + 3] for i in range(0, 12, 3)]
    assert len(pick) == 12 and all(len({items[j][0] for j in group}) == 1 for group in groups)
    assert len({items[group[0]][0] for group in groups}) > 1  # the images themselves are drawn at random
    logits = tss.predict(tss.build_model(0), torch.zeros(2, 3, 64, 64), torch.tensor([[[0, 0, 30, 30.0]] * 3] * 2), None)
    assert logits.shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="--masks-per-image 3 must be >= 1 and divide --batch 4"):
        tss.main(["--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"), *ARGS, "--masks-per-image", "3"])
