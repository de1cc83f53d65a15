"""Segmentation methods, registered by name (`list_methods()`, `build_method(name, backbone)`)."""

from promptseg.methods.base import (
    PreparedImage,
    SegmentationResult,
    build_method,
    list_methods,
    method_config,
    register_method,
)

__all__ = ["PreparedImage", "SegmentationResult", "build_method", "list_methods", "method_config", "register_method"]
