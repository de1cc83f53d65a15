"""Word heat maps on disk: one .npz of float maps per image and one PNG overlay per word."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image


def heat_overlay(image: Image.Image, heat: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """`image` with `heat` (H, W) drawn over it: scaled to [0, 1] over the image, black-red-yellow-white ramp."""
    low, high = float(heat.min()), float(heat.max())
    x = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
    ramp = np.stack([np.clip(3 * x, 0, 1), np.clip(3 * x - 1, 0, 1), np.clip(3 * x - 2, 0, 1)], axis=-1)
    base = np.asarray(image.convert("RGB").resize(heat.shape[::-1]), dtype=np.float32) / 255
    return Image.fromarray(np.uint8(255 * ((1 - alpha) * base + alpha * ramp)))


def _slug(word: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", word).strip("-") or "word"


def save_word_maps(maps, image: Image.Image, out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Write `maps` (a `WordMaps`) of one image into `out_dir`: `{stem}_maps.npz` (words, maps (W, H, W_img),
    timestep, prompt, and "layer:NAME" arrays when per-layer maps were asked for) and `{stem}_{word}.png` overlays;
    returns the paths by kind."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"maps": out_dir / f"{stem}_maps.npz"}
    arrays = {"words": np.array(maps.words), "maps": maps.maps, "timestep": np.array(maps.timestep),
              "prompt": np.array(maps.prompt)}
    arrays.update({f"layer:{name}": value for name, value in maps.layers.items()})
    np.savez_compressed(paths["maps"], **arrays)
    slugs: dict[str, int] = {}
    for word, heat in zip(maps.words, maps.maps):
        slug = _slug(word)
        slugs[slug] = slugs.get(slug, 0) + 1
        name = slug if slugs[slug] == 1 else f"{slug}-{slugs[slug]}"
        paths[f"overlay:{word}"] = out_dir / f"{stem}_{name}.png"
        heat_overlay(image, heat).save(paths[f"overlay:{word}"])
    return paths
