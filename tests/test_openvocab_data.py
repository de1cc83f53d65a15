"""ADE20K-150/-847, PASCAL Context-459 and COCO-Stuff readers on fixtures made here."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from promptseg.data import get_dataset


def _write(folder, stem, label, suffix, mode=None):
    images, labels = folder
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros(label.shape + (3,), np.uint8)).save(images / f"{stem}.jpg")
    Image.fromarray(label, mode=mode).save(labels / f"{stem}{suffix}")


def test_ade150_reduces_the_zero_label(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    label = np.array([[0, 1, 150], [2, 2, 0]], np.uint8)
    _write((base / "images/validation", base / "annotations/validation"), "ADE_val_1", label, ".png")
    data = get_dataset("ade150", str(tmp_path))
    assert len(data) == 1 and len(data.class_names) == 150 and data.class_names[0] == "wall"
    sample = data[0]
    assert sample.id == "ADE_val_1" and sample.image.size == (3, 2)
    assert sample.label.tolist() == [[255, 0, 149], [1, 1, 255]]
    assert data.present_classes(sample.label) == [0, 1, 149]


@pytest.mark.parametrize("name,folder,images,labels,ignore,num", [
    ("ade847", "ADE20K_2021_17_01", "images_detectron2/validation", "annotations_detectron2/validation", 65535, 847),
    ("context459", "VOCdevkit/VOC2010", "JPEGImages", "annotations_detectron2/pc459_val", 459, 459),
])
def test_sixteen_bit_datasets_keep_classes_above_255(tmp_path, name, folder, images, labels, ignore, num):
    base = tmp_path / folder
    label = np.array([[0, 300, ignore], [num - 1, 255, 1]], np.uint16)
    _write((base / images, base / labels), "im1", label, ".tif", mode="I;16")
    data = get_dataset(name, str(base))  # the dataset folder itself works as root too
    assert len(data.class_names) == num and data.ignore_index == 65535
    assert data[0].label.tolist() == [[0, 300, 65535], [num - 1, 255, 1]]
    assert 255 in data.present_classes(data[0].label)  # 255 is a class here, not "ignore"


def test_coco_stuff_reads_label_train_ids(tmp_path):
    base = tmp_path / "coco_stuff164k"
    label = np.array([[0, 170], [255, 91]], np.uint8)
    _write((base / "images/train2017", base / "annotations/train2017"), "000000000009", label, "_labelTrainIds.png")
    data = get_dataset("coco_stuff", str(tmp_path), split="train2017")
    assert data.class_names[0] == "person" and len(data.class_names) == 171
    assert data[0].id == "000000000009" and data[0].label.tolist() == [[0, 170], [255, 91]]


def test_missing_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotations_detectron2/pc459_val"):
        get_dataset("context459", str(tmp_path))
    with pytest.raises(ValueError, match="needs --root"):
        get_dataset("ade847")
    (tmp_path / "ADEChallengeData2016/images/validation").mkdir(parents=True)
    (tmp_path / "ADEChallengeData2016/annotations/validation").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no \\*.png label files"):
        get_dataset("ade150", str(tmp_path))
