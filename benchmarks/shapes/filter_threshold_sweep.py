"""Choose the shapes model's CLIP-filter threshold on the val split by the segmentation it gives.

    python benchmarks/shapes/filter_threshold_sweep.py --n 150

For each threshold, `baseline` and `fastseg` are evaluated on val images in the vocabulary setting (all seven
class names offered, filter `clip` with `shapes-clip`); the threshold with the best mean mIoU of the two ships in
the model's `promptseg_settings.json`. Results: benchmarks/shapes/results/filter_threshold_sweep.md and .json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from promptseg import load_backbone
from promptseg.eval.runner import EvalRun, evaluate

HERE = Path(__file__).parent
THRESHOLDS = (0.25, 0.28, 0.30, 0.32, 0.34, 0.36)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=150, help="val images")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    backbone = load_backbone("shapes", device="cpu")
    rows = []
    for threshold in THRESHOLDS:
        row = {"threshold": threshold}
        for method in ("baseline", "fastseg"):
            work = tempfile.mkdtemp()
            settings = {"model": "shapes-clip", "templates": ["a photo of a {}"], "threshold": threshold}
            report = evaluate(EvalRun(refine="none", dataset="shapes", split="val", method=method, model="shapes", out=work,
                                      limit=args.n, device="cpu", names="all", filter="clip",
                                      filter_settings=settings), progress=False, backbone=backbone)
            shutil.rmtree(work)
            row[method] = report["miou"]
            row["precision"], row["recall"] = report["filter_precision"], report["filter_recall"]
        rows.append(row)
        print(row, flush=True)
    best = max(rows, key=lambda r: (r["baseline"] + r["fastseg"]) / 2)
    out = Path(args.out)
    (out / "filter_threshold_sweep.json").write_text(json.dumps({"n_val": args.n, "rows": rows, "best": best}, indent=1))
    lines = [f"# CLIP-filter threshold on {args.n} val images (vocabulary setting, shapes-clip)", "",
             "| threshold | baseline mIoU | fastseg mIoU | filter precision | filter recall |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['threshold']} | {100 * r['baseline']:.2f} | {100 * r['fastseg']:.2f} | {100 * r['precision']:.1f} | "
              f"{100 * r['recall']:.1f} |" for r in rows]
    lines += ["", f"Chosen (best mean of the two methods): **{best['threshold']}**.", ""]
    (out / "filter_threshold_sweep.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
