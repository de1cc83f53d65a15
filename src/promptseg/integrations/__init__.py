"""promptseg inside the tools people label with, each an optional extra imported only where used.

    supervision.py   `to_detections(result)` -> `sv.Detections`; `Pipeline.predict` returns it   [supervision]
    autodistill.py   `PromptSeg(ontology)`, an autodistill base model                            [autodistill]
    labelstudio.py   a Label Studio ML backend (`promptseg serve label-studio`)                  [labelstudio]
    fiftyone.py      `FiftyOneModel` for `dataset.apply_model`                                   [fiftyone]
"""

from promptseg.extras import require

__all__ = ["require"]
