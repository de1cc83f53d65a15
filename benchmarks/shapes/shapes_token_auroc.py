"""Does each word's cross-attention point at that word's pixels? Per-token AUROC on the shapes model.

    python benchmarks/shapes/shapes_token_auroc.py --n 100 --model shapes

For each val image the denoiser is conditioned on the image's full caption ("a red circle and a blue square on
grass") at one timestep; each word's cross-attention map (mean over heads and layers at each grid of a UNet, or of
each block of a transformer, upsampled) is scored by the AUROC of separating its own pixels (the shape's, the
colour's objects', the background's) from the rest. 0.5 is chance. Written to
benchmarks/shapes/results/shapes_token_auroc.md (a transformer: `--out` names another file).
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
    grids = backbone.attention_grids("cross")
    if backbone.family == "mmdit":  # one unit a block: (name, its grid, its layers)
        units = [(f"block {b}", grids[0], backbone.select_layers({}, grids, [f"block{b}"]))
                 for b in range(len(backbone.transformer.transformer_blocks))]
    else:  # one pass records every grid
        units = [(f"{g[0]}x{g[1]}", g, None) for g in grids]
        layers = backbone.select_layers({}, grids, ("down", "mid", "up"))
    results = defaultdict(list)  # (word kind, unit) -> AUROCs
    for index in range(args.n):
        sample = render_sample("val", index)
        prepared = prepare_pixels(backbone, sample.image)
        noisy, _ = noised_latents(backbone, prepared.latents, args.timestep, seed=index)
        ids = backbone.tokenizer(sample.caption).input_ids
        words = backbone.tokenizer.convert_ids_to_tokens(ids)
        text = backbone.encode_text(sample.caption)
        size = sample.class_map.shape
        store = None
        for unit, grid, unit_layers in units:
            if store is None or unit_layers is not None:
                with torch.no_grad():
                    store = attention_pass(backbone, noisy, args.timestep, text, unit_layers or layers)
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
                results[(kind, unit)].append(auroc(maps[position].ravel(), mask.ravel()))
    lines = [
        f"# Per-token AUROC of cross-attention, model `{args.model}`, {args.n} val images, t={args.timestep}",
        "",
        f"| word kind | {'block' if backbone.family == 'mmdit' else 'grid'} | AUROC (mean) | n |",
        "| --- | --- | --- | --- |",
    ]
    for (kind, unit), values in sorted(results.items()):
        lines.append(f"| {kind} | {unit} | {np.nanmean(values):.3f} | {len(values)} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
