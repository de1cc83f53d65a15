"""Which attention a method reads, and one recorded pass of the denoiser.

Settings name attention by resolution as a fraction of the latent side ({0.25: 0.5}: SD-1.5's 16x16 grid, weight
0.5), so one setting means the same on every UNet size; `resolve_weights` maps them onto the grids this backbone
has, `plan_attention` selects the layers to record, `attention_pass` runs the denoiser once and records them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from promptseg.diffusion.capture import (
    AttentionStore,
    attention_grids,
    capture,
    lazy_tokens_for,
    run_until_captured,
    select_layers,
)


def resolve_weights(weights: dict[float, float], unet, latent_hw, kind: str) -> dict[tuple[int, int], float]:
    """Map {fraction of the latent side: weight} onto the grids where the UNet has `kind` attention.

    A fraction f means the grid whose side is f times the latent side (SD 1.5's 16x16 cross-attention is 0.25 of
    its 64x64 latent). Fractions with no such grid in this UNet are dropped.

    Raises:
        ValueError: no requested grid exists in this UNet (the message lists the grids that do).
    """
    available = attention_grids(unet, latent_hw, kind)
    out: dict[tuple[int, int], float] = {}
    for fraction, weight in weights.items():
        side = latent_hw[0] * float(fraction)
        for grid in available:
            if abs(grid[0] - side) < 0.5 and weight > 0:
                out[grid] = out.get(grid, 0.0) + float(weight)
    if not out:
        fractions = [round(g[0] / latent_hw[0], 4) for g in available]
        raise ValueError(
            f"none of the {kind}-attention resolutions {sorted(weights)} (fractions of the latent side) exists in this "
            f"UNet; it has {kind}-attention at fractions {fractions}"
        )
    return out


@dataclass
class AttentionPlan:
    """Which attention a method reads: grids with weights, the refinement grid, and the layers to record.

    Attributes:
        cross (`dict[tuple[int, int], float]`): cross-attention grid -> weight.
        self (`dict[tuple[int, int], float]`): self-attention grid -> weight.
        target (`tuple[int, int]`): the finest self-attention grid, where maps are refined.
        layers (`list[AttentionLayer]`): the layers to record.
    """

    cross: dict
    self: dict
    target: tuple[int, int]
    layers: list


def plan_attention(backbone, cross_weights: dict, self_weights: dict, places) -> AttentionPlan:
    """Resolve {fraction: weight} settings on this backbone's UNet and select the layers to record."""
    latent_hw = backbone.latent_size
    cross = resolve_weights(cross_weights, backbone.unet, latent_hw, "cross")
    self_grids = resolve_weights(self_weights, backbone.unet, latent_hw, "self")
    layers = select_layers(backbone.unet, latent_hw, self_grids=self_grids, cross_grids=cross, places=places)
    return AttentionPlan(cross=cross, self=self_grids, target=max(self_grids, key=lambda g: g[0] * g[1]), layers=layers)


def attention_pass(backbone, latents, timestep: int, text: torch.Tensor, layers, keep_queries: bool = False,
                   self_products: int = 1):
    """One UNet forward at `timestep` conditioned on `text` (B, T, D), recording `layers` and ending after the last
    of them (nothing after it is read); returns the store.

    `self_products`: how many times the reader multiplies the self-attention (refinement iterations); it decides
    whether large grids are kept lazily (`promptseg.diffusion.capture.lazy_tokens_for`)."""
    store = AttentionStore(latent_hw=tuple(latents.shape[-2:]), keep_queries=keep_queries,
                           lazy_self_tokens=lazy_tokens_for(self_products))
    t = torch.full((latents.shape[0],), timestep, device=latents.device)
    with torch.no_grad(), capture(backbone.unet, layers, store, stop_after_last=True):
        run_until_captured(backbone.unet, latents, t, encoder_hidden_states=text.to(backbone.dtype))
    return store
