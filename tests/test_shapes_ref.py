"""The shapes referring dataset: fixed, at least 300 test expressions of every kind, masks from the instances."""

import numpy as np
import pytest

from promptseg.data.shapes_ref import ShapesRefDataset
from promptseg.data.shapes_world import COLOURS, render_sample


def test_three_hundred_test_expressions_of_every_kind_with_exact_masks():
    data = ShapesRefDataset(n=300)
    assert len(data) == 300 and len({data[k].id for k in range(300)}) == 300
    kinds = {"no target": 0, "several": 0, "relation": 0, "colour and shape": 0}
    for k in range(300):
        sample = data[k]
        image, j = (int(part) for part in sample.id.split("_")[1:])
        world = render_sample("test", image)
        expression, ids = world.referring[j]
        assert sample.expression == expression and sample.mask.shape == (64, 64)
        assert np.array_equal(sample.mask, np.isin(world.instance_map, ids) & (world.instance_map > 0))
        assert np.array_equal(np.asarray(sample.image), world.image)
        if not ids:
            kinds["no target"] += 1
            assert not sample.mask.any()
        elif len(ids) > 1:
            kinds["several"] += 1
        elif " of the " in expression:
            kinds["relation"] += 1
        elif expression.split()[1] in COLOURS:
            kinds["colour and shape"] += 1
    assert all(count >= 10 for count in kinds.values()), kinds
    assert [data[k].id for k in range(5)] == [ShapesRefDataset(n=5)[k].id for k in range(5)]  # the same first n
    with pytest.raises(IndexError):
        data[300]
    with pytest.raises(ValueError, match="n must be >= 1"):
        ShapesRefDataset(n=0)
