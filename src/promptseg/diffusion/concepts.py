"""Concept tokens through a joint-attention transformer beside the image and its prompt (ConceptAttention).

ConceptAttention (Helbling et al., ICML 2025, arXiv 2502.04320) adds tokens for the words to be located ("concepts")
to each joint block of an MMDiT. They run on the text stream's own weights (its adaLN, q/k/v and output
projections, MLP) in a residual stream of their own; their queries attend to the image keys and to the concept keys,
and no image or prompt token attends to them, so the image, its prompt and the prediction are exactly what they are
without them. A block's map is the dot product of each image token's attention output with each concept's, in the
attention's output space (before the output projection), the concepts softmaxed per image token.

    stream = ConceptStream(transformer, concept_rows, blocks=[0, 2, 4])
    with stream:
        run_until_captured(backbone.predict, noisy, t, text)    # the forward stops after the last read block
    stream.maps    # {block: (B, N, C) softmaxed over the C concepts}

Works on diffusers' `JointTransformerBlock` (SD3, SD3.5, shapes-dit) and FLUX's double-stream `FluxTransformerBlock`
(the image keys rotated by their rows of the rotary embedding; the concepts at position 0, as the reference's zero
ids put them): the block's own processor runs untouched; the image's keys, values and attention output are read
from hooks on its projections, and the concept stream is advanced in a hook after the block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from promptseg.diffusion.capture.core import StopForward, merge_heads, rope_rows, split_heads

NORMALIZATIONS = (True, False, "linear", "l2", "none")
"""How concept vectors may be normalised (`ConceptStream`): True = "linear", False = "none"."""


def linear_normalization(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Shift `x` to a minimum of 0 along `dim` and divide by the sum along it (all-equal slices stay 0): the
    per-channel normalisation of the concept vectors in ConceptAttention's code (`normalize_concepts`)."""
    shifted = x - x.amin(dim=dim, keepdim=True)
    total = shifted.sum(dim=dim, keepdim=True)
    return shifted / torch.where(total == 0, torch.ones_like(total), total)


class ConceptStream:
    """Advance concept tokens through `transformer`'s joint blocks and record each read block's concept maps.

    Args:
        transformer: an SD3-style transformer (`transformer_blocks` of `JointTransformerBlock`, `context_embedder`).
        concepts (`torch.Tensor`): (1 or B, C, joint_attention_dim) text-encoder states of the concept tokens (rows
            of an encoded prompt, before the transformer's `context_embedder`).
        blocks (`list[int]`): the blocks whose maps are recorded; the stream runs through every block up to the last
            of them and the forward stops there (`StopForward`, see `run_until_captured`).
        normalize (`bool` or `str`, defaults to `True`): how the concepts' output vectors are normalised before the
            dot product: True or "linear", per channel over the concepts (`linear_normalization`, the reference's
            FLUX code); "l2", each concept to unit length over its channels (the reference's current SD3
            pipeline); False or "none": not at all.
        softmax (`bool`, defaults to `True`): softmax each image token's scores over the concepts (the paper); else
            the raw dot products are kept.
        groups (`list[list[list[int]]]`, *optional*): concept rows grouped by label, then synonym (the layout of
            `promptseg.text.label_scores`'s positions). When given, each block's map is (B, N, K) over the K labels:
            a label's score is the mean of its tokens' dot products, the max over its synonyms, *before* the
            softmax, so a label's share is not divided among its tokens and synonyms (a softmax over every token
            splits "tv monitor"'s mass five ways and the background's 27 ways).
        attend_prompt (`bool`, defaults to `False`): the concepts' queries also attend to the prompt's keys (still
            one way: nothing attends to the concepts). The paper's concepts attend to the image and each other only.
        keep_outputs (`bool`, defaults to `False`): also keep each read block's (image, concept) attention outputs
            in `outputs` (before the output projection; for inspection and tests: at SD3's size, 25 MB a block).
    """

    def __init__(self, transformer, concepts: torch.Tensor, blocks, normalize: bool | str = True, softmax: bool = True,
                 attend_prompt: bool = False, keep_outputs: bool = False, groups: list | None = None):
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be 'linear' (True), 'l2' or 'none' (False), got {normalize!r}")
        n = len(transformer.transformer_blocks)
        blocks = sorted(set(int(b) for b in blocks))
        if not blocks or blocks[0] < 0 or blocks[-1] >= n:
            raise ValueError(f"blocks must name blocks 0..{n - 1} of this transformer, got {blocks}")
        self.transformer, self.blocks = transformer, blocks
        self.normalize, self.softmax, self.keep_outputs = normalize, softmax, keep_outputs
        self.attend_prompt, self.groups = attend_prompt, groups
        self.rows = concepts
        self.maps: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._hooks: list = []
        self._state: torch.Tensor | None = None

    def __enter__(self) -> ConceptStream:
        self.maps, self.outputs, self._state = {}, {}, None
        for index in range(self.blocks[-1] + 1):
            block = self.transformer.transformer_blocks[index]
            seen: dict = {}
            attn = block.attn
            for name in ("to_k", "to_v") + (("add_k_proj", "add_v_proj") if self.attend_prompt else ()):
                self._hooks.append(getattr(attn, name).register_forward_hook(
                    lambda m, i, o, name=name, seen=seen: seen.__setitem__(name, o)))
            # the image tokens' attention output, before the output projection (its input; SD3's and FLUX's
            # processors split the joint output before it, so it holds the image tokens alone)
            self._hooks.append(attn.to_out[0].register_forward_pre_hook(
                lambda m, args, seen=seen: seen.__setitem__("out", args[0])))
            self._hooks.append(block.register_forward_hook(
                lambda m, args, kwargs, out, index=index, seen=seen: self._after_block(m, index, seen, kwargs),
                with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._state = [], None

    def _after_block(self, block, index: int, seen: dict, kwargs: dict) -> None:
        temb, rope = kwargs["temb"], kwargs.get("image_rotary_emb")
        # FLUX: the joint sequence is [text; image], each part rotated by its rows (SD3: no rotary embedding)
        n_text = kwargs["encoder_hidden_states"].shape[1]
        text_rope, rope = rope_rows(rope, 0, n_text), rope_rows(rope, n_text, None)
        if self._state is None:  # the concepts enter as the prompt does: through the context embedder
            rows = self.rows.to(temb.dtype)
            self._state = self.transformer.context_embedder(rows).expand(temb.shape[0], -1, -1)
        attn, state = block.attn, self._state
        if getattr(block, "context_pre_only", False):  # SD3's last block: the text stream ends, no update
            normed, gates = block.norm1_context(state, temb), None
        else:
            normed, *gates = block.norm1_context(state, emb=temb)

        heads = attn.heads
        # the concepts sit at position 0 of every rotary axis (the reference's zero ids): no rotation for them
        keys = [split_heads(seen["to_k"], heads, attn.norm_k, rope)]
        values = [split_heads(seen["to_v"], heads, None)]
        if self.attend_prompt:  # read before the concepts' own projections overwrite them
            keys.append(split_heads(seen["add_k_proj"], heads, attn.norm_added_k, text_rope))
            values.append(split_heads(seen["add_v_proj"], heads, None))
        query = split_heads(attn.add_q_proj(normed), heads, attn.norm_added_q)
        keys = torch.cat(keys + [split_heads(attn.add_k_proj(normed), heads, attn.norm_added_k)], 1)
        values = torch.cat(values + [split_heads(attn.add_v_proj(normed), heads, None)], 1)
        out = merge_heads(F.scaled_dot_product_attention(query, keys, values), heads)  # (B, C, inner)
        if index in self.blocks:
            image = seen["out"].float()  # (B, N, inner)
            concepts = out.float()
            if self.normalize in (True, "linear"):
                concepts = linear_normalization(concepts, dim=1)
            elif self.normalize == "l2":
                concepts = concepts / (concepts.norm(dim=-1, keepdim=True) + 1e-8)
            scores = image @ concepts.transpose(1, 2)  # (B, N, C)
            if self.groups is not None:  # pooled per label before the softmax (class docstring)
                from promptseg.text import label_scores

                scores = label_scores(scores, self.groups)  # (B, N, K)
            self.maps[index] = scores.softmax(dim=-1) if self.softmax else scores
            if self.keep_outputs:
                self.outputs[index] = (seen["out"], out)
        seen.clear()
        if gates:
            gate_msa, shift_mlp, scale_mlp, gate_mlp = gates
            state = state + gate_msa[:, None] * attn.to_add_out(out)
            normed = block.norm2_context(state) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
            self._state = state + gate_mlp[:, None] * block.ff_context(normed)
        if index == self.blocks[-1]:
            raise StopForward()

    def mean_map(self) -> torch.Tensor:
        """(B, N, C): the read blocks' maps averaged (ConceptAttention averages over its layers)."""
        missing = [b for b in self.blocks if b not in self.maps]
        if missing:
            raise RuntimeError(f"blocks {missing} were not run; was the transformer called inside the stream?")
        return torch.stack([self.maps[b] for b in self.blocks]).mean(dim=0)
