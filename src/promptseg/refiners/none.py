"""The `none` refiner: the method's own label map (the behaviour without refinement)."""

from __future__ import annotations

from dataclasses import dataclass

from promptseg.refiners.base import Refinement, register_refiner


@dataclass
class NoRefinerConfig:
    """No settings."""


@register_refiner("none", NoRefinerConfig)
class NoRefiner:
    """Keep the method's label map (no refinement)."""

    def __init__(self, backbone=None, config: NoRefinerConfig | None = None):
        self.config = config or NoRefinerConfig()

    def __call__(self, image, result) -> Refinement:
        return Refinement(label_map=result.label_map.copy())
