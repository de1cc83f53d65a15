"""PASCAL VOC 2012 segmentation (val, 1,449 images) as the training-free segmentation field evaluates it.

Layout, as shipped by the VOC devkit::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png      palette PNGs: 0 background, 1-20 classes, 255 void
    VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt

Two variants: "voc21" keeps the background class (index 0); "voc20" drops it like mmseg's `reduce_zero_label`
(background -> 255, class k -> k - 1, 255 stays 255). The helpers below are shared with `context.py`, whose
layout follows the same devkit pattern.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .base import (
    IGNORE_INDEX,
    Sample,
    SegDataset,
    bundled_class_names,
    read_class_names,
    read_index_png,
    read_split_file,
)


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg's `reduce_zero_label` on an HxW uint8 map: 0 -> 255, k -> k - 1 for 1 <= k <= 254, 255 stays 255."""
    lut = (np.arange(256) - 1).astype(np.uint8)
    lut[0] = IGNORE_INDEX
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut[label]


def load_class_names(default: str, class_names_file: str | Path | None, num_classes: int) -> list[str]:
    """The bundled class-name file `default`, or the user's `class_names_file`, checked to list `num_classes` classes.

    Raises:
        ValueError: the file lists a different number of classes than the dataset has.
    """
    if class_names_file is None:
        names, source = bundled_class_names(default), f"the bundled {default}.txt"
    else:
        names, source = read_class_names(class_names_file), str(class_names_file)
    if len(names) != num_classes:
        raise ValueError(
            f"class-name file {source} lists {len(names)} classes but dataset {default} has {num_classes}; "
            f"give one line per class index (comma-separated synonyms on a line share the class)"
        )
    return names


def find_devkit_dir(root: str | Path, year_dir: str, required: list[str]) -> Path:
    """The `year_dir` folder (e.g. "VOC2012") holding every path in `required`, given `root` as the folder that
    holds `VOCdevkit`, `VOCdevkit` itself, or `year_dir` itself.

    Raises:
        FileNotFoundError: `root` does not exist, or no accepted form of it holds the required paths (the message
            names the first missing path and the expected layout).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist or is not a folder")
    candidates = [root / "VOCdevkit" / year_dir, root / year_dir, root]
    for candidate in candidates:
        if all((candidate / r).exists() for r in required):
            return candidate
    layout = (
        f"expected ROOT/VOCdevkit/{year_dir}/{{{','.join(required)}}}, where ROOT may also be the VOCdevkit folder "
        f"or the {year_dir} folder itself; got root={root}"
    )
    # Name what is missing inside the year folder when there is one, else the year folder itself.
    found = next((c for c in candidates if c.is_dir() and c.name == year_dir), None)
    if found is None:
        raise FileNotFoundError(f"no {year_dir} folder: neither {candidates[0]} nor {candidates[1]} exists; {layout}")
    missing = next(found / r for r in required if not (found / r).exists())
    raise FileNotFoundError(f"{missing} does not exist; {layout}")


class VOCDataset(SegDataset):
    """PASCAL VOC 2012 segmentation.

    Args:
        root (`str` or `Path`): the folder holding `VOCdevkit`, the `VOCdevkit` folder, or the `VOC2012` folder.
        variant (`str`, defaults to "voc21"): "voc21" (background is class 0) or "voc20" (background ignored).
        split (`str`, defaults to "val"): the split file's stem in `ImageSets/Segmentation`.
        class_names_file (`str` or `Path`, *optional*): your own class-name file (one class a line, commas between
            synonyms) instead of the bundled `<variant>.txt`; it must list as many classes as the variant has.

    Each sample is `Sample(image=RGB PIL image, label=HxW uint8 array, id=file stem)`.
    """

    reference_background_threshold = 0.55  # FA-Seg's value for this dataset

    year_dir = "VOC2012"
    label_dir = "SegmentationClass"
    split_dir = "ImageSets/Segmentation"
    # variant -> (number of classes, whether the background class 0 is dropped)
    variants = {"voc21": (21, False), "voc20": (20, True)}

    def __init__(
        self,
        root: str | Path,
        variant: str = "voc21",
        split: str = "val",
        class_names_file: str | Path | None = None,
    ):
        if variant not in self.variants:
            raise ValueError(
                f"unknown variant {variant!r} for {type(self).__name__}; choose one of {list(self.variants)}"
            )
        num_classes, self.reduce_zero_label = self.variants[variant]
        split_file = f"{self.split_dir}/{split}.txt"
        self.dir = find_devkit_dir(root, self.year_dir, ["JPEGImages", self.label_dir, split_file])
        self.ids = read_split_file(self.dir / split_file)
        self.name = variant
        self.background = None if self.reduce_zero_label else 0
        self.class_names = load_class_names(variant, class_names_file, num_classes)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        id_ = self.ids[index]
        image_path = self.dir / "JPEGImages" / f"{id_}.jpg"
        label_path = self.dir / self.label_dir / f"{id_}.png"
        for path in (image_path, label_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is listed in the split file but does not exist; is the download complete?"
                )
        with Image.open(image_path) as image:
            image = image.convert("RGB")
        label = read_index_png(label_path)
        if label.shape != (image.height, image.width):
            raise ValueError(
                f"{label_path} is {label.shape[1]}x{label.shape[0]} but its image is {image.width}x{image.height}"
            )
        if self.reduce_zero_label:
            label = reduce_zero_label(label)
        return Sample(image=image, label=label, id=id_)
