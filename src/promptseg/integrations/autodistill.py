"""promptseg as an autodistill base model: label a folder with class captions, then train a small model on it.

    from autodistill.detection import CaptionOntology
    from promptseg.integrations.autodistill import PromptSeg

    base = PromptSeg(CaptionOntology({"a cat": "cat", "a kitten": "cat", "a sofa": "sofa"}), model="shapes")
    dataset = base.label("photos", extension=".png")     # autodistill's own loop: photos_labeled/{train,valid}, data.yaml

Captions are what promptseg prompts with; several captions of one class are that class's synonyms (one label, "a
cat, a kitten", scored together), so a class is segmented once however many captions name it. `predict` returns
`sv.Detections` whose `class_id` indexes `ontology.classes()` (autodistill's convention; with several captions for a
class, the index of its first caption), with masks, so `label` writes YOLO segmentation polygons. Arrays given to
`predict` are BGR, as autodistill's loop reads them with OpenCV. Needs the extra `autodistill`.
"""

from __future__ import annotations

from pathlib import Path

from promptseg.integrations import require

_detection = require("autodistill.detection", "autodistill", "the autodistill base model")
_helpers = require("autodistill.helpers", "autodistill", "the autodistill base model")


class PromptSeg(_detection.DetectionBaseModel):
    """An autodistill `DetectionBaseModel` segmenting with a promptseg `Pipeline`.

    Args:
        ontology: an autodistill `CaptionOntology` ({caption: class}).
        model, method: as `Pipeline` (the bundled `shapes` model and the baseline by default; e.g.
            "stable-diffusion-v1-5/stable-diffusion-v1-5" and "fastseg").
        min_area (`int`, defaults to 16): regions with fewer pixels are not detections (`promptseg label`'s default).
        **pipeline: the other `Pipeline` arguments (device, dtype, settings, filter, refine, offload, ...).

    Raises:
        ValueError: a caption with a comma (promptseg reads commas as synonym separators: give each synonym its own
            caption instead).
    """

    def __init__(self, ontology, model: str = "shapes", method: str = "baseline", min_area: int = 16, **pipeline):
        from promptseg.pipeline import Pipeline
        from promptseg.text import parse_labels

        self.ontology = ontology
        classes, captions = ontology.classes(), ontology.prompts()
        bad = [c for c in captions if "," in c]
        if bad:
            raise ValueError(f"captions {bad} contain a comma, which promptseg reads as a synonym separator: give "
                             "each phrase its own caption mapped to the same class")
        self.class_names = list(dict.fromkeys(classes))
        self.labels = [", ".join(p for p, c in zip(captions, classes) if c == name) for name in self.class_names]
        self.class_ids = [classes.index(name) for name in self.class_names]
        self.names = [label.name for label in parse_labels(self.labels)]  # checked now: a caption used twice fails here
        self.min_area = int(min_area)
        self.pipeline = Pipeline(model, method, **pipeline)

    def predict(self, input):
        """`sv.Detections` of an image (a path, a PIL image, or a BGR array as autodistill's loop passes)."""
        import numpy as np

        from promptseg.io import load_image
        from promptseg.io.detections import to_detections

        if isinstance(input, (str, Path)) and not str(input).startswith(("http://", "https://")):
            image = load_image(input)  # EXIF-rotated, as autodistill's own loop (OpenCV) reads it
        else:
            image = _helpers.load_image(input, return_format="PIL")
        result = self.pipeline.segment(image, self.labels)
        detections = to_detections(result, classes=self.names, min_area=self.min_area)
        detections.class_id = np.array([self.class_ids[i] for i in detections.class_id], int)
        detections.data["class_name"] = np.array([self.class_names[self.names.index(n)]
                                                  for n in detections.data["class_name"]], dtype=str)
        return detections
