"""Results as `supervision.Detections`, the common currency of Roboflow's tools (annotators, datasets, trackers).

    import supervision as sv
    detections = to_detections(result, classes=["cat", "sofa"])      # or: Pipeline(...).predict(image, labels)
    sv.MaskAnnotator().annotate(image, detections)

One detection per connected region (4-connected) of a thing class, one per stuff class (the union of its regions,
as COCO-Stuff and panoptic stuff count it; `promptseg.text.is_stuff`), the same instances `promptseg label` writes to
COCO; `mask` HxW bool, `xyxy` from the mask as `sv.mask_to_xyxy` computes it (the last pixel's index, not the edge
after it), `confidence` the class's mean score over the region, `class_id` the index into `classes`, and
`data["class_name"]`. Needs the extra `supervision`.
"""

from __future__ import annotations

import numpy as np

from promptseg.extras import require
from promptseg.text import is_stuff


def _categories(classes: list[str]) -> list[dict]:
    return [{"id": i + 1, "name": name, "supercategory": "stuff" if is_stuff(name) else "thing"}
            for i, name in enumerate(classes)]


def to_detections(result, classes: list[str] | None = None, min_area: int = 1):
    """A `SegmentationResult` as `sv.Detections`.

    Args:
        result: what `Pipeline.segment` returned.
        classes (*optional*): the class names `class_id` indexes (the labels' names in the order given; a name the
            result lacks, e.g. dropped by the filter, simply has no detection). Default: the result's labels
            without "background".
        min_area (`int`, defaults to 1): regions with fewer pixels are left out.
    """
    sv = require("supervision", "supervision", "to_detections")
    from promptseg.io.coco import instances

    names = list(classes) if classes is not None else [n for n in result.labels if n.lower() != "background"]
    found = list(instances(result, _categories(names), min_area))
    height, width = result.label_map.shape
    if not found:
        return sv.Detections(xyxy=np.zeros((0, 4), np.float32), mask=np.zeros((0, height, width), bool),
                             confidence=np.zeros(0, np.float32), class_id=np.zeros(0, int),
                             data={"class_name": np.array([], dtype=str)})
    masks = np.stack([region for _, _, region, _ in found])
    return sv.Detections(
        xyxy=np.array([(x0, y0, x1 - 1, y1 - 1) for _, (x0, y0, x1, y1), _, _ in found], np.float32),
        mask=masks,
        confidence=np.array([score for *_, score in found], np.float32),
        class_id=np.array([category["id"] - 1 for category, *_ in found], int),
        data={"class_name": np.array([category["name"] for category, *_ in found])},
    )
