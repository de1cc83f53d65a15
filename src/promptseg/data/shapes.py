"""The bundled procedural benchmarks, rendered with exact per-pixel ground truth: "shapes" and "scenes".

shapes (`data/classnames/shapes.txt`): the four background words (grass, sand, water, sky) then the three shapes;
there is no separate background class: each image's background is a named label. 64x64 images.

scenes (`data/classnames/scenes.txt`): 7 stuff classes (sky, grass, sand, water, road, snow, mountain) then 15
thing classes, synonyms on each line (`promptseg.data.scenes_world`). 128x128 images. Every pixel has a class.
"""

from __future__ import annotations

from importlib import import_module

from PIL import Image

from promptseg.data.base import Sample, SegDataset, bundled_class_names, read_class_names


class RenderedDataset(SegDataset):
    """`n` samples of a split of a procedural world ("test" by default: never seen in training).

    Args:
        split (`str`, defaults to "test"): "train", "val" or "test".
        n (`int`, defaults to 300): number of images (indices 0..n-1 of the split).
        size (`int`, *optional*): rendered size in pixels (the world's own size by default).
        class_names_file (`str`, *optional*): your own class-name file (one line per class, same order).
    """

    name = ""
    world = ""
    """The world's module (`CLASS_NAMES`, `render_sample(split, index, size)`), imported when first used."""
    default_size = 64

    def __init__(self, split: str = "test", n: int = 300, size: int | None = None,
                 class_names_file: str | None = None):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.split, self.n, self.size = split, n, size or self.default_size
        self.class_names = read_class_names(class_names_file) if class_names_file else bundled_class_names(self.name)
        classes = import_module(self.world).CLASS_NAMES
        if len(self.class_names) != len(classes):
            raise ValueError(f"{class_names_file} lists {len(self.class_names)} classes; {self.name} has {len(classes)}")
        self.background = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.n:
            raise IndexError(index)
        sample = import_module(self.world).render_sample(self.split, index, self.size)
        return Sample(image=Image.fromarray(sample.image), label=sample.class_map, id=f"{self.split}_{index:05d}")


class ShapesDataset(RenderedDataset):
    """The shapes world (`promptseg.data.shapes_world`)."""

    name, world, default_size = "shapes", "promptseg.data.shapes_world", 64


class ScenesDataset(RenderedDataset):
    """The scenes world (`promptseg.data.scenes_world`)."""

    name, world, default_size = "scenes", "promptseg.data.scenes_world", 128
