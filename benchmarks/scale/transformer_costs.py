"""What the cheaper inversion settings on a transformer do to the numbers on `shapes-dit` (issue 45, part 1).

    python benchmarks/scale/transformer_costs.py        # -> results/transformer_costs.md/.json (about 40 minutes)

On FLUX.1's block structure InvSeg costs 60 transformer forwards and Segment Anyword 54
(`benchmarks/scale/results/scale_flux1.md`), against bars of 40 and 30. The candidate savings, each measured here on the
val split of the bundled transformer world against the setting it replaces (the same images, the model's
settings otherwise):
- InvSeg's loss read from the first half of the blocks the read-out reads (`loss_places`): the optimisation's
  forward and its backward end halfway;
- Segment Anyword's mask-prompt inversion in 5 steps instead of 10.
Both run with `recompute=False` (the blocks' activations kept: the same gradients, so the same numbers, at a
fraction of the time on this small model). `shapes-dit` is a relative instrument (it does not ground some words): it says whether a setting loses against
another on the same maps, not what a real model scores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from promptseg import load_backbone
from promptseg.eval.refer_runner import ReferRun, evaluate_refer
from promptseg.eval.runner import EvalRun, evaluate

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="val images (InvSeg) and expressions (Anyword)")
    parser.add_argument("--out", default=str(RESULTS / "transformer_costs"))
    args = parser.parse_args()
    backbone = load_backbone("shapes-dit", device="cpu")
    blocks = [f"block{b}" for b in backbone.method_defaults["blocks"]]
    half = blocks[: (len(blocks) + 1) // 2]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, settings in ((f"invseg, loss on the read-out's blocks {blocks}", {"recompute": False}),
                               (f"invseg, loss on the first half {half}", {"loss_places": half, "recompute": False})):
            report = evaluate(EvalRun(dataset="shapes", split="val", method="invseg", model="shapes-dit",
                                      names="oracle", limit=args.n, settings=settings, out=f"{tmp}/{len(rows)}"),
                              progress=False, backbone=backbone)
            rows.append({"row": name, "metric": "mIoU", "value": report["miou"], "n": report["n_images"],
                         "seconds": report["seconds_per_image"]})
            print(rows[-1], flush=True)
        for name, settings in (("anyword, 10 inversion steps", {"steps": 10, "recompute": False}),
                               ("anyword, 5 inversion steps", {"steps": 5, "recompute": False})):
            report = evaluate_refer(ReferRun(dataset="shapes_ref", split="val", method="anyword", model="shapes-dit",
                                             limit=args.n, settings=settings, out=f"{tmp}/{len(rows)}"),
                                    progress=False, backbone=backbone)
            rows.append({"row": name, "metric": "cIoU", "value": report["ciou"], "n": report["n_samples"],
                         "seconds": report["seconds_per_expression"]})
            print(rows[-1], flush=True)
    lines = ["# Cheaper inversion on a transformer, measured on shapes-dit val (issue 45, part 1)", "",
             "Made by `python benchmarks/scale/transformer_costs.py` on this 2-core CPU (first 60 of each, "
             "`recompute=False`: the same gradients as recomputed blocks): InvSeg with oracle names, "
             "no filter, the model's SAM refiner (`promptseg eval --dataset shapes --split val --model shapes-dit`); Segment "
             "Anyword on shapes_ref val with the model's settings (`promptseg eval --task refer`).", "",
             "| row | metric | value | images / expressions | seconds each |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['row']} | {r['metric']} | {100 * r['value']:.2f} | {r['n']} | {r['seconds']:.2f} |" for r in rows]
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
