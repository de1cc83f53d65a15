"""Why InvSeg's prompt inversion does (not) beat the baseline on the shapes model: instruments, on the val split.

    python benchmarks/shapes/invseg_diagnosis.py --n 60

Part A, the optimisation itself, for the paper's settings and a few learning rates / step counts (the shapes
model's recommended read-out settings otherwise): per step, the loss and its two parts, the gradient norm reaching
the learnt embeddings, and their change relative to their starting norm (means over images); per image, mIoU
before (steps = 0, which is exactly the baseline) and after, and the share of images that improved.

Part B, "poor words": the paper's motivation is class words that fit the image poorly. Each class word's text
embedding row is pushed away from where it was (a fixed, seeded direction per word, of `level` times the row's
norm, the same for every image: a word that fits poorly, not per-image noise), for the baseline and for InvSeg,
which then starts from those poor embeddings. Does inversion recover towards the clean words' mIoU?

Oracle class names, val images only (settings are chosen here, never on test). Results:
benchmarks/shapes/results/invseg_diagnosis.md and .json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from promptseg import load_backbone
from promptseg.data.shapes_world import CLASS_NAMES
from promptseg.eval.metrics import scores
from promptseg.eval.runner import EvalRun, _dense, evaluate
from promptseg.methods import build_method

HERE = Path(__file__).parent
CONFIGS = {
    "paper: lr 0.01, 15 steps": {"lr": 0.01, "steps": 15},
    "lr 0.1, 15 steps": {"lr": 0.1, "steps": 15},
    "lr 0.5, 15 steps": {"lr": 0.5, "steps": 15},
    "lr 0.1, 40 steps": {"lr": 0.1, "steps": 40},
}


def per_image_miou(record: dict, k: int) -> float:
    s = scores(_dense(record["confusion"], (k, k + 1)))
    return float(np.nanmean(s.iou))


def run(backbone, method: str, settings: dict, n: int) -> tuple[dict, list[dict]]:
    work = Path(tempfile.mkdtemp(prefix="invseg_diag_"))
    try:
        report = evaluate(EvalRun(refine="none", dataset="shapes", split="val", method=method, model="shapes", out=str(work),
                                  limit=n, device="cpu", settings=settings), progress=False, backbone=backbone)
        records = [json.loads(p.read_text()) for p in sorted((work / "images").glob("*.json"))]
    finally:
        shutil.rmtree(work)
    return report, records


def instruments(backbone, settings: dict, n: int) -> dict:
    """Per-step means of the optimisation log over the first n val images."""
    from PIL import Image

    from promptseg.data.shapes_world import render_sample

    method = build_method("invseg", backbone, **settings)
    logs = []
    for i in range(n):
        sample = render_sample("val", i)
        result = method(Image.fromarray(sample.image), [CLASS_NAMES[c] for c in np.unique(sample.class_map)])
        logs.append(result.extra)
    out = {}
    for key in ("loss", "cluster", "entropy", "grad_norm", "change"):
        steps = min(len(log[key]) for log in logs)
        out[key] = [float(np.mean([log[key][s] for log in logs])) for s in range(steps)]
    return out


def poor_words(backbone, level: float):
    """Make `backbone.encode_text` push every class word's row by `level` x its norm along a fixed direction."""
    original = type(backbone).encode_text
    ids = {backbone.tokenizer.convert_tokens_to_ids(name + "</w>") for name in CLASS_NAMES}

    def encode_text(prompts):
        text = original(backbone, prompts)
        if level == 0:
            return text
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        tokens = backbone.tokenizer(prompts, padding="max_length", max_length=backbone.text_length).input_ids
        text = text.clone()
        for b, row in enumerate(tokens):
            for j, token in enumerate(row):
                if token in ids:
                    g = torch.Generator().manual_seed(int(token))
                    direction = torch.randn(text.shape[-1], generator=g)
                    direction = direction / direction.norm() * text[b, j].norm() * level
                    text[b, j] = text[b, j] + direction.to(text.dtype)
        return text

    backbone.encode_text = encode_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="val images")
    parser.add_argument("--n-instruments", type=int, default=20, help="val images for the per-step instruments")
    parser.add_argument("--levels", default="0,0.5,1.0", help="poor-word levels (fraction of the row norm)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    backbone = load_backbone("shapes", device="cpu")
    k = len(CLASS_NAMES)
    record = {"n_val": args.n, "configs": {}, "poor_words": {}}
    baseline, base_records = run(backbone, "baseline", {}, args.n)
    before = {r["id"]: per_image_miou(r, k) for r in base_records}
    record["baseline_miou"] = baseline["miou"]
    for name, settings in CONFIGS.items():
        start = time.perf_counter()
        report, records = run(backbone, "invseg", settings, args.n)
        after = {r["id"]: per_image_miou(r, k) for r in records}
        delta = np.array([after[i] - before[i] for i in before])
        record["configs"][name] = {
            "settings": settings,
            "miou": report["miou"],
            "per_class_iou": report["per_class_iou"],
            "seconds_per_image": report["seconds_per_image"],
            "per_image_delta_mean": float(delta.mean()),
            "improved": float((delta > 0.005).mean()),
            "worsened": float((delta < -0.005).mean()),
            "steps": instruments(backbone, settings, args.n_instruments),
        }
        print(name, f"mIoU {report['miou']:.4f} vs baseline {baseline['miou']:.4f}",
              f"({time.perf_counter() - start:.0f}s)", flush=True)
    best = max(record["configs"], key=lambda name: record["configs"][name]["miou"])
    record["best_on_val"] = best
    for level in [float(v) for v in args.levels.split(",")]:
        poor_words(backbone, level)
        row = {"baseline": run(backbone, "baseline", {}, args.n)[0]["miou"]}
        for name in dict.fromkeys(["paper: lr 0.01, 15 steps", best]):
            row[f"invseg ({name})"] = run(backbone, "invseg", CONFIGS[name], args.n)[0]["miou"]
        record["poor_words"][str(level)] = row
        del backbone.encode_text  # back to the class's method
        print("poor words", level, row, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "invseg_diagnosis.json").write_text(json.dumps(record, indent=1))
    (out / "invseg_diagnosis.md").write_text(summary(record))
    print(summary(record))


def summary(record: dict) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = [
        f"# InvSeg diagnosis on the shapes model ({record['n_val']} val images, oracle names)",
        "",
        f"Baseline mIoU {pct(record['baseline_miou'])}. Per-image change: mean of (invseg - baseline) per-image mIoU; "
        "improved / worsened: share of images moving by more than 0.5 points.",
        "",
        "| setting | mIoU | per-image change | improved | worsened | s/image | grad norm (step 1 -> last) | "
        "embedding change (last step, / norm) | loss (first -> last) | cluster | entropy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, e in record["configs"].items():
        s = e["steps"]
        lines.append(
            f"| {name} | {pct(e['miou'])} | {100 * e['per_image_delta_mean']:+.2f} | {pct(e['improved'])}% | "
            f"{pct(e['worsened'])}% | {e['seconds_per_image']:.2f} | {s['grad_norm'][0]:.3g} -> {s['grad_norm'][-1]:.3g} | "
            f"{s['change'][-1]:.3f} | {s['loss'][0]:.4f} -> {s['loss'][-1]:.4f} | {s['cluster'][0]:.4f} -> "
            f"{s['cluster'][-1]:.4f} | {s['entropy'][0]:.4f} -> {s['entropy'][-1]:.4f} |"
        )
    lines += ["", f"Best on val: {record['best_on_val']}.", "", "## Poor words", "",
              "Each class word's embedding row pushed by `level` x its norm along a fixed direction (same for every "
              "image). mIoU:", ""]
    names = list(next(iter(record["poor_words"].values())))
    lines += ["| level | " + " | ".join(names) + " |", "|" + " --- |" * (len(names) + 1)]
    for level, row in record["poor_words"].items():
        lines.append(f"| {level} | " + " | ".join(pct(row[n]) for n in names) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
