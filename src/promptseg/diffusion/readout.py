"""Turning captured attention into score maps: resizing, normalising, self-attention refinement.

Shapes: a self-attention map is (B, N, N) with N = h * w (row i: where pixel i attends); a cross-attention map
for K labels is (B, N, K). Score maps are (B, K, h, w).
"""

from __future__ import annotations

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


def refine(self_attn, cross: torch.Tensor, iterations: int = 1) -> torch.Tensor:
    """Propagate cross-attention (B, N, K) along self-attention (B, N, N) or a `SelfAttention` operator:
    A_self^iterations · A_cross (an operator is applied `iterations` times, its matrix never formed)."""
    out = cross
    for _ in range(iterations):
        out = self_attn.matmul(out) if isinstance(self_attn, SelfAttention) else torch.bmm(self_attn.to(out.dtype), out)
    return out


def mix_self_attention(attns: dict, weights: dict[tuple[int, int], float], target: tuple[int, int]):
    """Self-attention of several grids resized to `target` and mixed with `weights`; one grid already on the
    target is returned as it is (a lazy operator stays lazy)."""
    if len(weights) == 1 and tuple(next(iter(weights))) == tuple(target):
        return attns[next(iter(weights))]
    total = sum(weights.values())
    return sum(_as_dense(resize_self_attention(attns[g], g, target)) * (w / total) for g, w in weights.items())


def _as_dense(attn) -> torch.Tensor:
    return attn.dense() if isinstance(attn, SelfAttention) else attn


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
        attn = resize_self_attention(self_attn[grid], grid, target)
        mixed = mixed + minmax(tokens_to_maps(refine(attn, cross, power), target)) * (weight / total)
    return mixed
