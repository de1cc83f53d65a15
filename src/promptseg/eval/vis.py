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


def save_refer_comparison(image: Image.Image, gt: np.ndarray, pred: np.ndarray, expression: str, path: Path) -> None:
    """Save image | ground-truth mask | predicted mask (masks tinted on the image); the expression in the file's
    PNG text chunk."""
    from PIL import PngImagePlugin

    rgb = np.asarray(image.convert("RGB")).astype(np.float32)
    tint = np.array([255, 64, 64], np.float32)
    panels = [rgb] + [np.where(m[..., None], 0.45 * rgb + 0.55 * tint, 0.6 * rgb) for m in (gt, pred)]
    info = PngImagePlugin.PngInfo()
    info.add_text("expression", expression)
    Image.fromarray(np.concatenate(panels, axis=1).astype(np.uint8)).save(path, pnginfo=info)
