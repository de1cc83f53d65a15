"""Refiners after the semantic methods on the shapes benchmark, vocabulary setting: val sweep and test table.

    python benchmarks/shapes/refine_benchmark.py --split val --n 150     # choose the refiner and its design (refine_val.md/.json)
    python benchmarks/shapes/refine_benchmark.py --split test --n 300    # the table (refine.md/.json)

Every row is `promptseg eval --dataset shapes --model shapes --names all --method M --refine R --refine-set ...`:
all seven class names offered to every image, the model's default class filter (clip), the methods' recommended
settings; dpseg as its own benchmark runs it (no filter). Columns: mIoU, the shape classes' mean IoU (the objects,
where refinement matters), each class's IoU, seconds per image and the share of it the refiner took. The val sweep
compares the two SAM designs the issue names (proposals relabelled by the method's scores; prompts from each class's
own regions) with the image-guided PAMR and with our region naming by denoising evidence; the test table reports
what val chose (recommended by the shapes model in `promptseg_settings.json`) beside the designs it was chosen over.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from promptseg import load_backbone
from promptseg.eval.runner import EvalRun, evaluate
from promptseg.pipeline import settings_json
from promptseg.refiners import refiner_config

HERE = Path(__file__).parent
RESULTS = HERE / "results"
SHAPES = ("circle", "square", "triangle")
SAM = {"sam": "shapes-sam"}
DENOISING = {**SAM, "classify": "denoising"}

VAL_ROWS = {
    "none": ("none", {}),
    "pamr (the paper's dilations 1-24)": ("pamr", {}),
    "pamr, dilations 1-8": ("pamr", {"dilations": [1, 2, 4, 8]}),
    "sam proposals, named by scores": ("sam", {**SAM, "mode": "proposals"}),
    "sam proposals, named by scores, not confined": ("sam", {**SAM, "mode": "proposals", "confine": False}),
    "sam prompts (box), named by scores": ("sam", {**SAM, "prompt": "box"}),
    "sam prompts (box+point), named by scores": ("sam", {**SAM, "prompt": "box+point"}),
    "sam proposals, named by denoising": ("sam", {**DENOISING, "mode": "proposals"}),
    "sam prompts (box), named by denoising": ("sam", {**DENOISING, "prompt": "box"}),
    "sam prompts (point), named by denoising": ("sam", {**DENOISING, "prompt": "point"}),
    "sam prompts (box+point), named by denoising": ("sam", {**DENOISING, "prompt": "box+point"}),
    "sam prompts (box+point), named by denoising, 8 draws": (
        "sam", {**DENOISING, "prompt": "box+point", "evidence_timesteps": [100, 214, 329, 443, 557, 671, 786, 900]}),
    "pamr, then sam proposals named by scores": ("sam", {**SAM, "mode": "proposals", "pamr_first": True}),
    "pamr, then sam proposals named by denoising": ("sam", {**DENOISING, "mode": "proposals", "pamr_first": True}),
    "pamr, then sam prompts (box) named by denoising": ("sam", {**DENOISING, "prompt": "box", "pamr_first": True}),
}
VAL_METHODS = ("baseline", "fastseg")
TEST_METHODS = ("baseline", "fastseg", "invseg", "dpseg")


def test_rows(recommended: str, method: str) -> dict:
    """The test table's rows: none and the val choice (what the model recommends) for every method; for baseline
    and fastseg also the designs it was chosen over."""
    rows = {"none": ("none", {}), f"recommended ({recommended}; chosen on val)": (None, {})}
    if method in VAL_METHODS:
        rows.update({
            "pamr (dilations 1-8, the val choice for pamr)": ("pamr", {"dilations": [1, 2, 4, 8]}),
            "sam proposals, named by scores": VAL_ROWS["sam proposals, named by scores"],
            "sam prompts (box), named by scores": VAL_ROWS["sam prompts (box), named by scores"],
            "sam proposals, named by denoising (no pamr)": VAL_ROWS["sam proposals, named by denoising"],
        })
    return rows


def run_row(backbone, method: str, split: str, n: int, refine, settings: dict, work: Path) -> dict:
    """One eval. A named refiner runs with its defaults changed by `settings` alone, so what the model recommends
    for it never leaks into a row; `refine` None is the model's recommendation as it stands."""
    dpseg = method == "dpseg"
    if refine is not None:
        defaults = settings_json(refiner_config(refine))
        settings = {**defaults, **settings}
    report = evaluate(
        EvalRun(dataset="shapes", split=split, method=method, model="shapes", out=str(work), limit=n, names="all",
                device="cpu", filter="none" if dpseg else None, refine=refine, refine_settings=settings),
        progress=True,
        backbone=backbone,
    )
    iou = report["per_class_iou"]
    return {
        "miou": report["miou"],
        "shape_miou": sum(iou[k] for k in SHAPES) / len(SHAPES),
        "per_class_iou": iou,
        "seconds_per_image": report["seconds_per_image"],
        "refine": report["refine"],
        "refine_settings": report["refine_settings"],
        "filter": report["filter"],
    }


def table(record: dict) -> list[str]:
    classes = None
    lines = []
    for method, rows in record["methods"].items():
        for name, row in rows.items():
            if classes is None:
                classes = list(row["per_class_iou"])
                lines += ["| method | refiner | mIoU | shape mIoU | " + " | ".join(classes) + " | s/image |",
                          "| --- | --- | --- | --- | " + " | ".join("---" for _ in classes) + " | --- |"]
            cells = " | ".join("-" if row["per_class_iou"][c] is None else f"{100 * row['per_class_iou'][c]:.1f}"
                               for c in classes)
            lines.append(f"| {method} | {name} | {100 * row['miou']:.1f} | {100 * row['shape_miou']:.1f} | {cells} | "
                         f"{row['seconds_per_image']:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--methods", default=None)
    parser.add_argument("--work", default=None, help="folder for the resumable runs (default: a temporary one)")
    args = parser.parse_args()
    n = args.n or (150 if args.split == "val" else 300)
    methods = args.methods.split(",") if args.methods else list(VAL_METHODS if args.split == "val" else TEST_METHODS)
    backbone = load_backbone("shapes", device="cpu")
    recommended = backbone.method_defaults.get("refine", "none")
    described = f"{recommended} {json.dumps(backbone.method_defaults.get('refiners', {}).get(recommended, {}), sort_keys=True)}"
    work = Path(args.work or tempfile.mkdtemp(prefix="refine_benchmark_"))
    record = {"split": args.split, "n_images": n, "methods": {}}
    for method in methods:
        record["methods"][method] = {}
        rows = VAL_ROWS if args.split == "val" else test_rows(described, method)
        for name, (refine, settings) in rows.items():
            folder = work / f"{args.split}_{method}_{len(record['methods'][method])}"
            record["methods"][method][name] = run_row(backbone, method, args.split, n, refine, settings, folder)
            print(method, name, {k: v for k, v in record["methods"][method][name].items() if "miou" in k}, flush=True)
    stem = "refine_val" if args.split == "val" else "refine"
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=1))
    head = [
        f"# Refiners on shapes {args.split} ({n} images, vocabulary setting: all 7 names offered, model `shapes`)",
        "",
        f"Made by `python benchmarks/shapes/refine_benchmark.py --split {args.split} --n {n}` (2 CPU cores). Filter: the "
        "model's default (clip) for baseline, fastseg and invseg, none for dpseg (as its own benchmark). s/image is the "
        "whole pipeline (filter, method, refiner). Shape mIoU: mean IoU of circle, square, triangle.",
        "",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(head + table(record)) + "\n")


if __name__ == "__main__":
    main()
