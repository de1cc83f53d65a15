"""COCO-format datasets from segmentation results: categories, per-image annotations, and the whole file.

    categories = category_table(parse_labels(["cat", "sky, heaven"]))
    annotations = image_annotations(result, categories, min_area=16)   # no ids yet: `assemble` gives them
    dataset = assemble(images, [annotations, ...], categories)          # the annotations.json dict

Annotations follow the COCO instances format (`pycocotools.coco.COCO` loads it): `segmentation` is compressed RLE,
`bbox` is [x, y, width, height] in pixels, `area` the mask's pixel count, `iscrowd` 0, and `score` the mean of the
method's score map over the mask (what detection results carry). A *thing* category gives one annotation per
connected region (4-connected) of at least `min_area` pixels; a *stuff* category (`promptseg.text.is_stuff`: sky,
grass, road, ...) gives one annotation per image, the union of its regions, as COCO-Stuff and panoptic stuff do.
The semantic map holds the category id per pixel, 0 where no category (background).
"""

from __future__ import annotations

import numpy as np

from promptseg.io.regions import bounding_box, regions
from promptseg.io.rle import encode_rle
from promptseg.text import Label, is_stuff


def category_table(labels: list[Label]) -> list[dict]:
    """COCO categories for `labels`: id 1..K in vocabulary order, `name` (the first synonym), `synonyms` (every
    phrase of the line) and `supercategory` "thing" or "stuff". A label named "background" is not a category: its
    pixels are value 0."""
    out = []
    for label in labels:
        if label.name.lower() == "background":
            continue
        out.append({"id": len(out) + 1, "name": label.name, "synonyms": list(label.synonyms),
                    "supercategory": "stuff" if is_stuff(label.name) else "thing"})
    return out


def semantic_map(result, categories: list[dict]) -> np.ndarray:
    """HxW int32: the category id of each pixel of `result` (a `SegmentationResult`), 0 for background."""
    ids = {c["name"]: c["id"] for c in categories}
    lut = np.array([ids.get(name, 0) for name in result.labels], np.int32)
    return lut[result.label_map]


def instances(result, categories: list[dict], min_area: int = 0):
    """The instances of one result, by category id, then region size (largest first): (category, (x0, y0, x1, y1)
    box with exclusive ends, HxW bool mask, score = the category's mean score over the mask). A thing category
    gives one per connected region, a stuff category one (the union); regions under `min_area` pixels are left
    out."""
    index = {name: i for i, name in enumerate(result.labels)}
    for category in categories:
        k = index.get(category["name"])
        if k is None:
            continue
        mask = result.label_map == k
        if category["supercategory"] == "stuff":
            found = [(bounding_box(mask), mask)] if mask.sum() >= max(min_area, 1) else []
        else:
            found = regions(mask, max(min_area, 1))
        for box, region in found:
            yield category, box, region, float(result.scores[k][region].mean())


def image_annotations(result, categories: list[dict], min_area: int = 0) -> list[dict]:
    """The annotations of one image (without `id` and `image_id`), in the order of `instances`."""
    out = []
    for category, (x0, y0, x1, y1), region, score in instances(result, categories, min_area):
        out.append({
            "category_id": category["id"],
            "segmentation": encode_rle(region),
            "area": int(region.sum()),
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "iscrowd": 0,
            "score": round(score, 5),
        })
    return out


def assemble(images: list[dict], annotations: list[list[dict]], categories: list[dict], info: dict | None = None) -> dict:
    """The annotations.json dict: image ids 1..N in the order of `images`, annotation ids 1.. in image order (and
    within an image in the order given), so the same inputs always give the same file."""
    out_images, out_annotations = [], []
    for image_id, (image, found) in enumerate(zip(images, annotations), start=1):
        out_images.append({"id": image_id, **image})
        for annotation in found:
            out_annotations.append({"id": len(out_annotations) + 1, "image_id": image_id, **annotation})
    return {"info": info or {}, "licenses": [], "images": out_images, "annotations": out_annotations,
            "categories": categories}
