"""Masks as polygons (`promptseg.io.polygons`): read back by the readers of each convention, pycocotools for COCO's
pixel-corner polygons and OpenCV's fill (Ultralytics', supervision's) for the YOLO tools' pixel-centre ones."""

from __future__ import annotations

import numpy as np
import pytest

from promptseg.io.polygons import mask_polygons, part_outlines


def blobs(seed: int, shape=(40, 56)) -> np.ndarray:
    """A random mask of several parts, holes and one-pixel features: thresholded smoothed noise."""
    rng = np.random.default_rng(seed)
    noise = rng.random(shape)
    smooth = sum(np.roll(np.roll(noise, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    return smooth > 0.5 if seed % 2 else noise > 0.5


def test_a_ring_of_corners_around_a_part_and_its_hole():
    mask = np.zeros((8, 10), bool)
    mask[1:7, 2:9] = True
    mask[3:5, 4:6] = False
    outer, holes = part_outlines(mask)
    assert sorted(map(tuple, outer.tolist())) == [(2, 1), (2, 7), (9, 1), (9, 7)]
    assert len(holes) == 1 and sorted(map(tuple, holes[0].tolist())) == [(4, 3), (4, 5), (6, 3), (6, 5)]
    with pytest.raises(ValueError, match="one 4-connected part, found 3"):
        part_outlines(np.eye(3, dtype=bool))  # touching at corners: two parts
    assert len(mask_polygons(np.eye(3, dtype=bool))) == 3


@pytest.mark.parametrize("seed", range(12))
def test_pycocotools_rasterises_the_corner_polygons_to_the_same_pixels(seed):
    from pycocotools import mask as coco_mask

    mask = blobs(seed)
    rings = mask_polygons(mask)
    rles = coco_mask.frPyObjects([r.ravel().tolist() for r in rings], *mask.shape)
    assert np.array_equal(coco_mask.decode(coco_mask.merge(rles)).astype(bool), mask)


@pytest.mark.parametrize("seed", range(12))
def test_supervision_fills_the_centre_polygons_to_the_same_pixels(seed):
    from supervision.detection.utils.converters import polygon_to_mask

    mask = blobs(seed)
    filled = np.zeros(mask.shape, bool)
    for ring in mask_polygons(mask, centres=True):
        filled |= polygon_to_mask(np.round(ring).astype(np.int32), (mask.shape[1], mask.shape[0])).astype(bool)
    # exact but where a zero-width cut, drawn by the fill as a line, crosses a hole's pixels diagonally
    assert (filled != mask).sum() <= 0.002 * mask.size
