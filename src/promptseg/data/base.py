"""What every evaluation dataset gives: samples of (image, label map, id) and its class names.

A dataset's class names come from a file with one class a line and commas separating synonyms of that class
(the field's convention, e.g. a VOC background line of stuff words). Label maps are HxW uint8 with class indices
into `class_names` and `ignore_index` (255) for pixels that do not count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IGNORE_INDEX = 255
CLASSNAMES_DIR = Path(__file__).parent / "classnames"


@dataclass
class Sample:
    """One evaluation sample.

    Attributes:
        image (`PIL.Image.Image`): RGB.
        label (`np.ndarray`): HxW uint8 ground truth at the image's size; `IGNORE_INDEX` where nothing counts.
        id (`str`): a stable identifier (file stem), used for resuming and per-image results.
    """

    image: Image.Image
    label: np.ndarray
    id: str


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a file: one class a line, commas separating synonyms; blank lines and `#` comments skipped.

    A name that is no file but a bundled list (``data/classnames/NAME.txt``, e.g. "scenes_rare") reads that list."""
    path = Path(path)
    if not path.is_file() and (CLASSNAMES_DIR / f"{path}.txt").is_file() and len(path.parts) == 1:
        path = CLASSNAMES_DIR / f"{path}.txt"
    if not path.is_file():
        bundled = sorted(p.stem for p in CLASSNAMES_DIR.glob("*.txt"))
        raise FileNotFoundError(f"class-name file {path} does not exist (bundled lists: {', '.join(bundled)})")
    names = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"class-name file {path} lists no classes")
    return names


def bundled_class_names(name: str) -> list[str]:
    """The class-name file shipped for dataset `name` (``data/classnames/NAME.txt``)."""
    return read_class_names(CLASSNAMES_DIR / f"{name}.txt")


def read_index_png(path: str | Path) -> np.ndarray:
    """A label PNG as an HxW uint8 array of indices (palette PNGs are read as indices, never as colours)."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ValueError(f"{path}: expected a palette or single-channel label PNG, got mode {image.mode}")
        return np.array(image, dtype=np.uint8)


def read_split_file(path: str | Path) -> list[str]:
    """Image ids from an ImageSets split file, one a line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist: is the dataset root right?")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class SegDataset:
    """Base of the evaluation datasets: subclasses set `name`, `class_names`, `background` and implement
    `__len__` and `__getitem__`.

    Attributes:
        name (`str`): the dataset's name, e.g. "voc21".
        class_names (`list[str]`): one entry per class index, commas separating synonyms.
        background (`int | None`): the index of the background class, if the dataset has one.
    """

    name: str = ""
    class_names: list[str] = []
    background: int | None = None
    reference_background_threshold: float | None = None
    """FA-Seg's background threshold for this dataset (its published code: 0.55 VOC, 0.5 Context, 0.6 COCO-Object),
    what `eval` gives FastSeg when the background is judged by threshold and no threshold was set."""
    ignore_index: int = IGNORE_INDEX

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        raise NotImplementedError

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def present_classes(self, label: np.ndarray) -> list[int]:
        """Class indices present in a ground-truth map, in index order (the "oracle" candidate names)."""
        return [int(c) for c in np.unique(label) if c != self.ignore_index and c < len(self.class_names)]
