"""Cost volumes: cosine similarity between dense image features and per-class prompt embeddings.

Shapes: B images, K classes, P templates, D channels, (h, w) the feature grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PROMPT_MODES = ("dual", "text", "visual")


def fuse_prompts(text: torch.Tensor | None, visual: torch.Tensor | None, mode: str = "dual") -> torch.Tensor:
    """The class embeddings R (K, P, D), unit length: DPSeg's R = Avg(V, T) for "dual", or one of the two.

    Args:
        text (`torch.Tensor`): (K, P, D) text-prompt embeddings, one per class and template.
        visual (`torch.Tensor`): (K, P, D) visual-prompt embeddings (CLIP image embeddings of the generated images,
            averaged over the images of a template).
        mode (`str`, defaults to "dual"): "dual", "text" or "visual".
    """
    if mode not in PROMPT_MODES:
        raise ValueError(f"unknown prompt mode {mode!r}; choose from {PROMPT_MODES}")
    parts = {"dual": (text, visual), "text": (text,), "visual": (visual,)}[mode]
    if any(p is None for p in parts):
        raise ValueError(f"prompt mode {mode!r} needs {'text and visual' if mode == 'dual' else mode} prompts")
    fused = torch.stack([F.normalize(p.float(), dim=-1) for p in parts]).mean(0)
    return F.normalize(fused, dim=-1)


def cost_volume(features: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every feature vector with every prompt.

    Args:
        features (`torch.Tensor`): (B, C, h, w) dense features.
        prompts (`torch.Tensor`): (K, P, C) prompt embeddings.

    Returns:
        `torch.Tensor`: (B, K, P, h, w) in [-1, 1].
    """
    if features.shape[1] != prompts.shape[-1]:
        raise ValueError(f"feature channels {features.shape[1]} != prompt channels {prompts.shape[-1]}")
    feats = F.normalize(features.float(), dim=1)
    prompts = F.normalize(prompts.float(), dim=-1)
    return torch.einsum("bchw,kpc->bkphw", feats, prompts)
