"""Which words do a class's pixels attend to? The question behind an inverted map (the sky's, on the scenes model).

    python benchmarks/scenes/scenes_attention_targets.py --n 30 --classes sky,grass,road   # -> results/scenes_attention_targets.md

For each val image whose class map holds the class, the UNet is conditioned on the image's complete caption at one
timestep (as `scenes_token_auroc.py` does) and the cross-attention of one grid (mean over heads and layers,
upsampled to the image) is read per token. For the class's pixels and for the rest of the image apart, the mean
attention each caption word receives is averaged over images (a word that several captions hold is averaged over
them; start and end tokens and the padding as three entries). A class whose own word gets less from its pixels
than from the others has an inverted map; the words its pixels attend to instead say what the UNet reads there.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from promptseg import load_backbone
from promptseg.data.scenes_world import CLASS_NAMES, render_sample
from promptseg.diffusion.attention import attention_pass
from promptseg.diffusion.capture import attention_grids, select_layers
from promptseg.diffusion.encode import prepare_pixels
from promptseg.diffusion.noise import noised_latents
from promptseg.diffusion.readout import resize_maps, tokens_to_maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="scenes")
    parser.add_argument("--n", type=int, default=30, help="val images looked at (those without the class skipped)")
    parser.add_argument("--classes", default="sky,grass,road")
    parser.add_argument("--timestep", type=int, default=300)
    parser.add_argument("--grid", type=int, default=8, help="the cross-attention grid read (side)")
    parser.add_argument("--top", type=int, default=8, help="words listed per class")
    parser.add_argument("--out", default="scenes_attention_targets")
    args = parser.parse_args()
    classes = args.classes.split(",")
    for name in classes:
        if name not in CLASS_NAMES:
            raise SystemExit(f"unknown class {name!r}; expected some of {', '.join(CLASS_NAMES)}")
    backbone = load_backbone(args.model, device="cpu")
    grid, grids = (args.grid, args.grid), attention_grids(backbone.unet, backbone.latent_size, "cross")
    if grid not in grids:
        raise SystemExit(f"--grid {args.grid}: the model's cross-attention grids are {grids}")
    layers = select_layers(backbone.unet, backbone.latent_size, cross_grids=[grid])
    inside = {c: defaultdict(list) for c in classes}
    outside = {c: defaultdict(list) for c in classes}
    images = defaultdict(int)
    for index in range(args.n):
        sample = render_sample("val", index)
        present = [c for c in classes if (sample.class_map == CLASS_NAMES.index(c)).any()]
        if not present:
            continue
        tokens = backbone.tokenizer.convert_ids_to_tokens(backbone.tokenizer(sample.caption).input_ids)
        words = ["<start>"] + [t.replace("</w>", "") for t in tokens[1:-1]] + ["<end>"]
        noisy, _ = noised_latents(backbone, prepare_pixels(backbone, sample.image).latents, args.timestep, seed=index)
        with torch.no_grad():
            store = attention_pass(backbone, noisy, args.timestep, backbone.encode_text(sample.caption), layers)
        maps = resize_maps(tokens_to_maps(store.mean("cross", grid), grid), sample.class_map.shape)[0].numpy()
        for name in present:
            mask = sample.class_map == CLASS_NAMES.index(name)
            images[name] += 1
            per_word_in, per_word_out = defaultdict(float), defaultdict(float)
            for k, word in enumerate(words):  # a word said twice in a caption counts once, its two tokens summed
                per_word_in[word] += float(maps[k][mask].mean())
                per_word_out[word] += float(maps[k][~mask].mean()) if (~mask).any() else np.nan
            for word in per_word_in:
                inside[name][word].append(per_word_in[word])
                outside[name][word].append(per_word_out[word])
            inside[name]["<padding>"].append(float(maps[len(words):][:, mask].sum(0).mean()))
            outside[name]["<padding>"].append(float(maps[len(words):][:, ~mask].sum(0).mean())
                                              if (~mask).any() else np.nan)
    lines = [f"# Where a class's pixels attend, model `{args.model}`, {args.n} val images, t={args.timestep}, "
             f"{args.grid}x{args.grid} cross-attention", "",
             f"Made by `python benchmarks/scenes/scenes_attention_targets.py --n {args.n} --classes {args.classes}`. Mean "
             "attention a word receives from the class's pixels and from the other pixels (captions holding the word "
             "only: n). The class's own word first, then the words its pixels attend to most.", ""]
    for name in classes:
        if not images[name]:
            lines += [f"## {name}: in none of the {args.n} images", ""]
            continue
        own = name.split()[-1]
        ranked = sorted(inside[name], key=lambda w: -np.mean(inside[name][w]))
        shown = ([own] if own in inside[name] else []) + [w for w in ranked if w != own][: args.top]
        lines += [f"## {name} ({images[name]} images)", "", "| word | from its pixels | from the other pixels | n |",
                  "| --- | --- | --- | --- |"]
        for word in shown:
            lines.append(f"| {word} | {np.mean(inside[name][word]):.4f} | {np.nanmean(outside[name][word]):.4f} | "
                         f"{len(inside[name][word])} |")
        lines.append("")
    out = Path(__file__).parent / "results" / f"{args.out}.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
