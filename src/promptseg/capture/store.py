"""Where captured attention goes: running means per grid, per kind, per batch item.

Nothing here stores one map per head or per layer: every recorded call adds its head-mean into a running sum
keyed by (kind, grid), so a 64x64 self-attention layer costs one (B, 4096, 4096) sum, not one per head and layer.
Cross-attention layers can also keep their queries, so that cross-attention against *any* text can be computed
later with the layer's own key projection and softmax (OVAM's observation; FastSeg's dual prompt).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class _QueryRecord:
    attn: torch.nn.Module  # the diffusers `Attention` module (owns to_k, heads, scale, norms)
    query: torch.Tensor  # (B * heads, N, head_dim), as passed to `get_attention_scores`
    grid: tuple[int, int]


@dataclass
class AttentionStore:
    """Running means of attention probabilities, keyed by kind ("self"/"cross") and (h, w) grid.

    Args:
        latent_hw (`tuple[int, int]`): the latent size of the UNet input, to turn a sequence length into a grid.
        keep_queries (`bool`, defaults to `False`): also keep the queries of recorded cross-attention layers.
        keep_graph (`bool`, defaults to `False`): keep the autograd graph through the sums (for prompt inversion);
            otherwise maps are detached as they are added.
    """

    latent_hw: tuple[int, int]
    keep_queries: bool = False
    keep_graph: bool = False
    sums: dict[tuple[str, tuple[int, int]], torch.Tensor] = field(default_factory=dict)
    counts: dict[tuple[str, tuple[int, int]], int] = field(default_factory=dict)
    queries: list[_QueryRecord] = field(default_factory=list)

    def grid_for(self, seq_len: int) -> tuple[int, int]:
        """The (h, w) grid whose size is `seq_len` (a halving level of the latent)."""
        from promptseg.capture.layers import grid_at_level

        for level in range(12):
            h, w = grid_at_level(self.latent_hw, level)
            if h * w == seq_len:
                return h, w
        raise ValueError(f"sequence length {seq_len} is no halving of the latent grid {self.latent_hw}")

    def add(self, kind: str, probs: torch.Tensor, heads: int) -> None:
        """Add one layer's attention probabilities, `probs` of shape (B * heads, N, K)."""
        if not self.keep_graph:
            probs = probs.detach()
        grid = self.grid_for(probs.shape[1])
        mean = probs.unflatten(0, (-1, heads)).float().mean(dim=1)  # (B, N, K)
        key = (kind, grid)
        if key in self.sums:
            self.sums[key] = self.sums[key] + mean
            self.counts[key] += 1
        else:
            self.sums[key] = mean
            self.counts[key] = 1

    def add_query(self, attn: torch.nn.Module, query: torch.Tensor) -> None:
        """Keep a cross-attention layer's head-split query (B * heads, N, head_dim)."""
        if not self.keep_graph:
            query = query.detach()
        self.queries.append(_QueryRecord(attn=attn, query=query, grid=self.grid_for(query.shape[1])))

    def grids(self, kind: str) -> list[tuple[int, int]]:
        """The grids recorded for `kind`, finest first."""
        return sorted((g for k, g in self.sums if k == kind), key=lambda g: -g[0] * g[1])

    def mean(self, kind: str, grid: tuple[int, int]) -> torch.Tensor:
        """The mean map over heads, layers and calls: (B, N, N) for "self", (B, N, tokens) for "cross"."""
        key = (kind, tuple(grid))
        if key not in self.sums:
            raise KeyError(f"no {kind}-attention recorded at grid {grid}; recorded: {self.grids(kind)}")
        return self.sums[key] / self.counts[key]

    def cross_attention_for(self, text_embeddings: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Cross-attention of the kept queries at `grid` against other `text_embeddings` (B or 1, T, D).

        Each layer's own key projection, head split, scale and softmax are used (`Attention.get_attention_scores`),
        then heads and layers are averaged exactly as `mean("cross", grid)` does. Returns (B, N, T).
        """
        records = [r for r in self.queries if r.grid == tuple(grid)]
        if not records:
            kept = sorted({r.grid for r in self.queries})
            raise KeyError(f"no queries kept at grid {grid} (kept: {kept}); capture with keep_queries=True")
        total = None
        for record in records:
            attn = record.attn
            batch = record.query.shape[0] // attn.heads
            context = text_embeddings.to(record.query.dtype)
            if context.shape[0] == 1 and batch > 1:
                context = context.expand(batch, -1, -1)
            if attn.norm_cross:
                context = attn.norm_encoder_hidden_states(context)
            key = attn.head_to_batch_dim(attn.to_k(context))
            probs = attn.get_attention_scores(record.query, key, None)  # (B * heads, N, T)
            mean = probs.unflatten(0, (-1, attn.heads)).float().mean(dim=1)
            total = mean if total is None else total + mean
        return total / len(records)

    def clear(self) -> None:
        """Forget everything recorded."""
        self.sums.clear()
        self.counts.clear()
        self.queries.clear()
