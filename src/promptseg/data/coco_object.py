"""COCO-Object (val2017, 5,000 images, 81 classes: background then the 80 COCO thing classes).

The field evaluates it in mmseg's layout::

    ROOT/images/val2017/<id>.jpg
    ROOT/annotations/val2017/<id>_instanceTrainIds.png      single-channel uint8: 0 background, 1-80 things

There are no ignore pixels: everything that is not a thing is background. Two converters make the label PNGs for
users who do not have them: `convert_stuffthingmaps` (the field's route, from COCO-Stuff164k `stuffthingmaps`)
and `convert_instances_json` (from `instances_val2017.json`, needs pycocotools: `pip install promptseg[eval]`).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from .base import Sample, SegDataset, read_index_png
from .voc import load_class_names

LABEL_SUFFIX = "_instanceTrainIds.png"
NUM_THINGS = 80
# stuffthingmaps values 0..90 are COCO thing category ids minus 1; these 11 are ids no category uses.
UNUSED_THING_VALUES = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)


def _stuffthing_lut() -> np.ndarray:
    """A 256-entry uint8 table: used thing values 0..90 -> 1..80 in increasing order, everything else -> 0."""
    lut = np.zeros(256, dtype=np.uint8)
    used = [v for v in range(91) if v not in UNUSED_THING_VALUES]
    lut[used] = np.arange(1, len(used) + 1)
    return lut


def _png_files(src_dir: Path) -> list[Path]:
    if not src_dir.is_dir():
        raise FileNotFoundError(f"{src_dir} does not exist or is not a folder")
    files = sorted(src_dir.glob("*.png"))
    if not files:
        raise FileNotFoundError(f"{src_dir} holds no .png files; pass the stuffthingmaps folder of one split")
    return files


def convert_stuffthingmaps(src_dir: str | Path, dst_dir: str | Path) -> int:
    """Write COCO-Object label maps from COCO-Stuff164k `stuffthingmaps` PNGs (the field's route, as mmseg does).

    A stuffthingmaps PNG holds COCO category id - 1 per pixel: things 0..90 (11 of them unused), stuff 91..181 and
    255 unlabelled. The 80 used thing values go, in increasing order, to 1..80; everything else, 255 included,
    to 0 (background). Each `<stem>.png` in `src_dir` becomes `<stem>_instanceTrainIds.png` in `dst_dir`.

    Args:
        src_dir (`str` or `Path`): one split of stuffthingmaps, e.g. `stuffthingmaps_trainval2017/val2017`.
        dst_dir (`str` or `Path`): where to write, e.g. `ROOT/annotations/val2017`; created if missing.

    Returns:
        `int`: the number of files written.
    """
    files = _png_files(Path(src_dir))
    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    lut = _stuffthing_lut()
    for path in files:
        Image.fromarray(lut[read_index_png(path)]).save(dst_dir / f"{path.stem}{LABEL_SUFFIX}")
    return len(files)


def convert_instances_json(instances_json: str | Path, dst_dir: str | Path) -> int:
    """Write COCO-Object label maps from a COCO instances JSON (e.g. `instances_val2017.json`) with pycocotools.

    Category ids sorted ascending become class indices 1..80. Per image, every annotation's mask (crowd ones
    included) is painted with its class index, largest mask first, so smaller instances stay on top; unpainted
    pixels are 0 (background). Every image in the JSON gets a map, `<file stem>_instanceTrainIds.png`.

    This differs slightly from `convert_stuffthingmaps`, the route the published numbers use: there, overlaps were
    resolved by COCO-Stuff's own rasterisation and crowd regions may differ, so a few boundary and crowd pixels
    change class. Use it when you do not have stuffthingmaps, and say so next to your numbers.

    Args:
        instances_json (`str` or `Path`): a COCO instances file with the 80 thing categories.
        dst_dir (`str` or `Path`): where to write, e.g. `ROOT/annotations/val2017`; created if missing.

    Returns:
        `int`: the number of files written.

    Raises:
        ImportError: pycocotools is not installed.
        ValueError: the file does not list COCO's 80 thing categories.
    """
    try:
        from pycocotools.coco import COCO
    except ImportError as error:
        raise ImportError("convert_instances_json needs pycocotools: pip install promptseg[eval]") from error
    instances_json = Path(instances_json)
    if not instances_json.is_file():
        raise FileNotFoundError(f"instances file {instances_json} does not exist")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO(str(instances_json))
    cat_ids = sorted(coco.getCatIds())
    if len(cat_ids) != NUM_THINGS:
        raise ValueError(
            f"{instances_json} lists {len(cat_ids)} categories, expected COCO's {NUM_THINGS} thing categories; "
            f"pass an instances_*.json file (not panoptic or stuff annotations)"
        )
    index = {cat_id: i + 1 for i, cat_id in enumerate(cat_ids)}
    dst_dir = Path(dst_dir)
    dst_dir.mkdir(parents=True, exist_ok=True)
    for img_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(img_id)[0]
        label = np.zeros((info["height"], info["width"]), dtype=np.uint8)  # (H, W)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id, iscrowd=None))
        masks = [(coco.annToMask(ann).astype(bool), index[ann["category_id"]]) for ann in anns]
        for mask, cls in sorted(masks, key=lambda m: -int(m[0].sum())):  # stable: ties keep JSON order
            label[mask] = cls
        Image.fromarray(label).save(dst_dir / f"{Path(info['file_name']).stem}{LABEL_SUFFIX}")
    return len(coco.getImgIds())


class COCOObjectDataset(SegDataset):
    """COCO-Object: background (class 0) and the 80 COCO thing classes.

    Args:
        root (`str` or `Path`): the folder holding `images/<split>` and `annotations/<split>` (mmseg's layout).
        split (`str`, defaults to "val2017"): the split's folder name.
        class_names_file (`str` or `Path`, *optional*): your own 81-line class-name file instead of the bundled
            `coco_object.txt`.

    Samples come in sorted id order; each is `Sample(image=RGB PIL image, label=HxW uint8 array, id=file stem)`.
    """

    reference_background_threshold = 0.6  # FA-Seg's value for this dataset

    name = "coco_object"
    background = 0

    def __init__(self, root: str | Path, split: str = "val2017", class_names_file: str | Path | None = None):
        root = Path(root).expanduser()
        self.image_dir = root / "images" / split
        self.label_dir = root / "annotations" / split
        layout = (
            f"expected ROOT/images/{split}/<id>.jpg and ROOT/annotations/{split}/<id>{LABEL_SUFFIX}; got root={root}"
        )
        for folder in (self.image_dir, self.label_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} does not exist; {layout}")
        self.ids = sorted(p.name[: -len(LABEL_SUFFIX)] for p in self.label_dir.glob(f"*{LABEL_SUFFIX}"))
        if not self.ids:
            raise FileNotFoundError(
                f"{self.label_dir} holds no *{LABEL_SUFFIX} files; make them with convert_stuffthingmaps or "
                f"convert_instances_json (promptseg.data.coco_object)"
            )
        self.class_names = load_class_names("coco_object", class_names_file, NUM_THINGS + 1)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        id_ = self.ids[index]
        image_path = self.image_dir / f"{id_}.jpg"
        if not image_path.is_file():
            raise FileNotFoundError(
                f"{image_path} does not exist but its label map does; is the image download complete?"
            )
        with Image.open(image_path) as image:
            image = image.convert("RGB")
        label_path = self.label_dir / f"{id_}{LABEL_SUFFIX}"
        label = read_index_png(label_path)
        if label.shape != (image.height, image.width):
            raise ValueError(
                f"{label_path} is {label.shape[1]}x{label.shape[0]} but its image is {image.width}x{image.height}"
            )
        return Sample(image=image, label=label, id=id_)
