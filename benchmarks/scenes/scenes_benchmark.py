"""The semantic methods on the scenes model and test split: the README's first table.

    python benchmarks/scenes/scenes_benchmark.py --n 300        # -> benchmarks/scenes/results/scenes.md and scenes.json

Every row is `promptseg eval --dataset scenes --model scenes --split test --limit N --refine none` with:
- the *vocabulary* setting (the headline): all 22 class names, each with its synonyms (`data/classnames/scenes.txt`),
  offered to every image, then the model's default class filter; baseline and fastseg also with no filter;
- the *oracle* setting: each image offered the classes present in it;
- the *rare* vocabulary (`data/classnames/scenes_rare.txt`): each class named only by the synonym its captions use
  least ("automobile", "yacht", "lamppost", ...), words that fit the images poorly, InvSeg's premise; in the oracle
  setting (so only the words change) and the vocabulary setting.
InvSeg optimises for 15 steps an image, so its rows use the first `--n-invseg` images (100), beside baseline rows on
the same images (its starting point, like for like).
Also: a ground-truth reference ("present classes, random": each pixel a random class among those present), the
per-class IoU of each row with the number of CLIP tokens of each name, the filter's precision/recall, seconds per
image and UNet-forward equivalents (one bare UNet forward, batch 1, timed in the same run, counts 1).

Settings are the model folder's (`promptseg_settings.json`, chosen on val by `benchmarks/shapes/settings_sweep.py` and
`benchmarks/shapes/filter_presence.py --world scenes`); the test images are never used to choose anything. Rows are kept in
the json as they finish, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from promptseg import __version__, load_backbone
from promptseg.data.scenes_world import STUFF, THINGS
from promptseg.data.shapes import ScenesDataset
from promptseg.eval.metrics import confusion, scores
from promptseg.eval.runner import EvalRun, evaluate
from promptseg.pipeline import Pipeline

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def rows(recommended: str, n: int, n_invseg: int) -> list[tuple[str, str, dict, int]]:
    """(row name, method, EvalRun fields, images) in table order. InvSeg (15 optimisation steps an image) runs on
    the first `n_invseg` images, beside baseline rows on the same images."""
    vocabulary = {"names": "all", "filter": recommended}
    rare = {"class_names_file": "scenes_rare"}
    settings = [("vocabulary, filter " + recommended, vocabulary), ("vocabulary, no filter", {"names": "all",
                                                                                            "filter": "none"}),
                ("oracle", {"names": "oracle"}), ("rare words, oracle", {"names": "oracle", **rare}),
                ("rare words, vocabulary, filter " + recommended, {**vocabulary, **rare})]
    out = [(f"{m} ({label})", m, fields, n) for m in ("baseline", "fastseg") for label, fields in settings]
    for m in ("baseline", "invseg"):
        out += [(f"{m} ({label}; first {n_invseg})", m, fields, n_invseg) for label, fields in settings
                if label != "vocabulary, no filter"]
    return out


def present_random(n: int, seed: int = 0) -> dict:
    """mIoU of guessing, at each pixel, a uniformly random class among those present in the image."""
    data = ScenesDataset(split="test", n=n)
    k = len(data.class_names)
    rng = np.random.default_rng(seed)
    total = np.zeros((k, k + 1), np.int64)
    for sample in data:
        total += confusion(rng.choice(data.present_classes(sample.label), size=sample.label.shape), sample.label, k)
    s = scores(total)
    return {"miou": s.miou, "per_class_iou": dict(zip(class_names(), map(float, s.iou)))}


def class_names() -> list[str]:
    """Each class's name (the first of its synonyms)."""
    return [line.split(",")[0].strip() for line in ScenesDataset(split="test", n=1).class_names]


def token_counts(backbone) -> dict[str, int]:
    """CLIP tokens of each class name under the model's tokenizer."""
    return {name: len(backbone.tokenizer(name).input_ids) - 2 for name in class_names()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--n-invseg", type=int, default=100, help="images of the InvSeg rows (and their baselines)")
    parser.add_argument("--model", default="scenes")
    parser.add_argument("--only", default=None, help="comma-separated methods to run (others keep their rows)")
    parser.add_argument("--fresh", action="store_true", help="forget the rows already recorded")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shapes"))  # its shapes sibling
    from shapes_benchmark import unet_timings

    backbone = load_backbone(args.model, device="cpu")
    out = RESULTS / "scenes.json"
    record = json.loads(out.read_text()) if out.exists() and not args.fresh else {}
    if (record.get("n_images"), record.get("n_invseg"), record.get("model")) != (args.n, args.n_invseg, args.model):
        record = {}
    record.update(model=args.model, n_images=args.n, n_invseg=args.n_invseg, promptseg_version=__version__, torch=torch.__version__,
                  machine=f"{platform.machine()}, torch threads {torch.get_num_threads()}")
    record.setdefault("reference", present_random(args.n))
    record.setdefault("tokens", token_counts(backbone))
    record.setdefault("timing", unet_timings(backbone))
    record.setdefault("rows", {})
    recommended = Pipeline(args.model, "baseline", backbone=backbone).filter.name
    for name, method, fields, limit in rows(recommended, args.n, args.n_invseg):
        if name in record["rows"] or (args.only and method not in args.only.split(",")):
            continue
        work = Path(tempfile.mkdtemp(prefix="scenes_bench_"))
        report = evaluate(EvalRun(dataset="scenes", split="test", method=method, model=args.model, out=str(work),
                                  limit=limit, device="cpu", refine="none", **fields), progress=True, backbone=backbone)
        shutil.rmtree(work)
        report["unet_forward_equivalents"] = report["seconds_per_image"] / record["timing"]["bare_forward"]
        record["rows"][name] = {k: report[k] for k in ("n_images", "miou", "per_class_iou", "seconds_per_image", "settings",
                                                        "unet_forward_equivalents", "filter", "filter_settings")
                                if k in report}
        for k in ("filter_precision", "filter_recall"):
            if k in report:
                record["rows"][name][k] = report[k]
        print(f"{name}: mIoU {100 * report['miou']:.1f}", flush=True)
        out.write_text(json.dumps(record, indent=1))
        (RESULTS / "scenes.md").write_text(summary(record))
    out.write_text(json.dumps(record, indent=1))
    (RESULTS / "scenes.md").write_text(summary(record))
    print(summary(record))


def _mean(ious: dict, classes) -> float:
    values = [ious[c] for c in classes if c in ious and not np.isnan(ious[c])]
    return float(np.mean(values)) if values else float("nan")


def summary(record: dict) -> str:
    pct = lambda v: "-" if v is None or np.isnan(v) else f"{100 * v:.1f}"  # noqa: E731
    classes = list(record["reference"]["per_class_iou"])
    stuff, things = classes[: len(STUFF)], classes[len(STUFF): len(STUFF) + len(THINGS)]
    multi = [c for c in classes if record["tokens"][c] > 1]
    timing = record["timing"]
    multi_named = ", ".join(f"{c} ({record['tokens'][c]})" for c in multi)
    lines = [
        f"# scenes benchmark ({record['n_images']} test images, model `{record['model']}`, promptseg "
        f"{record['promptseg_version']})", "",
        f"Made by `python benchmarks/scenes/scenes_benchmark.py --n {record['n_images']}`. Machine: {record['machine']}, torch "
        f"{record['torch']}. One bare UNet forward: {1000 * timing['bare_forward']:.1f} ms. No refiner. Multi-token "
        f"names (CLIP's BPE, tokens): {multi_named}.", "",
        "| method (setting) | images | mIoU | stuff mIoU | thing mIoU | multi-token mIoU | filter P / R | s/image | "
        "UNet-forward equiv. |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    entries = [("reference: present classes, random", record["reference"])] + list(record["rows"].items())
    for name, row in entries:
        ious = row["per_class_iou"]
        filt = (f"{pct(row['filter_precision'])} / {pct(row['filter_recall'])}" if "filter_precision" in row else "-")
        cost = (f"{row['seconds_per_image']:.3f} | {row['unet_forward_equivalents']:.1f}"
                if "seconds_per_image" in row else "- | -")
        lines.append(f"| {name} | {row.get('n_images', record['n_images'])} | {pct(row['miou'])} | {pct(_mean(ious, stuff))} | {pct(_mean(ious, things))} | "
                     f"{pct(_mean(ious, multi))} | {filt} | {cost} |")
    shown = [n for n in record["rows"] if "no filter" not in n and "first" not in n]
    lines += ["", "Per-class IoU (rare-words rows score the same classes under their rare names):", "",
              "| class | tokens | " + " | ".join(shown) + " |", "| --- | --- |" + " --- |" * len(shown)]
    for i, c in enumerate(classes):
        cells = []
        for n in shown:
            values = list(record["rows"][n]["per_class_iou"].values())
            cells.append(pct(values[i]))
        lines.append(f"| {c} | {record['tokens'][c]} | " + " | ".join(cells) + " |")
    lines += ["", "Settings (the model's `promptseg_settings.json` on each method's defaults):", ""]
    for n, row in record["rows"].items():
        if n.endswith(" (oracle)") or n == "invseg (oracle; first " + str(record.get("n_invseg")) + ")":
            lines.append(f"- {n.split(' ')[0]}: `{json.dumps(row['settings'], sort_keys=True)}`")
    filters = {row["filter"]: row.get("filter_settings") for row in record["rows"].values() if row.get("filter") not in
               (None, "none")}
    lines += [f"- filter {name}: `{json.dumps(s, sort_keys=True)}`" for name, s in filters.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
