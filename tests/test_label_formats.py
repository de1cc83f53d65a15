"""`promptseg label --format`: the YOLO-seg, masks and VOC layouts and COCO polygons, each read back by the tools
people read them with (supervision for YOLO, pycocotools for COCO) and checked against the COCO RLE annotations."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from promptseg.cli import main
from promptseg.io.layouts import flat_names, val_split
from promptseg.io.rle import decode_rle

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = ROOT / "src" / "promptseg" / "data" / "classnames" / "shapes.txt"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Eight shapes test images (one in a subfolder, two sharing a stem) labelled into every layout."""
    from promptseg.data.shapes_world import render_sample

    folder = tmp_path_factory.mktemp("photos")
    for i in range(8):
        name = {6: "sub/img6.png", 7: "img5.jpg"}.get(i, f"img{i}.png")
        (folder / name).parent.mkdir(exist_ok=True)
        Image.fromarray(render_sample("test", i).image).save(folder / name, quality=95)
    out = tmp_path_factory.mktemp("ds")
    args = ["label", str(folder), "--labels-file", str(VOCABULARY), "--model", "shapes", "--out", str(out),
            "--device", "cpu", "--min-area", "4"]
    assert main(args) == 0
    coco = json.loads((out / "annotations.json").read_text())
    assert main([*args, "--format", "coco,yolo-seg,masks,voc", "--polygons", "--val-fraction", "0.25"]) == 0
    return folder, out, coco


def test_names_and_the_split_are_fixed_by_the_paths():
    names = flat_names(["a/b.jpg", "a__b.png", "c.png", "C.jpg", "d.png"])
    assert names["d.png"] == "d" and len({n.lower() for n in names.values()}) == 5  # unique whatever the case
    assert names["a/b.jpg"].startswith("a__b_") and names["C.jpg"].startswith("C_")
    names = [f"im{i}.png" for i in range(10)]
    assert val_split(names, 0.3) == val_split(list(reversed(names)), 0.3) and len(val_split(names, 0.3)) == 3
    with pytest.raises(ValueError, match="val fraction must be in"):
        val_split(names, 1.0)


def test_supervision_reads_the_yolo_layout_as_the_coco_annotations(labelled):
    import supervision as sv

    _, out, coco = labelled
    data_yaml = (out / "yolo" / "data.yaml").read_text()
    assert "names: [\"grass\", \"sand\", \"water\", \"sky\", \"circle\", \"square\", \"triangle\"]" in data_yaml
    by_stem = {}
    for image in coco["images"]:
        by_stem[flat_names([i["file_name"] for i in coco["images"]])[image["file_name"]]] = image
    counted = 0
    for split, expected in (("train", 6), ("val", 2)):
        dataset = sv.DetectionDataset.from_yolo(str(out / "yolo" / "images" / split),
                                                str(out / "yolo" / "labels" / split), str(out / "yolo" / "data.yaml"))
        assert len(dataset) == expected
        for path, _, detections in dataset:
            image = by_stem[Path(path).stem]
            annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
            assert len(detections) == len(annotations) and detections.mask is not None
            for mask, class_id, annotation in zip(detections.mask, detections.class_id, annotations):
                truth = decode_rle(annotation["segmentation"])
                assert class_id == annotation["category_id"] - 1
                assert (mask & truth).sum() / (mask | truth).sum() >= 0.9
                counted += 1
    assert counted == len(coco["annotations"]) > 8


def test_coco_polygons_rasterise_to_the_rle_masks(labelled):
    from pycocotools.coco import COCO

    _, out, coco_rle = labelled
    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getAnnIds()) == len(coco_rle["annotations"])
    for annotation, rle in zip(coco.loadAnns(coco.getAnnIds()), coco_rle["annotations"]):
        assert isinstance(annotation["segmentation"], list)  # polygons, a part each
        assert np.array_equal(coco.annToMask(annotation).astype(bool), decode_rle(rle["segmentation"]))


def test_masks_and_voc_layouts_hold_the_semantic_maps(labelled):
    from promptseg.io import palette

    folder, out, coco = labelled
    names = flat_names([i["file_name"] for i in coco["images"]])
    trainval = (out / "voc" / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split()
    val = (out / "voc" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert sorted(trainval) == sorted(names.values()) and len(val) == 2
    assert (out / "voc" / "labelmap.txt").read_text().splitlines()[:3] == [
        "# label:color_rgb:parts:actions", "background:0,0,0::", "grass:128,0,0::"]
    for image in coco["images"]:
        semantic = np.asarray(Image.open(out / image["semantic_file"]))
        voc = Image.open(out / "voc" / "SegmentationClass" / f"{names[image['file_name']]}.png")
        assert voc.mode == "P" and np.array_equal(np.asarray(voc), semantic)
        assert np.array_equal(np.asarray(voc.getpalette()[:24]).reshape(8, 3), palette(8))
        jpeg = out / "voc" / "JPEGImages" / f"{names[image['file_name']]}.jpg"  # VOC's loaders read ID.jpg
        source = folder / image["file_name"]
        if source.suffix == ".jpg":
            assert jpeg.read_bytes() == source.read_bytes()  # linked, not re-encoded
        with Image.open(jpeg) as written:
            assert written.format == "JPEG" and written.size == (image["width"], image["height"])
        stem = Path(image["semantic_file"]).relative_to("semantic").with_suffix("")
        assert np.array_equal(np.asarray(Image.open(out / "masks" / "label" / f"{stem}.png")), semantic)
        present = {p.stem for p in (out / "masks" / "class" / stem).glob("*.png")}
        classes = (out / "classes.txt").read_text().split()
        assert present == {classes[v] for v in np.unique(semantic) if v}
        for name in present:
            binary = np.asarray(Image.open(out / "masks" / "class" / stem / f"{name}.png"))
            assert set(np.unique(binary)) <= {0, 255}
            assert np.array_equal(binary == 255, semantic == classes.index(name))


def test_a_rerun_with_another_split_leaves_nothing_stale(labelled, tmp_path):
    folder, out, _ = labelled
    args = ["label", str(folder), "--labels-file", str(VOCABULARY), "--model", "shapes", "--out", str(out),
            "--device", "cpu", "--min-area", "4", "--format", "yolo-seg", "--val-fraction", "0.5"]
    try:
        assert main(args) == 0
        train = {p.stem for p in (out / "yolo" / "labels" / "train").glob("*.txt")}
        val = {p.stem for p in (out / "yolo" / "labels" / "val").glob("*.txt")}
        assert len(val) == 4 and not train & val and len(train | val) == 8
        assert {p.stem for p in (out / "yolo" / "images" / "val").iterdir()} == val
    finally:  # the module's other tests read the 0.25 split
        assert main([*args[:-1], "0.25"]) == 0


def test_truncating_and_rounding_yolo_readers_fill_a_part_back_exactly():
    from promptseg.io.layouts import yolo_line

    rng = np.random.default_rng(3)
    for width, height in ((333, 97), (640, 480), (1919, 61)):
        mask = np.zeros((height, width), bool)
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        mask[y0:y0 + height // 3, x0:x0 + width // 3] = True
        mask[y0 + 2:y0 + 5, x0 + 3:x0 + 9] = False  # a hole
        coords = np.array(yolo_line(0, mask).split()[1:], float).reshape(-1, 2) * (width, height)
        for read in (np.round, np.trunc):  # supervision rounds, Ultralytics' polygon2mask truncates
            filled = np.zeros_like(mask, np.uint8)
            cv2.fillPoly(filled, [read(coords).astype(np.int32)], 1)
            assert np.array_equal(filled.astype(bool), mask), (width, height, read.__name__)


def test_bad_formats_are_refused_before_labelling(tmp_path, capsys):
    args = ["label", str(ROOT / "examples"), "--labels", "circle", "--model", "shapes", "--out", str(tmp_path / "d")]
    assert main([*args, "--format", "coco,yolo"]) == 2
    assert "unknown dataset format(s) ['yolo']: choose from coco, yolo-seg, masks, voc" in capsys.readouterr().err
    assert main([*args, "--format", "voc", "--val-fraction", "1"]) == 2
    assert "val fraction must be in [0, 1), got 1.0" in capsys.readouterr().err
    assert main([*args, "--format", "yolo-seg", "--polygons"]) == 2
    assert "'coco' is not among the formats ['yolo-seg']" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
