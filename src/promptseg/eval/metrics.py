"""Segmentation metrics the way the field computes them (mmseg's `IoUMetric`).

Intersections and unions are summed over the *whole dataset* per class, then IoU = sum(I) / sum(U) per class and
mIoU is the mean over classes with a non-empty union. This is not the mean of per-image IoUs (torchmetrics'
`MeanIoU`); it equals `MulticlassJaccardIndex(ignore_index=255, average="macro")`. Pixels whose ground truth is the
ignore index do not count; a prediction outside [0, num_classes) counts as wrong for the ground-truth class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """The (num_classes, num_classes) int64 confusion matrix of one image: rows ground truth, columns prediction.

    Predictions outside [0, num_classes) are dropped from the columns, so they add to the ground truth's union only.

    Raises:
        ValueError: `pred` and `gt` differ in shape (upsample the prediction to the ground truth's size first).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape; resize the prediction")
    keep = gt != ignore_index
    g = gt[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    if g.size and (g.min() < 0 or g.max() >= num_classes):
        raise ValueError(f"ground-truth values {sorted(int(v) for v in set(np.unique(g)) - set(range(num_classes)))} are not classes (num_classes={num_classes})")
    valid = (p >= 0) & (p < num_classes)
    matrix = np.bincount(g[valid] * num_classes + p[valid], minlength=num_classes**2).reshape(num_classes, num_classes)
    # predictions that are no class: they still count in the ground truth's area (union), never as a hit
    missed = np.bincount(g[~valid], minlength=num_classes)
    return _with_missed(matrix, missed)


def _with_missed(matrix: np.ndarray, missed: np.ndarray) -> np.ndarray:
    # Keep the missed area in an extra column so the matrix stays a plain sum over images.
    return np.concatenate([matrix, missed[:, None]], axis=1)


@dataclass
class Scores:
    """Dataset-level scores from a summed confusion matrix (`num_classes` x `num_classes + 1`).

    Attributes:
        iou (`np.ndarray`): per-class IoU, NaN where the class has no union.
        acc (`np.ndarray`): per-class accuracy (recall), NaN where the class has no ground truth.
        miou, macc, aacc (`float`): means over classes with a defined value, and overall pixel accuracy.
    """

    iou: np.ndarray
    acc: np.ndarray
    miou: float
    macc: float
    aacc: float


def scores(matrix: np.ndarray) -> Scores:
    """IoU, accuracy and their means from a confusion matrix summed over the dataset (see `confusion`)."""
    hits = np.diag(matrix[:, :-1]).astype(np.float64)
    gt_area = matrix.sum(axis=1).astype(np.float64)
    pred_area = matrix[:, :-1].sum(axis=0).astype(np.float64)
    union = gt_area + pred_area - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, hits / union, np.nan)
        acc = np.where(gt_area > 0, hits / gt_area, np.nan)
    total = gt_area.sum()
    return Scores(
        iou=iou,
        acc=acc,
        miou=float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        macc=float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
        aacc=float(hits.sum() / total) if total > 0 else float("nan"),
    )


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum formula (ties get average ranks)."""
    pos, neg = positive.sum(), (~positive).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    ranks[order] = np.arange(1, len(scores) + 1)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts):
        if count > 1:
            ranks[order[start : start + count]] = start + (count + 1) / 2
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))
