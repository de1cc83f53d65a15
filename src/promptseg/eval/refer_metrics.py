"""Referring-segmentation metrics: cIoU, gIoU, N-acc and T-acc, accumulated over samples (ReLA's evaluator).

- cIoU: sum of intersections / sum of unions over all samples (large objects weigh more).
- gIoU: mean of the per-sample IoU; a no-target sample (empty ground truth, gRefCOCO) scores 1 when predicted
  empty and 0 otherwise, and its predicted area joins the sum of unions.
- N-acc: the share of no-target samples predicted empty; T-acc: the share of target samples predicted non-empty.

Values are fractions in [0, 1] (the papers print 100x). The state is six numbers, so shards add up exactly
(`as_array` / `from_array`, summed across processes like the semantic confusion matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ReferScores:
    """Accumulated referring-segmentation counts; `add` one sample at a time, read `summary()`."""

    intersection: float = 0.0
    union: float = 0.0
    iou_sum: float = 0.0
    samples: float = 0.0
    no_target: float = 0.0
    no_target_empty: float = 0.0
    target_nonempty: float = 0.0

    def add(self, pred: np.ndarray, truth: np.ndarray) -> float:
        """Add one sample (HxW boolean masks of the same shape); returns its IoU (1/0 for a no-target sample).

        Raises:
            ValueError: the masks differ in shape.
        """
        pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
        if pred.shape != truth.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {truth.shape} must have the same shape")
        inter, union = float((pred & truth).sum()), float((pred | truth).sum())
        self.intersection += inter
        self.union += union
        self.samples += 1
        if truth.any():
            iou = inter / union
            self.target_nonempty += float(pred.any())
        else:
            self.no_target += 1
            iou = float(not pred.any())
            self.no_target_empty += iou
        self.iou_sum += iou
        return iou

    def as_array(self) -> np.ndarray:
        return np.array([self.intersection, self.union, self.iou_sum, self.samples, self.no_target,
                         self.no_target_empty, self.target_nonempty], np.float64)

    @classmethod
    def from_array(cls, values) -> ReferScores:
        return cls(*[float(v) for v in values])

    def summary(self) -> dict:
        """{"ciou", "giou", "n_acc", "t_acc", "n_samples", "n_no_target"}; a rate without samples is None."""
        targets = self.samples - self.no_target
        return {
            "ciou": self.intersection / self.union if self.union else None,
            "giou": self.iou_sum / self.samples if self.samples else None,
            "n_acc": self.no_target_empty / self.no_target if self.no_target else None,
            "t_acc": self.target_nonempty / targets if targets else None,
            "n_samples": int(self.samples),
            "n_no_target": int(self.no_target),
        }
