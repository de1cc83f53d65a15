"""The FiftyOne model through FiftyOne's own `apply_model` on a FiftyOne dataset (its bundled database): stored masks
equal promptseg's."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["grass", "sand", "water", "sky", "circle", "square", "triangle"]
EXAMPLES = sorted((ROOT / "examples").glob("*.png"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    os.environ.setdefault("FIFTYONE_DATABASE_DIR", str(tmp_path_factory.mktemp("fiftyone_db")))
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
    os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
    import fiftyone as fo

    data = fo.Dataset()
    data.add_samples([fo.Sample(filepath=str(path)) for path in EXAMPLES])
    yield data
    data.delete()


def _expected(path: Path):
    from promptseg import Pipeline
    from promptseg.io.coco import semantic_map

    result = Pipeline("shapes", device="cpu").segment(Image.open(path), CLASSES)
    return result, semantic_map(result, [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)])


def test_apply_model_stores_promptsegs_label_maps(dataset):
    from promptseg.integrations.fiftyone import FiftyOneModel

    model = FiftyOneModel(CLASSES, model="shapes", device="cpu")
    dataset.apply_model(model, label_field="seg", skip_failures=False)
    dataset.apply_model(model, label_field="seg_batched", batch_size=2, skip_failures=False)
    for sample in dataset:
        _, expected = _expected(Path(sample.filepath))
        assert np.array_equal(sample["seg"].get_mask(), expected)
        assert (sample["seg_batched"].get_mask() == expected).mean() >= 0.999  # batched: equal to float rounding
    assert model.mask_targets[5] == "circle"


def test_apply_model_stores_a_detection_per_region_with_its_box_and_mask(dataset):
    from promptseg.integrations.fiftyone import FiftyOneModel
    from promptseg.integrations.supervision import to_detections

    dataset.apply_model(FiftyOneModel(CLASSES, output="detections", min_area=1, device="cpu"), label_field="det",
                        skip_failures=False)
    for sample in dataset:
        result, _ = _expected(Path(sample.filepath))
        expected = to_detections(result, classes=CLASSES)
        found = sample["det"].detections
        assert [d.label for d in found] == expected.data["class_name"].tolist()
        height, width = result.label_map.shape
        for detection, mask in zip(found, expected.mask):
            x, y, w, h = detection.bounding_box
            x0, y0 = round(x * width), round(y * height)
            full = np.zeros_like(mask)
            full[y0:y0 + detection.mask.shape[0], x0:x0 + detection.mask.shape[1]] = detection.mask
            assert np.array_equal(full, mask) and (round(w * width), round(h * height)) == detection.mask.shape[::-1]
