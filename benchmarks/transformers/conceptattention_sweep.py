"""Choose ConceptAttention's blocks, timestep and concept normalisation for a bundled transformer on *val*.

    python benchmarks/transformers/conceptattention_sweep.py --model shapes-dit --n 40

For every timestep and block set (each block alone, every block, the baseline's blocks from the model's settings,
the last half), `conceptattention` with the ground-truth names (oracle) and with every class name (vocabulary, no
filter), no refiner, on the val split; then, at the best of those, the concept normalisation and the softmax off.
Writes `benchmarks/transformers/results/<model>_conceptattention_val.{json,md}`; the test split is never read.
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
    parser.add_argument("--timesteps", type=int, nargs="+", default=[100, 200, 300, 500, 700])
    args = parser.parse_args()
    backbone = load_backbone(args.model, device="cpu")
    n_blocks = len(backbone.transformer.transformer_blocks)
    block_sets = {f"block {b}": [b] for b in range(n_blocks)}
    block_sets["every block"] = None
    if backbone.method_defaults.get("blocks"):
        block_sets["the baseline's blocks"] = list(backbone.method_defaults["blocks"])
    block_sets["last half"] = list(range(n_blocks // 2, n_blocks))
    rows = []

    def measure(label: str, settings: dict) -> dict:
        row = {"label": label, "settings": settings,
               **{names: val_miou(backbone, args.model, "conceptattention", args.n, settings, args.dataset, names, "none")
                  for names in ("oracle", "all")}}
        rows.append(row)
        print(f"{label}: oracle {100 * row['oracle']:.1f}, vocabulary {100 * row['all']:.1f}", flush=True)
        return row

    for t in args.timesteps:
        for name, blocks in block_sets.items():
            measure(f"t={t}, {name}", {"timestep": t, "blocks": blocks})
    best = max(rows, key=lambda r: r["all"])
    for extra in ({"normalize_concepts": False}, {"softmax": False}, {"normalize_concepts": False, "softmax": False}):
        measure(best["label"] + "".join(f", {k}={v}" for k, v in extra.items()), {**best["settings"], **extra})
    out = HERE / "results" / f"{args.model}_conceptattention_val"
    out.with_suffix(".json").write_text(json.dumps({"n": args.n, "split": "val", "rows": rows}, indent=1))
    lines = [f"# {args.model}: ConceptAttention's settings on val ({args.n} images, no filter, no refiner; mIoU)", "",
             "Made by `python benchmarks/transformers/conceptattention_sweep.py --model " + args.model + f" --n {args.n}`. Oracle: "
             "each image's ground-truth names; vocabulary: every class name offered to every image.", "",
             "| setting | oracle | vocabulary |", "| --- | --- | --- |"]
    lines += [f"| {r['label']} | {100 * r['oracle']:.1f} | {100 * r['all']:.1f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
