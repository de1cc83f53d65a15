"""Refiners: redraw a method's label map with sharp edges (`list_refiners()`, `build_refiner(name, backbone)`)."""

from promptseg.refiners.base import (
    DEFAULT_REFINER,
    Refinement,
    apply_refiner,
    build_refiner,
    list_refiners,
    refiner_config,
    register_refiner,
)

__all__ = [
    "DEFAULT_REFINER",
    "Refinement",
    "apply_refiner",
    "build_refiner",
    "list_refiners",
    "refiner_config",
    "register_refiner",
]
