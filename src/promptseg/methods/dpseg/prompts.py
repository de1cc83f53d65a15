"""Visual prompts: images the diffusion backbone generates from the class prompts, cached on disk; and the
round-II prompts cropped from the input image.

Generation runs the stock diffusers `StableDiffusionPipeline` on the loaded backbone's parts. Each image is one
file named by a hash of (model, prompt, seed, steps, guidance, size), so a class costs no generation after its
first use, by any process; a file that does not read back as an image is generated again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def default_cache_dir() -> Path:
    """`$PROMPTSEG_CACHE/visual_prompts`, or `~/.cache/promptseg/visual_prompts`."""
    root = os.environ.get("PROMPTSEG_CACHE") or Path.home() / ".cache" / "promptseg"
    return Path(root) / "visual_prompts"


@dataclass
class CacheStats:
    """What a cache did: images read back, generated because absent, generated again because unreadable."""

    hits: int = 0
    misses: int = 0
    regenerated: int = 0
    corrupt: list[str] = field(default_factory=list)


class VisualPromptCache:
    """Generate-once images for prompts.

    Args:
        backbone (`Backbone`): the diffusion model that draws them (its `name` is part of every key).
        root (`str`, *optional*): the cache folder; `default_cache_dir()` when not given.
        images (`int`, defaults to 4): images per prompt (seeds `seed`, `seed + 1`, ...).
        steps (`int`, defaults to 25), guidance (`float`, defaults to 7.5): the sampler's settings.
        seed (`int`, defaults to 0).
    """

    def __init__(self, backbone, root: str | os.PathLike | None = None, images: int = 4, steps: int = 25,
                 guidance: float = 7.5, seed: int = 0):
        if images < 1 or steps < 1:
            raise ValueError(f"images and steps must be >= 1, got images={images}, steps={steps}")
        self.backbone = backbone
        self.root = Path(root) if root is not None else default_cache_dir()
        self.images_per_prompt, self.steps, self.guidance, self.seed = images, steps, guidance, seed
        self.stats = CacheStats()

    def key(self, prompt: str, index: int) -> str:
        """The file stem of image `index` of `prompt`."""
        fields = {"model": str(self.backbone.name), "prompt": prompt, "seed": self.seed + index, "steps": self.steps,
                  "guidance": self.guidance, "size": list(self.backbone.image_size)}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]

    def path(self, prompt: str, index: int) -> Path:
        return self.root / f"{self.key(prompt, index)}.png"

    def images(self, prompt: str) -> list[Image.Image]:
        """The prompt's images, read from the cache or generated (and written) when absent or unreadable."""
        out: list[Image.Image | None] = []
        for i in range(self.images_per_prompt):
            path = self.path(prompt, i)
            image = None
            if path.exists():
                try:
                    with Image.open(path) as f:
                        image = f.convert("RGB")
                    self.stats.hits += 1
                except Exception:  # truncated or not an image: draw it again
                    self.stats.corrupt.append(str(path))
                    self.stats.regenerated += 1
            else:
                self.stats.misses += 1
            out.append(image)
        missing = [i for i, image in enumerate(out) if image is None]
        if missing:
            for i, image in zip(missing, self._generate(prompt, missing)):
                self._write(self.path(prompt, i), image)
                out[i] = image
        return out

    def _write(self, path: Path, image: Image.Image) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        image.save(tmp, format="PNG")
        os.replace(tmp, path)

    def _generate(self, prompt: str, indices: list[int]) -> list[Image.Image]:
        generators = [torch.Generator("cpu").manual_seed(self.seed + i) for i in indices]
        return self.backbone.generate([prompt] * len(indices), self.steps, self.guidance, generators)


def crop_region(image: Image.Image, mask: np.ndarray, fill: tuple[int, int, int] | None = None,
                keep_frame: bool = False) -> Image.Image:
    """Round II's visual prompt: the bounding box of `mask` cut from `image`.

    Args:
        image (`PIL.Image`): the input image.
        mask (`np.ndarray`): HxW bool at the image's size, one class's round-I region (not empty).
        fill (`tuple`, *optional*): an RGB colour for the box's pixels outside the mask (ours: a background class's
            box is often the whole image, and the objects in it would speak for the background); None keeps the
            box as it is (the paper's crop).
        keep_frame (`bool`, defaults to False): return the whole image (with `fill` outside the mask) instead of the
            box, so the region keeps its size and place (ours).

    Raises:
        ValueError: an empty mask, or one whose size is not the image's.
    """
    mask = np.asarray(mask, bool)
    if mask.shape != (image.height, image.width):
        raise ValueError(f"mask of shape {mask.shape} does not match the image's (h, w) = {(image.height, image.width)}")
    if not mask.any():
        raise ValueError("cannot crop a visual prompt from an empty mask")
    if keep_frame:
        rows, cols = np.array([0, mask.shape[0] - 1]), np.array([0, mask.shape[1] - 1])
    else:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    pixels = np.asarray(image.convert("RGB"))[top:bottom, left:right].copy()
    if fill is not None:
        pixels[~mask[top:bottom, left:right]] = np.asarray(fill, np.uint8)
    return Image.fromarray(pixels)
