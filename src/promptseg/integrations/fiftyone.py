"""promptseg as a FiftyOne model: `dataset.apply_model(model, label_field=...)` with the classes you name.

    import fiftyone as fo
    from promptseg.integrations.fiftyone import FiftyOneModel

    model = FiftyOneModel(classes=["cat", "sofa"], model="shapes", output="segmentation")   # or "detections"
    dataset.apply_model(model, label_field="promptseg")
    dataset.mask_targets = {"promptseg": model.mask_targets}     # names of the mask values in the App

`output="segmentation"`: an `fo.Segmentation` per image whose mask holds the class's number (1.. in the order of
`classes`, 0 where no class: the values `promptseg label` writes); `"detections"`: `fo.Detections`, one per thing
region and per stuff class (`to_detections`), each with its box, its mask inside the box and its score. Classes
are given to the model, as FiftyOne's zoo takes them for SAM 3 and YOLOE (`classes=[...]`); "a, b" makes "b" a
synonym of "a". With `apply_model(..., batch_size=N)` the images go through `Pipeline.segment_batch`. Needs the
extra `fiftyone`.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from promptseg.integrations import require

_models = require("fiftyone.core.models", "fiftyone", "the FiftyOne model")
_labels = require("fiftyone.core.labels", "fiftyone", "the FiftyOne model")


class FiftyOneModel(_models.Model):
    """A FiftyOne `Model` segmenting with a promptseg `Pipeline`.

    Args:
        classes (`list[str]`): the class names (commas: synonyms of one class).
        model, method: as `Pipeline`.
        output (`str`, defaults to "segmentation"): "segmentation" or "detections".
        min_area (`int`, defaults to 16): detections with fewer pixels are left out (detections output).
        **pipeline: the other `Pipeline` arguments (device, dtype, settings, filter, refine, offload, ...).
    """

    def __init__(self, classes, model: str = "shapes", method: str = "baseline", output: str = "segmentation",
                 min_area: int = 16, **pipeline):
        from promptseg.pipeline import Pipeline
        from promptseg.text import parse_labels

        if output not in ("segmentation", "detections"):
            raise ValueError(f"output must be 'segmentation' or 'detections', got {output!r}")
        self.labels = list(classes)
        self.names = [label.name for label in parse_labels(self.labels)]
        self.output, self.min_area = output, int(min_area)
        self.pipeline = Pipeline(model, method, **pipeline)
        # apply_model(classes=..., confidence_thresh=...) reads these two from the model's config (None: no filter)
        self.config = SimpleNamespace(classes=self.names, filter_classes=None, confidence_thresh=None)
        self._preprocess = False

    @property
    def mask_targets(self) -> dict[int, str]:
        """{value: class name} of the segmentation masks, for `dataset.mask_targets`."""
        return {i + 1: name for i, name in enumerate(self.names)}

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        return False

    @property
    def transforms(self):
        return None

    @property
    def preprocess(self) -> bool:
        return self._preprocess

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        self._preprocess = value

    def _label(self, result):
        from promptseg.io.coco import semantic_map
        from promptseg.io.detections import to_detections

        if self.output == "segmentation":
            categories = [{"id": i + 1, "name": name} for i, name in enumerate(self.names)]
            return _labels.Segmentation(mask=semantic_map(result, categories).astype(np.uint8 if len(categories)
                                                                                     < 256 else np.uint16))
        found = to_detections(result, classes=self.names, min_area=self.min_area)
        return _labels.Detections(detections=[
            _labels.Detection.from_mask(mask, label=self.names[k], confidence=float(score))
            for mask, k, score in zip(found.mask, found.class_id, found.confidence)])

    def predict(self, arg):
        """The label of one image (FiftyOne passes an HxWx3 RGB uint8 array)."""
        return self._label(self.pipeline.segment(np.asarray(arg), self.labels))

    def predict_all(self, args):
        """The labels of several images, segmented together where the method allows."""
        return [self._label(r) for r in self.pipeline.segment_batch([np.asarray(a) for a in args], self.labels)]
