"""promptseg: training-free open-vocabulary segmentation with frozen text-to-image diffusion models."""

__version__ = "0.1.0"

from promptseg.methods import SegmentationResult, build_method, list_methods, method_config
from promptseg.models import Backbone, DiffusionBackbone, load_backbone
from promptseg.pipeline import Pipeline
from promptseg.text import Label, parse_labels

__all__ = [
    "Backbone",
    "DiffusionBackbone",
    "Label",
    "Pipeline",
    "SegmentationResult",
    "__version__",
    "build_method",
    "list_methods",
    "load_backbone",
    "method_config",
    "parse_labels",
]
