"""Train the "scenes-sam" model: a transformers `SamModel` for the scenes world (seeded, resumable).

    python -m promptseg.training.scenes_sam --work runs/scenes-sam --out zoo/promptseg_models/scenes-sam

shapes-sam's architecture and recipe (`promptseg.training.shapes_sam`: SAM's ViT encoder, prompt encoder and two-way mask
decoder, small; SAM's own positional-encoding scale, frozen; one box or one point per item, BCE + dice) at the
scenes world's 128x128, in 8x8 patches by default (the same 16x16 embedding grid as shapes-sam's; its masks come
out at 64x64) or finer with ``--patch 4`` (a 32x32 grid, masks at 128x128). As SAM trains, each step encodes
`--batch / --masks-per-image` images (8) and decodes 4 masks of each from its one embedding: a step of 32 masks
then costs about 0.22 s on 2 cores at 8x8 patches and 1.6 s at 4x4, against 0.59 s and 4.6 s when each mask had
its own image (as in the first run, `benchmarks/scenes/results/scenes_sam_run1.json`).
What it learns to cut: every visible instance (things), every part of an instance (a house's roof, a car's wheels: the part map), and every stuff region
(sky, road, ...), so that referring expressions about parts and stuff find a proposal. The score written beside the
weights (`eval.json`) is single-box and single-point mIoU on test-split *instances* (the issue's measure).
"""

from __future__ import annotations

import argparse

import numpy as np

from promptseg.data.scenes_world import IGNORE_INDEX, SIZE, render_sample
from promptseg.training import common
from promptseg.training.shapes_sam import add_sam_arguments, train

PATCH = 8
MASKS_PER_IMAGE = 4
MIN_PIXELS = 8


def masks(split: str, n: int, parts: bool = True, stuff: bool = True) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Images (n, 128, 128, 3) and masks as (image index, 128x128 bool): every visible instance, and with `parts`
    and `stuff` every instance's parts and every stuff region (of at least `MIN_PIXELS` pixels)."""
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    out = []
    for i in range(n):
        sample = render_sample(split, i)
        images[i] = sample.image
        for obj in sample.visible:
            instance = sample.instance_map == obj.instance
            if instance.sum() >= MIN_PIXELS:
                out.append((i, instance))
            if parts:
                for part in np.unique(sample.part_map[instance]):
                    mask = instance & (sample.part_map == part)
                    if part != IGNORE_INDEX and MIN_PIXELS <= mask.sum() < instance.sum():
                        out.append((i, mask))
        if stuff:
            for c in np.unique(sample.class_map[sample.instance_map == 0]):
                mask = (sample.class_map == c) & (sample.instance_map == 0)
                if mask.sum() >= MIN_PIXELS:
                    out.append((i, mask))
    return images, out


def instances(split: str, n: int):
    """The test measure's masks: visible instances only."""
    return masks(split, n, parts=False, stuff=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_arguments(parser, work="runs/scenes-sam", out="zoo/promptseg_models/scenes-sam", n_train=3000,
                             batch=32, steps=4000, lr=5e-4)
    add_sam_arguments(parser)
    parser.add_argument("--patch", type=int, default=PATCH, choices=(4, 8, 16),
                        help="the ViT's patch side in pixels (the embedding grid is 128 / patch)")
    parser.set_defaults(masks_per_image=MASKS_PER_IMAGE)
    args = parser.parse_args(argv)
    train(args, world=(SIZE, args.patch, masks, instances))


if __name__ == "__main__":
    main()
