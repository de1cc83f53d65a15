"""Aggregating a transformer's per-block cross-attention with weights read from the model's own activations (GoCA).

GoCA (Meng et al., CVPR 2026, arXiv 2603.06178; code Darkbblue/goca, `src-main/components/cross_attn_dispatch.py`)
replaces hand-set layer weights, which do not carry over from SD 1.5 to larger generators, by weights derived from
the activations of the image at hand:
- **layer weights** ("dot-product similarity"): the affinity of a reference layer's features, softmax(F F^T / sqrt(d))
  over the image tokens, against each layer's self-attention; a layer weighs as much as its self-attention agrees
  with the reference's affinity (clamped at 0, normalised over the layers); the cross maps are summed with these
  weights, clamped at 0 and renormalised over the tokens;
- **per-pixel rescaling** ("sum-1 rescaling", `goca_cross_run`): after the blocks are summed, clamped at 0 and
  renormalised over every text token, each object's score (the mean over its tokens) is divided, pixel by pixel, by
  the summed score of *every* entity token of the prompt (every object's tokens; its `rescaling_token_id`). The
  special tokens (start, end, padding, separators) take a large, position-dependent share of every pixel's
  attention, so raw scores of different pixels are not comparable; the entities' own total is. Then each map is
  normalised over the image (its "per-token renorm", done here by the reader's min-max after refinement; GoCA
  blurs first).

Its head aggregation on FLUX is the plain mean (its FLUX config), which is what the capture records.
"""

from __future__ import annotations

import torch

from promptseg.diffusion.capture.selfattn import QKRecord

ROWS = 1024
"""Query rows per chunk when a layer's self-attention is compared with the reference affinity."""


def affinity(features: torch.Tensor) -> torch.Tensor:
    """(B, N, N): softmax(F F^T / sqrt(d)) of image-token features (B, N, d), GoCA's reference affinity."""
    features = features.float()
    return (features @ features.transpose(1, 2) * features.shape[-1] ** -0.5).softmax(dim=-1)


def layer_weights(reference: torch.Tensor, records: list[QKRecord]) -> torch.Tensor:
    """(L,): each layer's self-attention (a `QKRecord`, head mean) dotted with the reference affinity (B, N, N),
    clamped at 0 and normalised to sum 1 (all equal when none agrees)."""
    scores = []
    for record in records:
        n = record.query.shape[1]
        total = sum(float((reference[:, i:i + ROWS] * record.probs(slice(i, i + ROWS))).sum())
                    for i in range(0, n, ROWS))
        scores.append(total)
    weights = torch.tensor(scores).clamp(min=0)
    return weights / weights.sum() if weights.sum() > 0 else torch.full((len(records),), 1 / len(records))


def aggregate(maps: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """(B, N, T): the layers' cross maps (each (B, N, T)) summed with `weights`, clamped at 0 and renormalised over
    the tokens (GoCA)."""
    total = sum(w * m for w, m in zip(weights.tolist(), maps)).clamp(min=0)
    return total / total.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def rescale(label_maps: torch.Tensor, cross: torch.Tensor, entities: list[int]) -> torch.Tensor:
    """(B, N, K) label scores divided, pixel by pixel, by the summed score in `cross` (B, N, T) of the `entities`
    token positions (every label's tokens): GoCA's sum-1 rescaling (`cross_attn_dispatch.py`, `goca_cross_run`:
    scores / the sum over `rescaling_token_id`)."""
    share = cross[..., sorted(set(entities))].sum(dim=-1, keepdim=True)
    return label_maps / share.clamp_min(1e-12)
