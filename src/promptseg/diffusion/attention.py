"""Which attention a method reads, and one recorded pass of the denoiser.

Settings name attention by resolution as a fraction of the latent side ({0.25: 0.5}: SD-1.5's 16x16 grid, weight
0.5), so one setting means the same on every UNet size; `resolve_weights` maps them onto the grids this backbone
has, `plan_attention` selects the layers to record, `attention_pass` runs the denoiser once and records them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from promptseg.diffusion.capture import AttentionStore, capture, lazy_tokens_for, run_until_captured


def resolve_weights(weights: dict[float, float], backbone, kind: str) -> dict[tuple[int, int], float]:
    """Map {fraction of the latent side: weight} onto the grids where the backbone's denoiser has `kind` attention.

    A fraction f means the grid whose side is f times the latent side (SD 1.5's 16x16 cross-attention is 0.25 of
    its 64x64 latent; a transformer with 2x2 patches has every block at 0.5). A fraction with no such grid in this
    denoiser is moved to the nearest grid there is (in log scale; weights landing on one grid add up): SD-1.5's
    {8: 0.3, 16: 0.5, 32: 0.1, 64: 0.1} weights (fractions 1/8..1) on SDXL, whose attention is at 1/4 and 1/2 of the
    latent only, become {1/4: 0.8, 1/2: 0.2}; on a transformer, whose blocks share one grid, they all land there.
    So a method's defaults run on every denoiser and no weight is lost.

    Raises:
        ValueError: every weight is zero, or the denoiser has no `kind` attention.
    """
    latent_hw = backbone.latent_size
    available = backbone.attention_grids(kind)
    out: dict[tuple[int, int], float] = {}
    for fraction, weight in weights.items():
        if weight <= 0 or not available:
            continue
        side = latent_hw[0] * float(fraction)
        grid = min(available, key=lambda g: abs(math.log(g[0] / side)))
        out[grid] = out.get(grid, 0.0) + float(weight)
    if not out:
        fractions = [round(g[0] / latent_hw[0], 4) for g in available]
        raise ValueError(
            f"no {kind}-attention resolution with a positive weight in {weights} (fractions of the latent side) can be "
            f"read in this {backbone.family}; it has {kind}-attention at fractions {fractions}"
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
    """Resolve {fraction: weight} settings on this backbone's denoiser and select the layers to record."""
    cross = resolve_weights(cross_weights, backbone, "cross")
    self_grids = resolve_weights(self_weights, backbone, "self")
    layers = backbone.select_layers(self_grids, cross, places)
    return AttentionPlan(cross=cross, self=self_grids, target=max(self_grids, key=lambda g: g[0] * g[1]), layers=layers)


def attention_pass(backbone, latents, timestep: int, text: torch.Tensor, layers, keep_queries: bool = False,
                   self_products: int = 1, keep_layers: bool = False, reference: str | None = None):
    """One denoiser forward at `timestep` conditioned on `text` (B, T, D), recording `layers` and ending after the
    last of them (nothing after it is read); returns the store.

    `self_products`: how many times the reader multiplies the self-attention (refinement iterations); it decides
    whether large grids are kept lazily (`promptseg.diffusion.capture.lazy_tokens_for`). `keep_layers`: keep each
    layer's cross map and self-attention apart (every self-attention call as query and key), in call order.
    `reference`: the name of a transformer block, or of a block's attention module (".attn"), whose image tokens
    are kept in `store.reference`: a block's output image stream (SD3's and FLUX's blocks return (text, image)), an
    attention module's image output (a double block's returns (image, text); a FLUX single block's returns
    [text; image] before its output projection: the last grid-many rows)."""
    store = AttentionStore(latent_hw=tuple(latents.shape[-2:]), keep_queries=keep_queries, keep_layers=keep_layers,
                           lazy_self_tokens=1 if keep_layers else lazy_tokens_for(self_products))
    t = torch.full((latents.shape[0],), timestep, device=latents.device)
    hook = None
    if reference is not None:
        image_tokens = math.prod(latents.shape[-2:]) // getattr(backbone, "patch_size", 1) ** 2

        def keep(module, args, out):
            if isinstance(out, tuple):
                out = out[0] if reference.endswith(".attn") else out[1]
            else:
                out = out[:, -image_tokens:]
            store.reference = out.detach().float()

        hook = backbone.denoiser.get_submodule(reference).register_forward_hook(keep)
    try:
        with torch.no_grad(), capture(backbone.denoiser, layers, store, stop_after_last=True):
            run_until_captured(backbone.predict, latents, t, text)
    finally:
        if hook is not None:
            hook.remove()
    return store
