"""Segmentation methods, registered by name (`list_methods()`, `build_method(name, backbone)`)."""

from promptseg.diffusion.encode import PreparedImage
from promptseg.methods.base import (
    SegmentationResult,
    build_method,
    list_methods,
    method_config,
    methods_for,
    register_method,
)

__all__ = ["PreparedImage", "SegmentationResult", "build_method", "list_methods", "method_config", "methods_for",
           "register_method"]
