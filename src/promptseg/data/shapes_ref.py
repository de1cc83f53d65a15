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
        kind (`str`, *optional*): what the expression does (scenes_ref: "attribute", "relation", "part", ...);
            evaluation reports each kind apart.
    """

    image: Image.Image
    expression: str
    mask: np.ndarray
    id: str
    kind: str | None = None


class RenderedRefDataset:
    """The first `n` referring expressions of a split of a procedural world, taken image by image (indices 0, 1,
    ... of the split). A world's dataset says how many expressions an image has (`_kinds`) and builds one
    (`_sample`)."""

    name = ""
    default_size = 64

    def __init__(self, split: str = "test", n: int = 300, size: int | None = None):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.split, self.size = split, size or self.default_size
        self.index: list[tuple[int, int, str | None]] = []
        image = 0
        while len(self.index) < n:
            self.index += [(image, j, kind) for j, kind in enumerate(self._kinds(image))]
            image += 1
        del self.index[n:]

    def _kinds(self, image: int) -> list[str | None]:
        """The kind of each expression of image `image` (None where the world has no kinds)."""
        raise NotImplementedError

    def _sample(self, image: int, j: int) -> RefSample:
        raise NotImplementedError

    @property
    def kinds(self) -> list[str | None]:
        """Each expression's kind, in order."""
        return [kind for _, _, kind in self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> RefSample:
        if not 0 <= k < len(self.index):
            raise IndexError(k)
        image, j, _ = self.index[k]
        return self._sample(image, j)


class ShapesRefDataset(RenderedRefDataset):
    """The first `n` referring expressions of a split of the shapes world ("test" by default).

    Args:
        split (`str`, defaults to "test"): "train", "val" or "test".
        n (`int`, defaults to 300): number of expressions.
        size (`int`, defaults to 64): rendered size in pixels.
    """

    name = "shapes_ref"

    def _kinds(self, image: int) -> list[None]:
        return [None] * len(render_sample(self.split, image, self.size).referring)

    def _sample(self, image: int, j: int) -> RefSample:
        sample = render_sample(self.split, image, self.size)
        expression, ids = sample.referring[j]
        return RefSample(
            image=Image.fromarray(sample.image),
            expression=expression,
            mask=np.isin(sample.instance_map, ids) if ids else np.zeros(sample.instance_map.shape, bool),
            id=f"{self.split}_{image:05d}_{j}",
        )
