"""The datasets of the trained open-vocabulary segmenters (CAT-Seg, SED, DPSeg): ADE20K-150 and -847, PASCAL
Context-459 for evaluation, COCO-Stuff-171 for training. Each is an image folder beside a label folder::

    ade150      ADEChallengeData2016/images/validation/<id>.jpg
                ADEChallengeData2016/annotations/validation/<id>.png        uint8, 0 = other (ignored), k -> class k-1
    ade847      ADE20K_2021_17_01/images_detectron2/validation/<id>.jpg
                ADE20K_2021_17_01/annotations_detectron2/validation/<id>.tif   uint16 class ids, 65535 ignored
    context459  VOCdevkit/VOC2010/JPEGImages/<id>.jpg
                VOCdevkit/VOC2010/annotations_detectron2/pc459_val/<id>.tif    uint16 class ids, 459 ignored
    coco_stuff  coco_stuff164k/images/{train2017,val2017}/<id>.jpg
                coco_stuff164k/annotations/{train2017,val2017}/<id>_labelTrainIds.png   uint8, 255 ignored

ADE20K-150 and COCO-Stuff are mmseg's layouts (its converters write them); ADE20K-847 and Context-459 have no mmseg
converter, so they are the layout CAT-Seg's and SED's preparation scripts write, which every paper of the field
evaluates on. `root` may be the folder that holds the dataset folder or the dataset folder itself. The samples are
the label files that exist (sorted by id), each with its image. Labels come back as HxW int32 with
`ignore_index` where nothing counts (65535 for the 16-bit datasets, where 255 is a class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from promptseg.data.base import Sample, SegDataset
from promptseg.data.voc import load_class_names, reduce_zero_label

# name: (dataset folder, image dir, label dir, label suffix, number of classes, ignore value in the files,
#        reduce_zero_label)
LAYOUTS = {
    "ade150": ("ADEChallengeData2016", "images/{split}", "annotations/{split}", ".png", 150, None, True),
    "ade847": ("ADE20K_2021_17_01", "images_detectron2/{split}", "annotations_detectron2/{split}", ".tif", 847, 65535,
               False),
    "context459": ("VOCdevkit/VOC2010", "JPEGImages", "annotations_detectron2/pc459_{split}", ".tif", 459, 459, False),
    "coco_stuff": ("coco_stuff164k", "images/{split}", "annotations/{split}", "_labelTrainIds.png", 171, 255, False),
}
DEFAULT_SPLITS = {"ade150": "validation", "ade847": "validation", "context459": "val", "coco_stuff": "val2017"}
CLASS_FILES = {"ade150": "ade150", "ade847": "ade847", "context459": "context459", "coco_stuff": "coco_stuff171"}


class FolderSegDataset(SegDataset):
    """One of `LAYOUTS`, read from `root`.

    Args:
        name (`str`): "ade150", "ade847", "context459" or "coco_stuff".
        root (`str` or `Path`): the folder holding the dataset folder named in `LAYOUTS`, or that folder itself.
        split (`str`, *optional*): the split folder's name (default: the validation split).
        class_names_file (`str`, *optional*): your own class-name file, one line per class index.

    Raises:
        FileNotFoundError: the layout's folders are not under `root` (the message names the expected paths).
    """

    def __init__(self, name: str, root: str | Path, split: str | None = None, class_names_file: str | None = None):
        if name not in LAYOUTS:
            raise ValueError(f"unknown dataset {name!r}; choose from {sorted(LAYOUTS)}")
        folder, image_dir, label_dir, self.suffix, num_classes, file_ignore, self.reduce_zero = LAYOUTS[name]
        self.name, self.split = name, split or DEFAULT_SPLITS[name]
        self.class_names = load_class_names(CLASS_FILES[name], class_names_file, num_classes)
        self.ignore_index = 255 if num_classes < 255 else 65535
        self.file_ignore = file_ignore
        root = Path(root).expanduser()
        base = root / folder if (root / folder).is_dir() else root
        self.image_dir = base / image_dir.format(split=self.split)
        self.label_dir = base / label_dir.format(split=self.split)
        missing = [str(p) for p in (self.image_dir, self.label_dir) if not p.is_dir()]
        if missing:
            raise FileNotFoundError(f"{name}: no folder {' or '.join(missing)} (expected {self.image_dir} and "
                                    f"{self.label_dir}, split {self.split!r}); is --root right?")
        self.ids = sorted(p.name[: -len(self.suffix)] for p in self.label_dir.iterdir() if p.name.endswith(self.suffix))
        if not self.ids:
            raise FileNotFoundError(f"{name}: no *{self.suffix} label files in {self.label_dir}")

    def __len__(self) -> int:
        return len(self.ids)

    def read_label(self, path: Path) -> np.ndarray:
        """HxW int32 class indices with `ignore_index` where nothing counts."""
        with Image.open(path) as image:
            raw = np.array(image)
        if raw.ndim != 2:
            raise ValueError(f"{path}: expected a single-channel label map, got shape {raw.shape}")
        if self.reduce_zero:  # the uint8 maps of ADE20K-150: mmseg's reduce_zero_label, as for VOC20
            raw = reduce_zero_label(raw.astype(np.uint8))
        label = raw.astype(np.int64)
        if self.file_ignore is not None:
            label[raw == self.file_ignore] = self.ignore_index
        label[(label >= len(self.class_names)) & (label != self.ignore_index)] = self.ignore_index
        return label.astype(np.int32)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self.ids):
            raise IndexError(index)
        stem = self.ids[index]
        image_path = self.image_dir / f"{stem}.jpg"
        if not image_path.is_file():
            raise FileNotFoundError(f"{self.name}: label {stem}{self.suffix} has no image {image_path}")
        with Image.open(image_path) as image:
            rgb = image.convert("RGB")
        return Sample(image=rgb, label=self.read_label(self.label_dir / f"{stem}{self.suffix}"), id=stem)
