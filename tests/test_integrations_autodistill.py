"""The autodistill base model: autodistill's own labelling loop writes a dataset supervision loads, with the classes
of the ontology and the masks `predict` gave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base():
    from autodistill.detection import CaptionOntology

    from promptseg.integrations.autodistill import PromptSeg

    ontology = CaptionOntology({"circle": "circle", "square": "box", "triangle": "triangle", "grass": "ground",
                                "sand": "ground", "water": "water", "sky": "sky"})
    return PromptSeg(ontology, model="shapes", device="cpu")


def test_several_captions_are_one_class_indexed_as_autodistill_indexes(base):
    assert base.labels == ["circle", "square", "triangle", "grass, sand", "water", "sky"]
    image = Image.open(ROOT / "examples" / "shapes_test_1.png")
    detections = base.predict(str(ROOT / "examples" / "shapes_test_1.png"))
    classes = base.ontology.classes()
    assert len(detections) and all(classes[i] == name for i, name in zip(detections.class_id, detections.data["class_name"]))
    ground = detections.class_id[detections.data["class_name"] == "ground"]
    assert len(ground) and set(ground) == {3}  # "grass" and "sand" are one class, indexed by its first caption
    bgr = np.asarray(image.convert("RGB"))[:, :, ::-1].copy()  # autodistill's loop passes OpenCV's BGR arrays
    again = base.predict(bgr)
    assert np.array_equal(again.mask, detections.mask) and np.array_equal(again.class_id, detections.class_id)


def test_autodistills_labelling_loop_writes_a_dataset_supervision_loads(base, tmp_path):
    import supervision as sv

    from promptseg.data.shapes_world import render_sample

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(render_sample("test", i).image).save(folder / f"img{i}.png")
    base.label(str(folder), extension=".png", output_folder=str(tmp_path / "out"))
    loaded = {}
    for split in ("train", "valid"):
        dataset = sv.DetectionDataset.from_yolo(str(tmp_path / "out" / split / "images"),
                                                str(tmp_path / "out" / split / "labels"),
                                                str(tmp_path / "out" / "data.yaml"))
        assert dataset.classes == base.ontology.classes()
        loaded.update({Path(path).stem: detections for path, _, detections in dataset})
    assert sorted(loaded) == [f"img{i}" for i in range(5)]
    for stem, detections in loaded.items():
        ours = base.predict(str(folder / f"{stem}.png"))
        assert len(detections) >= 1 and set(detections.class_id) <= set(ours.class_id)
        for mask, class_id in zip(detections.mask, detections.class_id):  # each written mask is one of ours
            same = [m for m, c in zip(ours.mask, ours.class_id) if c == class_id]
            assert max((mask & m).sum() / (mask | m).sum() for m in same) >= 0.8


def test_a_caption_with_a_comma_is_refused():
    from autodistill.detection import CaptionOntology

    from promptseg.integrations.autodistill import PromptSeg

    with pytest.raises(ValueError, match="contain a comma"):
        PromptSeg(CaptionOntology({"a red, round shape": "circle"}))
