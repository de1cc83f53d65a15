"""The bundled "shapes" benchmark: rendered test images with exact per-pixel ground truth.

Classes (`data/classnames/shapes.txt`): the four background words (grass, sand, water, sky) then the three shapes.
There is no separate background class: each image's background is one of the background words, a named label.
"""

from __future__ import annotations

from PIL import Image

from promptseg.data.base import Sample, SegDataset, bundled_class_names, read_class_names
from promptseg.data.shapes_world import CLASS_NAMES, render_sample


class ShapesDataset(SegDataset):
    """`n` samples of a split of the shapes world ("test" by default: never seen in training).

    Args:
        split (`str`, defaults to "test"): "train", "val" or "test".
        n (`int`, defaults to 300): number of images (indices 0..n-1 of the split).
        size (`int`, defaults to 64): rendered size in pixels.
        class_names_file (`str`, *optional*): your own class-name file (7 lines, same order).
    """

    name = "shapes"

    def __init__(self, split: str = "test", n: int = 300, size: int = 64, class_names_file: str | None = None):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.split, self.n, self.size = split, n, size
        self.class_names = read_class_names(class_names_file) if class_names_file else bundled_class_names("shapes")
        if len(self.class_names) != len(CLASS_NAMES):
            raise ValueError(f"{class_names_file} lists {len(self.class_names)} classes; shapes has {len(CLASS_NAMES)}")
        self.background = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.n:
            raise IndexError(index)
        sample = render_sample(self.split, index, self.size)
        return Sample(image=Image.fromarray(sample.image), label=sample.class_map, id=f"{self.split}_{index:05d}")
