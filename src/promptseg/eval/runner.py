"""Evaluate a method on a dataset: resumable, sharded across processes, with a report.

    promptseg eval --dataset voc21 --root DATA --method baseline --model ID --out runs/voc21
    accelerate launch --num_processes 4 -m promptseg.cli eval ...   # the same, sharded over 4 processes

Each image's confusion matrix is written to ``OUT/images/<id>.json`` as soon as it is computed (atomically), so a
rerun after a crash or kill skips the images already done and ends with exactly the numbers of an uninterrupted
run. Under `accelerate` (or `torchrun`), each process takes a contiguous shard of the images (each image exactly
once, no padding) and the confusion matrices are summed across processes before the report is written by the main
process. All processes must see the same OUT folder for resuming; the sum itself goes through torch.distributed.

An image the pipeline fails on (an error of any kind) is recorded with its error and the run goes on; the report
lists the failures (`n_failed`, `failed`: id and error) and its numbers cover the other images; `promptseg eval`
then exits 1. A rerun tries the failed images again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from promptseg import __version__
from promptseg.data import get_dataset
from promptseg.eval.metrics import confusion, scores
from promptseg.eval.runs import Shard, atomic_write, check_run_file
from promptseg.methods.batching import check_batch_size
from promptseg.models import DEFAULT_MODEL
from promptseg.text import parse_labels

NAME_MODES = ("oracle", "all")


@dataclass
class EvalRun:
    """What to evaluate. `names`: "oracle" (the ground-truth classes of each image, as InvSeg/DiffSegmenter
    effectively do after filtering), "all" (every dataset class), or a JSON file mapping image ids to class names."""

    dataset: str
    method: str = "baseline"
    model: str = DEFAULT_MODEL
    out: str = "eval_out"
    root: str | None = None
    split: str | None = None
    limit: int | None = None
    names: str = "oracle"
    background: str | None = None
    """How a dataset with a background class (VOC21, Context60, COCO-Object) judges it: "threshold" (the
    references' protocol: the background line is not prompted, and a pixel whose best score is below the method's
    `background_threshold` is background; FastSeg gets the dataset's FA-Seg value unless one is set) or "prompt"
    (the background line is offered like any class). None: "threshold" for a method that has a threshold, "prompt"
    for one that has none (DPSeg). Datasets without a background class ignore it."""
    settings: dict = field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None
    offload: str | None = None
    """"model" or "sequential": weights in CPU memory, run on `device` (`promptseg.models.offload`)."""
    quantize: str | None = None
    """"int8": the denoiser's weights in int8 (`promptseg.models.quantize`)."""
    class_names_file: str | None = None
    save_vis: int = 0
    filter: str | None = None
    """Class filter run on the offered names before the method: a registered name, "none", or None for the
    default: none with oracle names (they are the truth already), else the filter the model recommends."""
    filter_settings: dict = field(default_factory=dict)
    refine: str | None = None
    """Refiner run on the method's label map (`promptseg.refiners`): a registered name, "none", or None for the one
    the model recommends."""
    refine_settings: dict = field(default_factory=dict)
    batch_size: int = 1
    """Images segmented together (`Pipeline.segment_batch`): one denoiser forward for the batch where the method
    allows it; the numbers equal a run of one image at a time (to float rounding)."""


def _sparse(matrix: np.ndarray) -> list[list[int]]:
    rows, cols = np.nonzero(matrix)
    return [[int(r), int(c), int(matrix[r, c])] for r, c in zip(rows, cols)]


def _dense(entries: list[list[int]], shape: tuple[int, int]) -> np.ndarray:
    matrix = np.zeros(shape, np.int64)
    for r, c, v in entries:
        matrix[r, c] = v
    return matrix


def _candidates(run: EvalRun, dataset) -> dict[str, list[str]] | None:
    if run.names in NAME_MODES:
        return None
    path = Path(run.names)
    if not path.is_file():
        raise ValueError(f"--names must be one of {NAME_MODES} or a JSON file of per-image class names; got {run.names!r}")
    table = json.loads(path.read_text())
    known = {s.strip().lower() for line in dataset.class_names for s in line.split(",")}
    unknown = sorted({n for names in table.values() for n in names if n.strip().lower() not in known})
    if unknown:
        raise ValueError(f"{path}: class names not in the dataset's class list: {unknown[:10]}")
    return table


def background_protocol(run: EvalRun, dataset, config) -> tuple[str | None, dict]:
    """(how the background is judged: "threshold", "prompt" or None for a dataset without one; the method's
    settings for the run) as `EvalRun.background` describes; `config` is the method's settings as the pipeline
    resolved them (defaults, the model's, the caller's)."""
    import dataclasses

    settings = dict(run.settings)
    if dataset.background is None:
        return None, settings
    if run.background not in (None, "threshold", "prompt"):
        raise ValueError(f"background must be 'threshold' or 'prompt', got {run.background!r}")
    threshold = getattr(config, "background_threshold", None)
    mode = run.background or ("threshold" if threshold is not None else "prompt")
    if mode == "prompt":
        return mode, settings
    default = {f.name: f.default for f in dataclasses.fields(config)}.get("background_threshold")
    if run.method == "fastseg" and "background_threshold" not in settings and threshold == default:
        settings["background_threshold"] = threshold = dataset.reference_background_threshold
    if threshold is None:
        raise ValueError(f"background='threshold' needs a background_threshold for {run.method}: set one "
                         "(--set background_threshold=0.5) or use --background prompt")
    return mode, settings


def _class_ids_for(names: list[str], dataset) -> list[int]:
    """Dataset class indices for names that match any synonym of a class line."""
    lookup = {}
    for index, line in enumerate(dataset.class_names):
        for synonym in line.split(","):
            lookup.setdefault(synonym.strip().lower(), index)
    return sorted({lookup[n.strip().lower()] for n in names})


def evaluate(run: EvalRun, progress: bool = True, backbone=None) -> dict | None:
    """Run (or resume) an evaluation; returns the report on the main process (None on the others).

    `backbone`, if given, is used instead of loading `run.model` (it must be that model: sweeps reuse one load).
    """
    from promptseg.pipeline import Pipeline

    dataset = get_dataset(run.dataset, run.root, run.class_names_file, **({"split": run.split} if run.split else {}))

    def pipeline(settings: dict) -> Pipeline:
        return Pipeline(run.model, run.method, settings=settings, filter=run.filter,
                        filter_settings=run.filter_settings, refine=run.refine, refine_settings=run.refine_settings,
                        labels_known=run.names == "oracle", device=run.device, dtype=run.dtype, backbone=backbone,
                        offload=run.offload, quantize=run.quantize)

    pipe = pipeline(run.settings)
    background, settings = background_protocol(run, dataset, pipe.method.config)
    if settings != run.settings:
        pipe = pipeline(settings)
    candidates = _candidates(run, dataset)
    n = len(dataset) if run.limit is None else min(run.limit, len(dataset))
    if n < 1:
        raise ValueError(f"nothing to evaluate: limit {run.limit}, dataset size {len(dataset)}")
    num_classes = len(dataset.class_names)
    labels = parse_labels(dataset.class_names, shared_synonyms=True)  # one Label per class; `Label.name` is what results report
    shape = (num_classes, num_classes + 1)
    out = Path(run.out)
    per_image = out / "images"
    shard = Shard()
    signature = {"dataset": run.dataset, "split": run.split, "names": run.names, "background": background,
                 **pipe.signature,
                 "class_names": dataset.class_names}
    if shard.is_main:
        per_image.mkdir(parents=True, exist_ok=True)
        check_run_file(out, signature)
    shard.barrier()

    mine = shard.indices(n)
    total = np.zeros(shape, np.int64)
    seconds = 0.0
    filter_counts = np.zeros(5)  # true positives, kept, present, sum of per-image precision, of per-image recall
    bar = None
    if progress and shard.is_main:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), unit="image", desc=f"{run.method} on {run.dataset}", dynamic_ncols=True)
    vis_dir = out / "vis"
    failures = []
    check_batch_size(run.batch_size)
    for first in range(0, len(mine), int(run.batch_size)):
        chunk = []  # (index, sample, class ids) of the images not done yet
        records = {}
        for i in mine[first:first + int(run.batch_size)]:
            sample = dataset[i]
            record_path = per_image / f"{sample.id}.json"
            record = json.loads(record_path.read_text()) if record_path.exists() else None
            if record is None or "error" in record:  # a resumed run tries a failed image again
                chunk.append((i, sample, _offered(run, dataset, sample, candidates, background, num_classes)))
            else:
                records[i] = record
        for (i, sample, _), (record, pred) in zip(chunk, _evaluate_images(pipe, chunk, dataset, labels)):
            atomic_write(per_image / f"{sample.id}.json", json.dumps(record))
            records[i] = record
            if pred is not None and i < run.save_vis:
                from promptseg.eval.vis import save_comparison

                vis_dir.mkdir(exist_ok=True)
                save_comparison(sample.image, sample.label, pred, vis_dir / f"{sample.id}.png")
        for i in sorted(records):
            record = records[i]
            if bar is not None:
                bar.update(1)
            if "error" in record:
                failures.append({"id": record["id"], "error": record["error"]})
                continue
            total += _dense(record["confusion"], shape)
            seconds += record["seconds"]
            filter_counts += _filter_counts(record)
    if bar is not None:
        bar.close()
    atomic_write(out / f"failures.{shard.rank}.json", json.dumps(failures))

    total = shard.sum(total).round().astype(np.int64)
    seconds, count = shard.sum(np.array([seconds, len(mine) - len(failures)]))
    filter_counts = shard.sum(filter_counts)
    shard.barrier()
    if not shard.is_main:
        return None
    result = scores(total)
    names = [label.name for label in labels]
    failed = [f for rank in range(shard.world) for f in json.loads((out / f"failures.{rank}.json").read_text())]
    report = {
        "dataset": run.dataset,
        "split": getattr(dataset, "split", run.split),
        "method": run.method,
        "model": run.model,
        "n_images": int(count),
        "n_failed": len(failed),
        "failed": failed,
        "names": run.names,
        "miou": result.miou,
        "macc": result.macc,
        "aacc": result.aacc,
        "per_class_iou": {name: _num(v) for name, v in zip(names, result.iou)},
        "per_class_acc": {name: _num(v) for name, v in zip(names, result.acc)},
        "seconds_per_image": float(seconds / max(count, 1)),
        "settings": pipe.method.settings,
        **({"backbone_settings": pipe.backbone_settings} if pipe.backbone_settings else {}),
        "filter": pipe.filter.name,
        "filter_settings": pipe.filter.settings,
        "refine": pipe.refiner.name,
        "refine_settings": pipe.refiner.settings,
        **_filter_scores(filter_counts, count),
        "processes": shard.world,
        "promptseg_version": __version__,
        **_seen_unseen(run.method, pipe.method.config, names, result.iou),
    }
    atomic_write(out / "report.json", json.dumps(report, indent=1))
    atomic_write(out / "report.md", markdown_report(report))
    return report


def _offered(run: EvalRun, dataset, sample, candidates, background, num_classes: int) -> list[int]:
    """The class ids offered for `sample`: its JSON candidates, its ground truth's (oracle) or every class; the
    background line left out when the method's threshold judges background."""
    if candidates is not None:
        class_ids = _class_ids_for(candidates.get(sample.id, []), dataset)
    elif run.names == "oracle":
        class_ids = dataset.present_classes(sample.label)
    else:
        class_ids = list(range(num_classes))
    if background == "threshold":  # the method's threshold says background; its line is not prompted
        class_ids = [c for c in class_ids if c != dataset.background]
    return class_ids


def _evaluate_images(pipe, chunk: list, dataset, labels) -> list[tuple[dict, np.ndarray | None]]:
    """(record, predicted map) of each (index, sample, class ids) of `chunk`, the images with classes to offer
    segmented together (`Pipeline.segment_each`: one image's error is its own); each image's seconds are its share
    of the batch."""
    offered = [item for item in chunk if item[2]]
    start = time.perf_counter()
    found = pipe.segment_each([s.image for _, s, _ in offered], [[labels[c] for c in ids] for _, _, ids in offered])
    share = (time.perf_counter() - start) / max(len(offered), 1)
    results = {i: (result, share) for (i, _, _), result in zip(offered, found)}
    out = []
    for i, sample, class_ids in chunk:
        done = results.get(i)
        try:
            if done is not None and isinstance(done[0], Exception):
                raise done[0]
            out.append(_evaluate_image(pipe, sample, dataset, labels, class_ids, done))
        except Exception as err:  # one image's failure must not end the run: it is recorded and reported
            out.append(({"id": sample.id, "error": f"{type(err).__name__}: {err}"}, None))
    return out


def _evaluate_image(pipe, sample, dataset, labels, class_ids: list[int], done=None) -> tuple[dict, np.ndarray]:
    """One image through the pipeline (or its `done` (result, seconds) from a batch): its record (confusion matrix,
    seconds, classes offered and kept) and the predicted map in dataset class ids."""
    start = time.perf_counter()
    kept = []
    if class_ids:
        result = done[0] if done is not None else pipe.segment(sample.image, [labels[c] for c in class_ids])
        ids = {labels[c].name: c for c in class_ids}
        kept = sorted(ids[name] for name in result.extra["filter"]["kept"])
        bg = dataset.background if dataset.background is not None else dataset.ignore_index
        lut = np.array([ids.get(name, bg if name == "background" else dataset.ignore_index) for name in result.labels])
        pred = lut[result.label_map]
    else:  # no candidate: nothing predicted
        pred = np.full(sample.label.shape, dataset.ignore_index, np.int64)
    elapsed = time.perf_counter() - start + (done[1] if done is not None else 0.0)
    matrix = confusion(pred, sample.label, len(dataset.class_names), dataset.ignore_index)
    record = {"id": sample.id, "seconds": elapsed, "classes": class_ids, "kept": kept,
              "present": dataset.present_classes(sample.label), "confusion": _sparse(matrix)}
    return record, pred


def _seen_unseen(method: str, config, names: list[str], iou: np.ndarray) -> dict:
    """For a trained method (one whose class has `seen_classes(config)`): mIoU over the classes its weights saw in
    training, over the others, and their harmonic mean (hIoU, as zero-shot segmentation reports); {} otherwise."""
    from promptseg.methods.base import METHODS

    method_cls = METHODS.get(method)[0]
    seen = method_cls.seen_classes(config) if hasattr(method_cls, "seen_classes") else None
    if seen is None:
        return {}
    is_seen = np.array([name in seen for name in names])
    valid = ~np.isnan(iou)
    groups = {key: iou[mask & valid] for key, mask in (("miou_seen", is_seen), ("miou_unseen", ~is_seen))}
    out = {key: float(v.mean()) if v.size else None for key, v in groups.items()}
    s, u = out["miou_seen"], out["miou_unseen"]
    out["hiou"] = 2 * s * u / (s + u) if s is not None and u is not None and s + u > 0 else None
    out["seen_classes"] = [n for n in names if n in seen]
    out["unseen_classes"] = [n for n in names if n not in seen]
    return out


def _filter_counts(record: dict) -> np.ndarray:
    """One image's filter counts against its ground-truth classes (kept = what the method was given)."""
    kept, present = set(record["kept"]), set(record["present"])
    hits = len(kept & present)
    precision = hits / len(kept) if kept else float(not present)
    recall = hits / len(present) if present else 1.0
    return np.array([hits, len(kept), len(present), precision, recall], np.float64)


def _filter_scores(counts: np.ndarray, n: float) -> dict:
    """Precision and recall of the kept classes against the present ones: mean over images, and pooled."""
    hits, kept, present, precision, recall = counts
    return {
        "filter_precision": float(precision / max(n, 1)),
        "filter_recall": float(recall / max(n, 1)),
        "filter_precision_pooled": float(hits / kept) if kept else None,
        "filter_recall_pooled": float(hits / present) if present else None,
    }


def _num(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def markdown_report(report: dict) -> str:
    """A markdown summary: the headline numbers, then per-class IoU and accuracy."""
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [
        f"# {report['method']} on {report['dataset']}",
        "",
        f"- model: `{report['model']}`; class names offered: {report['names']}; promptseg {report['promptseg_version']}",
        f"- images: {report['n_images']}; seconds per image: {report['seconds_per_image']:.3f}",
        *([f"- **{report['n_failed']} image(s) failed** and are not counted: "
           + "; ".join(f"{f['id']} ({f['error']})" for f in report["failed"][:10])] if report.get("n_failed") else []),
        f"- **mIoU {pct(report['miou'])}**, mAcc {pct(report['macc'])}, pixel accuracy {pct(report['aacc'])}",
        f"- class filter: `{report['filter']}`; per-image precision {pct(report['filter_precision'])}, recall "
        f"{pct(report['filter_recall'])} (kept classes against the ground truth's)",
        *([f"- seen classes (in the weights' training): mIoU {pct(report['miou_seen'])}; unseen "
           f"({', '.join(report['unseen_classes'])}): mIoU {pct(report['miou_unseen'])}; hIoU {pct(report['hiou'])}"]
          if "miou_seen" in report else []),
        f"- settings: `{json.dumps(report['settings'], sort_keys=True)}`",
        *([f"- backbone settings: `{json.dumps(report['backbone_settings'], sort_keys=True)}`"]
          if "backbone_settings" in report else []),
        f"- filter settings: `{json.dumps(report['filter_settings'], sort_keys=True)}`",
        f"- refiner: `{report.get('refine', 'none')}`, settings `{json.dumps(report.get('refine_settings', {}), sort_keys=True)}`",
        "",
        "| class | IoU | Acc |",
        "| --- | --- | --- |",
    ]
    for name, iou in report["per_class_iou"].items():
        lines.append(f"| {name} | {pct(iou)} | {pct(report['per_class_acc'][name])} |")
    return "\n".join(lines) + "\n"
