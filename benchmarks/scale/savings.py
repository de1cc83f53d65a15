"""Cost savings that change a method's output, measured on shapes before any is offered (issue 22, part 5).

    python benchmarks/scale/savings.py      # val 150 and test 300 images (InvSeg: 100 each) -> results/savings.md/.json

Each saving is not exact, so it is a setting measured here against the method's own output before it may become a
default (decided on val):
- FastSeg without its inversion pass (`invert=False`: the recording pass reads the clean latents): one full UNet
  pass per view less;
- FastSeg's flipped view from the image's flipped latents (`flip_from="latents"`) instead of encoding the flipped
  image: one VAE encode less (1.36 UNet forwards at SD-1.5's 512 px on this CPU, `scale_quick.md`);
- InvSeg's augmented views drawn once from a pool of 4 whose latents are cached (`view_pool=4`), the paper's "each
  test image is augmented for 2 times ..., which construct a batch of size 2 in each optimization step" read
  literally (2 views drawn once, `view_pool=2`, now the default), or cropped from the image's own latents
  (`views_from="latents"`), instead of 2 fresh views (2 VAE encodes) at each of its 15 steps.
Rows are `promptseg eval --dataset shapes --model shapes --names all` (vocabulary setting, the model's default
filter, no refiner). Exact savings (lazy self-attention, stopping the UNet after the last recorded layer,
accumulated micro-batches) need no such check: tests assert they give the same numbers.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from promptseg import load_backbone
from promptseg.eval.runner import EvalRun, evaluate

RESULTS = Path(__file__).parent / "results"
ROWS = [
    ("fastseg", "inversion pass, flipped image encoded (FA-Seg)", {"invert": True, "flip": True, "flip_from": "pixels"}),
    ("fastseg", "inversion pass, latents flipped", {"invert": True, "flip": True, "flip_from": "latents"}),
    ("fastseg", "inversion pass, no flip", {"invert": True, "flip": False}),
    ("fastseg", "no inversion pass (recorded on the clean latents; default)", {"invert": False}),
    ("fastseg", "no inversion pass, latents flipped", {"invert": False, "flip_from": "latents"}),
    ("invseg", "2 fresh views a step (view_pool=0; the default until the literal reading)", {"view_pool": 0}),
    ("invseg", "views from a pool of 4, encoded once", {"view_pool": 4}),
    ("invseg", "2 views drawn once, the same 2 every step (the paper's \"augmented for 2 times\" read literally; "
               "default)", {"view_pool": 2}),
    ("invseg", "views cropped from the image's latents", {"views_from": "latents"}),
]
SHAPES = ("circle", "square", "triangle")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="fastseg,invseg")
    parser.add_argument("--n-invseg", type=int, default=100,
                        help="images per split for the InvSeg rows (15 optimisation steps an image)")
    args = parser.parse_args()
    methods = args.methods.split(",")
    backbone = load_backbone("shapes", device="cpu")
    work = Path(tempfile.mkdtemp(prefix="savings_"))
    out = RESULTS / "savings.json"
    record = json.loads(out.read_text()) if out.exists() else {}
    for split, n_split in (("val", 150), ("test", 300)):
        for method, name, settings in ROWS:
            if method not in methods or f"{split} | {method} | {name}" in record:
                continue
            n = min(n_split, args.n_invseg) if method == "invseg" else n_split
            report = evaluate(EvalRun(dataset="shapes", split=split, method=method, model="shapes", limit=n,
                                      names="all", device="cpu", settings=settings, refine="none",
                                      out=str(work / f"{split}_{method}_{len(record)}")), backbone=backbone)
            iou = report["per_class_iou"]
            record[f"{split} | {method} | {name}"] = {
                "split": split, "n": n, "method": method, "row": name, "settings": settings, "miou": report["miou"],
                "shape_miou": sum(iou[k] for k in SHAPES) / 3, "seconds_per_image": report["seconds_per_image"]}
            print(split, method, name, report["miou"], flush=True)
            out.write_text(json.dumps(record, indent=1))
            write_table(record)


def write_table(record: dict) -> None:
    """results/savings.md from the rows measured so far (a stopped run keeps its rows and resumes)."""
    lines = ["# Savings that change the output, on shapes (vocabulary setting, the model's default filter, no refiner)",
             "", "Made by `python benchmarks/scale/savings.py` (2 CPU cores, shared with a training run: s/image is noisy; "
             "the saving at SD's scale is in `scale.md`).", "",
             "| split | method | setting | mIoU | shape mIoU | s/image |", "| --- | --- | --- | --- | --- | --- |"]
    for row in sorted(record.values(), key=lambda r: (r["split"] != "val", r["method"])):
        lines.append(f"| {row['split']} ({row['n']}) | {row['method']} | {row['row']} | {100 * row['miou']:.1f} | "
                     f"{100 * row['shape_miou']:.1f} | {row['seconds_per_image']:.3f} |")
    (RESULTS / "savings.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
