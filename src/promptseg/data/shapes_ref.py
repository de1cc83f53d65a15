"""The shapes world's referring expressions as a referring-segmentation dataset (`shapes_ref`).

Each sample is one expression with the union mask of the instances it refers to, gRefCOCO-style: "the red
circle" (one target), "the square left of the triangle" (a relation), "the circles" / "the red shapes" (several
targets), and one expression per image whose colour and shape are not in it (no target: an empty mask). Expressions
are taken image by image (indices 0, 1, ... of the split) until `n` are collected, so the first `n` are always the
same; the test split is never seen in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from promptseg.data.shapes_world import render_sample


@dataclass
class RefSample:
    """One referring sample.

    Attributes:
        image (`PIL.Image.Image`): the RGB image.
        expression (`str`): the referring expression.
        mask (`np.ndarray`): HxW bool, the union of the referred instances (all False for a no-target expression).
        id (`str`): a unique id ("test_00003_2": image 3, its expression 2).
    """

    image: Image.Image
    expression: str
    mask: np.ndarray
    id: str


class ShapesRefDataset:
    """The first `n` referring expressions of a split of the shapes world ("test" by default).

    Args:
        split (`str`, defaults to "test"): "train", "val" or "test".
        n (`int`, defaults to 300): number of expressions.
        size (`int`, defaults to 64): rendered size in pixels.
    """

    name = "shapes_ref"

    def __init__(self, split: str = "test", n: int = 300, size: int = 64):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.split, self.size = split, size
        self.index: list[tuple[int, int]] = []
        image = 0
        while len(self.index) < n:
            count = len(render_sample(split, image, size).referring)
            self.index += [(image, j) for j in range(count)]
            image += 1
        del self.index[n:]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> RefSample:
        if not 0 <= k < len(self.index):
            raise IndexError(k)
        image, j = self.index[k]
        sample = render_sample(self.split, image, self.size)
        expression, ids = sample.referring[j]
        return RefSample(
            image=Image.fromarray(sample.image),
            expression=expression,
            mask=np.isin(sample.instance_map, ids) if ids else np.zeros(sample.instance_map.shape, bool),
            id=f"{self.split}_{image:05d}_{j}",
        )
