"""Sample images from the bundled shapes model with the stock diffusers pipeline, for its model card.

    python benchmarks/shapes/shapes_samples.py            # writes zoo/promptseg_models/shapes/samples.png

Loads the folder with `StableDiffusionPipeline.from_pretrained` (the model is a plain diffusers SD pipeline).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from promptseg.models import BUNDLED

PROMPTS = [
    "a red circle on grass",
    "a blue square and a yellow triangle on sand",
    "a green triangle on water",
    "a yellow circle and a red square on sky",
]


def main() -> None:
    folder = BUNDLED["shapes"].folder
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    rows = []
    for prompt in PROMPTS:
        generator = torch.Generator().manual_seed(0)
        out = pipe([prompt] * 4, num_inference_steps=30, guidance_scale=4.0, generator=generator, output_type="np")
        rows.append(np.concatenate(list((out.images * 255).round().astype(np.uint8)), axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    grid = grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST)
    path = Path(folder) / "samples.png"
    grid.save(path)
    print(f"wrote {path}: rows = {PROMPTS}")


if __name__ == "__main__":
    main()
