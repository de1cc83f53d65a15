"""The `pamr` refiner: pixel-adaptive mask refinement, guided by the image alone (no second model).

PAMR (Araslanov & Roth, "Single-Stage Semantic Segmentation from Image Labels", CVPR 2020) propagates each label's
score map along an affinity computed from the image: for pixel i and each neighbour j of it on 3x3 rings at several
dilations,

    k(i, j) = -mean_c |I_c(i) - I_c(j)| / (sigma * std_c(i))      (std over i's neighbourhood, per colour channel)
    a(i, .) = softmax_j k(i, j)
    m(i)   <- sum_j a(i, j) m(j)                                    repeated `iterations` times

so scores flow between pixels of similar colour and stop at colour edges. The label map is the argmax of the refined
scores. Written here from the paper's equations; the published code normalises by `0.1 * std`, which is `sigma`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from promptseg.refiners.base import Refinement, register_refiner

_RING = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


@dataclass
class PamrConfig:
    """Settings of the `pamr` refiner (defaults: the paper's)."""

    iterations: int = 10
    """How many times scores are propagated along the affinity."""
    dilations: tuple = (1, 2, 4, 8, 12, 24)
    """Ring radii in pixels of the image as refined: each gives 8 neighbours."""
    sigma: float = 0.1
    """Scale of the colour difference against the local standard deviation (smaller: sharper edges)."""
    max_side: int | None = 512
    """Refine at most at this image side (longer images are refined downscaled, then the scores upsampled); None:
    always at the image's size."""

    def __post_init__(self):
        if int(self.iterations) < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not self.dilations or any(int(d) < 1 for d in self.dilations):
            raise ValueError(f"dilations must be positive pixel radii, got {self.dilations}")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x[..., y + dy, x + dx] with the border replicated: (B, C, H, W) -> same shape."""
    pad = max(abs(dy), abs(dx))
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    h, w = x.shape[-2:]
    return padded[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]


def affinity(image: torch.Tensor, dilations, sigma: float) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """PAMR's affinity of (1, C, H, W) image colours: (N, H, W) weights summing to 1 over the N neighbours of each
    pixel, and the N (dy, dx) offsets they belong to."""
    offsets = [(dy * d, dx * d) for d in dilations for dy, dx in _RING]
    neighbours = torch.stack([_shift(image, dy, dx) for dy, dx in offsets], dim=2)  # (1, C, N, H, W)
    std = neighbours.std(dim=2, keepdim=True)  # (1, C, 1, H, W): the local colour spread
    kernel = -(neighbours - image[:, :, None]).abs() / (sigma * std + 1e-8)
    return torch.softmax(kernel.mean(dim=1)[0], dim=0), offsets  # (N, H, W)


def pamr(image: torch.Tensor, scores: torch.Tensor, config: PamrConfig) -> torch.Tensor:
    """Refine (K, H, W) `scores` along the affinity of the (1, C, H, W) `image` (same H, W): (K, H, W)."""
    weights, offsets = affinity(image, config.dilations, config.sigma)
    maps = scores[None]
    for _ in range(int(config.iterations)):
        out = torch.zeros_like(maps)
        for weight, (dy, dx) in zip(weights, offsets):  # one neighbour at a time: memory K*H*W, not K*N*H*W
            out += weight * _shift(maps, dy, dx)
        maps = out
    return maps[0]


@register_refiner("pamr", PamrConfig)
class PamrRefiner:
    """Pixel-adaptive mask refinement: scores propagated along image-colour affinities (no second model)."""

    def __init__(self, backbone=None, config: PamrConfig | None = None):
        self.config = config or PamrConfig()

    @torch.no_grad()
    def __call__(self, image, result) -> Refinement:
        h, w = result.label_map.shape
        scale = 1.0 if self.config.max_side is None else min(1.0, self.config.max_side / max(h, w))
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        pixels = torch.from_numpy(np.asarray(image.convert("RGB").resize(size[::-1]), np.float32) / 255.0)
        pixels = pixels.permute(2, 0, 1)[None]
        scores = torch.from_numpy(np.asarray(result.scores, np.float32))
        small = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0] if scale < 1 else scores
        refined = pamr(pixels, small, self.config)
        if scale < 1:
            refined = F.interpolate(refined[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        label_map = refined.argmax(dim=0).numpy().astype(np.int32)
        regions = [{"label": name, "source": "pamr", "area": int((label_map == i).sum())}
                   for i, name in enumerate(result.labels) if (label_map == i).any()]
        return Refinement(label_map=label_map, scores=refined.clamp(0, 1).numpy(), regions=regions)
