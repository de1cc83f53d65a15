"""Evaluation dataset readers on tiny datasets written in each on-disk format, and the bundled class-name files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from promptseg.data.base import IGNORE_INDEX, bundled_class_names
from promptseg.data.coco_object import COCOObjectDataset, convert_instances_json, convert_stuffthingmaps
from promptseg.data.context import ContextDataset
from promptseg.data.voc import VOCDataset

# Two small images per dataset; every label value the readers must map appears in them.
VOC_LABELS = {
    "2007_000032": np.array([[0, 1, 255, 20], [15, 0, 255, 3], [2, 2, 0, 0]], dtype=np.uint8),
    "2007_000039": np.array([[0, 0, 0, 5], [255, 255, 7, 7], [20, 19, 0, 1]], dtype=np.uint8),
}
CONTEXT_LABELS = {
    "2008_000002": np.array([[0, 1, 59, 30], [0, 0, 2, 2], [58, 1, 0, 0]], dtype=np.uint8),
    "2008_000008": np.array([[59, 59, 0, 0], [10, 0, 0, 1], [0, 0, 0, 0]], dtype=np.uint8),
}


def voc_palette() -> list[int]:
    """The VOC colour map: colours differ from indices, so reading colours instead of indices would fail."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def write_image(path, height, width, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_devkit(tmp_path, year, label_dir, split_dir, labels, palette):
    """ROOT/VOCdevkit/<year>/{JPEGImages, <label_dir>, <split_dir>/val.txt}; returns ROOT."""
    base = tmp_path / "VOCdevkit" / year
    for i, (id_, arr) in enumerate(labels.items()):
        write_image(base / "JPEGImages" / f"{id_}.jpg", *arr.shape, seed=i)
        (base / label_dir).mkdir(parents=True, exist_ok=True)
        if palette:
            png = Image.fromarray(arr, mode="P")
            png.putpalette(voc_palette())
        else:
            png = Image.fromarray(arr, mode="L")
        png.save(base / label_dir / f"{id_}.png")
    (base / split_dir).mkdir(parents=True, exist_ok=True)
    (base / split_dir / "val.txt").write_text("\n".join(labels) + "\n")
    return tmp_path


@pytest.fixture
def voc_root(tmp_path):
    return make_devkit(tmp_path, "VOC2012", "SegmentationClass", "ImageSets/Segmentation", VOC_LABELS, palette=True)


@pytest.fixture
def context_root(tmp_path):
    return make_devkit(
        tmp_path, "VOC2010", "SegmentationClassContext", "ImageSets/SegmentationContext", CONTEXT_LABELS, palette=False
    )


# --- VOC -------------------------------------------------------------------------------------------------------


def test_voc21_reads_palette_indices(voc_root):
    dataset = VOCDataset(voc_root, variant="voc21")
    assert len(dataset) == 2 and dataset.background == 0 and dataset.name == "voc21"
    assert len(dataset.class_names) == 21
    for sample, (id_, expected) in zip(dataset, VOC_LABELS.items(), strict=True):
        assert sample.id == id_
        assert sample.image.mode == "RGB" and sample.image.size == (expected.shape[1], expected.shape[0])
        assert sample.label.dtype == np.uint8
        np.testing.assert_array_equal(sample.label, expected)


def test_voc20_reduces_zero_label_and_keeps_255(voc_root):
    dataset = VOCDataset(voc_root, variant="voc20")
    assert dataset.background is None and len(dataset.class_names) == 20
    label = dataset[0].label
    expected = np.array([[255, 0, 255, 19], [14, 255, 255, 2], [1, 1, 255, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(label, expected)
    assert dataset.class_names[14].startswith("person")


@pytest.mark.parametrize("form", ["parent", "devkit", "year"])
def test_voc_accepts_three_root_forms(voc_root, form):
    root = {"parent": voc_root, "devkit": voc_root / "VOCdevkit", "year": voc_root / "VOCdevkit" / "VOC2012"}[form]
    dataset = VOCDataset(root)
    assert [s.id for s in dataset] == list(VOC_LABELS)


def test_voc_wrong_root_names_missing_path(tmp_path, voc_root):
    (voc_root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"VOC2012[/\\]ImageSets[/\\]Segmentation[/\\]val\.txt"):
        VOCDataset(voc_root)
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no VOC2012 folder") as info:
        VOCDataset(empty)
    assert str(empty / "VOCdevkit" / "VOC2012") in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VOCDataset(tmp_path / "missing")


def test_voc_rejects_unknown_variant(voc_root):
    with pytest.raises(ValueError, match="'voc19'.*voc21"):
        VOCDataset(voc_root, variant="voc19")


def test_voc_user_class_names_file_is_used_and_counted(voc_root, tmp_path):
    good = tmp_path / "mine.txt"
    good.write_text("\n".join(f"class {i}" for i in range(21)))
    assert VOCDataset(voc_root, class_names_file=good).class_names[3] == "class 3"
    bad = tmp_path / "short.txt"
    bad.write_text("cat\ndog\n")
    with pytest.raises(ValueError, match=r"short\.txt lists 2 classes .* has 21"):
        VOCDataset(voc_root, class_names_file=bad)


# --- Context ---------------------------------------------------------------------------------------------------


def test_context60_keeps_background(context_root):
    dataset = ContextDataset(context_root, variant="context60")
    assert dataset.background == 0 and len(dataset.class_names) == 60
    np.testing.assert_array_equal(dataset[0].label, CONTEXT_LABELS["2008_000002"])


def test_context59_reduces_like_voc20(context_root):
    dataset = ContextDataset(context_root)  # context59 by default
    assert dataset.name == "context59" and dataset.background is None and len(dataset.class_names) == 59
    expected = np.array([[58, 58, 255, 255], [9, 255, 255, 0], [255, 255, 255, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(dataset[1].label, expected)
    assert dataset.class_names[58].startswith("wood") and dataset.class_names[0].startswith("aeroplane")


@pytest.mark.parametrize("form", ["parent", "devkit", "year"])
def test_context_accepts_three_root_forms(context_root, form):
    root = {
        "parent": context_root,
        "devkit": context_root / "VOCdevkit",
        "year": context_root / "VOCdevkit" / "VOC2010",
    }
    assert [s.id for s in ContextDataset(root[form])] == list(CONTEXT_LABELS)


def test_context_missing_label_folder_is_named(context_root):
    (context_root / "VOCdevkit" / "VOC2010" / "SegmentationClassContext").rename(context_root / "elsewhere")
    with pytest.raises(FileNotFoundError, match=r"VOC2010[/\\]SegmentationClassContext does not exist"):
        ContextDataset(context_root)


def test_voc_root_is_not_a_context_root(voc_root):
    with pytest.raises(FileNotFoundError, match="no VOC2010 folder"):
        ContextDataset(voc_root)


# --- COCO-Object -----------------------------------------------------------------------------------------------

# stuffthingmaps value -> COCO-Object index: person, bicycle, fire hydrant, (11 unused), stop sign, giraffe,
# backpack, toothbrush, (90 unused), stuff 91 and 181, unlabelled 255.
STUFF_TO_OBJECT = {0: 1, 1: 2, 10: 11, 11: 0, 12: 12, 24: 24, 26: 25, 89: 80, 90: 0, 91: 0, 181: 0, 255: 0}


def test_convert_stuffthingmaps_maps_things_and_drops_the_rest(tmp_path):
    src = tmp_path / "stuffthingmaps" / "val2017"
    src.mkdir(parents=True)
    values = np.array(list(STUFF_TO_OBJECT), dtype=np.uint8).reshape(3, 4)
    Image.fromarray(values, mode="L").save(src / "000000000139.png")
    Image.fromarray(values[::-1], mode="L").save(src / "000000000285.png")
    dst = tmp_path / "coco" / "annotations" / "val2017"
    assert convert_stuffthingmaps(src, dst) == 2
    label = np.array(Image.open(dst / "000000000139_instanceTrainIds.png"))
    np.testing.assert_array_equal(label, np.array(list(STUFF_TO_OBJECT.values()), dtype=np.uint8).reshape(3, 4))
    names = bundled_class_names("coco_object")
    assert names[12] == "stop sign" and names[24] == "giraffe" and names[80] == "toothbrush"


def test_convert_stuffthingmaps_empty_source_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no .png"):
        convert_stuffthingmaps(tmp_path, tmp_path / "out")


def make_coco_root(tmp_path, labels):
    root = tmp_path / "coco"
    for i, (id_, arr) in enumerate(labels.items()):
        write_image(root / "images" / "val2017" / f"{id_}.jpg", *arr.shape, seed=i)
        (root / "annotations" / "val2017").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr, mode="L").save(root / "annotations" / "val2017" / f"{id_}_instanceTrainIds.png")
    return root


def test_coco_object_dataset_reads_sorted_ids(tmp_path):
    labels = {
        "000000000285": np.full((3, 5), 80, np.uint8),
        "000000000139": np.array([[0, 1, 2], [12, 0, 0]], np.uint8),
    }
    dataset = COCOObjectDataset(make_coco_root(tmp_path, labels))
    assert dataset.background == 0 and len(dataset.class_names) == 81
    assert dataset.ids == ["000000000139", "000000000285"]
    first = dataset[0]
    assert first.image.mode == "RGB" and first.image.size == (3, 2)
    np.testing.assert_array_equal(first.label, labels["000000000139"])
    assert dataset.present_classes(first.label) == [0, 1, 2, 12]


def test_coco_object_wrong_root_names_missing_folder(tmp_path):
    (tmp_path / "images" / "val2017").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"annotations[/\\]val2017 does not exist"):
        COCOObjectDataset(tmp_path)
    (tmp_path / "annotations" / "val2017").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="convert_stuffthingmaps"):
        COCOObjectDataset(tmp_path)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major flattening, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"counts": counts, "size": list(mask.shape)}


def box_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def test_convert_instances_json_paints_small_on_top(tmp_path):
    used = [v + 1 for v in range(91) if v not in (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)]
    crowd = np.zeros((24, 30), dtype=np.uint8)
    crowd[18:22, 20:26] = 1
    annotations = [  # the small box comes first in the file: only size may decide the paint order
        {
            "id": 1,
            "image_id": 7,
            "category_id": 13,
            "iscrowd": 0,
            "area": 16,
            "segmentation": box_polygon(6, 6, 10, 10),
        },
        {
            "id": 2,
            "image_id": 7,
            "category_id": 3,
            "iscrowd": 0,
            "area": 144,
            "segmentation": box_polygon(2, 2, 14, 14),
        },
        {"id": 3, "image_id": 7, "category_id": 90, "iscrowd": 1, "area": 24, "segmentation": uncompressed_rle(crowd)},
    ]
    instances = {
        "images": [
            {"id": 7, "file_name": "000000000007.jpg", "height": 24, "width": 30},
            {"id": 9, "file_name": "000000000009.jpg", "height": 5, "width": 6},
        ],
        "annotations": annotations,
        "categories": [{"id": i, "name": f"c{i}"} for i in used],
    }
    path = tmp_path / "instances_val2017.json"
    path.write_text(json.dumps(instances))
    dst = tmp_path / "annotations" / "val2017"
    assert convert_instances_json(path, dst) == 2
    label = np.array(Image.open(dst / "000000000007_instanceTrainIds.png"))
    assert label.shape == (24, 30)
    assert label[8, 8] == 12  # stop sign (id 13) over car
    assert label[4, 4] == 3 and label[12, 3] == 3  # car (id 3)
    assert (label[18:22, 20:26] == 80).all()  # crowd toothbrush (id 90)
    assert label[0, 0] == 0 and label[16, 16] == 0 and label[23, 29] == 0
    assert set(np.unique(label)) == {0, 3, 12, 80}
    empty = np.array(Image.open(dst / "000000000009_instanceTrainIds.png"))
    assert empty.shape == (5, 6) and not empty.any()


def test_convert_instances_json_checks_categories(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}))
    with pytest.raises(ValueError, match="1 categories, expected COCO's 80"):
        convert_instances_json(path, tmp_path / "out")


def test_convert_instances_json_without_pycocotools_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pycocotools", None)
    monkeypatch.setitem(__import__("sys").modules, "pycocotools.coco", None)
    with pytest.raises(ImportError, match=r"pip install promptseg\[eval\]"):
        convert_instances_json(tmp_path / "x.json", tmp_path / "out")


# --- class-name files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, count", [("voc21", 21), ("voc20", 20), ("context60", 60), ("context59", 59), ("coco_object", 81)]
)
def test_bundled_class_names_count_and_no_duplicate_synonyms(name, count):
    from promptseg.text import parse_labels

    names = bundled_class_names(name)
    assert len(names) == count
    synonyms = [" ".join(s.split()).lower() for line in names for s in line.split(",")]
    assert all(synonyms), f"{name}.txt has an empty synonym"
    duplicates = sorted({s for s in synonyms if synonyms.count(s) > 1})
    assert not duplicates, f"{name}.txt repeats {duplicates}"
    parse_labels(names)  # what promptseg does with them: raises on any duplicate


def test_class_name_files_agree_with_each_other():
    voc21, voc20 = bundled_class_names("voc21"), bundled_class_names("voc20")
    assert voc21[0].startswith("background") and voc21[1:] == voc20
    ctx60, ctx59 = bundled_class_names("context60"), bundled_class_names("context59")
    assert ctx60[0].startswith("background") and ctx60[1:] == ctx59
    coco = bundled_class_names("coco_object")
    assert coco[0].startswith("background") and coco[1].startswith("person") and coco[80] == "toothbrush"
    assert voc20[14].startswith("person") and voc20[19].startswith("tv monitor")
    assert IGNORE_INDEX == 255
