"""Class filters on a procedural world: presence AUROC, the threshold chosen on val, precision/recall on test, cost.

    python benchmarks/shapes/filter_presence.py --n-val 200 --n-test 300                  # shapes -> filters.md
    python benchmarks/shapes/filter_presence.py --world scenes --only "clip: scenes-clip"  # scenes -> scenes_filters.md

For every candidate filter setting, each image of the val and test splits is offered every class name of the
world (scenes: with its synonyms, scored by the best of them) and every name gets the filter's presence score. Per candidate:
- AUROC of the score for "class present", per class and pooled over all (image, class) pairs (0.5 = chance);
- the threshold, chosen on **val**: the highest one that keeps at least `--target-recall` of the present classes
  (a class dropped here cannot be segmented later, so recall comes first);
- precision and recall on **test** at that threshold, through the filter's own keep rule (`min_keep=1`);
- milliseconds per image and UNet-forward equivalents (one bare UNet forward, batch 1, timed in the same run).
Results: benchmarks/shapes/results/filters.md and .json. The chosen filter and threshold are copied by hand into the
shapes model's `promptseg_settings.json` (the val numbers decide; test is only reported).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from promptseg import load_backbone, parse_labels
from promptseg.data import scenes_world, shapes_world
from promptseg.data.base import bundled_class_names
from promptseg.eval.metrics import auroc
from promptseg.filters import build_filter
from promptseg.filters.base import decide

HERE = Path(__file__).parent
CANDIDATES = {
    "clip: shapes-clip": ("clip", {"model": "shapes-clip", "templates": ["a photo of a {}"]}),
    "clip: shapes-clip, 3 templates": ("clip", {"model": "shapes-clip",
                                                "templates": ["a photo of a {}", "an image of a {}", "a {}"]}),
    "diffusion: leave-one-out, whole image, t 300/500/700": ("diffusion", {
        "criterion": "denoising", "leave_one_out": True, "top_fraction": 1.0, "timesteps": [300, 500, 700],
        "template": "a {}"}),
    "diffusion: leave-one-out, top 10% cells": ("diffusion", {
        "criterion": "denoising", "leave_one_out": True, "top_fraction": 0.1, "timesteps": [300, 500, 700],
        "template": "a {}"}),
    "diffusion: label vs empty prompt, whole image": ("diffusion", {
        "criterion": "denoising", "leave_one_out": False, "top_fraction": 1.0, "timesteps": [300, 500, 700],
        "template": "a {}"}),
    "diffusion: attention share, 8x8": ("diffusion", {
        "criterion": "attention", "timesteps": [300], "template": "a {}", "cross_weights": {0.5: 1.0}}),
    "diffusion: attention share, 16x16": ("diffusion", {
        "criterion": "attention", "timesteps": [300], "template": "a {}", "cross_weights": {1.0: 1.0}}),
}
SCENES_CANDIDATES = {
    "clip: scenes-clip": ("clip", {"model": "scenes-clip", "templates": ["a photo of a {}"]}),
    "clip: scenes-clip, 3 templates": ("clip", {"model": "scenes-clip",
                                                "templates": ["a photo of a {}", "an image of a {}", "a {}"]}),
    "diffusion: leave-one-out, whole image, t 300/500/700": (
        "diffusion", {**CANDIDATES["diffusion: leave-one-out, whole image, t 300/500/700"][1], "template": "{}"}),
}
WORLDS = {"shapes": (shapes_world, CANDIDATES, "filters"), "scenes": (scenes_world, SCENES_CANDIDATES, "scenes_filters")}


def split_truth(world, split: str, n: int) -> tuple[list[Image.Image], np.ndarray]:
    images, truth = [], np.zeros((n, len(world.CLASS_NAMES)), bool)
    for i in range(n):
        sample = world.render_sample(split, i)
        images.append(Image.fromarray(sample.image))
        truth[i, np.unique(sample.class_map)] = True
    return images, truth


def choose_threshold(scores: np.ndarray, truth: np.ndarray, target_recall: float) -> float:
    """The highest threshold whose pooled recall on (scores, truth) is at least `target_recall`."""
    positives = np.sort(scores[truth])[::-1]
    k = int(np.ceil(target_recall * len(positives)))
    return float(positives[max(k - 1, 0)])


def keep_rule(scores: np.ndarray, labels, threshold: float) -> np.ndarray:
    kept = np.zeros(scores.shape, bool)
    for i, row in enumerate(scores):
        names = {label.name for label in decide(labels, row, threshold, 1, "score").kept}
        kept[i] = [label.name in names for label in labels]
    return kept


def bare_forward_seconds(backbone, repeats: int = 30) -> float:
    latents = torch.randn(1, backbone.unet.config.in_channels, *backbone.latent_size)
    text = backbone.encode_text("a circle")
    t = torch.tensor([100])
    with torch.no_grad():
        for _ in range(3):
            backbone.unet(latents, t, encoder_hidden_states=text)
        start = time.perf_counter()
        for _ in range(repeats):
            backbone.unet(latents, t, encoder_hidden_states=text)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-val", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=300)
    parser.add_argument("--target-recall", type=float, default=0.98)
    parser.add_argument("--only", default=None, help="candidate names separated by ';' (default: all)")
    parser.add_argument("--world", choices=sorted(WORLDS), default="shapes")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    world, candidates, stem = WORLDS[args.world]
    classes = list(world.CLASS_NAMES)
    backbone = load_backbone(args.world, device="cpu")
    labels = parse_labels(bundled_class_names(args.world))
    data = {split: split_truth(world, split, n) for split, n in (("val", args.n_val), ("test", args.n_test))}
    forward = bare_forward_seconds(backbone)
    record = {"world": args.world, "n_val": args.n_val, "n_test": args.n_test, "target_recall": args.target_recall,
              "bare_forward_ms": 1000 * forward, "classes": classes, "candidates": {}}
    names = args.only.split(";") if args.only else list(candidates)
    for name in names:
        kind, settings = candidates[name]
        label_filter = build_filter(kind, backbone, **settings)
        entry = {"filter": kind, "settings": settings}
        for split, (images, truth) in data.items():
            start = time.perf_counter()
            scores = np.stack([label_filter.scores(image, labels) for image in images])
            seconds = (time.perf_counter() - start) / len(images)
            entry[split] = {
                "auroc_pooled": auroc(scores.ravel(), truth.ravel()),
                "auroc": {c: auroc(scores[:, k], truth[:, k]) for k, c in enumerate(classes)},
                "ms_per_image": 1000 * seconds,
                "unet_forward_equivalents": seconds / forward,
                "scores": scores,
                "truth": truth,
            }
        threshold = choose_threshold(entry["val"]["scores"], entry["val"]["truth"], args.target_recall)
        entry["threshold"] = threshold
        for split in data:
            part = entry[split]
            kept = keep_rule(part.pop("scores"), labels, threshold)
            truth = part.pop("truth")
            part["precision"] = float((kept & truth).sum() / kept.sum())
            part["recall"] = float((kept & truth).sum() / truth.sum())
            part["images_all_kept_present"] = float((kept >= truth).all(1).mean())
        record["candidates"][name] = entry
        print(name, json.dumps({s: {k: v for k, v in entry[s].items() if k != "auroc"} for s in data}), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1))
    (out / f"{stem}.md").write_text(summary(record))
    print(summary(record))


def summary(record: dict) -> str:
    classes = record["classes"]
    lines = [
        f"# Class filters on the {record.get('world', 'shapes')} world",
        "",
        f"Every image offered all {len(classes)} class names. Thresholds chosen on {record['n_val']} val images for "
        f"pooled recall >= {record['target_recall']}; precision and recall on {record['n_test']} test images through "
        f"the filter's keep rule (at least one label kept). One bare UNet forward: {record['bare_forward_ms']:.1f} ms.",
        "",
        "| filter | test AUROC (pooled) | " + " | ".join(classes) + " | threshold (val) | val P / R | test P / R | "
        "test images with every present class kept | ms/image | UNet-forward equiv. |",
        "|" + " --- |" * (len(classes) + 8),
    ]
    for name, e in record["candidates"].items():
        t, v = e["test"], e["val"]
        lines.append(
            f"| {name} | {t['auroc_pooled']:.3f} | " + " | ".join(f"{t['auroc'][c]:.2f}" for c in classes)
            + f" | {e['threshold']:.4f} | {100 * v['precision']:.1f} / {100 * v['recall']:.1f} | "
            f"{100 * t['precision']:.1f} / {100 * t['recall']:.1f} | {100 * t['images_all_kept_present']:.1f}% | "
            f"{t['ms_per_image']:.1f} | {t['unet_forward_equivalents']:.1f} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
