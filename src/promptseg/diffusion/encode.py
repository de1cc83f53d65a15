"""The first step of every stage that reads the diffusion model: the image at the native size, VAE-encoded.

A pipeline run (filter -> method -> refiner) opens `shared_encoding()`, so that the diffusion filter, the method and
the SAM refiner's denoising evidence encode the image once between them: one encode costs 1.7 UNet forwards at
SD-1.5's size on a CPU.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

_SHARED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("promptseg_shared_encoding", default=None)


@dataclass
class PreparedImage:
    """What a method keeps about one image between `prepare` and `segment`.

    Attributes:
        size (`tuple[int, int]`): the original image size (h, w).
        pixels (`torch.Tensor`): (1, 3, H, W) in [-1, 1] at the model's native size.
        latents (`torch.Tensor`): (1, C, h, w) clean VAE latents.
        extra (`dict`): method-specific state (noise, captured attention, ...).
        timings (`dict[str, float]`): seconds spent preparing.
    """

    size: tuple[int, int]
    pixels: torch.Tensor
    latents: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def to_pil(image) -> Image.Image:
    """An RGB PIL image from a PIL image or an HxWx3 uint8 array."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return Image.fromarray(image)
    raise TypeError(f"expected a PIL image or an HxWx3 uint8 array, got {type(image).__name__}")


@contextlib.contextmanager
def shared_encoding():
    """Inside this block `prepare_pixels` encodes each (backbone, image object) once; later calls with the same
    image object get the same pixels and latents (never modified in place: a stage that needs other latents makes
    new tensors) and an "encode" time of 0. The pipeline opens one block per image."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def prepare_pixels(backbone, image) -> PreparedImage:
    """Resize to the native size and VAE-encode: the first step of every method (once per image inside
    `shared_encoding`)."""
    start = time.perf_counter()
    memo = _SHARED.get()
    key = (id(backbone), id(image))
    if memo is not None and key in memo:
        _, _, size, pixels, latents = memo[key]
        return PreparedImage(size=size, pixels=pixels, latents=latents, timings={"encode": 0.0})
    pil = to_pil(image)
    pixels = backbone.preprocess(pil)
    with torch.no_grad():
        latents = backbone.encode_image(pixels)
    size = (pil.height, pil.width)
    if memo is not None:  # the image and backbone are held so that their ids stay theirs for the block
        memo[key] = (image, backbone, size, pixels, latents)
    return PreparedImage(size=size, pixels=pixels, latents=latents, timings={"encode": time.perf_counter() - start})


def prepare_batch(backbone, images, chunk: int = 8) -> list[PreparedImage]:
    """`prepare_pixels` of several images, VAE-encoded `chunk` at a time in one call each; inside `shared_encoding`
    each image is memoised as `prepare_pixels` would, so later stages reading it encode nothing. Each image's
    "encode" time is its share of its chunk's."""
    memo = _SHARED.get()
    out: list[PreparedImage | None] = [None] * len(images)
    todo = []
    for i, image in enumerate(images):
        if memo is not None and (id(backbone), id(image)) in memo:
            out[i] = prepare_pixels(backbone, image)
        else:
            todo.append(i)
    for first in range(0, len(todo), chunk):
        part = todo[first:first + chunk]
        start = time.perf_counter()
        pils = [to_pil(images[i]) for i in part]
        pixels = [backbone.preprocess(pil) for pil in pils]
        with torch.no_grad():
            latents = backbone.encode_image(torch.cat(pixels))
        share = (time.perf_counter() - start) / len(part)
        for row, (i, pil) in enumerate(zip(part, pils)):
            size = (pil.height, pil.width)
            item = latents[row:row + 1]
            if memo is not None:
                memo[(id(backbone), id(images[i]))] = (images[i], backbone, size, pixels[row], item)
            out[i] = PreparedImage(size=size, pixels=pixels[row], latents=item, timings={"encode": share})
    return out
