"""Referring datasets: the RefCOCO-family readers on fixtures made here, and the shapes_ref registry entry."""

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from promptseg.data import get_refer_dataset

pytest.importorskip("pycocotools")


def write_fixture(root):
    """Two COCO images, three annotations (one polygon, one RLE, one uncompressed RLE), refs for every family."""
    images = root / "images" / "mscoco" / "images" / "train2014"
    images.mkdir(parents=True)
    for i, size in ((1, (40, 30)), (2, (20, 20))):
        Image.new("RGB", size, (i * 50, 0, 0)).save(images / f"COCO_train2014_{i:012d}.jpg")
    from pycocotools import mask as mask_utils

    square = np.zeros((20, 20), np.uint8, order="F")
    square[5:10, 5:10] = 1
    rle = mask_utils.encode(square)
    rle["counts"] = rle["counts"].decode()
    instances = {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 30, "width": 40},
                   {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": 20, "width": 20}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
            {"id": 11, "image_id": 1, "category_id": 1, "segmentation": {"size": [30, 40], "counts": [0, 30 * 40]}},
            {"id": 20, "image_id": 2, "category_id": 2, "segmentation": rle},
        ],
    }
    refs = [
        {"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "val", "category_id": 1,
         "sentences": [{"sent": "the left box", "sent_id": 0}, {"sent": "top left square", "sent_id": 1}]},
        {"ref_id": 1, "ann_id": 20, "image_id": 2, "split": "testA", "category_id": 2,
         "sentences": [{"sent": "small square", "sent_id": 2}]},
    ]
    for folder in ("refcoco", "refcoco+", "refcocog"):
        (root / folder).mkdir()
        (root / folder / "instances.json").write_text(json.dumps(instances))
    for folder, name in (("refcoco", "refs(unc).p"), ("refcoco+", "refs(unc).p"), ("refcocog", "refs(umd).p")):
        with open(root / folder / name, "wb") as handle:
            pickle.dump([dict(r, split="test" if r["split"] == "testA" and folder == "refcocog" else r["split"])
                         for r in refs], handle)
    grefs = [
        {"ref_id": 5, "ann_id": [10, 11], "image_id": 1, "split": "val", "no_target": False,
         "sentences": [{"sent": "everything", "sent_id": 7}]},
        {"ref_id": 6, "ann_id": [-1], "image_id": 2, "split": "val", "no_target": True,
         "sentences": [{"sent": "the giraffe", "sent_id": 8}]},
    ]
    (root / "grefcoco").mkdir()
    (root / "grefcoco" / "instances.json").write_text(json.dumps(instances))
    (root / "grefcoco" / "grefs(unc).json").write_text(json.dumps(grefs))


def test_refcoco_reads_one_sample_per_sentence_with_decoded_masks(tmp_path):
    write_fixture(tmp_path)
    val = get_refer_dataset("refcoco", str(tmp_path), "val")
    assert len(val) == 2
    sample = val[1]
    assert sample.expression == "top left square" and sample.id == "0_1"
    assert sample.image.size == (40, 30) and sample.mask.shape == (30, 40)
    assert sample.mask[2:9, 2:9].all() and not sample.mask[12:, 12:].any()  # the polygon 0..10
    test = get_refer_dataset("refcoco+", str(tmp_path), "testA")
    assert test[0].mask.sum() == 25 and test[0].mask[5:10, 5:10].all()  # compressed RLE
    assert len(get_refer_dataset("refcocog", str(tmp_path), "test")) == 1


def test_grefcoco_unions_targets_and_keeps_no_target_empty(tmp_path):
    write_fixture(tmp_path)
    data = get_refer_dataset("grefcoco", str(tmp_path), "val")
    everything, giraffe = data[0], data[1]
    assert everything.mask.all()  # the union with the whole-image uncompressed RLE
    assert giraffe.expression == "the giraffe" and giraffe.mask.shape == (20, 20) and not giraffe.mask.any()


def test_readers_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"refs\(unc\).p"):
        get_refer_dataset("refcoco", str(tmp_path))
    write_fixture(tmp_path)
    with pytest.raises(ValueError, match="testA"):
        get_refer_dataset("refcocog", str(tmp_path), "testA")
    with pytest.raises(ValueError, match="needs --root"):
        get_refer_dataset("refcoco")
    with pytest.raises(ValueError, match="unknown referring dataset"):
        get_refer_dataset("refclef")


def test_shapes_ref_through_the_registry():
    data = get_refer_dataset("shapes_ref", split="val", limit=7)
    assert len(data) == 7 and data[0].id.startswith("val_")
