"""Where captured attention goes: running means per grid, per kind, per batch item.

Nothing here stores one map per head or per layer: every recorded call adds its head-mean into a running sum
keyed by (kind, grid), so a 64x64 self-attention layer costs one (B, 4096, 4096) sum, not one per head and layer.
Cross-attention layers can also keep their queries, so that cross-attention against *any* text can be computed
later with the layer's own key projection and softmax (OVAM's observation; FastSeg's dual prompt).

Self-attention on a large grid (at least `lazy_self_tokens` pixels, e.g. SD's 64x64) is kept as each call's query
and key instead (`promptseg.diffusion.capture.selfattn`): `self_attention(grid)` multiplies by it without forming the matrix,
`mean("self", grid)` forms it on demand. Nothing is lazy when the graph is kept (prompt inversion).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from promptseg.diffusion.capture.selfattn import QKRecord, SelfAttention

LAZY_SELF_TOKENS = 2048
"""Default `AttentionStore.lazy_self_tokens`: SD's 64x64 self-attention (4096 pixels) is lazy, 32x32 is not."""


LAZY_MAX_PRODUCTS = 2
"""A reader multiplying by the self-attention at most this many times keeps large grids lazy (`lazy_tokens_for`)."""


def lazy_tokens_for(products: int) -> int | None:
    """`lazy_self_tokens` for a reader that multiplies the self-attention `products` times: lazy for up to
    `LAZY_MAX_PRODUCTS` (each product is one fused SDPA call per recorded layer, `QKRecord.apply`); recorded during
    the pass for more, where the layer's explicit attention path computes the matrix once. On SD-1.5's 64x64 grid on
    this CPU (2 threads) a fused product costs 0.16 s a layer, the explicit path 0.7 s more than the fused layer:
    two products are cheaper lazily (FastSeg's HARD, tau = 2), about four break even."""
    return LAZY_SELF_TOKENS if products <= LAZY_MAX_PRODUCTS else None


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
        lazy_self_tokens (`int`, defaults to 2048): self-attention with at least this many query pixels is kept as
            query and key, not as probabilities (never with `keep_graph`); `None`: never.
        keep_layers (`bool`, defaults to `False`): also keep each cross-attention call's head-mean map, in call
            order, in `layer_maps` (per-layer aggregation, `promptseg.diffusion.aggregation`).
    """

    latent_hw: tuple[int, int]
    keep_queries: bool = False
    keep_graph: bool = False
    sums: dict[tuple[str, tuple[int, int]], torch.Tensor] = field(default_factory=dict)
    counts: dict[tuple[str, tuple[int, int]], int] = field(default_factory=dict)
    queries: list[_QueryRecord] = field(default_factory=list)
    lazy_self_tokens: int | None = field(default_factory=lambda: LAZY_SELF_TOKENS)
    lazy: dict[tuple[int, int], list[QKRecord]] = field(default_factory=dict)
    keep_layers: bool = False
    layer_maps: list[torch.Tensor] = field(default_factory=list)
    reference: torch.Tensor | None = None
    """Features a reader asked to keep beside the maps (the GoCA reference block's image tokens)."""
    blocks_recomputed: bool = False
    """The denoiser's blocks are re-run in the backward pass (gradient checkpointing, `promptseg.diffusion.memory`):
    nothing inside a block is kept, so the maps need no checkpointing of their own."""
    pool_grid: tuple[int, int] | None = None
    """A transformer's image queries and keys average-pooled to this coarser grid before the maps are formed
    (`JointRecordingProcessor`), as a coarse layer of a UNet attends: "cross" is the image-to-text part of the joint
    softmax over the text keys and the pooled image keys (each standing for its window), "self" the softmax over the
    pooled image keys. InvSeg's loss on SD3 / FLUX reads the coarse grid the paper's loss names (1/4 of the latent
    side) without forming, and keeping the gradients of, a 4096 x 4096 map per head and block."""

    def scratch(self) -> AttentionStore:
        """An empty store with these settings (where a block re-run in the backward pass records, unread)."""
        return AttentionStore(latent_hw=self.latent_hw, keep_queries=self.keep_queries, keep_graph=self.keep_graph,
                              lazy_self_tokens=self.lazy_self_tokens, pool_grid=self.pool_grid,
                              blocks_recomputed=self.blocks_recomputed)

    def wants_lazy(self, kind: str, seq_len: int) -> bool:
        """Whether a call of `kind` with `seq_len` query pixels is kept as query and key."""
        return (kind == "self" and not self.keep_graph and self.lazy_self_tokens is not None
                and seq_len >= self.lazy_self_tokens)

    def add_self_qk(self, query: torch.Tensor, key: torch.Tensor, heads: int, scale: float) -> None:
        """Keep one self-attention call as its head-split query and key (B * heads, N, d)."""
        grid = self.grid_for(query.shape[1])
        self.lazy.setdefault(grid, []).append(QKRecord(query.detach(), key.detach(), heads, float(scale)))

    def self_attention(self, grid: tuple[int, int]) -> SelfAttention:
        """The mean self-attention at `grid` as an operator (`SelfAttention.matmul`, `.dense()`)."""
        grid = tuple(grid)
        key = ("self", grid)
        if key not in self.sums and grid not in self.lazy:
            raise KeyError(f"no self-attention recorded at grid {grid}; recorded: {self.grids('self')}")
        return SelfAttention(dense_sum=self.sums.get(key), dense_count=self.counts.get(key, 0),
                             records=list(self.lazy.get(grid, [])))

    def grid_for(self, seq_len: int) -> tuple[int, int]:
        """The (h, w) grid whose size is `seq_len` (a halving level of the latent)."""
        from promptseg.models.attention_layers import grid_at_level

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
        if self.keep_layers and kind == "cross":
            self.layer_maps.append(mean)
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
        found = {g for k, g in self.sums if k == kind} | (set(self.lazy) if kind == "self" else set())
        return sorted(found, key=lambda g: -g[0] * g[1])

    def mean(self, kind: str, grid: tuple[int, int]) -> torch.Tensor:
        """The mean map over heads, layers and calls: (B, N, N) for "self", (B, N, tokens) for "cross"."""
        key = (kind, tuple(grid))
        if kind == "self" and tuple(grid) in self.lazy:
            return self.self_attention(grid).dense()
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
            # logits in float32 whatever the UNet's dtype, as the capture records them
            probs = attn.get_attention_scores(record.query.float(), key.float(), None)  # (B * heads, N, T)
            mean = probs.unflatten(0, (-1, attn.heads)).float().mean(dim=1)
            total = mean if total is None else total + mean
        return total / len(records)

    def clear(self) -> None:
        """Forget everything recorded."""
        self.sums.clear()
        self.counts.clear()
        self.queries.clear()
        self.lazy.clear()
