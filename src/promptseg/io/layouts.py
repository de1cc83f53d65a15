"""A labelled folder in the layouts other tools read: YOLO segmentation, per-class masks, PASCAL VOC, COCO polygons.

    write_yolo(out / "yolo", root, entries, categories, val)     # images/, labels/ {train,val}, data.yaml
    write_voc(out / "voc", root, entries, categories, val, out)  # JPEGImages/, SegmentationClass/, ImageSets/
    write_masks(out / "masks", out, entries, categories)         # label/NAME.png, class/NAME/CLASS.png
    coco_polygons(annotation)                                    # an RLE annotation with polygon segmentation

`entries` are the labelled images as `promptseg.labelling` records them (`file_name` relative to `root`, `width`,
`height`, `semantic_file`, `annotations` in COCO form with RLE masks). Every layout is written from those records
after labelling, so resuming and sharding work for all of them as for COCO, and a rerun with another `--format`
labels nothing again. Each layout's folder is built anew on every merge (`fresh`), so a rerun with another split or
other images leaves nothing stale.

Choices where the formats leave room (said in the docs' labelling page):
- the split: `val_split` sorts the images by a hash of their relative path and takes the first round(n x fraction)
  as val, so the split is the same on every run and for every layout;
- file names: an image's path under the root with "/" written "__" (`a/b.jpg` -> `a__b`); where two images would
  still share a name (whatever the case: `a/b.jpg` and `a__b.png`), each gets 8 hex digits of its path's hash;
- images: hard-linked into the layout (copied across file systems) when the file is what was segmented; an image
  whose EXIF rotates it or that has transparency is written as segmented (rotated, over white) instead, so a
  reader that ignores EXIF sees the pixels the masks describe; VOC's `JPEGImages` holds JPEGs only (others are
  re-encoded, quality 95), as VOC's loaders look for `ID.jpg`;
- YOLO: one line per COCO annotation (class index = category id - 1), its polygon through the boundary pixels'
  centres (what `cv2.findContours` writes and `cv2.fillPoly` reads back), holes and parts joined by zero-width cuts
  (`promptseg.io.polygons`; a fill draws a cut between two parts as a one-pixel line, which is Ultralytics' own
  converter's artefact too), coordinates a quarter pixel past the centre and normalised with 6 decimals, so readers
  that round (supervision) and readers that truncate (Ultralytics' `polygon2mask`) land on the same pixel;
  `data.yaml` has `train`, `val` (the train folder when no image is held out, as Ultralytics needs one) and `names`,
  and no `path`: Ultralytics then reads the folders beside it, wherever the dataset is moved;
- VOC: `SegmentationClass` PNGs with VOC's palette (value = category id, 0 background, no 255 "void" border, which
  is an annotation-tool artefact), `ImageSets/Segmentation/{train,val,trainval}.txt`, and CVAT's `labelmap.txt`
  (name:r,g,b::), which CVAT's "Segmentation mask" import reads; at most 255 categories;
- masks: `label/NAME.png` as `semantic/` (palette, category ids) and `class/NAME/CLASS.png` (0/255) for each class
  present.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from promptseg.io.images import label_png, palette
from promptseg.io.polygons import joined_polygon, mask_polygons
from promptseg.io.rle import decode_rle

FORMATS = ("coco", "yolo-seg", "masks", "voc")
VOC_MAX_CATEGORIES = 255


def val_split(relative: list[str], fraction: float) -> set[str]:
    """The images held out for val: the first round(len x fraction) in the order of a hash of their path."""
    if not 0.0 <= float(fraction) < 1.0:
        raise ValueError(f"the val fraction must be in [0, 1), got {fraction}")
    order = sorted(relative, key=lambda r: hashlib.sha1(r.encode()).hexdigest())
    return set(order[:round(len(relative) * float(fraction))])


def flat_names(relative: list[str]) -> dict[str, str]:
    """An id per image path, unique whatever the case, without folders or suffix: `a/b.jpg` -> `a__b`; names that
    would still collide get 8 hex digits of their path's hash (`a__b_3f2c9a1d`)."""
    stems = {r: Path(r).with_suffix("").as_posix().replace("/", "__") for r in relative}
    counts = Counter(s.lower() for s in stems.values())
    return {r: s if counts[s.lower()] == 1 else f"{s}_{hashlib.sha1(r.encode()).hexdigest()[:8]}"
            for r, s in stems.items()}


def fresh(final: Path, write) -> None:
    """Build a layout in a temporary folder with `write(folder)`, then put it in place of `final`: a rerun's layout
    holds nothing of an earlier one's (another split, images no longer given)."""
    building = final.with_name(final.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    write(building)
    shutil.rmtree(final, ignore_errors=True)
    building.rename(final)


def _as_segmented(source: Path) -> bool:
    """Whether the file holds the pixels that were segmented: no EXIF rotation, no transparency."""
    with Image.open(source) as image:
        return image.getexif().get(0x0112, 1) == 1 and "A" not in image.getbands() and "transparency" not in image.info


def place_image(source: Path, folder: Path, stem: str, jpeg: bool = False) -> Path:
    """The image `source` in `folder` as `stem` + suffix: hard-linked (copied across file systems) when it holds
    the segmented pixels, else written as segmented (`load_image`: rotated, over white) as PNG; `jpeg`: always a
    `.jpg` (re-encoded at quality 95 when it is not one)."""
    from promptseg.io.images import load_image

    folder.mkdir(parents=True, exist_ok=True)
    is_jpeg = source.suffix.lower() in (".jpg", ".jpeg")
    if _as_segmented(source) and (is_jpeg or not jpeg):
        target = folder / (stem + (".jpg" if jpeg else source.suffix))
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
        return target
    target = folder / (stem + (".jpg" if jpeg else ".png"))
    load_image(source).save(target, **({"quality": 95} if jpeg else {}))
    return target


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def yolo_line(class_index: int, mask: np.ndarray) -> str:
    """One YOLO segmentation line for a mask: its parts (holes in them) joined into one polygon, a quarter pixel
    past the boundary pixels' centres, normalised."""
    height, width = mask.shape
    coords = (joined_polygon(mask, centres=True) + 0.25) / np.array([width, height])
    return f"{class_index} " + " ".join(f"{v:.6f}" for v in coords.ravel())


def write_yolo(out: Path, root: Path, entries: list[dict], categories: list[dict], val: set[str]) -> None:
    """The YOLO segmentation layout (Ultralytics', which supervision's `DetectionDataset.from_yolo` reads)."""
    names = flat_names([e["file_name"] for e in entries])
    for entry in entries:
        split = "val" if entry["file_name"] in val else "train"
        stem = names[entry["file_name"]]
        place_image(root / entry["file_name"], out / "images" / split, stem)
        lines = [yolo_line(a["category_id"] - 1, decode_rle(a["segmentation"])) for a in entry["annotations"]]
        _write(out / "labels" / split / f"{stem}.txt", "".join(line + "\n" for line in lines))
    has_val = any(e["file_name"] in val for e in entries)
    _write(out / "data.yaml", "# written by promptseg label (YOLO segmentation; Ultralytics' layout, folders beside "
           f"this file)\ntrain: images/train\nval: {'images/val' if has_val else 'images/train'}\n"
           f"nc: {len(categories)}\nnames: {json.dumps([c['name'] for c in categories])}\n")


def write_voc(out: Path, root: Path, entries: list[dict], categories: list[dict], val: set[str], labelled: Path) -> None:
    """The PASCAL VOC segmentation layout, with CVAT's `labelmap.txt`."""
    if len(categories) > VOC_MAX_CATEGORIES:
        raise ValueError(f"VOC's class PNGs hold at most {VOC_MAX_CATEGORIES} categories, this vocabulary has "
                         f"{len(categories)}: use --format masks or coco")
    names = flat_names([e["file_name"] for e in entries])
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for entry in entries:
        stem = names[entry["file_name"]]
        splits["val" if entry["file_name"] in val else "train"].append(stem)
        place_image(root / entry["file_name"], out / "JPEGImages", stem, jpeg=True)
        values = np.asarray(Image.open(labelled / entry["semantic_file"]))
        target = out / "SegmentationClass" / f"{stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        label_png(values).save(target)
    for split, stems in {**splits, "trainval": splits["train"] + splits["val"]}.items():
        _write(out / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(s + "\n" for s in sorted(stems)))
    colours = palette(len(categories) + 1)
    lines = [f"{name}:{','.join(str(int(c)) for c in colour)}::"
             for name, colour in zip(["background"] + [c["name"] for c in categories], colours)]
    _write(out / "labelmap.txt", "# label:color_rgb:parts:actions\n" + "\n".join(lines) + "\n")


def class_file_name(name: str) -> str:
    """A class name as a file name: characters other than letters, digits, '-', '_' and '.' become '_'."""
    return re.sub(r"[^\w.\-]", "_", name).strip(".") or "_"


def check_class_files(categories: list[dict]) -> None:
    """Refuse class names that give the same mask file name (`class_file_name`), before anything is labelled."""
    files = Counter(class_file_name(c["name"]) for c in categories)
    clashes = sorted(c["name"] for c in categories if files[class_file_name(c["name"])] > 1)
    if clashes:
        raise ValueError(f"the classes {clashes} give the same mask file name; rename one of them for --format masks")


def write_masks(out: Path, labelled: Path, entries: list[dict], categories: list[dict]) -> None:
    """Per image its palette PNG (category ids, as `semantic/`) under `label/`, and a 0/255 PNG for each class
    present under `class/NAME/`."""
    check_class_files(categories)
    files = {c["id"]: class_file_name(c["name"]) for c in categories}
    for entry in entries:
        semantic = Path(entry["semantic_file"]).relative_to("semantic")
        values = np.asarray(Image.open(labelled / entry["semantic_file"]))
        target = out / "label" / semantic
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(labelled / entry["semantic_file"], target)
        except OSError:
            shutil.copy2(labelled / entry["semantic_file"], target)
        for category_id in np.unique(values):
            if category_id:
                target = out / "class" / semantic.with_suffix("") / f"{files[int(category_id)]}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(((values == category_id) * 255).astype(np.uint8)).save(target)


def coco_polygons(annotation: dict) -> dict:
    """The annotation with its RLE segmentation as COCO polygons: a polygon per part, its holes joined in (COCO
    has no holes of its own); pixel-corner coordinates, which pycocotools rasterises back to the same pixels."""
    rings = mask_polygons(decode_rle(annotation["segmentation"]))
    return {**annotation, "segmentation": [[round(float(v), 2) for v in ring.ravel()] for ring in rings]}
