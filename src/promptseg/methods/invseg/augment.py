"""Random resized crops and their inverse on attention grids (InvSeg's augmented views).

A crop box is (top, left, height, width) in the original image's pixels. A view is the box resized to the model's
native size; maps computed on a view cover only the box, and `uncrop` puts them back on a grid over the whole image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_crop_box(
    generator: torch.Generator,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.6, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """A random resized crop box (top, left, h, w): area in `scale` x image area, aspect ratio in `ratio` (log-
    uniform), as torchvision's `RandomResizedCrop` samples it; falls back to the whole image after 10 tries."""
    area = height * width
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
        log_ratio = torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
        aspect = math.exp(float(log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    return 0, 0, height, width


def crop_resize(pixels: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int]) -> torch.Tensor:
    """Crop (1, 3, H, W) `pixels` to `box` and resize (bilinear, antialiased) to `size` -> (1, 3, h, w)."""
    top, left, h, w = box
    crop = pixels[..., top : top + h, left : left + w]
    return F.interpolate(crop.float(), size=size, mode="bilinear", align_corners=False, antialias=True).to(pixels.dtype)


def crop_resize_scaled(tensor: torch.Tensor, box: tuple[int, int, int, int], image_hw: tuple[int, int]) -> torch.Tensor:
    """Crop (B, C, h, w) `tensor`, a grid over an image of `image_hw` pixels (latents, say), to the pixel `box` and
    resample it (bilinear) back to (B, C, h, w): the box need not fall on the tensor's cells."""
    top, left, h, w = box
    height, width = image_hw
    gh, gw = tensor.shape[-2:]
    ys = top + (torch.arange(gh, dtype=torch.float32) + 0.5) * h / gh  # output cell centres in image pixels
    xs = left + (torch.arange(gw, dtype=torch.float32) + 0.5) * w / gw
    grid_v, grid_u = torch.meshgrid(ys / height * 2 - 1, xs / width * 2 - 1, indexing="ij")
    sample_at = torch.stack([grid_u, grid_v], dim=-1)[None].expand(len(tensor), -1, -1, -1)
    out = F.grid_sample(tensor.float(), sample_at.to(tensor.device), mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.to(tensor.dtype)


def uncrop(maps: torch.Tensor, box: tuple[int, int, int, int], image_hw: tuple[int, int], grid: tuple[int, int]):
    """Map a view's (K, h, w) maps back onto a `grid` over the whole image: (values (K, gh, gw), coverage (gh, gw)).

    Each cell centre of the whole-image grid that falls inside the box takes the view's map there (bilinear);
    cells outside the box get value 0 and coverage 0, so they contribute nothing to an average over views.
    """
    top, left, h, w = box
    height, width = image_hw
    gh, gw = grid
    ys = (torch.arange(gh, dtype=torch.float32) + 0.5) * height / gh  # cell centres in image pixels
    xs = (torch.arange(gw, dtype=torch.float32) + 0.5) * width / gw
    v = (ys - top) / h * 2 - 1  # the same points in the view's normalised coordinates
    u = (xs - left) / w * 2 - 1
    grid_v, grid_u = torch.meshgrid(v, u, indexing="ij")
    sample_at = torch.stack([grid_u, grid_v], dim=-1)[None].to(maps.device, maps.dtype)  # (1, gh, gw, 2)
    values = F.grid_sample(maps[None], sample_at, mode="bilinear", padding_mode="border", align_corners=False)[0]
    inside = ((grid_u.abs() <= 1) & (grid_v.abs() <= 1)).to(maps.device, maps.dtype)
    return values * inside, inside
