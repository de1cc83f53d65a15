"""Which read-out of a diffusion transformer's joint attention says where a word is: per-token AUROC on shapes val.

    python benchmarks/transformers/dit_readouts.py --model shapes-dit --n 30 --timestep 300

For each val image noised to one timestep and conditioned on its caption, every joint block gives four maps a
word (of its 16x16 tokens), each scored by the AUROC of separating the word's pixels (a shape's, a colour's objects',
the background's) from the rest:
- "i2t joint": image queries against the word's key, in the softmax over all keys (Seg4Diff's I2T; the `cross`
  record of promptseg's capture with `cross_readout="joint"`);
- "i2t text": the same renormalised over the text keys (`cross_readout="text"`);
- "t2i": the word's query against the image keys (the other direction of the same matrix);
- "output": the dot product of the word's and each image token's attention *outputs*, softmaxed over the caption's
  tokens (ConceptAttention's output-space read-out, with the caption's own tokens as the concepts);
- "concept": ConceptAttention proper (`promptseg.diffusion.concepts.ConceptStream`): the caption's word tokens as
  concept tokens with their own residual stream, attending to the image and to each other only; the dot product of
  outputs, concepts normalised per channel, softmaxed over the concepts.
Written to benchmarks/transformers/results/<model>_readouts.md.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from promptseg import load_backbone
from promptseg.data.shapes_world import BACKGROUNDS, CLASS_NAMES, COLOURS, SHAPES, render_sample
from promptseg.diffusion.capture import run_until_captured
from promptseg.diffusion.concepts import ConceptStream
from promptseg.diffusion.encode import prepare_pixels
from promptseg.diffusion.noise import noised_latents
from promptseg.eval.metrics import auroc


def heads(x: torch.Tensor, attn, norm) -> torch.Tensor:
    x = x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)
    return norm(x) if norm is not None else x


def word_mask(sample, word: str):
    """(kind, HxW mask) of a caption word's pixels, or None for other words."""
    if word in SHAPES:
        return "shape", sample.class_map == CLASS_NAMES.index(word)
    if word in BACKGROUNDS:
        return "background", sample.class_map == CLASS_NAMES.index(word)
    if word in COLOURS:
        ids = [j + 1 for j, o in enumerate(sample.objects) if o.colour == word]
        return "colour", np.isin(sample.instance_map, ids)
    return None


def block_maps(attn, seen: dict, block: int) -> dict[str, torch.Tensor]:
    """The four (T, N) read-outs of one block from its hooked projections."""
    qi, ki = heads(seen[(block, "to_q")], attn, attn.norm_q), heads(seen[(block, "to_k")], attn, attn.norm_k)
    qt = heads(seen[(block, "add_q_proj")], attn, attn.norm_added_q)
    kt = heads(seen[(block, "add_k_proj")], attn, attn.norm_added_k)
    vi, vt = heads(seen[(block, "to_v")], attn, None), heads(seen[(block, "add_v_proj")], attn, None)
    image_logits, text_logits = qi @ ki.transpose(-1, -2) * attn.scale, qi @ kt.transpose(-1, -2) * attn.scale
    joint = torch.cat([image_logits, text_logits], -1).softmax(-1)[..., ki.shape[2]:]
    t2i = (torch.cat([qt @ ki.transpose(-1, -2), qt @ kt.transpose(-1, -2)], -1) * attn.scale).softmax(-1)
    keys, values = torch.cat([ki, kt], 2), torch.cat([vi, vt], 2)
    out_image = F.scaled_dot_product_attention(qi, keys, values).transpose(1, 2).flatten(2)[0]
    out_text = F.scaled_dot_product_attention(qt, keys, values).transpose(1, 2).flatten(2)[0]
    return {"i2t joint": joint.mean(1)[0].T, "i2t text": text_logits.softmax(-1).mean(1)[0].T,
            "t2i": t2i[..., : ki.shape[2]].mean(1)[0], "output": (out_text @ out_image.T).softmax(0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-dit")
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--timestep", type=int, default=300)
    args = parser.parse_args()
    backbone = load_backbone(args.model, device="cpu")
    blocks = backbone.transformer.transformer_blocks
    seen = {}
    for i, block in enumerate(blocks):
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
            getattr(block.attn, name).register_forward_hook(
                lambda m, inp, out, i=i, name=name: seen.__setitem__((i, name), out.detach()))
    results = defaultdict(list)  # (kind, read-out, block) -> AUROCs
    for index in range(args.n):
        sample = render_sample("val", index)
        noisy, _ = noised_latents(backbone, prepare_pixels(backbone, sample.image).latents, args.timestep, seed=index)
        text = backbone.encode_text(sample.caption)
        with torch.no_grad():
            backbone.predict(noisy, torch.tensor([args.timestep]), text)
        tokens = backbone.tokenizer.convert_ids_to_tokens(backbone.tokenizer(sample.caption).input_ids)
        read = {i: block_maps(block.attn, seen, i) for i, block in enumerate(blocks)}  # before the concepts' pass
        own = backbone.context_of(text)[:, 1:len(tokens)]  # the caption's tokens after the start token as concepts
        stream = ConceptStream(backbone.transformer, own, range(len(blocks)))
        with torch.no_grad(), stream:
            run_until_captured(backbone.predict, noisy, torch.tensor([args.timestep]), text)
        for i, maps in read.items():
            concept = stream.maps[i][0].T  # (concepts, N): concept c is the caption's token c + 1
            maps["concept"] = torch.cat([concept.new_zeros(1, concept.shape[1]), concept])
            for position, token in enumerate(tokens):
                found = word_mask(sample, token.replace("</w>", ""))
                if found is None:
                    continue
                kind, mask = found
                small = F.interpolate(torch.from_numpy(mask.astype(np.float32))[None, None], size=backbone.grid,
                                      mode="area")[0, 0].flatten().numpy() > 0.5
                if small.all() or not small.any():
                    continue
                for name, values in maps.items():
                    results[(kind, name, i)].append(auroc(values[position].numpy(), small))
    names = ["i2t joint", "i2t text", "t2i", "output", "concept"]
    lines = [f"# Where a word is, read from `{args.model}`'s joint attention ({args.n} val images, t={args.timestep}; "
             "per-token AUROC, 0.5 = chance)", "", "| word kind | block | " + " | ".join(names) + " |",
             "| --- | --- |" + " --- |" * len(names)]
    for kind in ("shape", "colour", "background"):
        for i in range(len(blocks)):
            row = [f"{np.nanmean(results[(kind, n, i)]):.3f}" for n in names]
            lines.append(f"| {kind} | {i} | " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    out = Path(__file__).parent / "results" / f"{args.model}_readouts.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
