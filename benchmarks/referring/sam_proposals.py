"""How well do SAM's automatic proposals cover the objects? `SamPredictor.propose` on val images of the shapes world.

    python benchmarks/referring/sam_proposals.py --n 30

For each visible object of val images 0..n-1: the best IoU of any proposal with its true mask (mean, and the share
above 0.8), the proposals per image, and seconds per image, for the bundled `shapes-sam` at several point grids and
stability thresholds (non-maximum suppression and minimum area at `propose`'s defaults). Segment Anyword's
`min_stability` and `points_per_side` come from this table. Results: benchmarks/referring/results/sam_proposals.md and .json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from promptseg.data.shapes_world import render_sample
from promptseg.models.sam import load_sam

RESULTS = Path(__file__).parent / "results"
ROWS = [(8, 0.9), (8, 0.8), (8, 0.7), (8, 0.6), (16, 0.7)]  # (points_per_side, min_stability)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(2)
    sam = load_sam("shapes-sam", device="cpu")
    samples = [render_sample("val", k) for k in range(args.n)]
    table = {}
    for side, stability in ROWS:
        best, counts, seconds = [], [], []
        for sample in samples:
            start = time.perf_counter()
            masks, _ = sam.propose(Image.fromarray(sample.image), points_per_side=side, min_stability=stability)
            seconds.append(time.perf_counter() - start)
            counts.append(len(masks))
            for k in range(1, len(sample.objects) + 1):
                truth = sample.instance_map == k
                if truth.any():
                    ious = (masks & truth).sum((1, 2)) / np.maximum((masks | truth).sum((1, 2)), 1)
                    best.append(float(ious.max()) if len(masks) else 0.0)
        table[f"{side}x{side} points, stability >= {stability}"] = {
            "mean_best_iou": float(np.mean(best)), "recall_at_0.8": float(np.mean(np.array(best) > 0.8)),
            "objects": len(best), "proposals_per_image": float(np.mean(counts)), "seconds_per_image": float(np.median(seconds)),
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sam_proposals.json").write_text(json.dumps({"n_images": args.n, "rows": table}, indent=1))
    lines = [f"# SAM proposals (`shapes-sam`) against true objects, val images 0-{args.n - 1}", "",
             f"Made by `python benchmarks/referring/sam_proposals.py --n {args.n}` (2 CPU cores).", "",
             "| proposals | mean best IoU | objects found (IoU > 0.8) | proposals / image | s / image |",
             "| --- | --- | --- | --- | --- |"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['mean_best_iou']:.3f} | {row['recall_at_0.8']:.3f} ({row['objects']}) | "
                     f"{row['proposals_per_image']:.1f} | {row['seconds_per_image']:.3f} |")
    (RESULTS / "sam_proposals.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
