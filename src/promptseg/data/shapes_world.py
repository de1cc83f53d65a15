"""The procedural "shapes" world: images whose every pixel's class is known.

A sample is 1-3 flat-coloured shapes (circle, square, triangle; red, green, blue, yellow) on a textured
background (grass, sand, water, sky). Each sample carries its caption, a per-pixel class map, an instance
map and referring expressions with their instance masks. Rendering is a pure function of
``(split, index)``, so the train, val and test splits are fixed and disjoint streams of random numbers
(the test split is never seen by the training script).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (205, 40, 40), "green": (40, 200, 60), "blue": (45, 75, 215), "yellow": (235, 215, 45)}
BACKGROUNDS = ("grass", "sand", "water", "sky")
# Class ids of the per-pixel class map: backgrounds first, then shapes. 255 marks "no class".
CLASS_NAMES = BACKGROUNDS + SHAPES
IGNORE_INDEX = 255
SPLITS = {"train": 0, "val": 1, "test": 2}
# Words the bundled model's tokenizer knows as single tokens.
VOCABULARY = (
    ("a", "an", "the", "and", "on", "of", "in", "with", "left", "right", "above", "below", "photo", "image")
    + SHAPES
    + tuple(COLOURS)
    + BACKGROUNDS
    + ("background", "object", "shape", "one", "two", "three", "big", "small")
)


@dataclass
class ShapeObject:
    """One shape instance: its kind, colour, centre (x, y) in pixels and radius in pixels."""

    shape: str
    colour: str
    center: tuple[float, float]
    radius: float


@dataclass
class ShapesSample:
    """One rendered sample of the shapes world.

    Attributes:
        image (`np.ndarray`): HxWx3 uint8 RGB.
        class_map (`np.ndarray`): HxW uint8, indices into `CLASS_NAMES`.
        instance_map (`np.ndarray`): HxW uint8, 0 for background, i+1 for `objects[i]` (visible part).
        objects (`list[ShapeObject]`): the shapes, in drawing order (later ones occlude earlier ones).
        background (`str`): the background word.
        caption (`str`): a sentence describing the image.
        referring (`list[tuple[str, list[int]]]`): expressions and the 1-based instance ids they refer to (several
            for "the squares" / "the red shapes"; none for the one no-target expression per sample).
    """

    image: np.ndarray
    class_map: np.ndarray
    instance_map: np.ndarray
    objects: list[ShapeObject]
    background: str
    caption: str
    referring: list[tuple[str, list[int]]] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        """The classes present in this sample, background first."""
        return [CLASS_NAMES[i] for i in np.unique(self.class_map) if i != IGNORE_INDEX]


def _texture(background: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    noise = rng.normal(0.0, 1.0, (size, size)).astype(np.float32)
    if background == "grass":
        base = np.array([70, 130, 45], np.float32)
        blades = np.sin(xx * rng.uniform(40, 70) + rng.uniform(0, 6)) * 12
        img = base + (blades + noise * 14)[..., None] * np.array([0.6, 1.0, 0.4], np.float32)
    elif background == "sand":
        base = np.array([214, 190, 135], np.float32)
        img = base + (noise * 10 + np.sin(yy * 9 + xx * 4) * 8)[..., None]
    elif background == "water":
        base = np.array([35, 95, 150], np.float32)
        waves = np.sin(yy * rng.uniform(35, 55) + np.sin(xx * 8) * 2.0) * 18
        img = base + (waves + noise * 6)[..., None] * np.array([0.5, 0.8, 1.0], np.float32)
    elif background == "sky":
        top, bottom = np.array([105, 160, 230], np.float32), np.array([200, 225, 250], np.float32)
        img = top + (bottom - top) * yy[..., None] + (noise * 3)[..., None]
    else:
        raise ValueError(f"unknown background {background!r}; expected one of {BACKGROUNDS}")
    return img


def _shape_polygon(obj: ShapeObject) -> list[tuple[float, float]] | None:
    x, y = obj.center
    r = obj.radius
    if obj.shape == "square":
        s = r * 0.85
        return [(x - s, y - s), (x + s, y - s), (x + s, y + s), (x - s, y + s)]
    if obj.shape == "triangle":
        return [(x, y - r), (x + r * 0.95, y + r * 0.75), (x - r * 0.95, y + r * 0.75)]
    return None  # circle: drawn as an ellipse


def _shape_mask(obj: ShapeObject, size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    polygon = _shape_polygon(obj)
    if polygon is None:
        x, y = obj.center
        draw.ellipse([x - obj.radius, y - obj.radius, x + obj.radius, y + obj.radius], fill=1)
    else:
        draw.polygon(polygon, fill=1)
    return np.asarray(canvas, dtype=bool)


def _sample_objects(rng: np.random.Generator, size: int) -> list[ShapeObject]:
    n = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
    allow_overlap = rng.random() < 0.3
    objects: list[ShapeObject] = []
    for _ in range(n):
        for _attempt in range(50):
            radius = float(rng.uniform(0.11, 0.26) * size)
            center = (float(rng.uniform(radius, size - radius)), float(rng.uniform(radius, size - radius)))
            apart = all(
                np.hypot(center[0] - o.center[0], center[1] - o.center[1]) > (radius + o.radius) * 1.05
                for o in objects
            )
            if allow_overlap or apart:
                break
        else:
            continue
        objects.append(ShapeObject(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))), center, radius))
    return objects


def _phrase(obj: ShapeObject, with_colour: bool = True) -> str:
    return f"{obj.colour} {obj.shape}" if with_colour else obj.shape


def make_caption(objects: list[ShapeObject], background: str, rng: np.random.Generator | None = None) -> str:
    """A caption naming every object (left to right) and the background.

    With `rng`, colour words and the background phrase are sometimes dropped (training-time augmentation that
    makes each shape word carry its own meaning); without it the caption is complete and deterministic.
    """
    ordered = sorted(objects, key=lambda o: o.center[0])
    parts = []
    for obj in ordered:
        keep_colour = rng is None or rng.random() > 0.2
        parts.append("a " + _phrase(obj, keep_colour))
    text = " and ".join(parts)
    if rng is None or rng.random() > 0.1:
        text += f" on {background}"
    return text


def _referring(
    objects: list[ShapeObject], visible: list[bool], rng: np.random.Generator | None = None
) -> list[tuple[str, list[int]]]:
    """Referring expressions for visible objects: unique shape, unique colour+shape, a left/right relation, every
    shape of a kind ("the squares") or of a colour ("the red shapes", two or more), and with `rng` one no-target
    expression (a colour and shape that is not in the image, instance ids []).

    The no-target pick draws from its own `rng`, never from the one that renders the image."""
    out: list[tuple[str, list[int]]] = []
    ids = [i for i, v in enumerate(visible) if v]
    for i in ids:
        obj = objects[i]
        same_shape = [j for j in ids if objects[j].shape == obj.shape]
        same_both = [j for j in same_shape if objects[j].colour == obj.colour]
        if len(same_shape) == 1:
            out.append((f"the {obj.shape}", [i + 1]))
        if len(same_both) == 1:
            out.append((f"the {obj.colour} {obj.shape}", [i + 1]))
        for j in ids:
            other = objects[j]
            if j == i or len([k for k in ids if objects[k].shape == other.shape]) != 1:
                continue
            side = "left" if obj.center[0] < other.center[0] else "right"
            candidates = [
                k
                for k in same_shape
                if k != j and ((objects[k].center[0] < other.center[0]) == (side == "left"))
            ]
            if candidates == [i] and abs(obj.center[0] - other.center[0]) > 0.5 * obj.radius:
                out.append((f"the {obj.shape} {side} of the {other.shape}", [i + 1]))
    for shape in SHAPES:  # every shape of a kind, when there are several
        same = [i + 1 for i in ids if objects[i].shape == shape]
        if len(same) > 1:
            out.append((f"the {shape}s", same))
    for colour in COLOURS:  # every shape of a colour, when there are several
        same = [i + 1 for i in ids if objects[i].colour == colour]
        if len(same) > 1:
            out.append((f"the {colour} shapes", same))
    if rng is not None:
        present = {(objects[i].colour, objects[i].shape) for i in ids}
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        colour, shape = absent[int(rng.integers(len(absent)))]
        out.append((f"the {colour} {shape}", []))
    return out


def render_sample(split: str, index: int, size: int = 64, caption_rng: bool = False) -> ShapesSample:
    """Render sample `index` of `split` ("train", "val" or "test") at `size` x `size` pixels.

    The same `(split, index, size)` always gives the same sample. With `caption_rng=True` the caption gets the
    training-time word dropout of `make_caption`.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = np.random.default_rng([SPLITS[split], index, size])
    background = str(rng.choice(BACKGROUNDS))
    image = _texture(background, size, rng)
    class_map = np.full((size, size), CLASS_NAMES.index(background), np.uint8)
    instance_map = np.zeros((size, size), np.uint8)
    objects = _sample_objects(rng, size)
    for i, obj in enumerate(objects):
        mask = _shape_mask(obj, size)
        shade = rng.normal(0.0, 6.0, (size, size, 1)).astype(np.float32)
        image = np.where(mask[..., None], np.array(COLOURS[obj.colour], np.float32) + shade, image)
        class_map[mask] = CLASS_NAMES.index(obj.shape)
        instance_map[mask] = i + 1
    visible = [bool((instance_map == i + 1).any()) for i in range(len(objects))]
    caption = make_caption([o for o, v in zip(objects, visible) if v], background, rng if caption_rng else None)
    return ShapesSample(
        image=np.clip(image, 0, 255).astype(np.uint8),
        class_map=class_map,
        instance_map=instance_map,
        objects=objects,
        background=background,
        caption=caption,
        referring=_referring(objects, visible, np.random.default_rng([SPLITS[split], index, size, 1])),
    )
