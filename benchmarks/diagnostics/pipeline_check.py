"""Do the committed tables still hold? Reruns rows of the shapes, refiner and referring benchmarks through today's
pipeline and through the code before `promptseg.pipeline` existed, and compares both with the committed tables.

    python benchmarks/diagnostics/pipeline_check.py                  # every row below with this checkout, 300 test images
    git worktree add /tmp/before 7b84293                 # the last commit before the move
    PYTHONPATH=/tmp/before/src python benchmarks/diagnostics/pipeline_check.py --column before --work runs/pipeline_check_before
    python benchmarks/diagnostics/pipeline_check.py --only fastseg   # the rows whose name contains "fastseg"

It uses only what both versions have (`promptseg.load_backbone`, the eval runners), so the same script runs either.

Rows (each run exactly as the benchmark that made the committed number runs it):
- `results/shapes.json`: the vocabulary rows (every filter) and the oracle rows (`shapes_benchmark.py`);
- `results/refine.json`: the recommended refiner rows (`refine_benchmark.py --split test`);
- `results/anyword.json`: the baseline and anyword's recommended row (`anyword_benchmark.py --split test`).

Writes `results/pipeline_check.{json,md}`: per row the committed headline (mIoU; cIoU for referring), the code
before the move's and today's, and the largest difference of any number (headline, per-class IoU; gIoU and N-acc
for referring) between today's and the others. Runs resume from `--work`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from promptseg import load_backbone
from promptseg.eval.refer_runner import ReferRun, evaluate_refer
from promptseg.eval.runner import EvalRun, evaluate

RESULTS = Path(__file__).parent / "results"
SHAPES_ROWS = {  # shapes.json key -> (method, names, filter)
    "baseline (vocabulary, filter clip)": ("baseline", "all", "clip"),
    "baseline (vocabulary, filter diffusion)": ("baseline", "all", "diffusion"),
    "baseline (vocabulary, filter none)": ("baseline", "all", "none"),
    "fastseg (vocabulary, filter clip)": ("fastseg", "all", "clip"),
    "fastseg (vocabulary, filter diffusion)": ("fastseg", "all", "diffusion"),
    "fastseg (vocabulary, filter none)": ("fastseg", "all", "none"),
    "baseline (oracle)": ("baseline", "oracle", None),
    "fastseg (oracle)": ("fastseg", "oracle", None),
    "invseg (vocabulary, filter clip)": ("invseg", "all", "clip"),
    "invseg (oracle)": ("invseg", "oracle", None),
}
REFER_ROWS = {  # anyword.json key -> method (its recommended settings)
    "baseline (head phrase attention, thresholded)": "baseline",
    "anyword (recommended settings)": "anyword",
}


def committed_rows() -> list[tuple[str, str, dict, dict]]:
    """(table, row, how to run it, the committed record) for every row checked."""
    shapes = json.loads((RESULTS / "shapes.json").read_text())["methods"]
    refine = json.loads((RESULTS / "refine.json").read_text())["methods"]
    refer = json.loads((RESULTS / "anyword.json").read_text())["rows"]
    rows = [("shapes", key, {"method": m, "names": names, "filter": f, "refine": "none"}, shapes[key])
            for key, (m, names, f) in SHAPES_ROWS.items()]
    for method, table in refine.items():
        key = next(k for k in table if k.startswith("recommended"))
        rows.append(("refine", f"{method} {key}", {"method": method, "names": "all", "filter": None, "refine": None},
                     table[key]))
    rows += [("anyword", key, {"method": m, "refer": True}, refer[key]) for key, m in REFER_ROWS.items()]
    return rows


def run(backbone, how: dict, n: int, work: Path) -> dict:
    """The row's numbers now: mIoU and per-class IoU, or cIoU/gIoU/N-acc for a referring row."""
    if how.get("refer"):
        report = evaluate_refer(ReferRun(dataset="shapes_ref", split="test", method=how["method"], model="shapes",
                                         out=str(work), limit=n, device="cpu"), backbone=backbone)
        return {k: report[k] for k in ("ciou", "giou", "n_acc")}
    report = evaluate(EvalRun(dataset="shapes", split="test", method=how["method"], model="shapes", out=str(work),
                              limit=n, device="cpu", names=how["names"], filter=how["filter"], refine=how["refine"]),
                      backbone=backbone)
    return {"miou": report["miou"], "per_class_iou": report["per_class_iou"]}


def numbers(record: dict) -> dict:
    """The numbers compared, flat: the headline measures and every per-class IoU (None as 0)."""
    keys = ["ciou", "giou", "n_acc"] if "ciou" in record else ["miou"]
    out = {k: record[k] for k in keys}
    out.update({f"iou {c}": v or 0.0 for c, v in record.get("per_class_iou", {}).items()})
    return out


def max_diff(a: dict, b: dict) -> float | None:
    """The largest absolute difference of the numbers both records have, x100."""
    if a is None or b is None:
        return None
    x, y = numbers(a), numbers(b)
    return 100 * max(abs(x[k] - y[k]) for k in x if k in y)


def markdown(record: dict) -> str:
    def pct(row, column):
        value = row.get(column)
        return "-" if value is None else f"{100 * numbers(value)[row['measure']]:.2f}"

    def diff(value):
        return "-" if value is None else f"{value:.4f}"

    lines = [
        "# The committed tables through today's pipeline",
        "",
        f"Made by `python benchmarks/diagnostics/pipeline_check.py` and, for the column \"before\", the same script run on the code "
        f"of 7b84293 (the last commit before `promptseg.pipeline`; see the script's docstring); {record['n']} test "
        "images / expressions, model `shapes`, 2 CPU cores, torch threads 2. Committed: the number in the table named "
        "(made by an earlier commit); before / now: the row run on this machine by the code before the move and by "
        "this checkout. Max diff: the largest difference of the headline or any per-class number, x100, between now "
        "and the column named.",
        "",
        "| table | row | measure | committed | before | now | max diff now-before | max diff now-committed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in record["rows"].values():
        lines.append(f"| {row['table']} | {row['row']} | {row['measure']} | {pct(row, 'committed')} | "
                     f"{pct(row, 'before')} | {pct(row, 'now')} | {diff(max_diff(row.get('now'), row.get('before')))} | "
                     f"{diff(max_diff(row.get('now'), row.get('committed')))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--only", default=None, help="run only the rows whose name contains this")
    parser.add_argument("--column", choices=("now", "before"), default="now", help="which code this run measures")
    parser.add_argument("--work", default="runs/pipeline_check")
    args = parser.parse_args()
    backbone = load_backbone("shapes", device="cpu")
    # each column its own file, so that the two runs may go side by side; the table merges them
    path = RESULTS / ("pipeline_check.json" if args.column == "now" else f"pipeline_check_{args.column}.json")
    record = json.loads(path.read_text()) if path.exists() else {"n": args.n, "rows": {}}
    for table, row, how, old in committed_rows():
        key = f"{table}: {row}"
        entry = record["rows"].setdefault(key, {"table": table, "row": row})
        entry.update(measure="ciou" if how.get("refer") else "miou",
                     committed={k: old[k] for k in ("miou", "per_class_iou", "ciou", "giou", "n_acc") if k in old})
        if args.column in entry or (args.only and args.only not in row):
            continue
        slug = "".join(c if c.isalnum() else "_" for c in key)[:80]
        entry[args.column] = run(backbone, how, args.n, Path(args.work) / slug)
        print(key, {c: entry.get(c, {}).get(entry["measure"]) for c in ("committed", "before", "now")}, flush=True)
        path.write_text(json.dumps(record, indent=1))
        write_markdown()


def write_markdown() -> None:
    """results/pipeline_check.md from every column's file."""
    merged = {"n": None, "rows": {}}
    for path in sorted(RESULTS.glob("pipeline_check*.json")):
        part = json.loads(path.read_text())
        merged["n"] = merged["n"] or part["n"]
        for key, entry in part["rows"].items():
            merged["rows"].setdefault(key, {}).update({k: v for k, v in entry.items() if v is not None})
    (RESULTS / "pipeline_check.md").write_text(markdown(merged))


if __name__ == "__main__":
    main()
