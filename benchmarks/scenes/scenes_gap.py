"""Why do per-word maps that rank their own pixels not segment? The gap between token AUROC and the arg-max.

    python benchmarks/scenes/scenes_gap.py --n 30 --model scenes     # -> benchmarks/scenes/results/scenes_gap.md

On val images with the oracle names (each image's present classes, in a seeded random order), the baseline is read
with one prompt holding every name (the method's way) and, apart, with one prompt per name. For each it reports:
- mIoU of the arg-max over the names' score maps (what the method outputs);
- the median per-class AUROC of the final score maps (do they still rank their class's pixels after refinement
  and normalisation?);
- mIoU when each name is given its true pixel count (its top-ranked pixels, conflicts to the higher rank): an
  oracle of calibration only. Far above the arg-max, the maps are right and their scales across names are wrong;
- which place in the prompt wins pixels: the pixels predicted for the names at one position in the prompt over
  their true pixels, summed over images (1.0 = fair; a rising or falling row is a positional bias of the causal
  text tower or of the UNet);
- per class: its arg-max IoU, its predicted over its true pixels, and the share of the image it covers where
  present. A class covering a share s whose map has AUROC a over its pixels has, at the threshold that keeps its
  average pixel, about (1 - a) of the other pixels above it: (1 - a)(1 - s) / s false pixels per true one, which
  is why a small thing's map at AUROC 0.85 spreads over many times its area.
Settings: the model's own (`--settings model`, those chosen on val), or the probe's (`--settings probe`,
`scenes_probe_step8000/`: t = 300, cross-attention at 8x8, self-attention at 16x16, "a {}" joined by " and a ",
no background threshold), which the runs before step 11,000 used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from promptseg import load_backbone
from promptseg.data.scenes_world import CLASS_NAMES, render_sample
from promptseg.eval.metrics import auroc, confusion, scores
from promptseg.methods import build_method

PROBE = {"timestep": 300, "cross_weights": {0.5: 1.0}, "self_weights": {1.0: 1.0}, "template": "a {}",
            "joiner": " and a ", "background_threshold": None}


def area_oracle(maps: np.ndarray, areas: np.ndarray) -> np.ndarray:
    """(H, W) label map giving map k its `areas[k]` best-ranked pixels; a pixel claimed twice goes to the name that
    ranks it higher (percentile within its own map); a pixel claimed by none to the arg-max of the percentiles."""
    k, h, w = maps.shape
    flat = maps.reshape(k, -1)
    ranks = flat.argsort(1).argsort(1) / (flat.shape[1] - 1)  # each map's percentile per pixel
    claims = np.stack([ranks[i] >= 1 - areas[i] / flat.shape[1] for i in range(k)])
    score = np.where(claims, ranks, ranks - 2)  # a claim beats any non-claim
    return score.argmax(0).reshape(h, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="scenes")
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--out", default="scenes_gap")
    parser.add_argument("--settings", choices=("model", "probe"), default="model",
                        help="the model's own baseline settings (chosen on val) or the probe's")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = load_backbone(args.model, device="cpu")
    method = build_method("baseline", backbone, **(PROBE if args.settings == "probe" else {}))
    settings = {k: getattr(method.config, k) for k in PROBE}
    k_all = len(CLASS_NAMES)
    rng = np.random.default_rng(0)
    totals = {m: {"argmax": np.zeros((k_all, k_all + 1), np.int64), "area oracle": np.zeros((k_all, k_all + 1), np.int64)}
              for m in ("one prompt", "a prompt per name")}
    aurocs = {m: {} for m in totals}
    position = {m: {} for m in totals}
    share = {}  # class -> the image shares it covers where present
    for i in range(args.n):
        sample = render_sample("val", i)
        present = [int(c) for c in np.unique(sample.class_map)]
        order = [present[j] for j in rng.permutation(len(present))]
        names = [CLASS_NAMES[c] for c in order]
        prepared = method.prepare(sample.image)
        joint = method.segment(prepared, names).scores
        single = np.stack([method.segment(prepared, [name]).scores[0] for name in names])
        truth = sample.class_map
        areas = np.array([(truth == c).sum() for c in order])
        for c, area in zip(order, areas):
            share.setdefault(CLASS_NAMES[c], []).append(area / truth.size)
        for mode, maps in (("one prompt", joint), ("a prompt per name", single)):
            pred = np.asarray(order)[maps.argmax(0)]
            totals[mode]["argmax"] += confusion(pred, truth, k_all)
            totals[mode]["area oracle"] += confusion(np.asarray(order)[area_oracle(maps, areas)], truth, k_all)
            for j, c in enumerate(order):
                positive = truth == c
                if 0 < positive.sum() < positive.size:
                    aurocs[mode].setdefault(CLASS_NAMES[c], []).append(auroc(maps[j].ravel(), positive.ravel()))
                counts = position[mode].setdefault(j, [0, 0])
                counts[0] += int((pred == c).sum())
                counts[1] += int(positive.sum())
    record = {"model": args.model, "n": args.n, "settings": {k: str(v) for k, v in settings.items()}, "modes": {}}
    lines = [f"# The gap between token AUROC and the arg-max, model `{args.model}`, {args.n} val images, oracle names",
             "", f"Made by `python benchmarks/scenes/scenes_gap.py --n {args.n} --model {args.model} --settings {args.settings}`. "
             f"Settings ({args.settings}): "
             f"`{json.dumps(record['settings'])}`.", "",
             "| prompt | arg-max mIoU | area-oracle mIoU | median class AUROC of the final maps |", "| --- | --- | --- | --- |"]
    for mode in totals:
        med = float(np.median([np.mean(v) for v in aurocs[mode].values()]))
        am, ao = scores(totals[mode]["argmax"]).miou, scores(totals[mode]["area oracle"]).miou
        record["modes"][mode] = {"argmax_miou": am, "area_oracle_miou": ao, "median_auroc": med,
                                 "auroc": {c: float(np.mean(v)) for c, v in aurocs[mode].items()},
                                 "share_by_position": {str(j): v[0] / max(v[1], 1) for j, v in sorted(position[mode].items())}}
        lines.append(f"| {mode} | {100 * am:.1f} | {100 * ao:.1f} | {med:.3f} |")
    lines += ["", "Pixels predicted over true pixels, by place in the prompt (first name = 1):", "",
              "| prompt | " + " | ".join(str(j + 1) for j in range(8)) + " |", "| --- |" + " --- |" * 8]
    for mode in totals:
        row = record["modes"][mode]["share_by_position"]
        lines.append(f"| {mode} | " + " | ".join(f"{row[str(j)]:.2f}" if str(j) in row else "-" for j in range(8)) + " |")
    lines += ["", "Per class: AUROC of the final maps (both prompts); with one prompt, the arg-max IoU, predicted over "
              "true pixels, the mean share of the image the class covers where present, and (1 - a)(1 - s) / s, the "
              "false pixels per true one that AUROC a and share s imply:", "",
              "| class | AUROC, one prompt | AUROC, a prompt per name | IoU | predicted / true | share | (1 - a)(1 - s) / s |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    matrix = totals["one prompt"]["argmax"]
    per_class = scores(matrix)
    for c, name in enumerate(CLASS_NAMES):
        if name in aurocs["one prompt"]:
            a, b = (record["modes"][m]["auroc"].get(name, float("nan")) for m in totals)
            ratio = matrix[:, c].sum() / max(matrix[c].sum(), 1)
            s = float(np.mean(share[name]))
            record["modes"]["one prompt"].setdefault("per_class", {})[name] = {
                "iou": float(per_class.iou[c]), "predicted_over_true": float(ratio), "share": s}
            lines.append(f"| {name} | {a:.3f} | {b:.3f} | {100 * per_class.iou[c]:.1f} | {ratio:.2f} | {s:.3f} | "
                         f"{(1 - a) * (1 - s) / s:.1f} |")
    out = Path(__file__).parent / "results"
    (out / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    (out / f"{args.out}.json").write_text(json.dumps(record, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
