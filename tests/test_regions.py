"""Connected regions: the run-based labelling against a plain flood fill, boxes, and region order."""

from __future__ import annotations

import numpy as np
import pytest

from promptseg.io.regions import bounding_box, connected_components, regions


def flood_fill(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The definition: 4-connected flood fill from each unlabelled pixel in raster order."""
    labels = np.zeros(mask.shape, np.int32)
    count = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        count += 1
        labels[y0, x0] = count
        stack = [(y0, x0)]
        while stack:
            y, x = stack.pop()
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = count
                    stack.append((ny, nx))
    return labels, count


@pytest.mark.parametrize("density", [0.3, 0.5, 0.6, 0.8])
def test_run_labelling_equals_a_flood_fill_on_random_masks(density):
    rng = np.random.default_rng(int(density * 10))
    for _ in range(20):
        mask = rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30)))) < density
        assert [a.tolist() for a in connected_components(mask)[:1]] == [flood_fill(mask)[0].tolist()]
        assert connected_components(mask)[1] == flood_fill(mask)[1]


def test_diagonal_neighbours_are_separate_regions_and_boxes_are_pixel_edges():
    mask = np.zeros((6, 6), bool)
    mask[0:2, 0:2] = True
    mask[2, 2] = True  # touches the first block only diagonally
    mask[4:6, 3:6] = True
    labels, count = connected_components(mask)
    assert count == 3 and len(np.unique(labels[mask])) == 3 and (labels[~mask] == 0).all()
    found = regions(mask, min_area=2)
    assert [box for box, _ in found] == [(3, 4, 6, 6), (0, 0, 2, 2)]  # largest first; the single pixel is dropped
    assert bounding_box(found[0][1]) == (3, 4, 6, 6)
    with pytest.raises(ValueError, match="empty mask"):
        bounding_box(np.zeros((3, 3), bool))
