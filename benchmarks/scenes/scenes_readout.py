"""Is the scenes baseline losing its things in the read-out? Stuff and thing mIoU under other ways of reading the maps.

    python benchmarks/scenes/scenes_readout.py --n 40     # -> benchmarks/scenes/results/scenes_readout.md

On val images with the oracle names (each present class's line of `data/classnames/scenes.txt`, synonyms and all, as
`promptseg eval` and the settings sweep offer them), the baseline with the model's own settings (chosen on val) is compared with
the same pass read otherwise: at other noise levels, with the score maps of several noise levels averaged before
the arg-max (stuff words count at high noise, thing words at low: `scenes_word_reliance.md`), with 16x16
self-attention, and without self-attention refinement. If the things' IoU moves with none of them, they are lost
in the maps themselves, not in how the maps are read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from promptseg import load_backbone
from promptseg.data.scenes_world import CLASS_NAMES, STUFF
from promptseg.data.shapes import ScenesDataset
from promptseg.eval.metrics import confusion, scores
from promptseg.methods import build_method

PASSES = {  # name -> settings on top of the model's own
    "t = 300": {"timestep": 300},
    "t = 500": {"timestep": 500},
    "t = 700": {"timestep": 700},
    "t = 500, 16x16 self-attention": {"timestep": 500, "self_weights": {1.0: 1.0}},
    "t = 500, no refinement": {"timestep": 500, "refine_iterations": 0},
}
READOUTS = {  # row -> the passes whose score maps are averaged
    **{name: [name] for name in PASSES},
    "mean of t = 300 and 700": ["t = 300", "t = 700"],
    "mean of t = 500 and 700": ["t = 500", "t = 700"],
    "mean of t = 300, 500 and 700": ["t = 300", "t = 500", "t = 700"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="scenes")
    parser.add_argument("--n", type=int, default=40)
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = load_backbone(args.model, device="cpu")
    methods = {name: build_method("baseline", backbone, **settings) for name, settings in PASSES.items()}
    k_all = len(CLASS_NAMES)
    totals = {row: np.zeros((k_all, k_all + 1), np.int64) for row in READOUTS}
    dataset = ScenesDataset(split="val", n=args.n)
    for sample in dataset:
        present = [int(c) for c in np.unique(sample.label)]
        names = [dataset.class_names[c] for c in present]
        maps = {name: method(sample.image, names).scores for name, method in methods.items()}
        for row, used in READOUTS.items():
            mean = np.mean([maps[name] for name in used], axis=0)
            totals[row] += confusion(np.asarray(present)[mean.argmax(0)], sample.label, k_all)
    stuff = np.array([name in STUFF for name in CLASS_NAMES])
    base = {k: getattr(methods["t = 500"].config, k) for k in ("cross_weights", "self_weights", "template", "joiner")}
    lines = [f"# Reading the scenes baseline's maps otherwise, model `{args.model}`, {args.n} val images, oracle names",
             "", f"Made by `python benchmarks/scenes/scenes_readout.py --n {args.n} --model {args.model}`. The model's own "
             f"settings otherwise: `{json.dumps({k: str(v) for k, v in base.items()})}`.", "",
             "| read-out | mIoU | stuff mIoU | thing mIoU |", "| --- | --- | --- | --- |"]
    record = {"model": args.model, "n": args.n, "rows": {}}
    for row, matrix in totals.items():
        iou = scores(matrix).iou
        values = [np.nanmean(iou), np.nanmean(iou[stuff]), np.nanmean(iou[~stuff])]
        record["rows"][row] = dict(zip(("miou", "stuff_miou", "thing_miou"), map(float, values)))
        lines.append(f"| {row} | " + " | ".join(f"{100 * v:.1f}" for v in values) + " |")
    out = Path(__file__).parent / "results"
    (out / "scenes_readout.md").write_text("\n".join(lines) + "\n")
    (out / "scenes_readout.json").write_text(json.dumps(record, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
