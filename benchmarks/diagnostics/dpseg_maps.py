"""Do DPSeg's per-class maps hold each class at all? Train against val images, arg-max against the best threshold.

    python benchmarks/diagnostics/dpseg_maps.py --n 40 --weights scenes-dpseg runs/scenes-dpseg-zoom
        # -> benchmarks/diagnostics/results/dpseg_maps_scenes.md/.json

For every class of the scenes world, on `--n` train-split images (which the weights were trained on) and as many
val images, with every class offered, no calibration, round I, whole image (and, for `--tiles 2`, tiled too):

- arg-max IoU: what the method reports;
- best binary IoU: the class's probability map alone, thresholded at the one threshold (over all the images' pixels)
  that gives it its best IoU: an oracle read-out that no competing class can spoil. Where this is low the map
  itself does not hold the class, and no read-out (calibration, priors, thresholds) can find it;
- AUROC of the map over the pixels of the images the class is in, and its mean probability inside and outside;
- the ceiling of perfect maps on the encoder's 8x8 grid and on the 16x16 one that 2x2 tiles give
  (`resolution_bound.ceiling`, the same val images).

A class whose train-split numbers are as low as its val ones was not learnt (capacity, resolution or loss), not
lost to generalisation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from resolution_bound import ceiling

from promptseg import load_backbone
from promptseg.data.scenes_world import STUFF
from promptseg.data.shapes import ScenesDataset
from promptseg.eval.metrics import auroc
from promptseg.methods import build_method
from promptseg.pipeline import Pipeline
from promptseg.text import parse_labels

RESULTS = Path(__file__).parent / "results"


def best_binary_iou(prob: np.ndarray, positive: np.ndarray) -> float:
    """The best IoU of `prob >= t` against `positive` over every threshold t."""
    order = np.argsort(-prob, kind="stable")
    hits = np.cumsum(positive[order])
    misses = np.cumsum(~positive[order])
    return float((hits / (positive.sum() + misses)).max())


def class_maps(method, dataset, labels) -> tuple[np.ndarray, np.ndarray]:
    """((K, N) probabilities, (N,) labels) over every pixel of `dataset`: the method's own score maps (its
    probabilities resized to the image, which is the labels' size)."""
    probs, truth = [], []
    for sample in dataset:
        probs.append(method(sample.image, labels).scores.reshape(len(labels), -1))
        truth.append(sample.label.ravel())
    return np.concatenate(probs, 1), np.concatenate(truth)


def measure(probs: np.ndarray, truth: np.ndarray, names: list[str], n_pixels: int) -> dict:
    """Per class: arg-max IoU, best binary IoU, AUROC over the images it is in, mean probability inside and outside."""
    pred = probs.argmax(0)
    out = {}
    for k, name in enumerate(names):
        positive = truth == k
        if not positive.any():
            continue
        images = positive.reshape(-1, n_pixels).any(1).repeat(n_pixels)  # pixels of the images holding the class
        union = ((pred == k) | positive).sum()
        out[name] = {"argmax_iou": float(((pred == k) & positive).sum() / union),
                     "best_binary_iou": best_binary_iou(probs[k], positive),
                     "auroc": auroc(probs[k][images], positive[images]),
                     "p_inside": float(probs[k][positive].mean()), "p_outside": float(probs[k][~positive].mean())}
    return out


def markdown(out: dict) -> str:
    names = out["classes"]
    lines = [f"# Do DPSeg's maps hold each class? ({out['n']} train and {out['n']} val images of scenes)", "",
             "Every class offered, no calibration, round I. Arg-max IoU is what the method reports; best binary IoU "
             "thresholds the class's own map at its best threshold (no other class competes): where it is low the map "
             "does not hold the class. Ceilings: perfect maps on the encoder's 8x8 grid and on 2x2 tiles' 16x16 (val). Unseen classes in "
             "italics. Made by `python benchmarks/diagnostics/dpseg_maps.py " + " ".join(out["argv"]) + "`.", ""]
    for run in out["runs"]:
        lines += [f"## {run['name']}", "", "| class | kind | 8x8 / 16x16 ceiling | train arg-max | train best binary | "
                  "val arg-max | val best binary | val AUROC | val p inside / outside |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name in names:
            tr, va = run["train"].get(name), run["val"].get(name)
            if va is None:
                continue
            label = name if name in run["trained_classes"] else f"*{name}*"
            cell = lambda r, key: "-" if r is None else f"{100 * r[key]:.1f}"  # noqa: E731
            lines.append(f"| {label} | {'stuff' if name in STUFF else 'thing'} | {100 * out['ceiling'][8][name]:.1f} / "
                         f"{100 * out['ceiling'][16][name]:.1f} | "
                         f"{cell(tr, 'argmax_iou')} | {cell(tr, 'best_binary_iou')} | {cell(va, 'argmax_iou')} | "
                         f"{cell(va, 'best_binary_iou')} | {va['auroc']:.3f} | {va['p_inside']:.3f} / "
                         f"{va['p_outside']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--weights", nargs="+", default=["scenes-dpseg"])
    parser.add_argument("--tiles", type=int, default=1, help="also measure each weights with tiled inference")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_backbone("scenes")
    sets = {split: ScenesDataset(split=split, n=args.n) for split in ("train", "val")}
    labels = parse_labels(sets["val"].class_names)
    names = [label.name for label in labels]
    out = {"n": args.n, "argv": [f"--n {args.n}", "--weights", *args.weights] + ([f"--tiles {args.tiles}"]
                                                                                  if args.tiles > 1 else []),
           "classes": names, "runs": [],
           "ceiling": {g: {n: float(c) for n, c in zip(names, ceiling(sets["val"], g)) if not np.isnan(c)}
                       for g in (8, 16)}}
    n_pixels = sets["val"][0].label.size  # pixels per image
    for weights in args.weights:
        for tiles in sorted({1, args.tiles}):
            config = Pipeline("scenes", "dpseg").method.config
            config.weights, config.calibration, config.rounds, config.tiles = weights, 0.0, 1, tiles
            method = build_method("dpseg", backbone, config)
            run = {"name": f"{weights}" + (f", tiles {tiles}" if tiles > 1 else ""),
                   "trained_classes": method.net.config.trained_classes}
            for split, data in sets.items():
                run[split] = measure(*class_maps(method, data, labels), names, n_pixels)
            out["runs"].append(run)
            print(run["name"], {n: round(r["best_binary_iou"], 3) for n, r in run["val"].items()}, flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dpseg_maps_scenes.json").write_text(json.dumps(out, indent=1))
    (RESULTS / "dpseg_maps_scenes.md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
