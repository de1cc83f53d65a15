"""What the cheaper inversion settings on a transformer do to the numbers on `shapes-dit` (issue 45, part 1).

    python benchmarks/scale/transformer_costs.py        # -> results/transformer_costs.md/.json (the missing rows)

On FLUX.1's block structure InvSeg cost 60 transformer forwards and Segment Anyword 54 inverting at the native
1024 px (`benchmarks/scale/results/scale_flux1.md`), against bars of 40 and 30. The candidate savings, each measured
here on the val split of the bundled transformer world against the setting it replaces (the same images, the
model's settings otherwise):
- InvSeg's loss read from the first half of the blocks the read-out reads (`loss_places`): the optimisation's
  forward and its backward end halfway;
- Segment Anyword's mask-prompt inversion in 5 steps instead of 10;
- the inversion at half the image side (`inversion_side`, what FLUX.1 and SD3 get by default: 512 of 1024 px).
  `shapes-dit` was trained at its 64 px alone, so at 32 px it sees a size it never saw, with shapes 4 to 12 px
  across: a worst case, not what a transformer trained at many sizes (FLUX.1, SD3) does at 512 of its 1024 px.
All run with `recompute=False` (the blocks' activations kept: the same gradients, so the same numbers, at a
fraction of the time on this small model). `shapes-dit` is a relative instrument (it does not ground some words): it says whether a setting loses against
another on the same maps, not what a real model scores. Finished rows are kept in
`results/transformer_costs_rows.jsonl`; a rerun measures the missing ones.
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
    side = backbone.image_size[0] // 2
    planned = [
        (f"invseg, loss on the read-out's blocks {blocks}", "invseg", {"recompute": False}),
        (f"invseg, loss on the first half {half}", "invseg", {"loss_places": half, "recompute": False}),
        (f"invseg, inversion at {side} px (half the side)", "invseg", {"inversion_side": side, "recompute": False}),
        ("anyword, 10 inversion steps", "anyword", {"steps": 10, "recompute": False}),
        ("anyword, 5 inversion steps", "anyword", {"steps": 5, "recompute": False}),
        (f"anyword, 10 steps, inversion at {side} px (half the side)", "anyword",
         {"steps": 10, "inversion_side": side, "recompute": False}),
    ]
    journal = Path(args.out + "_rows.jsonl")
    done = {}
    if journal.exists():
        done = {r["row"]: r for r in map(json.loads, journal.read_text().splitlines())}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, method, settings in planned:
            if name not in done:
                if method == "invseg":
                    report = evaluate(EvalRun(dataset="shapes", split="val", method="invseg", model="shapes-dit",
                                              names="oracle", limit=args.n, settings=settings,
                                              out=f"{tmp}/{len(rows)}"), progress=False, backbone=backbone)
                    row = {"row": name, "metric": "mIoU", "value": report["miou"], "n": report["n_images"],
                           "seconds": report["seconds_per_image"]}
                else:
                    report = evaluate_refer(ReferRun(dataset="shapes_ref", split="val", method="anyword",
                                                     model="shapes-dit", limit=args.n, settings=settings,
                                                     out=f"{tmp}/{len(rows)}"), progress=False, backbone=backbone)
                    row = {"row": name, "metric": "cIoU", "value": report["ciou"], "n": report["n_samples"],
                           "seconds": report["seconds_per_expression"]}
                done[name] = row
                with open(journal, "a") as f:
                    f.write(json.dumps(row) + "\n")
            rows.append(done[name])
            print(rows[-1], flush=True)
    lines = ["# Cheaper inversion on a transformer, measured on shapes-dit val (issue 45, part 1)", "",
             "Made by `python benchmarks/scale/transformer_costs.py` on this 2-core CPU (first 60 of each, "
             "`recompute=False`: the same gradients as recomputed blocks): InvSeg with oracle names, "
             "no filter, the model's SAM refiner (`promptseg eval --dataset shapes --split val --model shapes-dit`); Segment "
             "Anyword on shapes_ref val with the model's settings (`promptseg eval --task refer`). The half-side rows were "
             "measured at a later commit than the others, on one torch thread beside other benchmarks: compare their "
             "scores, not their seconds (forwards: `benchmarks/scale/results/scale_flux1.md`). At 32 px the loss grid "
             "(1/4 of the latent side) is 2x2.", "",
             "| row | metric | value | images / expressions | seconds each |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['row']} | {r['metric']} | {100 * r['value']:.2f} | {r['n']} | {r['seconds']:.2f} |" for r in rows]
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
