"""Turning captured attention into score maps: resizing, normalising, self-attention refinement.

Shapes: a self-attention map is (B, N, N) with N = h * w (row i: where pixel i attends); a cross-attention map
for K labels is (B, N, K). Score maps are (B, K, h, w).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from promptseg.diffusion.capture.selfattn import SelfAttention


def minmax(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max normalise each map of (B, K, h, w) over its pixels to [0, 1] (a flat map becomes 0)."""
    flat = maps.flatten(2)
    low = flat.amin(dim=-1, keepdim=True)
    high = flat.amax(dim=-1, keepdim=True)
    return ((flat - low) / (high - low).clamp_min(eps)).view_as(maps)


def tokens_to_maps(cross: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, N, K) -> (B, K, h, w)."""
    h, w = grid
    return cross.transpose(1, 2).reshape(cross.shape[0], cross.shape[2], h, w)


def maps_to_tokens(maps: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) -> (B, N, K)."""
    return maps.flatten(2).transpose(1, 2)


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, K, h, w) maps to `size` (no-op when already that size)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def resize_self_attention(attn: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """Resize a (B, N, N) self-attention map on `grid` to `target` in both query and key pixels.

    Rows are re-normalised to sum to one, so the result is again row-stochastic. A lazy `SelfAttention` is
    returned as it is on its own grid and formed (`dense()`) to be resized.
    """
    if tuple(grid) == tuple(target):
        return attn
    if isinstance(attn, SelfAttention):
        attn = attn.dense()
    b = attn.shape[0]
    h, w = grid
    big_h, big_w = target
    keys = resize_maps(attn.reshape(b * h * w, 1, h, w), target).reshape(b, h * w, big_h * big_w)
    queries = resize_maps(keys.transpose(1, 2).reshape(b * big_h * big_w, 1, h, w), target)
    out = queries.reshape(b, big_h * big_w, big_h * big_w).transpose(1, 2).clamp_min(0)
    return out / out.sum(dim=-1, keepdim=True).clamp_min(1e-12)


@lru_cache(maxsize=16)
def upsampling_matrix(grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """(N, n): `resize_maps` from `grid` (n pixels) to `target` (N pixels) as a matrix (it is linear); cached, so
    never modify it."""
    n = grid[0] * grid[1]
    return resize_maps(torch.eye(n).reshape(n, 1, *grid), target).reshape(n, -1).T.contiguous()


class ResizedAttention:
    """`resize_self_attention(attn, grid, target)` as an operator: U A U^T with each row divided by its sum,
    applied to values V as U (A (U^T V)) / (U A U^T 1), U the (N, n) bilinear upsampling (`upsampling_matrix`).
    The same numbers (float rounding) without forming the target's N x N matrix: on SD-1.5's 64x64 target the
    formed matrices of HARD's three coarser grids and their products cost 0.3 UNet forwards on this CPU."""

    def __init__(self, attn, grid: tuple[int, int], target: tuple[int, int]):
        # a lazy coarse grid is formed (n x n, small beside the target's N x N), as `resize_self_attention` forms it
        attn = attn.dense() if isinstance(attn, SelfAttention) else attn
        self.attn, self.up, self.rows = attn, upsampling_matrix(tuple(grid), tuple(target)), None

    def matmul(self, values: torch.Tensor) -> torch.Tensor:
        """(B, N, K) -> (B, N, K)."""
        up = self.up.to(values.device, values.dtype)
        if self.rows is None:  # the row sums U A (U^T 1), once
            ones = up.sum(dim=0)[None, :, None].expand(values.shape[0], -1, -1)
            self.rows = (up @ _apply(self.attn, ones)).clamp_min(1e-12)
        return (up @ _apply(self.attn, up.T @ values)) / self.rows.to(values.dtype)


class MixedAttention:
    """A weighted sum of self-attention operators or matrices on one grid, applied term by term."""

    def __init__(self, terms: list[tuple[object, float]]):
        self.terms = terms

    def matmul(self, values: torch.Tensor) -> torch.Tensor:
        return sum(_apply(attn, values) * weight for attn, weight in self.terms)


def _apply(attn, values: torch.Tensor) -> torch.Tensor:
    """(B, N, N) self-attention or an operator with `matmul`, times (B, N, K) values."""
    return attn.matmul(values) if hasattr(attn, "matmul") else torch.bmm(attn.to(values.dtype), values)


def resized_operator(attn, grid: tuple[int, int], target: tuple[int, int]):
    """`attn` on `grid` as an operator on `target`: itself when the grids agree, else a `ResizedAttention`."""
    return attn if tuple(grid) == tuple(target) else ResizedAttention(attn, grid, target)


def refine(self_attn, cross: torch.Tensor, iterations: int = 1) -> torch.Tensor:
    """Propagate cross-attention (B, N, K) along self-attention (B, N, N) or an operator (`SelfAttention`,
    `ResizedAttention`, `MixedAttention`): A_self^iterations · A_cross (an operator is applied `iterations` times,
    its matrix never formed)."""
    out = cross
    for _ in range(iterations):
        out = _apply(self_attn, out)
    return out


def mix_self_attention(attns: dict, weights: dict[tuple[int, int], float], target: tuple[int, int]):
    """Self-attention of several grids resized to `target` and mixed with `weights`, as an operator; one grid
    already on the target is returned as it is (a lazy operator stays lazy)."""
    if len(weights) == 1 and tuple(next(iter(weights))) == tuple(target):
        return attns[next(iter(weights))]
    total = sum(weights.values())
    return MixedAttention([(resized_operator(attns[g], g, target), w / total) for g, w in weights.items()])


def weighted_sum(
    maps: dict[tuple[int, int], torch.Tensor], weights: dict[tuple[int, int], float], size, normalize: bool = True
) -> torch.Tensor:
    """Resize each grid's (B, K, h, w) maps to `size` and mix them with `weights` (normalised to sum to one);
    with `normalize`, each grid's maps are min-max normalised first (DiffSegmenter), else mixed raw (FastSeg)."""
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"resolution weights must sum to a positive number, got {weights}")
    scale = minmax if normalize else (lambda x: x)
    return sum(scale(resize_maps(maps[g], size)) * (w / total) for g, w in weights.items())


def hierarchical_refine(
    self_attn: dict[tuple[int, int], torch.Tensor],
    cross: torch.Tensor,
    weights: dict[tuple[int, int], float],
    target: tuple[int, int],
    power: int = 2,
) -> torch.Tensor:
    """FastSeg's hierarchical attention refinement (HARD) -> (B, K, H, W) in [0, 1].

    Each grid's self-attention (B, n, n) is resized to the `target` grid, raised to `power` (applied as `power`
    propagation steps, A (A c), so the N x N power is never formed) and propagates the cross-attention `cross`
    (B, N, K) on the target grid; each result is min-max normalised and the results are mixed with `weights`.
    """
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"HARD weights must sum to a positive number, got {weights}")
    mixed = 0
    for grid, weight in weights.items():
        attn = resized_operator(self_attn[grid], grid, target)
        mixed = mixed + minmax(tokens_to_maps(refine(attn, cross, power), target)) * (weight / total)
    return mixed
