"""InvSeg's objectives: Contrastive Soft Clustering (eqs. 3-8) and entropy minimisation.

Shapes: a self-attention map `attn` is (N, N) and row-stochastic (row i: where pixel i attends); refined class maps
`maps` are (N, C) in [0, 1] (eq. 2 after min-max normalisation).
"""

from __future__ import annotations

import torch

LOG_EPS = 1e-8
"""Added inside every log, so rows with zeros give finite KL divergences."""


def symmetric_kl(attn: torch.Tensor, eps: float = LOG_EPS) -> torch.Tensor:
    """S[i, j] = KL(a_i || a_j) + KL(a_j || a_i) for the rows a_i of `attn` (N, N) -> (N, N)   (eq. 3).

    Expanding the sum: S = h 1^T + 1 h^T - A L^T - L A^T with L = log(A + eps) and h_i = sum_k a_ik log(a_ik + eps),
    i.e. two matrix products; the N x N x N tensor of the literal definition is never built.
    """
    log = torch.log(attn + eps)
    h = (attn * log).sum(dim=-1)  # (N,)
    cross = attn @ log.transpose(-1, -2)  # (N, N): sum_k a_ik log a_jk
    return h[:, None] + h[None, :] - cross - cross.transpose(-1, -2)


def soft_anchors(maps: torch.Tensor, scale: float = 4.0, offset: float = 0.5) -> torch.Tensor:
    """Anchor^c = sigmoid(scale * (M^c - offset)): a soft choice of confident pixels per class (N, C)."""
    return torch.sigmoid(scale * (maps - offset))


def class_distances(distance: torch.Tensor, anchors: torch.Tensor, maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """D[c, c'] = D(Anchor^c, M^c') of eqs. 4-5 for all class pairs -> (C, C).

    D((i,j), M^c') = sum_kl S[ij, kl] M^c'[kl] / sum_kl M^c'[kl], averaged over pixels (i,j) weighted by Anchor^c.
    """
    to_maps = distance @ maps / maps.sum(dim=0, keepdim=True).clamp_min(eps)  # (N, C'): eq. 4 for every pixel
    return anchors.transpose(0, 1) @ to_maps / anchors.sum(dim=0)[:, None].clamp_min(eps)  # (C, C'): eq. 5


def cluster_loss(distance: torch.Tensor, maps: torch.Tensor, scale: float = 4.0, offset: float = 0.5) -> torch.Tensor:
    """L_cluster = D_intra / C - 2 D_inter / (C (C - 1))   (eqs. 6-8); with one class, D_intra alone.

    D_intra sums D(Anchor^c, M^c); D_inter sums D(Anchor^c, M^c') over pairs c > c' (eq. 7's order).
    """
    num = maps.shape[-1]
    d = class_distances(distance, soft_anchors(maps, scale, offset), maps)
    intra = torch.diagonal(d).sum()
    if num < 2:
        return intra
    inter = torch.tril(d, diagonal=-1).sum()
    return intra / num - 2 * inter / (num * (num - 1))


def entropy_loss(maps: torch.Tensor, weight: torch.Tensor | None = None, eps: float = LOG_EPS) -> torch.Tensor:
    """L_etrp = -sum_c M^c log M^c per pixel, averaged over pixels (weighted by `weight`, e.g. view coverage).

    Args:
        maps (`torch.Tensor`): (N, C) class maps in [0, 1], already averaged over views.
        weight (`torch.Tensor`, *optional*): (N,) pixel weights; pixels with weight 0 do not count.
    """
    per_pixel = -(maps * torch.log(maps + eps)).sum(dim=-1)
    if weight is None:
        return per_pixel.mean()
    return (per_pixel * weight).sum() / weight.sum().clamp_min(eps)
