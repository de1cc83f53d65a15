"""How much does a model's denoising read its caption? The noise-prediction loss with the image's own caption, an
empty caption and another image's caption, per timestep.

    python benchmarks/scenes/text_reliance.py --model scenes --world scenes --out text_reliance_scenes
    python benchmarks/scenes/text_reliance.py --model shapes --world shapes --out text_reliance_shapes

For each of `--n` val images and each timestep: encode the image, add seeded noise, and predict it three times
(own caption, "", the next val image's caption). A UNet that uses its text pays for a wrong caption; one that
denoises from the image alone barely notices. Cross-attention maps can only say where a word is if the word
matters for denoising, so this is the first thing to look at when class words do not localise
(`scenes_token_auroc.py`). Output: benchmarks/scenes/results/<out>.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from promptseg import load_backbone
from promptseg.data import scenes_world, shapes_world
from promptseg.diffusion.encode import prepare_pixels

TIMESTEPS = (100, 300, 500, 700, 900)


def losses(backbone, world, n: int, timesteps=TIMESTEPS) -> dict[int, dict[str, float]]:
    """Mean epsilon MSE per timestep and caption kind ("own", "empty", "other")."""
    out = {t: {"own": [], "empty": [], "other": []} for t in timesteps}
    samples = [world.render_sample("val", i) for i in range(n + 1)]
    empty = backbone.encode_text("")
    dtype = backbone.unet.dtype
    for i in range(n):
        latents = prepare_pixels(backbone, samples[i].image).latents
        contexts = {"own": backbone.encode_text(samples[i].caption), "empty": empty,
                    "other": backbone.encode_text(samples[i + 1].caption)}
        for t in timesteps:
            noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1000 * i + t))
            step = torch.tensor([t], device=latents.device)
            noisy = backbone.scheduler.add_noise(latents, noise.to(latents.device), step)
            for kind, context in contexts.items():
                with torch.no_grad():
                    pred = backbone.unet(noisy.to(dtype), step, context.to(dtype)).sample
                out[t][kind].append(float(((pred.float().cpu() - noise) ** 2).mean()))
    return {t: {k: float(np.mean(v)) for k, v in row.items()} for t, row in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="scenes")
    parser.add_argument("--world", default="scenes", choices=("scenes", "shapes"))
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--out", default=None)
    parser.add_argument("--label", default="", help="what the model is (e.g. its training step), for the title")
    args = parser.parse_args()
    world = {"scenes": scenes_world, "shapes": shapes_world}[args.world]
    backbone = load_backbone(args.model, device="cpu")
    rows = losses(backbone, world, args.n)
    lines = [f"# Does the denoiser read its caption? Model `{args.model}` {args.label}, {args.n} {args.world} val images",
             "", "Epsilon MSE (mean over images) with the image's own caption, an empty one, and the next val image's "
             "caption; the last columns are the relative rise over the own caption.", "",
             "| t | own caption | empty | other image's caption | empty vs own | other vs own |",
             "| --- | --- | --- | --- | --- | --- |"]
    for t, r in rows.items():
        lines.append(f"| {t} | {r['own']:.4f} | {r['empty']:.4f} | {r['other']:.4f} | "
                     f"{100 * (r['empty'] / r['own'] - 1):+.1f}% | {100 * (r['other'] / r['own'] - 1):+.1f}% |")
    text = "\n".join(lines) + "\n"
    out = Path(__file__).parent / "results" / f"{args.out or 'text_reliance_' + args.model}.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
