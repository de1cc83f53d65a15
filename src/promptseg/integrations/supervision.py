"""Results as `supervision.Detections` (`promptseg.io.detections`, where `Pipeline.predict` finds it)."""

from promptseg.io.detections import to_detections

__all__ = ["to_detections"]
