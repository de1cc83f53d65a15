"""The attention-capture core every promptseg method uses (see `capture`)."""

from promptseg.diffusion.capture.core import RecordingProcessor, StopForward, capture, run_until_captured
from promptseg.diffusion.capture.store import AttentionStore, lazy_tokens_for
from promptseg.models.attention_layers import (
    AttentionLayer,
    attention_grids,
    grid_at_level,
    list_attention_layers,
    select_layers,
)

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
