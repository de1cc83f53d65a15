"""Evaluate a method on a referring-segmentation dataset: resumable, sharded, with a report (cIoU, gIoU, N-acc).

    promptseg eval --task refer --dataset shapes_ref --method anyword --model shapes --limit 300 --out runs/ref
    accelerate launch --num_processes 4 -m promptseg.cli eval --task refer --dataset refcoco --root DATA ...

Like the semantic runner: one record per sample in OUT/samples/<id>.json (its intersection, union and areas), a rerun
skips what is done, the shards' counts are summed (`ReferScores.as_array`), the main process writes report.json/md.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from promptseg import __version__
from promptseg.data import get_refer_dataset
from promptseg.eval.refer_metrics import ReferScores
from promptseg.eval.runs import Shard, atomic_write, check_run_file
from promptseg.models import DEFAULT_MODEL


@dataclass
class ReferRun:
    """What to evaluate: a method's `refer` on a referring dataset."""

    dataset: str
    method: str = "anyword"
    model: str = DEFAULT_MODEL
    out: str = "eval_out"
    root: str | None = None
    split: str | None = None
    limit: int | None = None
    settings: dict = field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None
    offload: str | None = None
    """"model" or "sequential": weights in CPU memory, run on `device` (`promptseg.models.offload`)."""
    quantize: str | None = None
    """"int8": the denoiser's weights in int8 (`promptseg.models.quantize`)."""
    save_vis: int = 0


def evaluate_refer(run: ReferRun, progress: bool = True, backbone=None) -> dict | None:
    """Run (or resume) a referring evaluation; returns the report on the main process (None on the others).

    Raises:
        ValueError: a method without `refer`, nothing to evaluate, or an OUT written with other settings.
    """
    from promptseg.pipeline import Pipeline

    pipe = Pipeline(run.model, run.method, settings=run.settings, task="refer", device=run.device, dtype=run.dtype,
                    backbone=backbone, offload=run.offload, quantize=run.quantize)
    dataset = get_refer_dataset(run.dataset, run.root, run.split, run.limit)
    n = len(dataset) if run.limit is None else min(run.limit, len(dataset))
    if n < 1:
        raise ValueError(f"nothing to evaluate: limit {run.limit}, dataset size {len(dataset)}")
    out = Path(run.out)
    records = out / "samples"
    shard = Shard()
    signature = {"task": "refer", "dataset": run.dataset, "split": run.split, **pipe.signature}
    if shard.is_main:
        records.mkdir(parents=True, exist_ok=True)
        check_run_file(out, signature)
    shard.barrier()

    mine = shard.indices(n)
    totals = ReferScores()
    kinds = [k for k in dict.fromkeys(getattr(dataset, "kinds", [])[:n]) if k is not None]  # scenes_ref's kinds
    per_kind = {kind: np.zeros_like(totals.as_array()) for kind in kinds}
    seconds = 0.0
    bar = None
    if progress and shard.is_main:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), unit="expr", desc=f"{run.method} on {run.dataset}", dynamic_ncols=True)
    for i in mine:
        sample = dataset[i]
        path = records / f"{sample.id}.json"
        if path.exists():
            record = json.loads(path.read_text())
        else:
            start = time.perf_counter()
            result = pipe.refer(sample.image, sample.expression)
            elapsed = time.perf_counter() - start
            one = ReferScores()
            iou = one.add(result.mask, sample.mask)
            record = {"id": sample.id, "expression": sample.expression, "kind": sample.kind, "seconds": elapsed, "iou": iou,
                      "scores": one.as_array().tolist(), "warnings": result.warnings}
            atomic_write(path, json.dumps(record))
            if i < run.save_vis:
                from promptseg.eval.vis import save_refer_comparison

                (out / "vis").mkdir(exist_ok=True)
                save_refer_comparison(sample.image, sample.mask, result.mask, sample.expression,
                                      out / "vis" / f"{sample.id}.png")
        totals = ReferScores.from_array(totals.as_array() + np.asarray(record["scores"]))
        if kinds:
            per_kind[sample.kind] += np.asarray(record["scores"])
        seconds += record["seconds"]
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    width = len(totals.as_array())
    summed = shard.sum(np.concatenate([totals.as_array(), *per_kind.values(), [seconds]]))
    shard.barrier()
    if not shard.is_main:
        return None
    summary = ReferScores.from_array(summed[:width]).summary()
    if kinds:
        summary["per_kind"] = {kind: ReferScores.from_array(summed[width * (k + 1): width * (k + 2)]).summary()
                               for k, kind in enumerate(kinds)}
    report = {
        "task": "refer",
        "dataset": run.dataset,
        "split": getattr(dataset, "split", run.split),
        "method": run.method,
        "model": run.model,
        **summary,
        "seconds_per_expression": float(summed[-1] / max(summary["n_samples"], 1)),
        "settings": pipe.method.settings,
        "processes": shard.world,
        "promptseg_version": __version__,
    }
    atomic_write(out / "report.json", json.dumps(report, indent=1))
    atomic_write(out / "report.md", markdown_refer_report(report))
    return report


def markdown_refer_report(report: dict) -> str:
    """A markdown summary of a referring report."""

    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}"

    return "\n".join([
        f"# {report['method']} on {report['dataset']} ({report['split']}), referring segmentation",
        "",
        f"- model: `{report['model']}`; promptseg {report['promptseg_version']}; {report['processes']} process(es)",
        f"- {report['n_samples']} expressions, {report['n_no_target']} without a target",
        f"- {report['seconds_per_expression']:.3f} s per expression",
        "",
        "| expressions | n | cIoU | gIoU | N-acc | T-acc |",
        "| --- | --- | --- | --- | --- | --- |",
        *[f"| {name} | {r['n_samples']} | {pct(r['ciou'])} | {pct(r['giou'])} | {pct(r['n_acc'])} | {pct(r['t_acc'])} |"
          for name, r in [("all", report), *report.get("per_kind", {}).items()]],
        "",
    ])
