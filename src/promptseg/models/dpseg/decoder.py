"""The cost-volume-guided decoder (CVGD): three stages that upsample a cost volume x2 each.

Each class is decoded on its own (the decoder's batch is B*K class maps, as in SED and CAT-Seg), so the weights
know nothing of which classes exist: that is what lets a class never seen in training be segmented. A stage:

    x = fuse([x, guidance_j, visual cost F_v^j])   # 1x1 conv; guidance = the image encoder's layer j, projected
    x = HDC(x)                                     # hybrid dilated convolutions, rates 1, 2, 4, residual
    x = x + SelfAttention(x)                       # over the stage's pixels
    x = deconv(x)                                  # x2 upsampling

then a head (with the image's own pixels as guidance when `pixel_guidance`, ours: a plain ViT's 8x8 grid is too
coarse for boundaries) gives one logit per pixel and class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DecoderConfig:
    """Sizes of the decoder (all read when building it; stored with the weights)."""

    prompt_channels: int = 3
    """P: templates per class, the cost volume's channels."""
    feature_dim: int = 128
    """D: the projected CLIP embedding size (the dense features' channels)."""
    layer_dim: int = 128
    """The CLIP vision tower's width (its intermediate features' channels)."""
    dims: tuple[int, ...] = (64, 32, 16, 16)
    """Channels at stages 1-3 and after the last upsampling."""
    guidance_dim: int = 16
    """Channels of each stage's image-feature guidance."""
    heads: int = 4
    """Attention heads (capped at a stage's channels // 8)."""
    dilations: tuple[int, ...] = (1, 2, 4)
    """Rates of the hybrid dilated convolutions."""
    visual_cost: bool = True
    """Join the multi-scale visual cost volumes F_v^j at each stage (False: only the initial cost volume)."""
    pixel_guidance: bool = True
    """Give the head the image's pixels (a two-layer conv stem; ours)."""


class HybridDilatedBlock(nn.Module):
    """Three 3x3 convolutions at rates (1, 2, 4), each with GroupNorm and GELU, added to the input."""

    def __init__(self, dim: int, rates=(1, 2, 4)):
        super().__init__()
        self.convs = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=r, dilation=r), nn.GroupNorm(min(8, dim), dim), nn.GELU())
            for r in rates
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.convs(x)


class SpatialSelfAttention(nn.Module):
    """Pre-norm multi-head self-attention over the pixels of a (N, C, H, W) map, added to the input.

    Keys and values come from the map average-pooled to at most `max_kv_side` per side (SegFormer's spatial
    reduction), so a 32x32 stage attends over 256 keys, not 1,024: the cost that matters on CPU."""

    def __init__(self, dim: int, heads: int, max_kv_side: int = 16):
        super().__init__()
        self.heads = max(1, min(heads, dim // 8))
        self.max_kv_side = max_kv_side
        self.norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        heads = self.heads
        tokens = self.norm(x.flatten(2).transpose(1, 2))  # (N, HW, C)
        reduced = x
        if max(h, w) > self.max_kv_side:
            reduced = F.adaptive_avg_pool2d(x, (min(h, self.max_kv_side), min(w, self.max_kv_side)))
        kv_tokens = self.norm(reduced.flatten(2).transpose(1, 2))  # (N, hw, C)
        q = self.q(tokens).reshape(n, h * w, heads, c // heads).transpose(1, 2)
        k, v = self.kv(kv_tokens).reshape(n, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)  # (N, heads, HW, C/heads)
        attended = self.out(attended.transpose(1, 2).reshape(n, h * w, c))
        return x + attended.transpose(1, 2).reshape(n, c, h, w)


class DecoderStage(nn.Module):
    def __init__(self, dim: int, out_dim: int, guidance_dim: int, visual_channels: int, heads: int, rates):
        super().__init__()
        self.fuse = nn.Sequential(nn.Conv2d(dim + guidance_dim + visual_channels, dim, 1), nn.GELU())
        self.hdc = HybridDilatedBlock(dim, rates)
        self.attn = SpatialSelfAttention(dim, heads)
        self.up = nn.Sequential(nn.ConvTranspose2d(dim, out_dim, 2, stride=2), nn.GroupNorm(min(8, out_dim), out_dim),
                                nn.GELU())

    def forward(self, x, guidance, visual):
        x = self.fuse(torch.cat([t for t in (x, guidance, visual) if t is not None], dim=1))
        return self.up(self.attn(self.hdc(x)))


class CostVolumeDecoder(nn.Module):
    """CVGD. `forward` takes the initial cost volume and per-stage guidance and visual cost volumes.

    Shapes: B images, K classes, P prompt channels, (h, w) the feature grid; the output is (B, K, 8h, 8w).
    """

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        dims, g = config.dims, config.guidance_dim
        if len(dims) != 4:
            raise ValueError(f"dims must give 3 stages and the head (4 values), got {dims}")
        self.embed = nn.Sequential(nn.Conv2d(config.prompt_channels, dims[0], 3, padding=1), nn.GELU())
        self.dense_guidance = nn.Conv2d(config.feature_dim, g, 1)
        self.guidance = nn.ModuleList([nn.Conv2d(config.layer_dim, g, 1) for _ in range(3)])
        visual = config.prompt_channels if config.visual_cost else 0
        self.stages = nn.ModuleList([
            DecoderStage(dims[s], dims[s + 1], g, visual, config.heads, config.dilations) for s in range(3)
        ])
        head_in = dims[3] + (16 if config.pixel_guidance else 0)
        self.stem = (nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, 16, 3, padding=1), nn.GELU())
                     if config.pixel_guidance else None)
        self.head = nn.Sequential(nn.Conv2d(head_in, dims[3], 3, padding=1), nn.GELU(), nn.Conv2d(dims[3], 1, 1))

    def forward(self, cost: torch.Tensor, dense: torch.Tensor, layers: list[torch.Tensor],
                visual_costs: list[torch.Tensor] | None = None, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Decode.

        Args:
            cost (`torch.Tensor`): (B, K, P, h, w) the initial (dual-prompt) cost volume.
            dense (`torch.Tensor`): (B, D, h, w) the dense image embeddings.
            layers (`list[torch.Tensor]`): three (B, W, h, w) intermediate features, deepest first (stage 1 first).
            visual_costs (`list[torch.Tensor]`, *optional*): three (B, K, P, h, w) visual cost volumes, same order;
                needed when the config has `visual_cost`.
            pixels (`torch.Tensor`, *optional*): (B, 3, H, W) the normalised image; needed with `pixel_guidance`.

        Returns:
            `torch.Tensor`: (B, K, 8h, 8w) logits.
        """
        dtype = self.head[-1].weight.dtype
        cost, dense, layers = cost.to(dtype), dense.to(dtype), [f.to(dtype) for f in layers]
        b, k, p, h, w = cost.shape
        if self.config.visual_cost and (visual_costs is None or len(visual_costs) != 3):
            raise ValueError("this decoder was built with visual_cost=True: pass three visual cost volumes")
        x = self.embed(cost.reshape(b * k, p, h, w))
        for s, stage in enumerate(self.stages):
            size = x.shape[-2:]
            guidance = _per_class(F.interpolate(self.guidance[s](layers[s]), size=size, mode="bilinear",
                                                align_corners=False), k)
            if s == 0:
                guidance = guidance + _per_class(self.dense_guidance(dense), k)
            visual = None
            if self.config.visual_cost:
                vc = visual_costs[s].to(dtype).reshape(b * k, p, h, w)
                visual = F.interpolate(vc, size=size, mode="bilinear", align_corners=False)
            x = stage(x, guidance, visual)
        if self.stem is not None:
            if pixels is None:
                raise ValueError("this decoder was built with pixel_guidance=True: pass the pixels")
            stem = self.stem(F.interpolate(pixels.to(dtype), size=x.shape[-2:], mode="bilinear", align_corners=False))
            x = torch.cat([x, _per_class(stem, k)], dim=1)
        return self.head(x).reshape(b, k, *x.shape[-2:])


def _per_class(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C, H, W) -> (B*K, C, H, W), each image's map repeated for its K classes."""
    return x.repeat_interleave(k, dim=0)
