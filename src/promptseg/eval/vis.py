"""Pictures of predictions next to ground truth, for reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from promptseg.io import palette


def colourise(label: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """HxW class indices -> HxWx3 uint8 in the VOC colour map; ignored pixels white."""
    colours = palette(256)
    out = colours[np.clip(label, 0, 255).astype(np.int64)]
    out[label == ignore_index] = 255
    return out


def save_comparison(image: Image.Image, gt: np.ndarray, pred: np.ndarray, path: Path) -> None:
    """Save image | ground truth | prediction side by side."""
    panels = [np.asarray(image.convert("RGB")), colourise(gt), colourise(pred)]
    Image.fromarray(np.concatenate(panels, axis=1)).save(path)
