"""Which joint block of a diffusion transformer grounds words: the baseline read from one block at a time, on val.

    python benchmarks/transformers/dit_blocks.py --model shapes-dit --n 40 --timesteps 300 500 700

Seg4Diff finds SD3's "semantic grounding expert" (block 9) by probing each block's image-to-text attention against
masks; this is that probe on a bundled world: for every block b and timestep t, the baseline reads only block b
(`places=["block<b>"]`, cross- and self-attention of that block) at t, with the ground-truth names (oracle, no
filter, no refiner), on the *val* split. Also the mean over all blocks. Writes
`benchmarks/transformers/results/<model>_blocks.{json,md}`; the test split is never read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from val_runs import val_miou

from promptseg import load_backbone

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes-dit")
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[300, 500, 700])
    parser.add_argument("--tag", default="")
    parser.add_argument("--cross-readout", default=None, choices=("joint", "text", "output"),
                        help="the cross record's normalisation (default: the model's setting)")
    args = parser.parse_args()
    backbone = load_backbone(args.model, device="cpu")
    if args.cross_readout:
        backbone.transformer.promptseg_cross_readout = args.cross_readout
    blocks = len(backbone.transformer.transformer_blocks)
    rows = {}
    for t in args.timesteps:
        for place in [f"block{b}" for b in range(blocks)] + ["joint"]:
            miou = val_miou(backbone, args.model, "baseline", args.n, {"places": [place], "timestep": t}, args.dataset)
            rows.setdefault(place, {})[t] = miou
            print(f"t={t} {place}: {100 * miou:.1f}", flush=True)
    out = HERE / "results" / f"{args.model}_blocks{args.tag}"
    out.with_suffix(".json").write_text(json.dumps({"n": args.n, "split": "val", "rows": rows}, indent=1))
    mode = backbone.transformer.promptseg_cross_readout
    lines = [f"# {args.model}: the baseline read from one block (val, {args.n} images, oracle names, no filter, "
             f"no refiner, cross_readout={mode}; mIoU)", "", "| block | " + " | ".join(f"t={t}" for t in args.timesteps) + " |",
             "| --- |" + " --- |" * len(args.timesteps)]
    for place, by_t in rows.items():
        name = "all blocks (mean)" if place == "joint" else place
        lines.append(f"| {name} | " + " | ".join(f"{100 * by_t[t]:.1f}" for t in args.timesteps) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
