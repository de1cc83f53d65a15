"""The one attention-capture core: ``with capture(denoiser, layers, store):``.

Recording layers get a `RecordingProcessor`, which runs diffusers' own `AttnProcessor` (so the attention maths
is diffusers', never a hand copy) and reads the probabilities it computes through `Attention.get_attention_scores`
(on a half-precision UNet the recorded ones are formed again from the same queries and keys in float32; the
forward keeps the stock ones).
Every other layer keeps the processor it had (the fast SDPA path). On exit, even after an exception, the
original processors are put back. A UNet under capture refuses a second capture.

Self-attention on a large grid (`AttentionStore.wants_lazy`) is not recorded as probabilities: the layer runs
diffusers' SDPA processor (`AttnProcessor2_0`) and its query and key are read from forward hooks on the layer's
own `to_q` / `to_k` (head-split, `norm_q` / `norm_k` applied as the processor applies them).

A transformer's joint-attention block (SD3's `JointAttnProcessor2_0`, FLUX's `FluxAttnProcessor` in double- and
single-stream blocks, FLUX.2's `Flux2AttnProcessor` and, in its single-stream blocks, `Flux2ParallelSelfAttnProcessor`,
whose one fused projection is read instead: `ParallelRecordingProcessor`) keeps its own processor too: a `JointRecordingProcessor` runs it and reads the image queries,
image keys and text keys from hooks on `to_q`, `to_k` and `add_k_proj` (a single-stream block: `to_q`/`to_k` over
[text; image], split at the text length), normed and rotated (FLUX's rotary embedding) as the processor does. The "cross" record is the image-to-text block of
the joint softmax (over image and text keys together: Seg4Diff's I2T attention, `SOFTMAX: True` in its eval
config; the softmax over the text keys scaled by the text's share of the joint softmax, which one fused attention
call gives, `text_share`, so no image-to-image matrix is formed for it), or with `cross_readout="text"` the softmax over the text keys alone (the attention the image would pay
the text if it saw nothing else, a UNet's cross-attention), or with `cross_readout="output"` the dot product of the
image and text tokens' attention *outputs*, softmaxed over the text tokens (ConceptAttention's output space, with
the prompt's own tokens as concepts); the transformer's `promptseg_cross_readout` attribute chooses (the MMDiT
and FLUX families set it from the model's settings). The "self" record is softmax(q k_image^T scale) over
the image keys (lazily as query and key on large grids, as a UNet's).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch
import torch.utils.checkpoint
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from promptseg.diffusion.capture.store import AttentionStore
from promptseg.models.attention_layers import AttentionLayer

_ACTIVE_FLAG = "_promptseg_capture_active"


class StopForward(Exception):
    """Raised inside the UNet once every recorded layer has run, when the capture was asked to stop early."""


class RecordingProcessor:
    """An attention processor that computes attention like diffusers' `AttnProcessor` and records it.

    Args:
        store (`AttentionStore`): where the maps go.
        kind (`str`): "self" or "cross".
        on_recorded (`callable`, *optional*): called after each recording (used for early stopping).
    """

    def __init__(self, store: AttentionStore, kind: str, on_recorded=None):
        self.store = store
        self.kind = kind
        self.on_recorded = on_recorded
        self._stock = AttnProcessor()
        self._fast = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        stock_scores = attn.get_attention_scores
        recomputing = _recomputing()
        store, kind = (self.store.scratch() if recomputing else self.store), self.kind
        seq_len = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[-2] * hidden_states.shape[-1]
        if store.wants_lazy(kind, seq_len) and attention_mask is None:
            out = self._lazy_call(attn, hidden_states, encoder_hidden_states, temb, store)
            if self.on_recorded is not None and not recomputing:
                self.on_recorded()
            return out

        def scores_and_record(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None = None):
            probs = stock_scores(query, key, mask)  # (B * heads, N, K)
            # the record's logits are formed in float32 whatever the UNet's dtype (bf16 logits of 16-32 are off by
            # steps of 0.06-0.125, probabilities by several percent); the forward keeps the stock probabilities
            recorded = probs if query.dtype == torch.float32 else stock_scores(
                query.float(), key.float(), None if mask is None else mask.float())
            store.add(kind, recorded, attn.heads)
            if kind == "cross" and store.keep_queries:
                store.add_query(attn, query)
            return probs

        # Shadow the bound method on this instance for the duration of the stock call only.
        attn.get_attention_scores = scores_and_record
        try:
            out = self._stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        finally:
            del attn.get_attention_scores
        if self.on_recorded is not None and not recomputing:
            self.on_recorded()
        return out

    def _lazy_call(self, attn, hidden_states, encoder_hidden_states, temb, store: AttentionStore):
        """Run the SDPA processor and keep this call's head-split query and key in the store."""
        seen = {}
        hooks = [attn.to_q.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o)),
                 attn.to_k.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o))]
        try:
            out = self._fast(attn, hidden_states, encoder_hidden_states, None, temb)
        finally:
            for hook in hooks:
                hook.remove()
        q, k = (seen[n].unflatten(-1, (attn.heads, -1)).transpose(1, 2) for n in ("q", "k"))  # (B, heads, N, d)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        store.add_self_qk(q.flatten(0, 1).contiguous(), k.flatten(0, 1).contiguous(), attn.heads, attn.scale)
        return out


def split_heads(x: torch.Tensor, heads: int, norm, rope=None) -> torch.Tensor:
    """(B, N, heads * d) -> (B * heads, N, d), with the processor's per-head norm and rotary embedding (FLUX's
    `image_rotary_emb` rows for these N tokens) applied as it applies them."""
    x = x.unflatten(-1, (heads, -1))  # (B, N, heads, d)
    if norm is not None:
        x = norm(x)
    if rope is not None:
        from diffusers.models.embeddings import apply_rotary_emb

        x = apply_rotary_emb(x, rope, sequence_dim=1)
    return x.transpose(1, 2).flatten(0, 1)


def pool_tokens(x: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """(B * heads, h * w, d) image tokens on `grid` -> (B * heads, th * tw, d), each the mean of its window (the grid
    divided evenly into `target`)."""
    (h, w), (th, tw) = grid, target
    if (h, w) == (th, tw):
        return x
    if h % th or w % tw:
        raise ValueError(f"cannot pool a {h}x{w} token grid to {th}x{tw}: not an even division")
    x = x.unflatten(1, (th, h // th, tw, w // tw))  # (BH, th, kh, tw, kw, d)
    return x.mean(dim=(2, 4)).flatten(1, 2)


def merge_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B * heads, L, d) -> (B, L, heads * d): the inverse of `split_heads`'s layout."""
    return x.unflatten(0, (-1, heads)).transpose(1, 2).flatten(2)


def rope_rows(rope, start: int, stop: int | None):
    """The rotary embedding's rows for tokens [start, stop) of the joint sequence (None: no rotary embedding)."""
    if rope is None:
        return None
    return tuple(part[start:stop] for part in rope) if isinstance(rope, tuple) else rope[start:stop]


CROSS_READOUTS = ("joint", "text", "output")
"""How a joint block's image-to-text map is read (`JointRecordingProcessor`)."""


class JointRecordingProcessor:
    """Runs a joint-attention block's own processor and records its image-to-text ("cross") and image-to-image
    ("self") attention (see the module docstring).

    Three layouts: SD3's joint blocks (image projections `to_q/k/v`, text projections `add_q/k/v_proj`, no rotary
    embedding), FLUX's double-stream blocks (the same projections, text first in the joint sequence, rotary
    embedding over text and image) and FLUX's single-stream blocks (one `to_q/k/v` over the concatenated text and
    image tokens; the first `text_tokens` are the text, the count the FLUX family records on the transformer).

    Args:
        store (`AttentionStore`): where the maps go.
        kinds (`set[str]`): which of "cross" and "self" to record.
        stock: the processor the block had.
        on_recorded (`callable`, *optional*): called after each call (early stopping).
        cross_readout (`str`, defaults to "joint"): how the "cross" record is read (`CROSS_READOUTS`, module
            docstring).
        text_tokens (`int`, *optional*): a single-stream block's text length.
    """

    def __init__(self, store: AttentionStore, kinds: set[str], stock, on_recorded=None, cross_readout: str = "joint",
                 text_tokens: int | None = None):
        if cross_readout not in CROSS_READOUTS:
            raise ValueError(f"cross_readout must be one of {CROSS_READOUTS}, got {cross_readout!r}")
        self.store, self.kinds, self.stock, self.on_recorded = store, set(kinds), stock, on_recorded
        self.cross_readout, self.text_tokens = cross_readout, text_tokens

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        single = getattr(attn, "added_kv_proj_dim", True) is None  # FLUX's single-stream block
        if encoder_hidden_states is None and not single:
            raise ValueError("JointRecordingProcessor records joint (image + text) attention; this call had no text")
        if single and not self.text_tokens:
            raise ValueError("a single-stream block's text length is unknown; the FLUX family records it")
        rope = args[0] if args else kwargs.get("image_rotary_emb")
        names = ("to_q", "to_k") + (("to_v",) if single or self.cross_readout == "output" else ())
        if not single:
            names += ("add_k_proj",) + (("add_q_proj", "add_v_proj") if self.cross_readout == "output" else ())
        return self._record(attn, names, single, rope,
                            lambda: self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs))

    def _record(self, attn, names: tuple[str, ...], single: bool, rope, run):
        """Run the stock processor (`run`) with hooks on the projections `names`, then record its maps."""
        seen = {}
        hooks = [getattr(attn, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
                 for name in names]
        try:
            out = run()
        finally:
            for hook in hooks:
                hook.remove()
        # a block re-run by activation checkpointing in the backward pass computes its maps again (the same saved
        # tensors, in the same order) into a scratch store, and does not count towards stopping the forward
        recomputing = _recomputing()
        store = self.store.scratch() if recomputing else self.store
        if not store.keep_graph:
            seen = {k: v.detach() for k, v in seen.items()}
        # normed and rotated in the block's dtype, as its processor does; the logits are then formed in float32
        # whatever that dtype (as attention-map-diffusers forms them); lazy records keep the block's dtype (half the
        # memory) and upcast when they are read (`QKRecord`)
        native = self._streams(attn, seen, single, rope)
        streams = {k: v.float() for k, v in native.items()}
        query, key = streams["q"], streams["k"]
        window = 1  # image keys each pooled key stands for
        if store.pool_grid is not None:  # coarse maps: pooled image queries and keys, as a coarse layer's
            grid = store.grid_for(query.shape[1])
            window = query.shape[1] // math.prod(store.pool_grid)
            query, key = (pool_tokens(x, grid, store.pool_grid) for x in (query, key))
            native = {"q": pool_tokens(native["q"], grid, store.pool_grid),
                      "k": pool_tokens(native["k"], grid, store.pool_grid)}
        checkpointed = store.keep_graph and not store.blocks_recomputed  # the maps' own recomputation
        if "cross" in self.kinds:
            if store.keep_queries:
                raise ValueError("a transformer's text keys are made inside its joint forward: cross-attention "
                                 "against other text cannot be read from kept queries; condition the pass on that text")
            if self.cross_readout == "output":
                store.add("cross", self._output_space(attn, streams), 1)
            else:
                cross = partial(self._cross, scale=_scale(attn), window=window, **self._call_context())
                store.add("cross", *_head_mean(cross, attn.heads, checkpointed, query, key, streams["text_k"]))
        if "self" in self.kinds:
            if store.wants_lazy("self", query.shape[1]):
                store.add_self_qk(native["q"].contiguous(), native["k"].contiguous(), attn.heads, _scale(attn))
            else:
                probs = partial(_softmax_logits, scale=_scale(attn))
                store.add("self", *_head_mean(probs, attn.heads, checkpointed, query, key))
        if self.on_recorded is not None and not recomputing:
            self.on_recorded()
        return out

    def _streams(self, attn, seen: dict, single: bool, rope) -> dict:
        """The image ("q", "k", "v") and text ("text_q", "text_k", "text_v") streams' heads, (B * heads, L, d),
        normed and rotated as the processor does; only those the read-out needs."""
        heads, out = attn.heads, {}
        if single:  # [text; image] in one projection
            n = self.text_tokens
            if "to_qkv_mlp_proj" in seen:  # FLUX.2: q, k, v and the MLP's input from one fused projection
                q, k, v = seen["to_qkv_mlp_proj"][..., :3 * attn.inner_dim].chunk(3, dim=-1)
                seen = {"to_q": q, "to_k": k, "to_v": v}
            parts = {"q": (seen["to_q"], attn.norm_q), "k": (seen["to_k"], attn.norm_k), "v": (seen["to_v"], None)}
            for name, (x, norm) in parts.items():
                rotated = rope if name != "v" else None  # queries and keys are rotated, values are not
                out[name] = split_heads(x[:, n:], heads, norm, rope_rows(rotated, n, None))
                out["text_" + name] = split_heads(x[:, :n], heads, norm, rope_rows(rotated, 0, n))
            return out
        n_text = seen["add_k_proj"].shape[1]
        # SD3 has no rotary embedding; FLUX's joint sequence is text first, then image
        image_rope, text_rope = rope_rows(rope, n_text, None), rope_rows(rope, 0, n_text)
        out["q"] = split_heads(seen["to_q"], heads, attn.norm_q, image_rope)
        out["k"] = split_heads(seen["to_k"], heads, attn.norm_k, image_rope)
        out["text_k"] = split_heads(seen["add_k_proj"], heads, attn.norm_added_k, text_rope)
        if "add_q_proj" in seen:
            out["text_q"] = split_heads(seen["add_q_proj"], heads, attn.norm_added_q, text_rope)
            out["v"] = split_heads(seen["to_v"], heads, None)
            out["text_v"] = split_heads(seen["add_v_proj"], heads, None)
        return out

    @staticmethod
    def _output_space(attn, streams: dict) -> torch.Tensor:
        """(B, N, T): each image token's attention output against each text token's, dot product over the heads'
        channels, softmaxed over the text tokens (ConceptAttention's output-space map, with the prompt's own tokens
        as the concepts)."""
        keys = torch.cat([streams["k"], streams["text_k"]], dim=1)
        values = torch.cat([streams["v"], streams["text_v"]], dim=1)
        image_out = torch.nn.functional.scaled_dot_product_attention(streams["q"], keys, values)
        text_out = torch.nn.functional.scaled_dot_product_attention(streams["text_q"], keys, values)
        image_out, text_out = merge_heads(image_out, attn.heads), merge_heads(text_out, attn.heads)
        return (image_out @ text_out.transpose(1, 2)).softmax(dim=-1)

    def _call_context(self) -> dict:
        """What this call's `_cross` needs besides the streams, bound to it (a checkpointed map is formed again in the
        backward pass, after other calls)."""
        return {}

    def _cross(self, query, key, text_key, scale, window: int = 1) -> torch.Tensor:
        """(B * heads, N, T) image-to-text probabilities, normalised over the text keys or over all keys (the text
        softmax times the text's share of the joint one, `text_share`: no (B * heads, N, N) matrix). `window`:
        how many image keys each of `key` stands for (pooled keys: the joint softmax shares its mass between the
        text and the image as if each pooled key were repeated over its window)."""
        text_logits = query @ text_key.transpose(1, 2) * scale
        if self.cross_readout == "text":
            return text_logits.softmax(dim=-1)
        # the text's share of the joint softmax from one fused attention call: no N x N matrix is formed
        return text_logits.softmax(dim=-1) * text_share(query, key, text_key, scale, window)[..., None]


class ParallelRecordingProcessor(JointRecordingProcessor):
    """`JointRecordingProcessor` for FLUX.2's single-stream blocks (`Flux2ParallelSelfAttention`): one fused projection
    gives q, k, v and the MLP's input over [text; image], and the block calls its processor as (attn, hidden_states,
    attention_mask, image_rotary_emb)."""

    def __call__(self, attn, hidden_states, attention_mask=None, image_rotary_emb=None, **kwargs):
        if not self.text_tokens:
            raise ValueError("a single-stream block's text length is unknown; the FLUX.2 family records it")
        return self._record(attn, ("to_qkv_mlp_proj",), True, image_rotary_emb,
                            lambda: self.stock(attn, hidden_states, attention_mask, image_rotary_emb, **kwargs))


class UnifiedRecordingProcessor(JointRecordingProcessor):
    """`JointRecordingProcessor` for Z-Image's single-stream layers (`ZSingleStreamAttnProcessor`): one sequence of
    [image; caption] through one set of weights, image first, each part padded to a multiple of 32 with learned pad
    tokens (which every token attends to), items padded to the longest with an attention mask. The call's layout
    (image tokens, the image part's padded length, each item's caption length) is the one the backbone's `predict`
    records on the transformer (`promptseg_layout`). The "cross" record is the image-to-caption part of the softmax
    over every unmasked key (pad tokens included, as the layer computes it), columns zero-padded to the longest
    caption of the batch; the "self" record the softmax over the image tokens."""

    def __init__(self, *args, layout_source=None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.cross_readout == "output":
            raise ValueError("the output-space read-out (ConceptAttention's) is not adapted to Z-Image's single stream")
        self.layout_source, self._other, self._lengths = layout_source, [], []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, freqs_cis=None):
        return self._record(attn, ("to_q", "to_k"), False, freqs_cis,
                            lambda: self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, freqs_cis))

    def _streams(self, attn, seen: dict, single: bool, rope) -> dict:
        n, padded, lengths = self.layout_source.promptseg_layout
        heads = attn.heads

        def rotated(x, norm):  # (B, S, heads, d), normed and rotated as the processor does (complex, in float32)
            x = norm(x.unflatten(-1, (heads, -1)))
            pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
            return torch.view_as_real(pairs * rope.unsqueeze(2)).flatten(3).type_as(x)

        q, k = rotated(seen["to_q"], attn.norm_q), rotated(seen["to_k"], attn.norm_k)
        flat = lambda x: x.transpose(1, 2).flatten(0, 1)  # noqa: E731 - (B, N, heads, d) -> (B * heads, N, d)
        longest = max(lengths)
        text = k.new_zeros(k.shape[0], longest, heads, k.shape[-1])
        self._other = []
        for b, length in enumerate(lengths):
            text[b, :length] = k[b, padded:padded + length]
            captions = padded + math.ceil(length / 32) * 32  # the item's caption pads end there
            self._other.append(flat(torch.cat([k[b:b + 1, n:padded], k[b:b + 1, padded + length:captions]], dim=1)))
        self._lengths = list(lengths)
        return {"q": flat(q[:, :n]), "k": flat(k[:, :n]), "text_k": flat(text)}

    def _call_context(self) -> dict:
        return {"lengths": self._lengths, "other": [o.float() for o in self._other]}

    def _cross(self, query, key, text_key, scale, window: int = 1, lengths=(), other=()) -> torch.Tensor:
        heads = query.shape[0] // len(lengths)
        out = []
        for b, length in enumerate(lengths):
            rows = slice(b * heads, (b + 1) * heads)
            q, t = query[rows], text_key[rows, :length]
            probs = (q @ t.transpose(1, 2) * scale).softmax(dim=-1)
            if self.cross_readout == "joint":  # over every unmasked key; with pooled image keys (InvSeg's coarse
                # loss) the pad tokens' keys are weighed as pooled keys too, a small difference in that loss only
                other_b = other[b].to(key.dtype)
                probs = probs * text_share(q, torch.cat([key[rows], other_b], dim=1), t, scale, window)[..., None]
            out.append(torch.nn.functional.pad(probs, (0, text_key.shape[1] - length)))
        return torch.cat(out)


class MaskedJointRecordingProcessor(UnifiedRecordingProcessor):
    """`JointRecordingProcessor` for Qwen-Image's dual-stream blocks (`QwenDoubleStreamAttnProcessor2_0`): image and
    text projections as SD3's, text first, the rotary embedding a pair of complex tables (image, text) applied as the
    processor applies them (diffusers' `apply_rotary_emb_qwen`), and a text mask: a batch's shorter prompts' padded
    keys take no part in the softmax, so each item's map is read over its own text (`UnifiedRecordingProcessor`'s
    per-item read-out, with no pad tokens)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, encoder_hidden_states_mask=None,
                 attention_mask=None, image_rotary_emb=None):
        if encoder_hidden_states is None:
            raise ValueError("MaskedJointRecordingProcessor records joint (image + text) attention; this call had no text")
        n = encoder_hidden_states.shape[1]
        mask = encoder_hidden_states_mask
        self._lengths = [n] * hidden_states.shape[0] if mask is None else [int(m) for m in mask.sum(dim=1)]
        return self._record(attn, ("to_q", "to_k", "add_k_proj"), False, image_rotary_emb,
                            lambda: self.stock(attn, hidden_states, encoder_hidden_states, encoder_hidden_states_mask,
                                               attention_mask, image_rotary_emb))

    def _streams(self, attn, seen: dict, single: bool, rope) -> dict:
        from diffusers.models.transformers.transformer_qwenimage import apply_rotary_emb_qwen

        image_rope, text_rope = rope if rope is not None else (None, None)

        def heads(x, norm, table):  # (B, N, heads * d) -> (B * heads, N, d), normed and rotated as the processor does
            x = x.unflatten(-1, (attn.heads, -1))
            x = norm(x) if norm is not None else x
            x = apply_rotary_emb_qwen(x, table, use_real=False) if table is not None else x
            return x.transpose(1, 2).flatten(0, 1)

        query = heads(seen["to_q"], attn.norm_q, image_rope)
        self._other = [query.new_zeros(attn.heads, 0, query.shape[-1]) for _ in self._lengths]
        return {"q": query, "k": heads(seen["to_k"], attn.norm_k, image_rope),
                "text_k": heads(seen["add_k_proj"], attn.norm_added_k, text_rope)}


def text_share(query: torch.Tensor, key: torch.Tensor, text_key: torch.Tensor, scale: float,
               window: int = 1) -> torch.Tensor:
    """(B * heads, N): the share of each image query's joint softmax (over the image keys `key` and the text keys
    `text_key`) that falls on the text: fused attention whose values are 1 on the text keys and 0 on the image
    keys (padded to the head width, which the fused kernels need). The same number as the explicit normalisers'
    ratio (`tests/test_capture.py`, `tests/test_peer_oracle.py`), at the cost of one attention call, where forming q k^T over the image keys
    cost 3x the block's own attention on FLUX.1's 4096 image tokens; differentiable. `window`: how many image keys
    each of `key` stands for (pooled keys: each weighs as `window` equal keys, a log(window) logit bias)."""
    n = key.shape[-2]
    values = torch.zeros(*key.shape[:-2], n + text_key.shape[-2], query.shape[-1], device=query.device,
                         dtype=query.dtype)
    values[..., n:, 0] = 1
    bias = None
    if window > 1:
        bias = torch.zeros(1, n + text_key.shape[-2], device=query.device, dtype=query.dtype)
        bias[:, :n] = math.log(window)
    keys = torch.cat([key, text_key], dim=-2)
    out = torch.nn.functional.scaled_dot_product_attention(query[None], keys[None], values[None], attn_mask=bias,
                                                           scale=scale)
    return out[0, ..., 0]


def _recomputing() -> bool:
    """Whether this call runs inside a backward pass: a block re-run by activation checkpointing (the
    transformer's gradient checkpointing during prompt inversion, `promptseg.diffusion.memory`)."""
    return torch._C._current_graph_task_id() != -1


def _softmax_logits(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T scale) over the keys: (B * heads, N, K)."""
    return (query @ key.transpose(1, 2) * scale).softmax(dim=-1)


def _head_mean(probs, heads: int, checkpointed: bool, *inputs) -> tuple[torch.Tensor, int]:
    """(maps, heads) for `AttentionStore.add`: `probs(*inputs)` as it is (B * heads, N, K), or, `checkpointed`
    (prompt inversion without recomputed blocks), its head mean (B, N, K) computed under activation checkpointing:
    the per-head probabilities (InvSeg on FLUX: 24 heads x 1024 x 1024 a block) are formed again in the backward
    pass instead of being kept, so a loss block keeps its queries, keys and the head mean only."""
    if not checkpointed or not torch.is_grad_enabled():
        return probs(*inputs), heads

    def mean(*tensors):
        return probs(*tensors).unflatten(0, (-1, heads)).mean(dim=1)

    return torch.utils.checkpoint.checkpoint(mean, *inputs, use_reentrant=False), 1


def _scale(attn) -> float:
    """The block's softmax scale (SD3's `Attention.scale`; FLUX's attention uses head_dim ** -0.5)."""
    scale = getattr(attn, "scale", None)
    return float(scale) if scale is not None else attn.head_dim ** -0.5


@contextmanager
def capture(
    denoiser: torch.nn.Module,
    layers: Sequence[AttentionLayer],
    store: AttentionStore | dict,
    *,
    stop_after_last: bool = False,
) -> Iterator[AttentionStore]:
    """Record attention of `layers` into `store` for every UNet forward inside the block.

    Args:
        denoiser: a diffusers `UNet2DConditionModel` or transformer (anything with `set_processor` modules).
        layers (`Sequence[AttentionLayer]`): the layers to record (see `select_layers`); the rest keep their
            processors. A transformer's joint block appears once per kind, with one name: it is recorded once.
        store (`AttentionStore` or `dict[str, AttentionStore]`): receives the maps; a dict gives each layer name
            a store of its own (per-layer maps from one forward).
        stop_after_last (`bool`, defaults to `False`): raise `StopForward` inside a forward as soon as every
            recorded layer has run once, so the rest of the UNet (and its backward pass) is skipped. Call the UNet
            through `run_until_captured` then.

    Raises:
        RuntimeError: the UNet is already under capture.
        ValueError: no layers were given, or a layer name is not in the UNet.
    """
    if getattr(denoiser, _ACTIVE_FLAG, False):
        raise RuntimeError("this UNet is already under capture(); leave the first `with capture(...)` block first")
    if not layers:
        raise ValueError("capture() needs at least one layer; see promptseg.diffusion.capture.select_layers")
    modules = _attention_modules(denoiser)
    unknown = [layer.name for layer in layers if layer.name not in modules]
    if unknown:
        raise ValueError(f"layers not in this UNet: {unknown}")

    kinds: dict[str, set[str]] = {}
    for layer in layers:
        kinds.setdefault(layer.name, set()).add(layer.kind)
    joint = {layer.name for layer in layers if layer.place in ("joint", "single")}
    seen = {"n": 0}
    n_layers = len(kinds)

    def count_and_stop() -> None:
        seen["n"] += 1
        if seen["n"] == n_layers:
            seen["n"] = 0
            raise StopForward()

    hook = count_and_stop if stop_after_last else None
    # Only the recorded layers' processors are swapped (diffusers' per-module `set_processor`); the rest are
    # never touched, so they keep whatever they had (SDPA by default).
    originals = {name: modules[name].processor for name in kinds}
    setattr(denoiser, _ACTIVE_FLAG, True)
    try:
        for name, names_kinds in kinds.items():
            target = store[name] if isinstance(store, dict) else store
            if name in joint:
                common = (target, names_kinds, originals[name], hook, getattr(denoiser, "promptseg_cross_readout", "joint"),
                          getattr(denoiser, "promptseg_text_tokens", None))
                if type(originals[name]).__name__ == "ZSingleStreamAttnProcessor":
                    processor = UnifiedRecordingProcessor(*common, layout_source=denoiser)
                elif type(originals[name]).__name__ == "QwenDoubleStreamAttnProcessor2_0":
                    processor = MaskedJointRecordingProcessor(*common)
                elif hasattr(modules[name], "to_qkv_mlp_proj"):
                    processor = ParallelRecordingProcessor(*common)
                else:
                    processor = JointRecordingProcessor(*common)
            else:
                (kind,) = names_kinds
                processor = RecordingProcessor(target, kind, hook)
            modules[name].set_processor(processor)
        yield store
    finally:
        for name, processor in originals.items():
            modules[name].set_processor(processor)
        setattr(denoiser, _ACTIVE_FLAG, False)


def _attention_modules(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Attention modules by processor name (the keys of `unet.attn_processors`), found once per UNet."""
    cached = getattr(unet, "_promptseg_attention_modules", None)
    if cached is None:
        cached = {f"{name}.processor": m for name, m in unet.named_modules() if hasattr(m, "set_processor")}
        unet._promptseg_attention_modules = cached
    return cached


def run_until_captured(forward, *args, **kwargs) -> None:
    """Call `forward(*args, **kwargs)` (the denoiser, or `backbone.predict`) under a
    `capture(..., stop_after_last=True)`, ending at the last recorded layer."""
    try:
        forward(*args, **kwargs)
    except StopForward:
        return
    raise RuntimeError("the denoiser finished without reaching every recorded layer; was stop_after_last set?")
