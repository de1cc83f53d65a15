"""The attention-capture core every promptseg method uses (see `capture`)."""

from promptseg.capture.core import RecordingProcessor, StopForward, capture, run_until_captured
from promptseg.capture.layers import (
    AttentionLayer,
    attention_grids,
    grid_at_level,
    list_attention_layers,
    select_layers,
)
from promptseg.capture.store import AttentionStore, lazy_tokens_for

__all__ = [
    "AttentionLayer",
    "AttentionStore",
    "RecordingProcessor",
    "StopForward",
    "attention_grids",
    "capture",
    "grid_at_level",
    "lazy_tokens_for",
    "list_attention_layers",
    "run_until_captured",
    "select_layers",
]
