"""Fixed against activation-derived block weights (GoCA) for a transformer's baseline, on *val*.

    python benchmarks/transformers/dit_aggregation.py --model shapes-dit --n 60

The baseline on `shapes-dit` with its blocks combined by their mean (`aggregation="fixed"`) or by GoCA's weights
(`aggregation="goca"`: each block's self-attention against a reference block's feature affinity, each label's score divided,
pixel by pixel, by the summed score of every label token; `promptseg.diffusion.aggregation`), over the model's blocks and over every block, with
the ground-truth names (oracle) and with every class name (vocabulary, no filter), no refiner, at the model's
timestep; and GoCA's block weights without its rescaling. Writes `benchmarks/transformers/results/<model>_aggregation_val.{json,md}`; the test split is never read.
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
    parser.add_argument("--n", type=int, default=60)
    args = parser.parse_args()
    backbone = load_backbone(args.model, device="cpu")
    rows = []
    # every setting under comparison is named, so the model's own settings (its chosen aggregation) cannot leak in
    own = [f"block{b}" for b in backbone.method_defaults.get("blocks") or []] or ["joint"]
    for blocks, places in (("the model's blocks", own), ("every block", ["joint"])):
        for aggregation, extra in (("fixed", {}), ("goca", {"goca_rescale": True}),
                                   ("goca, block weights only", {"goca_rescale": False})):
            settings = {"aggregation": aggregation.split(",")[0], **extra, "places": places}
            row = {"blocks": blocks, "aggregation": aggregation, "settings": settings,
                   **{names: val_miou(backbone, args.model, "baseline", args.n, settings, names=names, label_filter="none")
                      for names in ("oracle", "all")}}
            rows.append(row)
            print(f"{blocks}, {aggregation}: oracle {100 * row['oracle']:.1f}, vocabulary {100 * row['all']:.1f}",
                  flush=True)
    out = HERE / "results" / f"{args.model}_aggregation_val"
    out.with_suffix(".json").write_text(json.dumps({"n": args.n, "split": "val", "rows": rows}, indent=1))
    lines = [f"# {args.model}: the baseline's blocks combined by their mean or by GoCA's weights (val, {args.n} images, "
             "no filter, no refiner; mIoU)", "",
             f"Made by `python benchmarks/transformers/dit_aggregation.py --model {args.model} --n {args.n}`.", "",
             "| blocks | aggregation | oracle | vocabulary |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['blocks']} | {r['aggregation']} | {100 * r['oracle']:.1f} | {100 * r['all']:.1f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
