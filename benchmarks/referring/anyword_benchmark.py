"""Referring segmentation on shapes_ref: Segment Anyword against the baseline, its ablations, and the val sweep.

    python benchmarks/referring/anyword_benchmark.py --split val --n 150    # choose settings (writes anyword_val.md/.json)
    python benchmarks/referring/anyword_benchmark.py --split test --n 300   # the table (writes anyword.md/.json)
    python benchmarks/referring/anyword_benchmark.py --model shapes-dit --split val --n 150    # the transformer: its two
    python benchmarks/referring/anyword_benchmark.py --model shapes-dit --split test --n 300   # rows (anyword_shapes-dit.*)

Every row is `promptseg eval --task refer --dataset shapes_ref --model shapes` (resumable runs under runs/anyword/)
with the settings shown on top of what the shapes model recommends for the method. Test rows: the baseline (head
noun phrase's attention, thresholded), anyword as recommended, and one ablation per part: without inversion (0
steps), without the linguistic regularisation (every content word's map averaged, every region kept), without SAM
(regions are the masks), with the paper's attention-only ranking (no denoising evidence). Per expression kind:
mean IoU of one-target "shape" ("the circle"), "colour shape", "relation" ("... left of the ..."), "plural"
("the circles", "the red shapes") and the share of "no target" expressions answered empty. Cost: seconds per
expression, and one bare UNet forward at the same batch on this machine (2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from promptseg import load_backbone
from promptseg.data.shapes_ref import ShapesRefDataset
from promptseg.eval.refer_runner import ReferRun, evaluate_refer
from promptseg.models import model_settings

HERE = Path(__file__).parent
RESULTS = HERE / "results"

OLD_EVIDENCE = (100, 200, 300, 400, 500, 600, 700, 800)
HIGH_EVIDENCE = tuple(int(t) for t in np.linspace(400, 950, 32).astype(int))
"""The denoising evidence's draws: 8 timesteps over 100-800 (first sweep), 32 over 400-950 (second sweep)."""

TEST_ROWS = {
    "baseline (head phrase attention, thresholded)": ("baseline", {}),
    "anyword (recommended settings)": ("anyword", {}),
    "anyword without inversion (0 steps)": ("anyword", {"steps": 0}),
    "anyword without linguistic regularisation": ("anyword", {"linguistic": False}),
    "anyword without SAM (regions as masks)": ("anyword", {"sam": None, "proposals": "attention"}),
    "anyword without SAM proposals (attention regions, SAM boxes)": ("anyword", {"proposals": "attention"}),
    "anyword, attention-only ranking (no denoising evidence)": ("anyword", {"evidence": "attention"}),
    "anyword, the paper's pipeline (expression as written, attention regions and ranking, SAM boxes)": (
        "anyword", {"condition": "expression", "lemmatize": False, "proposals": "attention", "evidence": "attention"}),
    "anyword, first sweep's recommendation (attention regions, x8 evidence)": ("anyword", {
        "proposals": "attention", "evidence_template": "{}", "evidence_timesteps": OLD_EVIDENCE}),
}

VAL_BASE = {"steps": 0, "lr": 0.005, "evidence": "denoising", "evidence_threshold": None, "sam": None,
            "condition": "words", "lemmatize": True, "proposals": "attention", "evidence_template": "{}",
            "evidence_timesteps": OLD_EVIDENCE}
"""What every val row of the first sweep starts from (on top of the shapes model's recommendation for the rest):
explicit, so that a later change of the recommendation does not change what a val row measured."""

PROPOSE = {"sam": "shapes-sam", "proposals": "sam", "evidence_template": "a {}", "evidence_timesteps": HIGH_EVIDENCE,
           "evidence_threshold": -0.1}
"""The second sweep: SAM's object proposals ranked by the phrase's denoising evidence ("a red circle", as the training
captions write it; 32 draws at high noise, where per-object pick accuracy with true object masks was highest on val
images), see `anyword_evidence.md`."""


DIT_VAL_ROWS = {
    "anyword, the model's settings (attention regions)": ("anyword", {}),
    "anyword, the UNet's recommended pipeline (SAM proposals, evidence x32 t400-950 'a {}')": ("anyword", {
        **{k: v for k, v in PROPOSE.items()}, "steps": 10, "lr": 0.001, "evidence": "denoising"}),
}
"""On a transformer (`--model shapes-dit`, val): the model's own anyword settings against the pipeline chosen for
the UNet on the same world (`PROPOSE` with its inversion), without a sweep of their own."""
DIT_TEST_ROWS = {"baseline (head phrase attention, thresholded)": ("baseline", {}),
                 "anyword (recommended settings)": ("anyword", {})}


def val(**settings) -> tuple[str, dict]:
    return "anyword", {**VAL_BASE, **settings}


VAL_ROWS = {  # without SAM unless named (the maps and the selection are chosen here; SAM only turns regions into masks)
    "baseline": ("baseline", {}),
    "attention, expression as written, 0 steps": val(evidence="attention", condition="expression", lemmatize=False),
    "attention, concept words + lemmas, 0 steps": val(evidence="attention"),
    "denoising, concept words + lemmas, 0 steps, no reference": val(evidence_reference=None),
    "denoising, concept words + lemmas, 0 steps": val(),
    "denoising, 10 steps lr 0.005": val(steps=10),
    "denoising, 10 steps lr 0.001": val(steps=10, lr=0.001),
    "denoising, 0 steps, presence 0.5": val(presence_threshold=0.5),
    "denoising, 0 steps, evidence threshold -0.2": val(evidence_threshold=-0.2),
    "denoising, 0 steps, evidence threshold -0.1": val(evidence_threshold=-0.1),
    "denoising, 0 steps, evidence threshold 0": val(evidence_threshold=0.0),
    "denoising, 0 steps, region threshold 0.4": val(region_threshold=0.4),
    "chosen: 10 steps lr 0.001, evidence threshold -0.1": val(steps=10, lr=0.001, evidence_threshold=-0.1),
    "chosen, with shapes-sam boxes": val(steps=10, lr=0.001, evidence_threshold=-0.1, sam="shapes-sam"),
    "chosen, with shapes-sam box + point": val(steps=10, lr=0.001, evidence_threshold=-0.1, sam="shapes-sam",
                                               sam_prompt="box+point"),
    "chosen, with shapes-sam boxes, expression as written": val(steps=10, lr=0.001, evidence_threshold=-0.1,
                                                                sam="shapes-sam", condition="expression",
                                                                lemmatize=False),
    # second sweep
    "SAM proposals, evidence x32 t400-950 'a {}', threshold -0.1, 0 steps": val(**PROPOSE),
    "SAM proposals, same, threshold 0": val(**{**PROPOSE, "evidence_threshold": 0.0}),
    "SAM proposals, same, threshold -0.2": val(**{**PROPOSE, "evidence_threshold": -0.2}),
    "SAM proposals, same, 10 steps lr 0.001": val(**PROPOSE, steps=10, lr=0.001),
    "SAM proposals, same, expression as written": val(**PROPOSE, condition="expression", lemmatize=False),
    "SAM proposals, first sweep's evidence (x8 t100-800 '{}')": val(**{**PROPOSE, "evidence_template": "{}",
                                                                        "evidence_timesteps": OLD_EVIDENCE}),
    "attention regions + SAM boxes (no proposals), second sweep's evidence": val(**{**PROPOSE,
                                                                                   "proposals": "attention"}),
    # third sweep (issue 22, the cost at SD's size): one noise draw an inversion step instead of two
    "denoising, 10 steps lr 0.005, 1 draw a step": val(steps=10, batch=1),
    "chosen, 1 draw a step": val(steps=10, lr=0.001, evidence_threshold=-0.1, batch=1),
    "SAM proposals, same, 10 steps lr 0.001, 1 draw a step": val(**PROPOSE, steps=10, lr=0.001, batch=1),
}


def kind_of(expression: str, empty: bool) -> str:
    if empty:
        return "no target"
    if " of " in expression:
        return "relation"
    last = expression.split()[-1]
    if last.endswith("s") and last != "grass":
        return "plural"
    return "colour shape" if len(expression.split()) == 3 else "shape"


def breakdown(out: Path, dataset: ShapesRefDataset, n: int) -> dict:
    """Mean IoU per expression kind (for "no target": the share answered empty)."""
    kinds: dict[str, list[float]] = {}
    for k in range(n):
        sample = dataset[k]
        record = json.loads((out / "samples" / f"{sample.id}.json").read_text())
        kinds.setdefault(kind_of(sample.expression, not sample.mask.any()), []).append(record["iou"])
    return {kind: {"mean_iou": float(np.mean(v)), "n": len(v)} for kind, v in sorted(kinds.items())}


def unet_forward_seconds(backbone, rounds: int = 20) -> float:
    """Median seconds of one bare denoiser forward (batch 1) of the model."""
    h, w = backbone.latent_size
    latents = torch.randn(1, backbone.denoiser.config.in_channels, h, w)
    text = backbone.encode_text("a red circle")
    t = torch.tensor([300])
    times = []
    with torch.no_grad():
        for _ in range(rounds + 3):
            start = time.perf_counter()
            backbone.predict(latents, t, text)
            times.append(time.perf_counter() - start)
    return float(np.median(times[3:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--work", default="runs/anyword")
    parser.add_argument("--only", default=None, help="run only the rows whose name contains this")
    parser.add_argument("--timing", type=int, default=0,
                        help="instead: time each test row alone on the first N expressions (median s/expression)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    backbone = load_backbone(args.model, device="cpu")
    if args.timing:
        return timing(backbone, args.timing)
    dataset = ShapesRefDataset(args.split, args.n)
    if args.model == "shapes":
        rows = TEST_ROWS if args.split == "test" else VAL_ROWS
    else:
        rows = DIT_TEST_ROWS if args.split == "test" else DIT_VAL_ROWS
    name = ("anyword" if args.split == "test" else "anyword_val") + ("" if args.model == "shapes" else f"_{args.model}")
    json_path = RESULTS / f"{name}.json"
    table = json.loads(json_path.read_text())["rows"] if json_path.exists() else {}
    table = {label: row for label, row in table.items() if label in rows}  # rows since renamed or dropped go
    for label, (method, settings) in rows.items():
        if args.only and args.only not in label:
            continue
        slug = "".join(c if c.isalnum() else "_" for c in label)[:60]
        out = Path(args.work) / ("" if args.model == "shapes" else args.model) / args.split / slug
        report = evaluate_refer(ReferRun(dataset="shapes_ref", split=args.split, method=method, model=args.model,
                                         out=str(out), limit=args.n, settings=settings, device="cpu"),
                                backbone=backbone)
        table[label] = {"method": method, "settings": settings, **{k: report[k] for k in (
            "ciou", "giou", "n_acc", "t_acc", "n_samples", "n_no_target", "seconds_per_expression")},
            "kinds": breakdown(out, dataset, args.n)}
        print(label, {k: table[label][k] for k in ("ciou", "giou", "n_acc")}, flush=True)
    forward = unet_forward_seconds(backbone)
    recommended = model_settings(args.model).get("anyword", {})
    RESULTS.mkdir(exist_ok=True)
    json_path.write_text(json.dumps({"split": args.split, "n": args.n, "unet_forward_seconds": forward,
                                     "recommended": recommended, "rows": table}, indent=1))
    (RESULTS / f"{name}.md").write_text(markdown(table, args, forward, recommended))


def timing(backbone, n: int) -> None:
    """Median seconds per expression of each test row, one after another in this process (nothing else running),
    written into anyword.json ("timing") and appended to anyword.md."""
    from promptseg.pipeline import Pipeline

    dataset = ShapesRefDataset("test", n)
    forward = unet_forward_seconds(backbone)
    clean = {}
    for label, (method, settings) in TEST_ROWS.items():
        segmenter = Pipeline("shapes", method, settings=settings, task="refer", backbone=backbone).load().method.instance
        times = []
        for k in range(n):
            sample = dataset[k]
            start = time.perf_counter()
            segmenter.refer(segmenter.prepare(sample.image), sample.expression)
            times.append(time.perf_counter() - start)
        clean[label] = float(np.median(times))
        print(label, clean[label], flush=True)
    path = RESULTS / "anyword.json"
    record = json.loads(path.read_text())
    record["timing"] = {"n": n, "unet_forward_seconds": forward, "seconds_per_expression": clean}
    path.write_text(json.dumps(record, indent=1))
    lines = ["", f"Clean cost (`--timing {n}`: each row alone, median over the first {n} test expressions; the s/expr",
             "column above is the evaluation's mean, taken while other jobs shared the 2 cores for some rows):", "",
             "| row | s/expr | x UNet forward |", "| --- | --- | --- |"]
    lines += [f"| {label} | {value:.3f} | {value / forward:.0f} |" for label, value in clean.items()]
    with open(RESULTS / "anyword.md", "a") as handle:
        handle.write("\n".join(lines) + "\n")


def markdown(table: dict, args, forward: float, recommended: dict) -> str:
    kinds = ["shape", "colour shape", "relation", "plural", "no target"]
    lines = [
        f"# Referring segmentation on shapes_ref {args.split} ({args.n} expressions), bundled `{args.model}` model",
        "",
        "Made by `python benchmarks/referring/anyword_benchmark.py" + ("" if args.model == "shapes" else f" --model {args.model}")
        + f" --split {args.split} --n {args.n}` (2 CPU cores). cIoU, gIoU,",
        "N-acc as in ReLA's evaluator (x100). Kind columns: mean IoU per expression kind; \"no target\": share answered",
        f"empty. One bare denoiser forward: {1000 * forward:.1f} ms. Anyword's recommended settings ({args.model} model):",
        f"`{json.dumps(recommended)}`.",
        "",
        "| row | cIoU | gIoU | N-acc | " + " | ".join(kinds) + " | s/expr | x denoiser forward |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in kinds) + " | --- | --- |",
    ]
    for label, row in table.items():
        cells = []
        for kind in kinds:
            v = row["kinds"].get(kind)
            cells.append("-" if v is None else f"{100 * v['mean_iou']:.1f} ({v['n']})")
        n_acc = "-" if row["n_acc"] is None else f"{100 * row['n_acc']:.1f}"
        lines.append(f"| {label} | {100 * row['ciou']:.1f} | {100 * row['giou']:.1f} | {n_acc} | " + " | ".join(cells)
                     + f" | {row['seconds_per_expression']:.3f} | {row['seconds_per_expression'] / forward:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
