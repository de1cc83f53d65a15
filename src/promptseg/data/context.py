"""PASCAL Context (val, 5,105 images) in the layout mmseg's converter (`tools/dataset_converters/pascal_context.py`)
writes::

    VOCdevkit/VOC2010/JPEGImages/<id>.jpg
    VOCdevkit/VOC2010/SegmentationClassContext/<id>.png     single-channel uint8: 0 background, 1-59 classes
    VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt

Classes 1-59 are in mmseg's alphabetical order (aeroplane ... wood). "context60" keeps background as class 0;
"context59" drops it like VOC20 (background -> 255, class k -> k - 1).
"""

from __future__ import annotations

from pathlib import Path

from .voc import VOCDataset


class ContextDataset(VOCDataset):
    """PASCAL Context, 59 or 60 classes.

    Args:
        root (`str` or `Path`): the folder holding `VOCdevkit`, the `VOCdevkit` folder, or the `VOC2010` folder.
        variant (`str`, defaults to "context59"): "context59" (background ignored) or "context60" (background is
            class 0).
        split (`str`, defaults to "val"): the split file's stem in `ImageSets/SegmentationContext`.
        class_names_file (`str` or `Path`, *optional*): your own class-name file instead of the bundled
            `<variant>.txt`; it must list as many classes as the variant has.

    Each sample is `Sample(image=RGB PIL image, label=HxW uint8 array, id=file stem)`.
    """

    reference_background_threshold = 0.5  # FA-Seg's value for this dataset

    year_dir = "VOC2010"
    label_dir = "SegmentationClassContext"
    split_dir = "ImageSets/SegmentationContext"
    variants = {"context59": (59, True), "context60": (60, False)}

    def __init__(
        self,
        root: str | Path,
        variant: str = "context59",
        split: str = "val",
        class_names_file: str | Path | None = None,
    ):
        super().__init__(root, variant=variant, split=split, class_names_file=class_names_file)
