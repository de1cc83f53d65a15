"""The `none` filter: every label is kept (the behaviour without a filter)."""

from __future__ import annotations

from dataclasses import dataclass

from promptseg.filters.base import FilterDecision, register_filter


@dataclass
class NoFilterConfig:
    """No settings."""


@register_filter("none", NoFilterConfig)
class NoFilter:
    """Keep every label (no filtering)."""

    def __init__(self, backbone=None, config: NoFilterConfig | None = None):
        self.config = config or NoFilterConfig()

    def __call__(self, image, labels) -> FilterDecision:
        return FilterDecision(kept=list(labels), scores={label.name: 1.0 for label in labels})
