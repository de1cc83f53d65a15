import numpy as np
import pytest

from promptseg.eval.metrics import confusion, scores


def test_hand_computed_two_images_accumulated_not_averaged():
    # image 1: class 0 everywhere but one pixel of class 1; predicted all 0 -> per-image IoU of class 1 is 0
    gt1 = np.array([[0, 0], [0, 1]])
    pred1 = np.array([[0, 0], [0, 0]])
    # image 2: class 1 in three pixels, predicted right; one ignored pixel predicted as 1
    gt2 = np.array([[1, 1], [1, 255]])
    pred2 = np.array([[1, 1], [1, 1]])
    total = confusion(pred1, gt1, 2) + confusion(pred2, gt2, 2)
    s = scores(total)
    # class 0: I = 3, U = 3 + 4 - 3 = 4 (pred 0 on 4 pixels); class 1: I = 3, U = 4 + 3 - 3 = 4
    assert np.allclose(s.iou, [3 / 4, 3 / 4])
    assert np.isclose(s.miou, 0.75)
    # mean of per-image IoUs would differ: image 1 has class-1 IoU 0
    assert np.allclose(s.acc, [1.0, 3 / 4]) and np.isclose(s.macc, 0.875)
    assert np.isclose(s.aacc, 6 / 7)


def test_classes_without_union_are_skipped_and_non_class_predictions_count_as_misses():
    gt = np.array([[0, 0, 2, 2]])
    pred = np.array([[0, 255, 2, 0]])  # 255: "no class" prediction (e.g. thresholded background on VOC20)
    s = scores(confusion(pred, gt, 3))
    assert np.isnan(s.iou[1]) and np.isnan(s.acc[1])
    assert np.allclose(s.iou[[0, 2]], [1 / 3, 1 / 2])  # class 0: I=1, U=2+2-1=3; class 2: I=1, U=2+1-1=2
    assert np.isclose(s.miou, (1 / 3 + 1 / 2) / 2)


def test_matches_torchmetrics_multiclass_jaccard_when_available():
    torchmetrics = pytest.importorskip("torchmetrics")
    import torch

    rng = np.random.default_rng(0)
    metric = torchmetrics.classification.MulticlassJaccardIndex(num_classes=5, ignore_index=255, average="macro")
    total = 0
    for _ in range(4):
        gt = rng.integers(0, 5, (7, 9))
        gt[rng.random(gt.shape) < 0.1] = 255
        pred = rng.integers(0, 5, (7, 9))
        metric.update(torch.from_numpy(pred), torch.from_numpy(gt))
        total = total + confusion(pred, gt, 5)
    assert np.isclose(scores(total).miou, float(metric.compute()), atol=1e-6)


def test_shape_mismatch_and_bad_ground_truth_are_errors():
    with pytest.raises(ValueError, match="resize the prediction"):
        confusion(np.zeros((2, 2)), np.zeros((3, 2)), 2)
    with pytest.raises(ValueError, match=r"\[7\]"):
        confusion(np.zeros((1, 2)), np.array([[0, 7]]), 2)
