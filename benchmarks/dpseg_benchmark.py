"""DPSeg on the shapes benchmark with every class offered (the open-vocabulary protocol): ablations and val sweep.

    python benchmarks/dpseg_benchmark.py --split val --n 150     # choose the rounds and crop (dpseg_val.md/.json)
    python benchmarks/dpseg_benchmark.py --split test --n 300    # the table (writes dpseg.md/.json)

Every row is `promptseg eval --dataset shapes --method dpseg --model shapes --names all --filter none` (resumable
runs under runs/dpseg/) with the settings shown on top of what the shapes model recommends. The bundled weights
(`shapes-dpseg`) never saw masks of `sky` and `triangle`: each row gives seen, unseen and harmonic-mean IoU. Test
rows: the recommended settings (dual prompts, round I: round II lost on val), round II with the paper's box crop and
with ours, text prompts only, visual prompts only (all with the same dual-trained weights, as inference-time swaps), and weights trained without the multi-scale
visual cost volumes (`--no-visual-cost`, a separate training: runs/shapes-dpseg-novc, when present), and the first
recipe we trained (the five class names only, held-out pixels as negatives: runs/shapes-dpseg-v1, when present).

The two extra weights come from the same script as the bundled ones (seed 0, 3,000 steps):

    promptseg train dpseg --dataset shapes --out runs/shapes-dpseg-novc --no-visual-cost
    promptseg train dpseg --dataset shapes --out runs/shapes-dpseg-v1 --no-extra-classes --held-out-as-negatives

Cost: the visual prompts are drawn once per class (timed on an empty cache: `generation_seconds_per_class`); every
row runs on a warm cache, so its seconds per image are what a user pays per image.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from promptseg import load_backbone
from promptseg.data.shapes import ShapesDataset
from promptseg.eval.runner import EvalRun, evaluate
from promptseg.methods import build_method
from promptseg.methods.base import config_for_model

HERE = Path(__file__).parent
RESULTS = HERE / "results"
ROOT = HERE.parent
NO_VISUAL_COST = ROOT / "runs" / "shapes-dpseg-novc"
FIRST_RECIPE = ROOT / "runs" / "shapes-dpseg-v1"

TEST_ROWS = {
    "dpseg (recommended: dual prompts, round I; chosen on val)": {},
    "round II, the paper's box crop": {"rounds": 2, "crop_fill": "box"},
    "round II, region crop with the rest grey (ours)": {"rounds": 2, "crop_fill": "mask"},
    "text prompts only (T)": {"prompts": "text"},
    "visual prompts only (V)": {"prompts": "visual"},
    "weights trained without the multi-scale visual cost volumes": {"weights": str(NO_VISUAL_COST)},
    "weights trained on the 5 class names only, unseen pixels as negatives (our first recipe)":
        {"weights": str(FIRST_RECIPE)},
}
VAL_ROWS = {
    "round I only": {"rounds": 1},
    "round II, crop = box (the paper's)": {"rounds": 2, "crop_fill": "box"},
    "round II, crop = region, rest grey (ours)": {"rounds": 2, "crop_fill": "mask"},
    "round II, whole frame, rest grey (ours)": {"rounds": 2, "crop_fill": "frame"},
    "round II, region crop at weight 0.5 (ours)": {"rounds": 2, "crop_fill": "mask", "crop_weight": 0.5},
    "round II, whole frame at weight 0.5 (ours)": {"rounds": 2, "crop_fill": "frame", "crop_weight": 0.5},
    "text prompts only (T)": {"prompts": "text"},
    "visual prompts only (V), round II with region crops": {"prompts": "visual", "rounds": 2, "crop_fill": "mask"},
}


def generation_cost(backbone, n_classes: int = 2) -> float:
    """Seconds to draw one class's visual prompts (every template x images) on an empty cache."""
    config = config_for_model("dpseg", "shapes")
    with tempfile.TemporaryDirectory() as tmp:
        method = build_method("dpseg", backbone, config, cache_dir=tmp)
        start = time.perf_counter()
        for name in ("circle", "sky")[:n_classes]:
            method.bank.visual([name])
        return (time.perf_counter() - start) / n_classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    backbone = load_backbone("shapes")
    rows = TEST_ROWS if args.split == "test" else VAL_ROWS
    # warm the visual-prompt cache for every class, so no row's seconds include drawing them
    warm = build_method("dpseg", backbone, config_for_model("dpseg", "shapes"))
    warm(ShapesDataset("val", n=1)[0].image, list(ShapesDataset("val", n=1).class_names))
    results = {}
    for name, settings in rows.items():
        if "weights" in settings and not (Path(settings["weights"]) / "dpseg_config.json").exists():
            print(f"skipping {name!r}: no weights at {settings['weights']}")
            continue
        slug = "_".join(f"{k}-{Path(str(v)).name}" for k, v in settings.items()) or "recommended"
        run = EvalRun(refine="none", dataset="shapes", split=args.split, method="dpseg", model="shapes", limit=args.n, names="all",
                      filter="none", settings={k: json.dumps(v) if not isinstance(v, str) else v
                                               for k, v in settings.items()},
                      out=str(ROOT / "runs" / "dpseg" / args.split / slug))
        report = evaluate(run, progress=False, backbone=backbone)
        results[name] = {key: report[key] for key in ("miou", "miou_seen", "miou_unseen", "hiou", "per_class_iou",
                                                      "seconds_per_image", "settings")}
        print(f"{name}: mIoU {100 * report['miou']:.1f} (seen {100 * report['miou_seen']:.1f}, unseen "
              f"{100 * report['miou_unseen']:.1f}), {report['seconds_per_image']:.3f} s/image", flush=True)
    out = {"split": args.split, "n_images": args.n, "rows": results}
    if args.split == "test":
        out["generation_seconds_per_class"] = generation_cost(backbone)
    stem = "dpseg" if args.split == "test" else "dpseg_val"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"{stem}.md").write_text(markdown(out))
    print((RESULTS / f"{stem}.md").read_text())


def markdown(out: dict) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    classes = list(next(iter(out["rows"].values()))["per_class_iou"]) if out["rows"] else []
    timed = out["split"] == "test"  # val runs shared the cores with trainings: their seconds are in the json only
    lines = [
        f"# DPSeg on shapes {out['split']} ({out['n_images']} images, all 7 classes offered, no filter)",
        "",
        "Weights `shapes-dpseg`: trained on masks of grass, sand, water, circle, square; **sky and triangle unseen**.",
        "Produced by `python benchmarks/dpseg_benchmark.py --split " + out["split"] + f" --n {out['n_images']}`.",
        "",
        "| row | mIoU | seen | unseen | hIoU | " + " | ".join(classes) + (" | s/image |" if timed else " |"),
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in classes) + (" | --- |" if timed else " |"),
    ]
    for name, r in out["rows"].items():
        cells = [pct(r["per_class_iou"][c]) for c in classes]
        lines.append(f"| {name} | {pct(r['miou'])} | {pct(r['miou_seen'])} | {pct(r['miou_unseen'])} | "
                     f"{pct(r['hiou'])} | " + " | ".join(cells) + (f" | {r['seconds_per_image']:.3f} |" if timed else " |"))
    if "generation_seconds_per_class" in out:
        lines += ["", f"Visual prompts are drawn once per class and cached: {out['generation_seconds_per_class']:.1f} s "
                  "per class (3 templates x 4 images, 25 sampler steps, on 2 CPU cores)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
