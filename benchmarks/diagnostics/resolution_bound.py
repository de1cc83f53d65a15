"""How well could perfect attention maps segment a world at a given grid? The mIoU ceiling of each attention grid.

    python benchmarks/diagnostics/resolution_bound.py --world scenes     # -> benchmarks/diagnostics/results/resolution_bound_scenes.md
    python benchmarks/diagnostics/resolution_bound.py --world shapes

Attention-reading methods score classes on the UNet's attention grids and upsample: a map on a g x g grid cannot
draw a boundary finer than a cell. Here the "maps" are the ground truth itself, each class's share of every cell
of a g x g grid (area pooling), upsampled bilinearly and arg-maxed, as the methods upsample theirs; no model is
involved. The mIoU this reaches is what a method reading only that grid, with no pixel-level refiner, could at best
reach on the world's val images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from promptseg.data import scenes_world, shapes_world
from promptseg.data.shapes import ScenesDataset, ShapesDataset
from promptseg.eval.metrics import confusion, scores

CLASS_NAMES = {"scenes": scenes_world.CLASS_NAMES, "shapes": shapes_world.CLASS_NAMES}


def ceiling(dataset, grid: int) -> np.ndarray:
    """Per-class IoU (NaN where a class never occurs) of the ground truth pooled onto a grid x grid grid, upsampled
    bilinearly and arg-maxed."""
    k = len(dataset.class_names)
    total = np.zeros((k, k + 1), np.int64)
    for sample in dataset:
        label = torch.from_numpy(sample.label.astype(np.int64))
        valid = label < k
        onehot = F.one_hot(torch.where(valid, label, 0), k).permute(2, 0, 1)[None].float() * valid
        pooled = F.adaptive_avg_pool2d(onehot, grid)
        up = F.interpolate(pooled, size=tuple(label.shape), mode="bilinear", align_corners=False)
        total += confusion(up[0].argmax(0).numpy(), sample.label, k, dataset.ignore_index)
    return scores(total).iou


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", default="scenes", choices=("scenes", "shapes"))
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    dataset = {"scenes": ScenesDataset, "shapes": ShapesDataset}[args.world](split="val", n=args.n)
    side = dataset[0].label.shape[0]
    grids = [g for g in (4, 8, 16, 32, 64) if g <= side]
    lines = [f"# Ceiling of each attention grid on {args.world} ({args.n} val images, {side}x{side} px)", "",
             "Perfect maps (each class's share of a cell, from the ground truth), upsampled bilinearly and arg-maxed: "
             "the best a method reading only that grid can reach without a pixel-level refiner. Made by "
             f"`python benchmarks/diagnostics/resolution_bound.py --world {args.world} --n {args.n}`.", "",
             "| grid | pixels per cell | mIoU ceiling | stuff | things |", "| --- | --- | --- | --- | --- |"]
    # stuff: the world's ground words (shapes: its four backgrounds), things: the rest
    stuff = np.array([name in (shapes_world.BACKGROUNDS if args.world == "shapes" else scenes_world.STUFF)
                      for name in CLASS_NAMES[args.world]])
    for g in grids:
        iou = 100 * ceiling(dataset, g)
        lines.append(f"| {g}x{g} | {side // g} | {np.nanmean(iou):.1f} | {np.nanmean(iou[stuff]):.1f} | "
                     f"{np.nanmean(iou[~stuff]):.1f} |")
    text = "\n".join(lines) + "\n"
    (Path(__file__).parent / "results" / f"resolution_bound_{args.world}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
