"""DPSeg on a rendered world with every class offered (the open-vocabulary protocol): ablations and val sweep.

    python benchmarks/dpseg/dpseg_benchmark.py --split val --n 150     # choose the rounds and crop (dpseg_val.md/.json)
    python benchmarks/dpseg/dpseg_benchmark.py --split test --n 300    # the table (writes dpseg.md/.json)
    python benchmarks/dpseg/dpseg_benchmark.py --dataset scenes --split val --n 150    # dpseg_scenes_val.md/.json
    python benchmarks/dpseg/dpseg_benchmark.py --dataset scenes --split test --n 300   # dpseg_scenes.md/.json

Every row is `promptseg eval --dataset WORLD --method dpseg --model WORLD --names all --filter none` (resumable
runs under runs/dpseg/ and runs/dpseg_scenes/) with the settings shown on top of what the world's model recommends.
The bundled weights (`shapes-dpseg`, `scenes-dpseg`) never saw masks of their held-out classes (shapes: sky and
triangle; scenes: sailboat, kite, snowman and sand): each row gives seen, unseen and harmonic-mean IoU. Test rows:
the recommended settings (chosen on val), round II with the paper's box crop and with ours, text prompts only,
visual prompts only (all with the same dual-trained weights, as inference-time swaps), and weights trained without
the multi-scale visual cost volumes (`--no-visual-cost`, a separate training: runs/WORLD-dpseg-novc, when present),
and the first recipe we trained on shapes (the five class names only, held-out pixels as negatives:
runs/shapes-dpseg-v1, when present; on scenes, held-out pixels as negatives: runs/scenes-dpseg-v1), and the bundled
weights fine-tuned with our Dice term (`--dice 1`, stopped at 500 of 1,000 steps: runs/WORLD-dpseg-dice500) and
with Dice and zoom crops (`--dice 1 --zoom 2`, 1,000 steps: runs/WORLD-dpseg-zoom), when present.

The extra weights come from the same script as the bundled ones (seed 0, 3,000 steps):

    promptseg train dpseg --dataset shapes --out runs/shapes-dpseg-novc --no-visual-cost
    promptseg train dpseg --dataset shapes --out runs/shapes-dpseg-v1 --no-extra-classes --held-out-as-negatives
    promptseg train dpseg --dataset scenes --out runs/scenes-dpseg-novc --no-visual-cost
    promptseg train dpseg --dataset scenes --out runs/scenes-dpseg-v1 --held-out-as-negatives
    promptseg train dpseg --dataset scenes --init scenes-dpseg --dice 1 --steps 1000 --out runs/scenes-dpseg-dice500 \
        --stop-after 500    # then copy the work folder's state/model.safetensors beside the config
    promptseg train dpseg --dataset scenes --init scenes-dpseg --dice 1 --zoom 2 --steps 1000 --out runs/scenes-dpseg-zoom

Cost: the visual prompts are drawn once per class (timed on an empty cache: `generation_seconds_per_class`); every
row runs on a warm cache, so its seconds per image are what a user pays per image.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shapes"))  # its shapes sibling
from settings_sweep import write_model_settings

from promptseg import load_backbone
from promptseg.data.shapes import ScenesDataset, ShapesDataset
from promptseg.eval.runner import EvalRun, evaluate
from promptseg.methods import build_method
from promptseg.models.dpseg.network import read_net_config
from promptseg.pipeline import Pipeline

HERE = Path(__file__).parent
RESULTS = HERE / "results"
ROOT = HERE.parents[1]
DATASETS = {"shapes": ShapesDataset, "scenes": ScenesDataset}
GENERATION_NAMES = {"shapes": ("circle", "sky"), "scenes": ("tree", "sky")}  # classes timed drawing visual prompts


def recommended_in_words(config) -> str:
    """"dual prompts, round I" (and ", calibration C" where set): a model's DPSeg settings as the test table names them."""
    words = f"{config.prompts} prompts, round {'I' * config.rounds}"
    words += f", tiles {config.tiles}" if config.tiles > 1 else ""
    return words + (f", calibration {config.calibration:g}" if config.calibration else "")


def rows_for_test(world: str) -> dict:
    """The test table's rows on `world` (its model's recommended settings first)."""
    first_recipe = ("weights trained on the 5 class names only, unseen pixels as negatives (our first recipe)"
                    if world == "shapes" else "weights trained with unseen pixels as negatives (our first recipe)")
    recommended = Pipeline(world, "dpseg").method.config
    return {
        f"dpseg (recommended: {recommended_in_words(recommended)}; chosen on val)": {},
        **({"the same without calibration (the paper's read-out)": {"calibration": 0.0}}
           if recommended.calibration else {}),
        **({"the same without tiles (the whole image only, the paper's)": {"tiles": 1}} if recommended.tiles > 1 else {}),
        "round II, the paper's box crop": {"rounds": 2, "crop_fill": "box"},
        "round II, region crop with the rest grey (ours)": {"rounds": 2, "crop_fill": "mask"},
        "text prompts only (T)": {"prompts": "text"},
        "visual prompts only (V)": {"prompts": "visual"},
        "weights trained without the multi-scale visual cost volumes": {"weights": str(ROOT / "runs" / f"{world}-dpseg-novc")},
        first_recipe: {"weights": str(ROOT / "runs" / f"{world}-dpseg-v1")},
        "weights fine-tuned with a Dice term beside the BCE (ours; 500 steps)": {
            "weights": str(ROOT / "runs" / f"{world}-dpseg-dice500")},
        "weights fine-tuned with a Dice term and 1-2x zoom crops (ours; 1,000 steps)": {
            "weights": str(ROOT / "runs" / f"{world}-dpseg-zoom")},
    }

VAL_ROWS = {
    "round I only": {"rounds": 1},
    "round I, calibration 1 (ours)": {"rounds": 1, "calibration": 1.0},
    "round I, calibration 2 (ours)": {"rounds": 1, "calibration": 2.0},
    "round I, calibration 4 (ours)": {"rounds": 1, "calibration": 4.0},
    "round I, calibration 6 (ours)": {"rounds": 1, "calibration": 6.0},
    "round I, calibration 8 (ours)": {"rounds": 1, "calibration": 8.0},
    "round I, tiles 2 (ours)": {"rounds": 1, "tiles": 2},
    "round I, tiles 2, calibration 2 (ours)": {"rounds": 1, "tiles": 2, "calibration": 2.0},
    "round I, tiles 2, calibration 4 (ours)": {"rounds": 1, "tiles": 2, "calibration": 4.0},
    "round I, tiles 2, calibration 6 (ours)": {"rounds": 1, "tiles": 2, "calibration": 6.0},
    "round II, crop = box (the paper's)": {"rounds": 2, "crop_fill": "box"},
    "round II, crop = region, rest grey (ours)": {"rounds": 2, "crop_fill": "mask"},
    "round II, whole frame, rest grey (ours)": {"rounds": 2, "crop_fill": "frame"},
    "round II, region crop at weight 0.5 (ours)": {"rounds": 2, "crop_fill": "mask", "crop_weight": 0.5},
    "round II, whole frame at weight 0.5 (ours)": {"rounds": 2, "crop_fill": "frame", "crop_weight": 0.5},
    "text prompts only (T)": {"prompts": "text"},
    "visual prompts only (V), round II with region crops": {"prompts": "visual", "rounds": 2, "crop_fill": "mask"},
}


def choose(results: dict) -> str:
    """The val row a model recommends: the best harmonic mean of seen and unseen mIoU (the zero-shot protocol's
    measure, SPNet's and ZS3Net's: a setting that buys seen classes with unseen ones loses) among the inference
    settings that use both prompts (text- or visual-only rows are ablations, not candidates)."""
    candidates = {name: r for name, r in results.items() if r["settings"].get("prompts", "dual") == "dual"}
    return max(candidates, key=lambda name: candidates[name]["hiou"])


def generation_cost(backbone, world: str) -> float:
    """Seconds to draw one class's visual prompts (every template x images) on an empty cache."""
    names = GENERATION_NAMES[world]
    with tempfile.TemporaryDirectory() as tmp:
        method = build_method("dpseg", backbone, Pipeline(world, "dpseg").method.config, cache_dir=tmp)
        start = time.perf_counter()
        for name in names:
            method.bank.visual([name])
        return (time.perf_counter() - start) / len(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="shapes",
                        help="the world; its bundled model and the DPSeg weights it recommends")
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    world = args.dataset
    tag = "dpseg" if world == "shapes" else f"dpseg_{world}"  # runs/TAG/ and results/TAG(_val).md
    weights = Pipeline(world, "dpseg").method.config.weights
    if args.split == "val":  # val rows sit on the method's defaults and the weights alone, not on a past choice
        write_model_settings(world, {"dpseg": {"weights": weights}})
    backbone = load_backbone(world)
    rows = rows_for_test(world) if args.split == "test" else VAL_ROWS
    # warm the visual-prompt cache for every class, so no row's seconds include drawing them
    warm = build_method("dpseg", backbone, Pipeline(world, "dpseg").method.config)
    one = DATASETS[world]("val", n=1)
    warm(one[0].image, list(one.class_names))
    results = {}
    for name, settings in rows.items():
        if "weights" in settings and not (Path(settings["weights"]) / "dpseg_config.json").exists():
            print(f"skipping {name!r}: no weights at {settings['weights']}")
            continue
        slug = "_".join(f"{k}-{Path(str(v)).name}" for k, v in settings.items()) or "recommended"
        run = EvalRun(refine="none", dataset=world, split=args.split, method="dpseg", model=world, limit=args.n,
                      names="all", filter="none", settings={k: json.dumps(v) if not isinstance(v, str) else v
                                                            for k, v in settings.items()},
                      out=str(ROOT / "runs" / tag / args.split / slug))
        report = evaluate(run, progress=False, backbone=backbone)
        results[name] = {key: report[key] for key in ("miou", "miou_seen", "miou_unseen", "hiou", "per_class_iou",
                                                      "per_class_acc", "seconds_per_image", "settings")}
        print(f"{name}: mIoU {100 * report['miou']:.1f} (seen {100 * report['miou_seen']:.1f}, unseen "
              f"{100 * report['miou_unseen']:.1f}), {report['seconds_per_image']:.3f} s/image", flush=True)
    net = read_net_config(weights)
    out = {"dataset": world, "split": args.split, "n_images": args.n, "weights": weights,
           "trained_classes": net.trained_classes, "held_out": net.held_out, "rows": results}
    if args.split == "test":
        out["generation_seconds_per_class"] = generation_cost(backbone, world)
    else:
        out["chosen"] = choose(results)
        write_model_settings(world, {"dpseg": {"weights": weights, **VAL_ROWS[out["chosen"]]}})
    stem = tag + ("" if args.split == "test" else "_val")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"{stem}.md").write_text(markdown(out))
    print((RESULTS / f"{stem}.md").read_text())


def pixel_ratio(iou: float | None, recall: float | None) -> str:
    """A class's predicted over true pixels, from its IoU (TP / (T + P - TP)) and recall (TP / T): "0" when it was
    never predicted where present, "-" when absent or when no predicted pixel was right (the ratio is then unknown)."""
    if iou is None or recall is None:
        return "-"
    if iou == 0:
        return "0" if recall == 0 else "-"
    return f"{recall / iou - 1 + recall:.2f}"


def markdown(out: dict) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    classes = list(next(iter(out["rows"].values()))["per_class_iou"]) if out["rows"] else []
    timed = out["split"] == "test"  # val runs shared the cores with trainings: their seconds are in the json only
    world = out["dataset"]
    flag = "" if world == "shapes" else f"--dataset {world} "
    lines = [
        f"# DPSeg on {world} {out['split']} ({out['n_images']} images, all {len(classes)} classes offered, no filter)",
        "",
        f"Weights `{out['weights']}`: trained on masks of {', '.join(out['trained_classes'])}; "
        f"**{' and '.join(out['held_out'])} unseen**.",
        f"Produced by `python benchmarks/dpseg/dpseg_benchmark.py {flag}--split {out['split']} --n {out['n_images']}`.",
        "",
        "| row | mIoU | seen | unseen | hIoU | " + " | ".join(classes) + (" | s/image |" if timed else " |"),
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in classes) + (" | --- |" if timed else " |"),
    ]
    for name, r in out["rows"].items():
        cells = [pct(r["per_class_iou"][c]) for c in classes]
        lines.append(f"| {name} | {pct(r['miou'])} | {pct(r['miou_seen'])} | {pct(r['miou_unseen'])} | "
                     f"{pct(r['hiou'])} | " + " | ".join(cells) + (f" | {r['seconds_per_image']:.3f} |" if timed else " |"))
    if all("per_class_acc" in r for r in out["rows"].values()):
        lines += ["", "Predicted over true pixels per class (from IoU i and recall r: r / i - 1 + r; 1 = as many pixels as "
                  "the class has, 0 = never predicted; - where absent from every image or never hit):", "",
                  "| row | " + " | ".join(classes) + " |", "| --- | " + " | ".join("---" for _ in classes) + " |"]
        for name, r in out["rows"].items():
            lines.append(f"| {name} | " + " | ".join(pixel_ratio(r["per_class_iou"][c], r["per_class_acc"][c])
                                                     for c in classes) + " |")
    if "chosen" in out:
        lines += ["", f"Chosen (the best hIoU among the dual-prompt rows; written to the `{world}` model's "
                  f"promptseg_settings.json): **{out['chosen']}**."]
    if "generation_seconds_per_class" in out:
        lines += ["", f"Visual prompts are drawn once per class and cached: {out['generation_seconds_per_class']:.1f} s "
                  "per class (3 templates x 4 images, 25 sampler steps, on 2 CPU cores)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
