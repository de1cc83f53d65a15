"""Tiled inference (ours): the image seen whole and as an n x n grid of crops, each crop at the encoder's full input.

A plain ViT at 128 px sees 16x16-pixel patches; a thing of a few dozen pixels is less than one patch and its
features drown in what surrounds it. Seen as a quarter of the image resized to the full input, the same thing covers
four times the patches. The whole view keeps the context (and the large regions the crops cut); each pixel's logits
are the mean of the whole view's and its crop's. Sliding-window inference (CAT-Seg, SED) is the same idea for images
larger than the encoder's input; here it is a zoom.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def tile_boxes(size: tuple[int, int], n: int) -> list[tuple[int, int, int, int]]:
    """The (left, top, right, bottom) boxes of an n x n grid over an image of `size` (width, height), row by row."""
    w, h = size
    xs = [round(i * w / n) for i in range(n + 1)]
    ys = [round(i * h / n) for i in range(n + 1)]
    return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(n) for c in range(n)]


def merge_tiles(whole: torch.Tensor, tiles: torch.Tensor, n: int) -> torch.Tensor:
    """(K, n*h, n*w): the mean of the whole view's (K, H, W) logits, resized, and the (n*n, K, h, w) tiles' logits
    (in `tile_boxes` order) laid out on their grid."""
    t, k, h, w = tiles.shape
    if t != n * n:
        raise ValueError(f"{t} tiles do not make an {n}x{n} grid")
    grid = tiles.reshape(n, n, k, h, w).permute(2, 0, 3, 1, 4).reshape(k, n * h, n * w)
    whole = F.interpolate(whole[None].to(grid.dtype), size=(n * h, n * w), mode="bilinear", align_corners=False)[0]
    return (whole + grid) / 2
