"""`to_detections` and `Pipeline.predict`: supervision's Detections, checked with supervision's own functions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptseg.integrations.supervision import to_detections
from promptseg.methods.base import SegmentationResult

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ["grass", "sand", "water", "sky", "circle", "square", "triangle"]


def toy_result() -> SegmentationResult:
    """Two separate circles, one sky in two parts, a 1-pixel square; "background" first."""
    label_map = np.zeros((12, 16), np.int32)
    label_map[1:4, 1:4] = 1  # circle
    label_map[6:9, 10:14] = 1  # circle again
    label_map[0, 8:16] = 2  # sky
    label_map[11, 0:5] = 2  # sky
    label_map[10, 10] = 3  # square, one pixel
    scores = np.stack([np.full(label_map.shape, 0.3), label_map == 1, (label_map == 2) * 0.8, label_map == 3])
    return SegmentationResult(label_map, scores.astype(np.float32), ["background", "circle", "sky", "square"])


def test_a_detection_per_thing_region_and_per_stuff_class():
    import supervision as sv

    result = toy_result()
    detections = to_detections(result, classes=["sky", "circle", "square", "dog"])
    assert detections.class_id.tolist() == [0, 1, 1, 2]  # by class, then region size
    assert detections.data["class_name"].tolist() == ["sky", "circle", "circle", "square"]
    assert np.array_equal(detections.mask[0], result.label_map == 2)  # stuff: one union of both parts
    assert np.array_equal(detections.mask[1] | detections.mask[2], result.label_map == 1)
    assert np.array_equal(detections.xyxy, sv.mask_to_xyxy(detections.mask))  # supervision's own box convention
    assert np.allclose(detections.confidence, [0.8, 1.0, 1.0, 1.0])
    assert len(to_detections(result, classes=["circle"], min_area=10)) == 1  # the 9-pixel circle is left out
    empty = to_detections(result, classes=["dog"])
    assert len(empty) == 0 and empty.mask.shape == (0, 12, 16)
    assert to_detections(result).data["class_name"].tolist() == ["circle", "circle", "sky", "square"]


def test_pipeline_predict_indexes_the_labels_given():
    import supervision as sv

    from promptseg import Pipeline

    image = Image.open(ROOT / "examples" / "shapes_test_1.png")
    pipe = Pipeline("shapes", device="cpu")
    labels = list(reversed(SHAPES))
    result = pipe.segment(image, labels)
    detections = pipe.predict(image, labels)
    assert len(detections) > 1 and isinstance(detections, sv.Detections)
    for mask, class_id in zip(detections.mask, detections.class_id):
        k = result.labels.index(labels[class_id])
        assert (result.label_map[mask] == k).all()
    annotated = sv.MaskAnnotator().annotate(np.asarray(image).copy(), detections)
    assert (annotated != np.asarray(image))[detections.mask.any(0)].any()


def test_a_missing_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)
    with pytest.raises(ImportError, match=r"pip install 'promptseg\[supervision\]'"):
        to_detections(toy_result())
