"""promptseg inside the tools people label with, each an optional extra imported only where used.

    supervision.py   `to_detections(result)` -> `sv.Detections`; `Pipeline.predict` returns it   [supervision]
    autodistill.py   `PromptSeg(ontology)`, an autodistill base model                            [autodistill]
    labelstudio.py   a Label Studio ML backend (`promptseg serve label-studio`)                  [labelstudio]
    fiftyone.py      `FiftyOneModel` for `dataset.apply_model`                                   [fiftyone]
"""

from __future__ import annotations

import importlib


def require(module: str, extra: str, purpose: str):
    """`module`, imported; missing, an ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{purpose} needs {module.split('.')[0]}: pip install 'promptseg[{extra}]'") from err
