"""The bundled procedural benchmarks, rendered with exact per-pixel ground truth: "shapes" and "scenes".

shapes (`data/classnames/shapes.txt`): the four background words (grass, sand, water, sky) then the three shapes;
there is no separate background class: each image's background is a named label. 64x64 images.

scenes (`data/classnames/scenes.txt`): 7 stuff classes (sky, grass, sand, water, road, snow, mountain) then 15
thing classes, synonyms on each line (`promptseg.data.scenes_world`). 128x128 images. Every pixel has a class.
"""

from __future__ import annotations

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
    default_size = 64

    def __init__(self, split: str = "test", n: int = 300, size: int | None = None,
                 class_names_file: str | None = None):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.split, self.n, self.size = split, n, size or self.default_size
        self.class_names = read_class_names(class_names_file) if class_names_file else bundled_class_names(self.name)
        if len(self.class_names) != len(self.world_classes()):
            raise ValueError(f"{class_names_file} lists {len(self.class_names)} classes; {self.name} has "
                             f"{len(self.world_classes())}")
        self.background = None

    def world_classes(self) -> tuple[str, ...]:
        raise NotImplementedError

    def render(self, index: int):
        raise NotImplementedError

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.n:
            raise IndexError(index)
        sample = self.render(index)
        return Sample(image=Image.fromarray(sample.image), label=sample.class_map, id=f"{self.split}_{index:05d}")


class ShapesDataset(RenderedDataset):
    """The shapes world (`promptseg.data.shapes_world`)."""

    name = "shapes"
    default_size = 64

    def world_classes(self) -> tuple[str, ...]:
        from promptseg.data.shapes_world import CLASS_NAMES

        return CLASS_NAMES

    def render(self, index: int):
        from promptseg.data.shapes_world import render_sample

        return render_sample(self.split, index, self.size)


class ScenesDataset(RenderedDataset):
    """The scenes world (`promptseg.data.scenes_world`)."""

    name = "scenes"
    default_size = 128

    def world_classes(self) -> tuple[str, ...]:
        from promptseg.data.scenes_world import CLASS_NAMES

        return CLASS_NAMES

    def render(self, index: int):
        from promptseg.data.scenes_world import render_sample

        return render_sample(self.split, index, self.size)
