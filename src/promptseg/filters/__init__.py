"""Class filters: which of the offered labels are in this image (`list_filters()`, `build_filter(name, backbone)`)."""

from promptseg.filters.base import (
    DEFAULT_FILTER,
    FilterDecision,
    build_filter,
    filter_config,
    list_filters,
    register_filter,
)

__all__ = [
    "DEFAULT_FILTER",
    "FilterDecision",
    "build_filter",
    "filter_config",
    "list_filters",
    "register_filter",
]
