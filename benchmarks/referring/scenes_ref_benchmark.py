"""Referring segmentation on scenes_ref: Segment Anyword against the baseline, per expression kind, and its val sweep.

    python benchmarks/referring/scenes_ref_benchmark.py --split val --n 120 --write   # choose anyword's settings on val
    python benchmarks/referring/scenes_ref_benchmark.py --split test --n 300          # the table (scenes_ref.md/.json)

Every row is `promptseg eval --task refer --dataset scenes_ref --model scenes` (resumable runs under
runs/scenes_ref/) with the settings shown on top of what the scenes model recommends. No SAM is bundled for scenes
yet (scenes-sam is below its aim, issue 21), so every anyword row here runs without one: its regions are its masks.
The val rows sweep what the scenes model changes against shapes: the attention grids (the scenes baseline's 8x8
cross- and self-attention, chosen on scenes val, against 16x16 self-attention), the read-out timesteps, the
inversion (0 or 10 steps), how the UNet is conditioned (the expression as written or its concept words) and what
ranks the regions (attention alone or with denoising evidence). `--write` puts the best val row's settings (cIoU)
into `zoo/promptseg_models/scenes/promptseg_settings.json` as anyword's; the test split is never looked at for that.
Per kind: cIoU of the expressions of that kind; for "no-target", N-acc (the share answered empty).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from anyword_benchmark import unet_forward_seconds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "shapes"))  # its shapes sibling
from settings_sweep import write_model_settings

from promptseg import load_backbone
from promptseg.data.scenes_ref import KINDS
from promptseg.eval.refer_runner import ReferRun, evaluate_refer
from promptseg.models import model_settings

RESULTS = Path(__file__).parent / "results"

BASE = {"sam": None, "proposals": "attention", "cross_weights": {0.5: 1.0}, "self_weights": {0.5: 1.0},
        "timesteps": (300, 500, 700), "steps": 0, "condition": "expression", "lemmatize": False,
        "evidence": "attention"}
"""What every anyword val row starts from: explicit, so that writing the recommendation does not change what a val
row measured. Grids are fractions of the 16x16 latent (the scenes baseline's choice: 8x8 cross and self)."""


def val(**settings) -> tuple[str, dict]:
    return "anyword", {**BASE, **settings}


VAL_ROWS = {
    "baseline": ("baseline", {}),
    "anyword, 0 steps, expression, attention ranking": val(),
    "anyword, 0 steps, concept words": val(condition="words"),
    "anyword, 0 steps, 16x16 self-attention": val(self_weights={1.0: 1.0}),
    "anyword, 0 steps, cross 16x16 + 8x8": val(cross_weights={1.0: 0.5, 0.5: 0.5}),
    "anyword, 0 steps, read at t = 500": val(timesteps=(500,)),
    "anyword, 0 steps, denoising evidence": val(evidence="denoising", evidence_template="{}"),
    "anyword, 10 steps lr 0.005": val(steps=10, lr=0.005),
    "anyword, 10 steps lr 0.001": val(steps=10, lr=0.001),
}

TEST_ROWS = {
    "baseline (head phrase attention, thresholded)": ("baseline", {}),
    "anyword (recommended settings, no SAM)": ("anyword", {"sam": None, "proposals": "attention"}),
    "anyword with 10 inversion steps (lr 0.005)": ("anyword", {"sam": None, "proposals": "attention", "steps": 10,
                                                               "lr": 0.005}),
    "anyword without linguistic regularisation": ("anyword", {"sam": None, "proposals": "attention",
                                                              "linguistic": False}),
}


def markdown(table: dict, args, forward: float, recommended: dict) -> str:
    def pct(value):
        return "-" if value is None else f"{100 * value:.1f}"

    lines = [f"# Referring segmentation on scenes_ref {args.split} ({args.n} expressions), bundled `scenes` model", "",
             f"Made by `python benchmarks/referring/scenes_ref_benchmark.py --split {args.split} --n {args.n}` (2 CPU cores). "
             "cIoU, gIoU, N-acc as in ReLA's evaluator (x100); kind columns: cIoU of that kind's expressions (count), "
             f"no-target: N-acc. No SAM in any row. One bare UNet forward: {1000 * forward:.1f} ms. Anyword's "
             f"recommended settings (scenes model): `{json.dumps(recommended)}`.", "",
             "| row | cIoU | gIoU | N-acc | " + " | ".join(KINDS) + " | s/expr |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in KINDS) + " | --- |"]
    for label, row in table.items():
        cells = []
        for kind in KINDS:
            r = row["per_kind"].get(kind)
            value = None if r is None else (r["n_acc"] if kind == "no-target" else r["ciou"])
            cells.append("-" if r is None else f"{pct(value)} ({r['n_samples']})")
        lines.append(f"| {label} | {pct(row['ciou'])} | {pct(row['giou'])} | {pct(row['n_acc'])} | "
                     + " | ".join(cells) + f" | {row['seconds_per_expression']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--work", default="runs/scenes_ref")
    parser.add_argument("--write", action="store_true", help="val: write the best anyword row into the model")
    args = parser.parse_args()
    torch.set_num_threads(2)
    backbone = load_backbone("scenes", device="cpu")
    rows = TEST_ROWS if args.split == "test" else VAL_ROWS
    name = "scenes_ref" if args.split == "test" else "scenes_ref_val"
    table = {}
    for label, (method, settings) in rows.items():
        slug = "".join(c if c.isalnum() else "_" for c in label)[:60]
        report = evaluate_refer(ReferRun(dataset="scenes_ref", split=args.split, method=method, model="scenes",
                                         out=str(Path(args.work) / args.split / slug), limit=args.n,
                                         settings=settings, device="cpu"), progress=False, backbone=backbone)
        table[label] = {"method": method, "settings": json.loads(json.dumps(settings, default=list)),
                        **{k: report[k] for k in ("ciou", "giou", "n_acc", "t_acc", "n_samples",
                                                  "seconds_per_expression", "per_kind")}}
        print(label, {k: table[label][k] for k in ("ciou", "giou", "n_acc")}, flush=True)
    if args.split == "val" and args.write:
        best = max((label for label in table if table[label]["method"] == "anyword"), key=lambda k: table[k]["ciou"])
        write_model_settings("scenes", {"anyword": rows[best][1]})
        print("recommended:", best)
    forward = unet_forward_seconds(backbone)
    recommended = model_settings("scenes").get("anyword", {})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"split": args.split, "n": args.n, "unet_forward_seconds": forward,
                                                      "recommended": recommended, "rows": table}, indent=1) + "\n")
    text = markdown(table, args, forward, recommended)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
