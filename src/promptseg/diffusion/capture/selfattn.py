"""Mean self-attention as an operator, so that a large grid's N x N matrix is never formed unless asked for.

At SD's 64x64 latent grid one self-attention layer's probabilities are (heads, 4096, 4096): 512 MB per layer, and
forming them through the explicit attention path costs more than the whole layer does with SDPA. What the methods
need from them is almost always one product, ``A @ M`` (refinement: the mean self-attention times a few class
maps). `SelfAttention` keeps each recorded call's query and key instead (about 10 MB at 64x64) and computes

    mean over calls and heads of softmax(q k^T * scale) @ M  =  mean of scaled_dot_product_attention(q, k, M)

which is the same number (float noise) as forming the mean matrix first. `dense()` forms the mean matrix when a
caller needs it (resizing to another grid, powers), in row chunks, once, and caches it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

CHUNK_ROWS = 1024
FUSED_BLOCKS = 2
"""At most this many head-dim-wide blocks of values go through the fused SDPA kernel (`QKRecord.apply`)."""


@dataclass
class QKRecord:
    """One recorded self-attention call: head-split query and key (B * heads, N, d) and the softmax scale."""

    query: torch.Tensor
    key: torch.Tensor
    heads: int
    scale: float

    def probs(self, rows: slice) -> torch.Tensor:
        """(B, rows, N): head-mean attention probabilities of the query rows `rows`."""
        scores = torch.matmul(self.query[:, rows].float(), self.key.float().transpose(1, 2)) * self.scale
        return scores.softmax(dim=-1).unflatten(0, (-1, self.heads)).mean(dim=1)

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        """(B, N, K) -> (B, N, K): head-mean softmax(q k^T scale) @ values, without forming the matrix.

        Fused SDPA kernels (PyTorch's flash attention on CPU) need values as wide as the queries' head dimension d
        and 4-D inputs; given K class maps they fall back to the math path, which forms every (N, N) matrix and
        costs 3.5-5x as much at SD's 64x64 grid on a CPU (the baseline's refinement was 0.75 UNet forwards). So
        K <= 2 d maps go in blocks of d columns, zero-padded (the same numbers); past that one math-path call is
        cheaper."""
        q = self.query.float().unflatten(0, (-1, self.heads))  # (B, heads, N, d)
        k = self.key.float().unflatten(0, (-1, self.heads))
        v = values.float()[:, None].expand(-1, self.heads, -1, -1)  # (B, heads, N, K)
        d, width = q.shape[-1], values.shape[-1]
        if width > FUSED_BLOCKS * d:
            out = F.scaled_dot_product_attention(q, k, v.contiguous(), scale=self.scale)
        else:
            blocks = []
            for start in range(0, width, d):
                block = v[..., start:start + d]
                pad = d - block.shape[-1]
                block = F.pad(block, (0, pad)) if pad else block.contiguous()
                blocks.append(F.scaled_dot_product_attention(q, k, block, scale=self.scale)[..., :d - pad])
            out = torch.cat(blocks, dim=-1)
        return out.mean(dim=1)


@dataclass
class SelfAttention:
    """The mean of some self-attention maps on one grid: a dense running sum, lazy records, or both.

    Attributes:
        dense_sum (`torch.Tensor`, *optional*): (B, N, N), the sum of `dense_count` head-mean maps.
        records (`list[QKRecord]`): calls kept as query and key.
    """

    dense_sum: torch.Tensor | None = None
    dense_count: int = 0
    records: list[QKRecord] = field(default_factory=list)
    _dense: torch.Tensor | None = None

    @property
    def count(self) -> int:
        return self.dense_count + len(self.records)

    def matmul(self, values: torch.Tensor) -> torch.Tensor:
        """Mean self-attention (B, N, N) times `values` (B, N, K)."""
        if self._dense is not None:
            return torch.bmm(self._dense.to(values.dtype), values)
        if self.count == 0:
            raise ValueError("no self-attention was recorded")
        total = torch.bmm(self.dense_sum.to(values.dtype), values) if self.dense_sum is not None else 0
        for record in self.records:
            total = total + record.apply(values).to(values.dtype)
        return total / self.count

    def dense(self) -> torch.Tensor:
        """The mean map (B, N, N), formed once (row chunks) and cached."""
        if self._dense is None:
            if self.count == 0:
                raise ValueError("no self-attention was recorded")
            total = self.dense_sum.clone() if self.dense_sum is not None else None
            for record in self.records:
                n = record.query.shape[1]
                if total is None:
                    total = torch.zeros(record.query.shape[0] // record.heads, n, record.key.shape[1],
                                        device=record.query.device)
                for start in range(0, n, CHUNK_ROWS):
                    rows = slice(start, min(n, start + CHUNK_ROWS))
                    total[:, rows] += record.probs(rows)
            self._dense = total / self.count
        return self._dense

    def merged(self, other: SelfAttention, max_records: int = 16) -> SelfAttention:
        """The mean over both (weighted by their counts); beyond `max_records` lazy records the records are folded
        into the dense sum, so memory stays bounded however many passes are merged."""
        sums = [s for s in (self.dense_sum, other.dense_sum) if s is not None]
        out = SelfAttention(dense_sum=sum(sums) if sums else None, dense_count=self.dense_count + other.dense_count,
                            records=self.records + other.records)
        if len(out.records) > max_records:
            folded = out.dense() * out.count
            out = SelfAttention(dense_sum=folded, dense_count=out.count)
        return out
