"""Does each word's cross-attention point at that word's pixels? Per-token AUROC on the shapes model.

    python benchmarks/shapes_token_auroc.py --n 100 --model shapes

For each val image the UNet is conditioned on the image's full caption ("a red circle and a blue square on
grass") at one timestep; each word's cross-attention map (mean over heads and layers at each grid, upsampled) is
scored by the AUROC of separating its own pixels (the shape's, the colour's objects', the background's) from the
rest. 0.5 is chance. Written to benchmarks/results/shapes_token_auroc.md.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from promptseg import load_backbone
from promptseg.data.shapes_world import BACKGROUNDS, CLASS_NAMES, COLOURS, SHAPES, render_sample
from promptseg.diffusion.attention import attention_pass
from promptseg.diffusion.capture import attention_grids, select_layers
from promptseg.diffusion.encode import prepare_pixels
from promptseg.diffusion.noise import noised_latents
from promptseg.diffusion.readout import resize_maps, tokens_to_maps
from promptseg.eval.metrics import auroc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--timestep", type=int, default=100)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "shapes_token_auroc.md"))
    args = parser.parse_args()
    backbone = load_backbone(args.model, device="cpu")
    grids = attention_grids(backbone.unet, backbone.latent_size, "cross")
    layers = select_layers(backbone.unet, backbone.latent_size, cross_grids=grids)
    results = defaultdict(list)  # (word kind, grid) -> AUROCs
    for index in range(args.n):
        sample = render_sample("val", index)
        prepared = prepare_pixels(backbone, sample.image)
        noisy, _ = noised_latents(backbone, prepared.latents, args.timestep, seed=index)
        ids = backbone.tokenizer(sample.caption).input_ids
        words = backbone.tokenizer.convert_ids_to_tokens(ids)
        with torch.no_grad():
            store = attention_pass(backbone, noisy, args.timestep, backbone.encode_text(sample.caption), layers)
        size = sample.class_map.shape
        for grid in grids:
            maps = resize_maps(tokens_to_maps(store.mean("cross", grid), grid), size)[0].numpy()  # (T, H, W)
            for position, token in enumerate(words):
                word = token.replace("</w>", "")
                if word in SHAPES:
                    kind, mask = "shape", sample.class_map == CLASS_NAMES.index(word)
                elif word in BACKGROUNDS:
                    kind, mask = "background", sample.class_map == CLASS_NAMES.index(word)
                elif word in COLOURS:
                    ids_of = [i + 1 for i, o in enumerate(sample.objects) if o.colour == word]
                    kind, mask = "colour", np.isin(sample.instance_map, ids_of)
                elif position == 0:
                    kind, mask = "start token (vs objects)", sample.instance_map > 0
                else:
                    continue
                results[(kind, grid)].append(auroc(maps[position].ravel(), mask.ravel()))
    lines = [
        f"# Per-token AUROC of cross-attention, model `{args.model}`, {args.n} val images, t={args.timestep}",
        "",
        "| word kind | grid | AUROC (mean) | n |",
        "| --- | --- | --- | --- |",
    ]
    for (kind, grid), values in sorted(results.items()):
        lines.append(f"| {kind} | {grid[0]}x{grid[1]} | {np.nanmean(values):.3f} | {len(values)} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
