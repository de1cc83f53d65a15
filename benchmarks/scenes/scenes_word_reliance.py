"""Where does the scenes UNet use a class word? The rise in noise-prediction error, inside and outside the class's
pixels, when the word is taken out of the caption.

    python benchmarks/scenes/scenes_word_reliance.py --model scenes --n 40

For each val image and each class it shows: the complete caption (`make_caption`), and the complete caption of the
same sample with that class taken out (its stuff region or its objects left out of the caption, and with them any
"on the road" or "in the sky" that named it), both at the same noised latents. The per-cell rise of the epsilon error
(mean over channels, 16x16 latent cells), divided by the image's mean error with the complete caption, is averaged
over the cells the class covers (at least half of a cell) and over the rest. A word that says what to draw where it
is raises the error inside its region when taken out; one that the model draws from elsewhere (its place, the other
words) raises it little there. The `scenes_token_auroc.py` question (does the word's attention sit on its pixels?)
asked from the other side. Output: benchmarks/scenes/results/<out>.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from promptseg import load_backbone
from promptseg.data.scenes_world import CLASS_NAMES, STUFF, make_caption, render_sample
from promptseg.diffusion.encode import prepare_pixels

TIMESTEPS = (300, 500)
"""The noise levels where the methods read attention (scenes' probe and baseline: t = 300)."""


def without(sample, cls: str):
    """`sample` with class `cls` left out of what its caption may name."""
    if cls in STUFF:
        return dataclasses.replace(sample, stuff=[s for s in sample.stuff if s != cls])
    return dataclasses.replace(sample, objects=[o for o in sample.objects if o.cls != cls])


def error(backbone, noisy, step, context, noise) -> torch.Tensor:
    """(h, w): the epsilon error per latent cell (mean over channels) of one prediction."""
    with torch.no_grad():
        pred = backbone.unet(noisy, step, context).sample.float()
    return ((pred - noise.float()) ** 2).mean(dim=1)[0].cpu()


def rises(backbone, n: int, timesteps=TIMESTEPS) -> dict[str, dict[str, list[float]]]:
    """{class: {"inside": [...], "outside": [...]}}: relative error rises, one value per (image, timestep)."""
    out = defaultdict(lambda: {"inside": [], "outside": []})
    dtype = backbone.unet.dtype
    for i in range(n):
        sample = render_sample("val", i)
        latents = prepare_pixels(backbone, sample.image).latents
        hw = latents.shape[-2:]
        caption = make_caption(sample)
        full = backbone.encode_text(caption).to(dtype)
        taken_out = {}  # class -> (its caption's text states, the latent cells it covers), once an image
        for c in np.unique(sample.class_map):
            if c >= len(CLASS_NAMES):
                continue
            cls, shorter = CLASS_NAMES[c], make_caption(without(sample, CLASS_NAMES[c]))
            mask = torch.from_numpy(sample.class_map == c).float()[None, None]
            inside = F.adaptive_avg_pool2d(mask, hw)[0, 0] >= 0.5
            if shorter != caption and inside.any() and (~inside).any():  # named, and neither everywhere nor nowhere
                taken_out[cls] = (backbone.encode_text(shorter).to(dtype), inside)
        for t in timesteps:
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1000 * i + t)).to(latents.device)
            step = torch.tensor([t], device=latents.device)
            noisy = backbone.scheduler.add_noise(latents, noise, step).to(dtype)
            base = error(backbone, noisy, step, full, noise)
            for cls, (context, inside) in taken_out.items():
                rise = (error(backbone, noisy, step, context, noise) - base) / base.mean()
                out[cls]["inside"].append(float(rise[inside].mean()))
                out[cls]["outside"].append(float(rise[~inside].mean()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="scenes")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--out", default="scenes_word_reliance")
    parser.add_argument("--timesteps", default=",".join(map(str, TIMESTEPS)))
    parser.add_argument("--label", default="", help="what the model is (e.g. its training step), for the title")
    args = parser.parse_args()
    timesteps = tuple(int(t) for t in args.timesteps.split(","))
    backbone = load_backbone(args.model, device="cpu")
    table = rises(backbone, args.n, timesteps)
    lines = [f"# Where the UNet uses a class word: model `{args.model}` {args.label}, {args.n} scenes val images, "
             f"t = {', '.join(map(str, timesteps))}", "",
             f"Made by `python benchmarks/scenes/scenes_word_reliance.py --model {args.model} --n {args.n} --timesteps "
             f"{args.timesteps}`. The rise of the "
             "epsilon error when the class is taken out of the complete caption, per latent cell, as a share of the "
             "image's mean error with the complete caption; mean over the class's cells and over the others.", "",
             "| class | inside its pixels | elsewhere | n (images x timesteps) |", "| --- | --- | --- | --- |"]
    for cls in CLASS_NAMES:
        if cls not in table:
            continue
        inside, outside = np.mean(table[cls]["inside"]), np.mean(table[cls]["outside"])
        lines.append(f"| {cls} | {100 * inside:+.1f}% | {100 * outside:+.1f}% | {len(table[cls]['inside'])} |")
    text = "\n".join(lines) + "\n"
    (Path(__file__).parent / "results" / f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
