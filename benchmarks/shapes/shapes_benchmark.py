"""Benchmark every method on the bundled shapes model and test split; record the results in benchmarks/shapes/results/.

    python benchmarks/shapes/shapes_benchmark.py --n 300                 # all methods, 300 test images
    python benchmarks/shapes/shapes_benchmark.py --methods fastseg       # rerun one method, keep the others' rows
    python benchmarks/shapes/shapes_benchmark.py --model shapes-dit --poor-words 0 --all-filters "" \
        --with-refiner baseline,fastseg                                       # the transformer: shapes-dit.{json,md}

What it measures, all in one process on this machine:
- mIoU / mAcc / per-class IoU of each method (`promptseg.eval.runner.evaluate`, accumulated over the dataset) in
  two settings: the *vocabulary* setting, the headline (all seven class names offered to every image, then the
  class filter: the one the model recommends, and for baseline and fastseg also every other filter and none), and
  the *oracle* setting (each image offered the classes present in it);
- the filter's precision and recall against each image's ground-truth classes, and its share of the cost;
- two references computed from the ground truth: "all background" (every pixel the image's true background word)
  and "present classes, random" (each pixel a uniformly random class among those present; oracle knowledge of
  which classes, none of where);
- seconds per image, and the cost in forward equivalents of the model's own denoiser: one bare UNet (or
  transformer) forward (batch 1, no capture) on the same input is timed in the same run and counts 1;
- the capture overhead: one UNet forward under capture of the baseline's layers against the bare forward.

Every row runs without a refiner (`refine="none"`): the refiners' rows are `benchmarks/shapes/refine_benchmark.py`'s.
The methods' settings are the ones the model folder recommends (`promptseg_settings.json`, chosen on the *val*
split by `benchmarks/shapes/settings_sweep.py`, never on the test images); `evaluate` and `build_method` apply them.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from promptseg import __version__, load_backbone
from promptseg.data.shapes import ShapesDataset
from promptseg.diffusion.capture import AttentionStore, capture
from promptseg.eval.metrics import confusion, scores
from promptseg.eval.runner import EvalRun, evaluate
from promptseg.filters import list_filters
from promptseg.methods import build_method
from promptseg.pipeline import Pipeline

HERE = Path(__file__).parent


def references(n: int, seed: int = 0) -> dict:
    """mIoU of the two ground-truth references on the first n test images."""
    data = ShapesDataset(split="test", n=n)
    k = len(data.class_names)
    rng = np.random.default_rng(seed)
    totals = {"all_background": np.zeros((k, k + 1), np.int64), "present_random": np.zeros((k, k + 1), np.int64)}
    for sample in data:
        present = data.present_classes(sample.label)
        background = min(present)  # backgrounds come first in the class list
        totals["all_background"] += confusion(np.full_like(sample.label, background), sample.label, k)
        guess = rng.choice(present, size=sample.label.shape)
        totals["present_random"] += confusion(guess, sample.label, k)
    out = {}
    for name, total in totals.items():
        s = scores(total)
        out[name] = {"miou": s.miou, "per_class_iou": dict(zip(data.class_names, map(float, s.iou)))}
    return out


def unet_timings(backbone, repeats: int = 20, rounds: int = 7) -> dict:
    """Seconds of one bare denoiser forward (batch 1) and of one under the baseline's capture.

    The two are timed in alternating rounds of `repeats` calls and each takes the median round, so a burst of
    load on the shared machine hits both alike instead of skewing their ratio.
    """
    method = build_method("baseline", backbone)
    latents = torch.randn(1, backbone.denoiser.config.in_channels, *backbone.latent_size)
    text = backbone.encode_text("a circle")
    t = torch.tensor([100])

    def bare():
        backbone.predict(latents, t, text)

    def captured():
        with capture(backbone.denoiser, method.layers, AttentionStore(latent_hw=backbone.latent_size)):
            backbone.predict(latents, t, text)

    samples = {"bare_forward": [], "captured_forward": []}
    with torch.no_grad():
        for fn in (bare, captured):
            for _ in range(3):
                fn()
        for _ in range(rounds):
            for name, fn in (("bare_forward", bare), ("captured_forward", captured)):
                start = time.perf_counter()
                for _ in range(repeats):
                    fn()
                samples[name].append((time.perf_counter() - start) / repeats)
    out = {name: float(np.median(values)) for name, values in samples.items()}
    out["capture_overhead"] = out["captured_forward"] / out["bare_forward"]
    return out


def early_stop_saving(backbone, model: str, n: int) -> dict:
    """InvSeg's seconds per image with the optimisation's forward stopped after the last loss layer, and without,
    for the loss on the model's chosen grid and on the coarser 8x8 grid (fraction 0.5)."""
    out = {"n_images": n}
    for loss_grid in ("chosen", "0.5"):
        extra = {} if loss_grid == "chosen" else {"loss_cross_weights": {0.5: 1.0}, "loss_self_weights": {0.5: 1.0}}
        entry = {}
        for early in (True, False):
            work = Path(tempfile.mkdtemp(prefix="shapes_invseg_stop_"))
            report = evaluate(
                EvalRun(refine="none", dataset="shapes", method="invseg", model=model, out=str(work), limit=n, device="cpu",
                        settings={"stop_forward_early": early, **extra}),
                progress=False,
                backbone=backbone,
            )
            entry["early" if early else "full"] = {"seconds_per_image": report["seconds_per_image"], "miou": report["miou"]}
            shutil.rmtree(work)
        entry["saving"] = 1 - entry["early"]["seconds_per_image"] / entry["full"]["seconds_per_image"]
        out[f"loss_grid_{loss_grid}"] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--methods", default="baseline,fastseg,invseg")
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--poor-words", type=float, default=1.0,
                        help="also run baseline and invseg with every class word's embedding pushed by this x its norm "
                             "(0: skip)")
    parser.add_argument("--with-refiner", default="",
                        help="methods also run in the vocabulary setting with the refiner the model recommends")
    parser.add_argument("--all-filters", default="baseline,fastseg",
                        help="methods also run with every other filter (and none) in the vocabulary setting")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone(args.model, device="cpu")
    stem = "shapes" if args.model == "shapes" else args.model  # shapes.{json,md}; shapes-dit.{json,md}
    previous = json.loads((out / f"{stem}.json").read_text()) if (out / f"{stem}.json").exists() else {}
    record = {
        "model": args.model,
        "n_images": args.n,
        "promptseg_version": __version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}, torch threads {torch.get_num_threads()}".strip(),
        "torch": torch.__version__,
        "references": references(args.n),
        "timing": unet_timings(backbone),
        "methods": {},
    }
    if previous.get("model") == args.model and previous.get("n_images") == args.n:
        # a rerun of some methods keeps the other methods' rows (each row keeps its own timing)
        ran = set(args.methods.split(","))
        record["methods"] = {k: v for k, v in previous["methods"].items() if k.split(" ")[0] not in ran}
        for key in ("invseg_early_stop",):
            if key in previous and "invseg" not in ran:
                record[key] = previous[key]
    recommended = Pipeline(args.model, "baseline", backbone=backbone).filter.name
    for name in args.methods.split(","):
        runs = [("all", recommended, "none")]
        if name in args.all_filters.split(","):
            runs += [("all", f, "none") for f in list_filters() if f != recommended]
        runs.append(("oracle", None, "none"))
        if name in args.with_refiner.split(","):
            runs.append(("all", recommended, None))  # None: the refiner the model recommends
        for names, label_filter, refine in runs:
            key = f"{name} ({'vocabulary, filter ' + label_filter if names == 'all' else 'oracle'})"
            if refine is None:
                key = key[:-1] + ", recommended refiner)"
            work = Path(tempfile.mkdtemp(prefix=f"shapes_{name}_"))
            report = evaluate(
                EvalRun(refine=refine, dataset="shapes", method=name, model=args.model, out=str(work), limit=args.n,
                        device="cpu", names=names, filter=label_filter),
                progress=True,
                backbone=backbone,
            )
            report["unet_forward_equivalents"] = report["seconds_per_image"] / record["timing"]["bare_forward"]
            record["methods"][key] = report
            suffix = ("" if names == "oracle" else f"_vocabulary_{label_filter}") + ("_refined" if refine is None else "")
            shutil.copy(work / "report.md", out / f"{stem}_{name}{suffix}.md")
            shutil.rmtree(work)
            (out / f"{stem}.json").write_text(json.dumps(record, indent=1))  # after every row: a stopped run keeps it
    if args.poor_words:  # InvSeg's motivation: class words that fit the image poorly (benchmarks/shapes/invseg_diagnosis.py)
        from invseg_diagnosis import poor_words

        poor_words(backbone, args.poor_words)
        for name in ("baseline", "invseg"):
            work = Path(tempfile.mkdtemp(prefix=f"shapes_{name}_poor_"))
            report = evaluate(EvalRun(refine="none", dataset="shapes", method=name, model=args.model, out=str(work), limit=args.n,
                                      device="cpu"), progress=True, backbone=backbone)
            report["unet_forward_equivalents"] = report["seconds_per_image"] / record["timing"]["bare_forward"]
            record["methods"][f"{name} (oracle, poor words {args.poor_words:g})"] = report
            shutil.rmtree(work)
        del backbone.encode_text
    if "invseg" in args.methods.split(","):
        record["invseg_early_stop"] = early_stop_saving(backbone, args.model, min(args.n, 20))
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1))
    (out / f"{stem}.md").write_text(summary(record))
    print(summary(record))


def summary(record: dict) -> str:
    """A markdown table of all methods and references."""
    classes = list(record["references"]["all_background"]["per_class_iou"])
    shapes = ["circle", "square", "triangle"]
    denoiser = "transformer" if "dit" in record["model"] else "UNet"
    head = ("| method (setting) | mIoU | shape mIoU | " + " | ".join(classes)
            + f" | filter P / R | s/image | {denoiser}-forward equiv. |")
    lines = [
        f"# shapes benchmark ({record['n_images']} test images, model `{record['model']}`, promptseg "
        f"{record['promptseg_version']})",
        "",
        f"Machine: {record['machine']}, torch {record['torch']}. One bare {denoiser} forward: "
        f"{1000 * record['timing']['bare_forward']:.1f} ms; under the baseline's capture: "
        f"{1000 * record['timing']['captured_forward']:.1f} ms (x{record['timing']['capture_overhead']:.2f}).",
        "",
        head,
        "|" + " --- |" * (len(classes) + 6),
    ]
    pct = lambda v: "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"  # noqa: E731
    rows = [(f"reference: {k.replace('_', ' ')}", v, None, None) for k, v in record["references"].items()]
    order = {"baseline": 0, "fastseg": 1, "invseg": 2}
    methods = sorted(record["methods"].items(), key=lambda kv: order.get(kv[0].split(" ")[0], 3))  # stable within
    vocabulary = {k: v for k, v in methods if "vocabulary" in k}
    oracle = {k: v for k, v in methods if "vocabulary" not in k}
    rows += [(k, v, v["seconds_per_image"], v["unet_forward_equivalents"]) for k, v in {**vocabulary, **oracle}.items()]
    for name, rep, secs, equiv in rows:
        ious = rep["per_class_iou"]
        shape_miou = float(np.mean([ious[s] for s in shapes]))
        cells = " | ".join(pct(ious[c]) for c in classes)
        timing = f"{secs:.3f} | {equiv:.1f}" if secs is not None else "- | -"
        filt = f"{pct(rep['filter_precision'])} / {pct(rep['filter_recall'])}" if "filter_precision" in rep else "-"
        lines.append(f"| {name} | {pct(rep['miou'])} | {pct(shape_miou)} | {cells} | {filt} | {timing} |")
    if "invseg_early_stop" in record:
        stop = record["invseg_early_stop"]
        lines += ["", f"InvSeg's optimisation forward stopped after the last loss layer, against the whole UNet "
                  f"({stop['n_images']} images):", ""]
        for key, e in stop.items():
            if key.startswith("loss_grid_"):
                lines.append(
                    f"- loss grid {key.removeprefix('loss_grid_')}: {e['early']['seconds_per_image']:.3f} vs "
                    f"{e['full']['seconds_per_image']:.3f} s/image (saving {100 * e['saving']:+.0f}%; mIoU "
                    f"{100 * e['early']['miou']:.1f} vs {100 * e['full']['miou']:.1f})"
                )
    lines += ["", "Settings (the model's `promptseg_settings.json` applied to each method's defaults):", ""]
    for name, rep in record["methods"].items():
        if name.endswith("(oracle)"):
            lines += [f"- {name.split(' ')[0]}: `{json.dumps(rep['settings'], sort_keys=True)}`"]
    filters = {rep["filter"]: rep["filter_settings"] for rep in record["methods"].values() if rep["filter"] != "none"}
    lines += ["", "Filter settings (vocabulary setting; filter P / R: per-image precision / recall of the kept classes):", ""]
    lines += [f"- {name}: `{json.dumps(settings, sort_keys=True)}`" for name, settings in filters.items()]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
