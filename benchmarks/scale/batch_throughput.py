"""Images per second with `--batch-size 8` against one image at a time, and the mIoU of each (issue 45, part 2).

    python benchmarks/scale/batch_throughput.py          # -> results/batch_throughput.md/.json (about 10 minutes)

Each row is `promptseg eval --dataset shapes --model shapes --names all --limit 300` (the vocabulary setting, the
model's default CLIP filter), with the model's default refiner (SAM proposals named by denoising evidence) and
without one (`--refine none`), at batch size 1 and 8, the backbone loaded once and warmed up before the clock
starts. Images per second: the images over the evaluation's wall time (dataset rendering and scoring included).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from promptseg import load_backbone
from promptseg.eval.runner import EvalRun, evaluate

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--methods", nargs="+", default=["baseline", "fastseg"])
    parser.add_argument("--out", default=str(RESULTS / "batch_throughput"))
    args = parser.parse_args()
    backbone = load_backbone("shapes", device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            for refine in (None, "none"):
                for batch_size in (1, 8):
                    common = {"dataset": "shapes", "method": method, "model": "shapes", "names": "all",
                              "refine": refine, "batch_size": batch_size}
                    name = f"{method}-{refine}-{batch_size}"
                    evaluate(EvalRun(limit=8, out=f"{tmp}/warm-{name}", **common), progress=False, backbone=backbone)
                    start = time.perf_counter()
                    report = evaluate(EvalRun(limit=args.limit, out=f"{tmp}/{name}", **common), progress=False,
                                      backbone=backbone)
                    seconds = time.perf_counter() - start
                    rows.append({"method": method, "refine": report["refine"], "batch_size": batch_size,
                                 "images": report["n_images"], "miou": report["miou"],
                                 "images_per_second": report["n_images"] / seconds})
                    print(rows[-1], flush=True)
    lines = [
        "# Images in batches on shapes (issue 45, part 2)", "",
        f"Made by `python benchmarks/scale/batch_throughput.py` on this 2-core CPU (torch threads: "
        f"{torch.get_num_threads()}). `promptseg eval --dataset shapes --model shapes --names all --limit "
        f"{args.limit}` with the default CLIP filter; images per second over the evaluation's wall time.", "",
        "| method | refiner | batch size | images | mIoU | images / s | x batch size 1 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        alone = next(r for r in rows if (r["method"], r["refine"], r["batch_size"]) == (row["method"], row["refine"], 1))
        lines.append(f"| {row['method']} | {row['refine']} | {row['batch_size']} | {row['images']} | "
                     f"{100 * row['miou']:.2f} | {row['images_per_second']:.2f} | "
                     f"{row['images_per_second'] / alone['images_per_second']:.2f} |")
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
