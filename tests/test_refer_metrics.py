"""Referring metrics against hand-computed cases, including no-target samples, and exact sharding."""

import numpy as np
import pytest

from promptseg.eval.refer_metrics import ReferScores


def _mask(cells, shape=(4, 4)):
    m = np.zeros(shape, bool)
    for r, c in cells:
        m[r, c] = True
    return m


def test_hand_computed_ciou_giou_and_accuracies():
    scores = ReferScores()
    # sample 1: truth 4 cells, prediction 2 of them + 2 outside -> I 2, U 6, IoU 1/3
    assert scores.add(_mask([(0, 0), (0, 1), (2, 2), (3, 3)]), _mask([(0, 0), (0, 1), (1, 0), (1, 1)])) == 1 / 3
    # sample 2: perfect, 1 cell -> I 1, U 1
    assert scores.add(_mask([(3, 0)]), _mask([(3, 0)])) == 1.0
    # sample 3: no target, predicted empty -> counts 1, adds nothing to I or U
    assert scores.add(_mask([]), _mask([])) == 1.0
    # sample 4: no target, 3 cells predicted -> counts 0, U grows by 3
    assert scores.add(_mask([(1, 1), (1, 2), (1, 3)]), _mask([])) == 0.0
    # sample 5: a target missed entirely -> IoU 0, I 0, U 2
    assert scores.add(_mask([]), _mask([(2, 0), (2, 1)])) == 0.0
    out = scores.summary()
    assert out["ciou"] == pytest.approx(3 / 12)  # (2 + 1) / (6 + 1 + 0 + 3 + 2)
    assert out["giou"] == pytest.approx((1 / 3 + 1 + 1 + 0 + 0) / 5)  # differs from cIoU: per sample
    assert out["n_acc"] == 0.5 and out["t_acc"] == pytest.approx(2 / 3)
    assert out["n_samples"] == 5 and out["n_no_target"] == 2


def test_shards_add_up_to_the_whole_and_bad_shapes_are_refused():
    rng = np.random.default_rng(0)
    pairs = [(rng.random((6, 5)) < 0.4, rng.random((6, 5)) < p) for p in (0.0, 0.3, 0.5, 0.0, 0.7, 0.2)]
    whole, first, second = ReferScores(), ReferScores(), ReferScores()
    for i, (pred, truth) in enumerate(pairs):
        whole.add(pred, truth)
        (first if i < 2 else second).add(pred, truth)
    merged = ReferScores.from_array(first.as_array() + second.as_array())
    assert merged.summary() == pytest.approx(whole.summary(), rel=1e-12)
    assert ReferScores().summary()["ciou"] is None  # nothing accumulated: no number
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(3, 3\)"):
        ReferScores().add(np.zeros((2, 2), bool), np.zeros((3, 3), bool))
