"""The procedural "scenes" world: outdoor scenes with stuff regions, things with parts, and varied captions.

A sample is a 128x128 landscape: sky above a horizon (sometimes mountains on it); below it one of six ground
layouts (a coast of sea and beach, countryside grass with a road, a lake in a meadow, a snowfield, a town road,
a desert), each region textured with a lighting gradient and noise. Things stand where they plausibly occur
(cars and traffic cones on roads, sailboats on water and fish in it, houses, trees, people, flowers and
streetlights on the ground, snowmen on snow; sun, clouds, birds, kites and hot air balloons in the sky), at a
scale that shrinks towards the horizon, sometimes several of a class, nearer ones occluding farther ones. Things
that have parts in the real world are drawn from them (a house's wall, roof, door and windows; a car's body,
windows and wheels; ...), and the part map records them. The camera mostly looks level; a quarter of the views
look down at the ground (the horizon above the image: no sky, nothing in the sky) and a tenth look up (the horizon
low: mostly sky), so every stuff class, sky included, is absent from some images (`VIEWS`).

Every sample carries: the image, a class map (`CLASS_NAMES`), an instance map (0 for stuff, ``k + 1`` for
`objects[k]`), a part map (`PART_NAMES`; `IGNORE_INDEX` where a pixel belongs to no part: stuff and part-less
things), the objects with their attributes (class, colour, size word, base point, box, visible area), the stuff
present, and a caption. Names are the words a user would type, several of them more than one token under CLIP's
real vocabulary ("sailboat", "hot air balloon", "traffic cone", "streetlight"); each class has synonyms
(`SYNONYMS`) that captions use with fixed frequencies, some rarely (`rare_vocabulary`).

Rendering is a pure function of ``(split, index)``: train, val and test are disjoint seeded streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SIZE = 128
SPLITS = {"train": 10, "val": 11, "test": 12}
IGNORE_INDEX = 255

STUFF = ("sky", "grass", "sand", "water", "road", "snow", "mountain")
THINGS = ("house", "tree", "car", "sailboat", "person", "sun", "cloud", "bird", "fish", "flower", "kite",
          "hot air balloon", "traffic cone", "streetlight", "snowman")
CLASS_NAMES = STUFF + THINGS
PARTS = {
    "house": ("wall", "roof", "door", "window"),
    "tree": ("trunk", "crown"),
    "car": ("body", "window", "wheel"),
    "sailboat": ("hull", "sail", "mast"),
    "person": ("head", "torso", "legs"),
    "hot air balloon": ("envelope", "basket"),
    "streetlight": ("pole", "lamp"),
    "snowman": ("body", "head"),
}
PART_NAMES = tuple(f"{thing} {part}" for thing, parts in PARTS.items() for part in parts)

# Words for each class with the relative frequency captions use them: the first is the class name; the last,
# where there are several, is the rare one (`rare_vocabulary`).
SYNONYMS: dict[str, tuple[tuple[str, float], ...]] = {
    "sky": (("sky", 1.0),),
    "grass": (("grass", 0.8), ("lawn", 0.15), ("meadow", 0.05)),
    "sand": (("sand", 0.75), ("beach", 0.2), ("dune", 0.05)),
    "water": (("water", 0.6), ("sea", 0.3), ("ocean", 0.1)),
    "road": (("road", 0.8), ("street", 0.15), ("asphalt", 0.05)),
    "snow": (("snow", 1.0),),
    "mountain": (("mountain", 0.85), ("peak", 0.15)),
    "house": (("house", 0.8), ("home", 0.15), ("cottage", 0.05)),
    "tree": (("tree", 1.0),),
    "car": (("car", 0.85), ("automobile", 0.15)),
    "sailboat": (("sailboat", 0.6), ("boat", 0.35), ("yacht", 0.05)),
    "person": (("person", 0.6), ("man", 0.2), ("woman", 0.15), ("pedestrian", 0.05)),
    "sun": (("sun", 1.0),),
    "cloud": (("cloud", 1.0),),
    "bird": (("bird", 0.9), ("seagull", 0.1)),
    "fish": (("fish", 1.0),),
    "flower": (("flower", 0.9), ("blossom", 0.1)),
    "kite": (("kite", 1.0),),
    "hot air balloon": (("hot air balloon", 0.7), ("balloon", 0.3)),
    "traffic cone": (("traffic cone", 0.8), ("cone", 0.2)),
    "streetlight": (("streetlight", 0.6), ("street lamp", 0.3), ("lamppost", 0.1)),
    "snowman": (("snowman", 1.0),),
}
PLURALS = {"person": "people", "man": "men", "woman": "women", "fish": "fish", "snowman": "snowmen",
           "sand": "sand", "grass": "grass", "water": "water", "snow": "snow", "sky": "sky", "asphalt": "asphalt",
           "beach": "beach", "sea": "sea", "ocean": "ocean", "lawn": "lawn", "meadow": "meadow", "road": "road"}
COLOURS = {"red": (200, 40, 35), "blue": (40, 70, 200), "yellow": (235, 205, 40), "green": (40, 160, 60),
           "white": (238, 238, 235), "black": (35, 35, 40), "orange": (240, 130, 30), "purple": (130, 60, 170),
           "brown": (120, 75, 40), "grey": (128, 128, 132), "pink": (235, 130, 170)}
# The colours a class's main part is drawn in (None: a class whose colour is not described).
THING_COLOURS = {
    "house": ("white", "yellow", "red", "blue", "grey"), "car": ("red", "blue", "yellow", "white", "black", "green"),
    "sailboat": ("white", "red", "blue", "yellow"), "person": ("red", "blue", "green", "yellow", "purple", "orange"),
    "flower": ("red", "yellow", "purple", "pink", "white"), "kite": ("red", "yellow", "green", "purple", "orange"),
    "hot air balloon": ("red", "yellow", "blue", "orange", "purple"), "bird": ("black", "white", "blue"),
    "fish": ("orange", "yellow", "red"), "tree": None, "sun": None, "cloud": None, "traffic cone": None,
    "streetlight": None, "snowman": None,
}
LAYOUTS = ("coast", "countryside", "lake", "winter", "town", "desert")
SUPPORT = {"car": "road", "traffic cone": "road", "sailboat": "water", "fish": "water"}
SKY_THINGS = ("sun", "cloud", "bird", "kite", "hot air balloon")
# How often the camera looks down (the horizon above the image: no sky, no mountains, no sky things) or up (the
# horizon low: mostly sky). Real photographs often show no sky; a word is localised only where its presence
# varies, and with sky in every image the model drew it whatever the caption said (its map came out inverted).
VIEWS = {"down": 0.25, "up": 0.1}


def class_words(name: str) -> tuple[str, ...]:
    """Every word for class `name`, the class name first."""
    return tuple(word for word, _ in SYNONYMS[name])


def class_name_lines() -> list[str]:
    """The lines of ``data/classnames/scenes.txt``: one class a line, its synonyms after commas."""
    return [", ".join(class_words(name)) for name in CLASS_NAMES]


def rare_vocabulary() -> list[str]:
    """One word per class, the one captions use least (a vocabulary whose words fit the images poorly)."""
    return [min(SYNONYMS[name], key=lambda item: item[1])[0] for name in CLASS_NAMES]


def plural(word: str) -> str:
    """The plural of a class word ("people", "snowmen", "hot air balloons")."""
    head, _, last = word.rpartition(" ")
    last = PLURALS.get(last, last + "es" if last.endswith(("sh", "ch", "s")) else last + "s")
    return f"{head} {last}" if head else last


@dataclass
class SceneObject:
    """One thing: its class, colour word (None when not described), size word ("small", "big" or ""), base point
    (x, y) in pixels, box (x0, y0, x1, y1), its instance id and visible pixel count."""

    cls: str
    colour: str | None
    size: str
    base: tuple[float, float]
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    instance: int = 0
    area: int = 0


@dataclass
class ScenesSample:
    """One rendered sample of the scenes world.

    Attributes:
        image (`np.ndarray`): HxWx3 uint8 RGB.
        class_map (`np.ndarray`): HxW uint8, indices into `CLASS_NAMES`.
        instance_map (`np.ndarray`): HxW uint8, 0 for stuff, k+1 for `objects[k]` (its visible pixels).
        part_map (`np.ndarray`): HxW uint8, indices into `PART_NAMES`, `IGNORE_INDEX` where no part is defined.
        objects (`list[SceneObject]`): the things, in drawing order (later ones occlude earlier ones).
        stuff (`list[str]`): the stuff classes present, top to bottom.
        layout (`str`): the ground layout, one of `LAYOUTS`.
        caption (`str`): a complete sentence about the image (every visible thing and stuff region).
    """

    image: np.ndarray
    class_map: np.ndarray
    instance_map: np.ndarray
    part_map: np.ndarray
    objects: list[SceneObject]
    stuff: list[str]
    layout: str
    caption: str = ""
    horizon: int = 0
    view: str = "level"
    extra: dict = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        """The classes present in this sample, in class-index order."""
        return [CLASS_NAMES[i] for i in np.unique(self.class_map) if i != IGNORE_INDEX]

    @property
    def visible(self) -> list[SceneObject]:
        """The objects with at least one visible pixel."""
        return [o for o in self.objects if o.area > 0]


# ----------------------------------------------------------------------------------------------------- textures
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return yy, xx


def _texture(name: str, size: int, rng: np.random.Generator, horizon: int) -> np.ndarray:
    """An HxWx3 float image of stuff `name` over the whole canvas (masked by the caller)."""
    yy, xx = _grid(size)
    noise = rng.normal(0.0, 1.0, (size, size)).astype(np.float32)
    light = (1.0 + rng.uniform(-0.12, 0.12) * (xx - 0.5) * 2)[..., None]  # a gradient across the image
    if name == "sky":
        dusk = rng.random() < 0.2
        top = np.array([70, 90, 165] if dusk else [80, 140, 225], np.float32)
        low = np.array([240, 175, 125] if dusk else [195, 220, 248], np.float32)
        ramp = np.clip(yy * size / max(horizon, 1), 0, 1)[..., None]
        return top + (low - top) * ramp + (noise * 2.5)[..., None]
    if name == "grass":
        base = np.array([rng.uniform(55, 85), rng.uniform(120, 150), rng.uniform(35, 60)], np.float32)
        blades = np.sin(xx * rng.uniform(60, 90) + np.sin(yy * 20) * 2) * 10
        img = base + (blades + noise * 13)[..., None] * np.array([0.6, 1.0, 0.4], np.float32)
    elif name == "sand":
        base = np.array([215, 192, 138], np.float32)
        img = base + (noise * 9 + np.sin(yy * 40 + xx * 9) * 7)[..., None]
    elif name == "water":
        base = np.array([rng.uniform(25, 45), rng.uniform(85, 110), rng.uniform(145, 175)], np.float32)
        waves = np.sin(yy * rng.uniform(70, 110) + np.sin(xx * 12) * 2.0) * 14
        img = base + (waves + noise * 5)[..., None] * np.array([0.5, 0.8, 1.0], np.float32)
    elif name == "road":
        grey = rng.uniform(80, 110)
        img = np.array([grey, grey, grey + 5], np.float32) + (noise * 9)[..., None]
    elif name == "snow":
        img = np.array([236, 240, 248], np.float32) + (noise * 4 - yy * 14)[..., None] * np.array([1, 1, 0.6])
    elif name == "mountain":
        base = np.array([rng.uniform(95, 125), rng.uniform(95, 115), rng.uniform(115, 140)], np.float32)
        ridges = np.sin(xx * rng.uniform(25, 40) + yy * 30) * 9
        img = base + (ridges + noise * 8)[..., None]
    else:
        raise ValueError(f"unknown stuff {name!r}; expected one of {STUFF}")
    return img * light


def _polygon_mask(points, size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in points], fill=1)
    return np.asarray(canvas, dtype=bool)


def _wavy_edge(size: int, y: float, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A y-coordinate per column around `y` (a shoreline, a field's edge)."""
    x = np.arange(size, dtype=np.float32) / size
    phase, freq = rng.uniform(0, 6.3), rng.uniform(3, 9)
    return y + amplitude * (np.sin(x * freq + phase) + 0.4 * np.sin(x * freq * 2.7 + 1.3 * phase))


def _below(edge: np.ndarray, size: int) -> np.ndarray:
    rows = np.arange(size, dtype=np.float32)[:, None]
    return rows >= edge[None, :]


def _view(split: str, index: int, size: int) -> tuple[str, float]:
    """The camera's view of sample `index`: ("level", 0), ("down", f) or ("up", f), f the horizon's row as a
    fraction of the image. Drawn from a stream of its own, so a level view renders exactly as it did before views
    existed."""
    rng = np.random.default_rng([SPLITS[split], index, size, 7])
    u = rng.random()
    if u < VIEWS["down"]:
        return "down", float(rng.uniform(-0.4, -0.05))
    if u < VIEWS["down"] + VIEWS["up"]:
        return "up", float(rng.uniform(0.72, 0.88))
    return "level", 0.0


def _layout(rng: np.random.Generator, size: int, view: tuple[str, float] = ("level", 0.0)
            ) -> tuple[str, int, dict[str, np.ndarray]]:
    """The stuff regions: (layout, horizon row, {stuff: mask}); the masks partition the canvas. A "down" view puts
    the horizon above the image (no sky), an "up" view low in it (mostly sky)."""
    layout = str(rng.choice(LAYOUTS, p=[0.22, 0.22, 0.14, 0.16, 0.14, 0.12]))
    horizon = int(rng.uniform(0.3, 0.55) * size)
    if view[0] != "level":
        horizon = int(view[1] * size)
    ground = _below(_wavy_edge(size, horizon, 0.6, rng), size)
    regions: dict[str, np.ndarray] = {"sky": ~ground}
    main = {"coast": "sand", "countryside": "grass", "lake": "grass", "winter": "snow", "town": "grass",
            "desert": "sand"}[layout]
    regions[main] = ground.copy()

    def carve(name: str, mask: np.ndarray) -> None:
        mask = mask & ground
        for other in list(regions):
            if other != "sky":
                regions[other] &= ~mask
        regions[name] = regions.get(name, np.zeros_like(mask)) | mask

    depth = size - horizon
    if layout == "coast":  # sea from the horizon down to a wavy shoreline, beach below
        shore = _wavy_edge(size, horizon + rng.uniform(0.3, 0.65) * depth, rng.uniform(1, 5), rng)
        carve("water", ~_below(shore, size))
    elif layout == "lake":  # a pond in a meadow
        cx, cy = rng.uniform(0.25, 0.75) * size, horizon + rng.uniform(0.3, 0.6) * depth
        rx, ry = rng.uniform(0.18, 0.35) * size, rng.uniform(0.1, 0.2) * depth + 4
        yy, xx = np.mgrid[0:size, 0:size]
        carve("water", ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1)
    if layout in ("countryside", "town", "winter", "desert") and (layout in ("town", "countryside")
                                                                    or rng.random() < 0.5):
        if layout == "town" or rng.random() < 0.6:  # a band across the image
            centre = horizon + rng.uniform(0.45, 0.8) * depth
            half = rng.uniform(0.1, 0.2) * depth + (0.12 * depth if layout == "town" else 0)
            top, bottom = _wavy_edge(size, centre - half, 1.0, rng), _wavy_edge(size, centre + half, 1.0, rng)
            carve("road", _below(top, size) & ~_below(bottom, size))
        else:  # a road running to the horizon
            vx = rng.uniform(0.3, 0.7) * size
            x0, x1 = sorted(rng.uniform(-0.1, 1.1, 2) * size)
            x1 = max(x1, x0 + 0.35 * size)
            carve("road", _polygon_mask([(vx - 1.5, horizon), (vx + 1.5, horizon), (x1, size), (x0, size)], size))
    if rng.random() < 0.35:  # mountains standing on the horizon
        xs = np.linspace(-0.1, 1.1, int(rng.integers(3, 7))) * size
        peaks = [(x, horizon - rng.uniform(0.05, 0.22) * size) for x in xs]
        points = [(-2, horizon + 1)] + peaks + [(size + 2, horizon + 1)]
        mountain = _polygon_mask(points, size) & ~ground
        regions["sky"] &= ~mountain
        regions["mountain"] = mountain
    regions = {k: v for k, v in regions.items() if v.sum() >= 12}
    return layout, horizon, regions


# ------------------------------------------------------------------------------------------------------ things
class _Painter:
    """Draws one thing as parts into full-size boolean masks, each with a fill colour."""

    def __init__(self, size: int):
        self.size = size
        self.parts: list[tuple[str | None, np.ndarray, tuple[float, float, float]]] = []

    def _canvas(self):
        canvas = Image.new("L", (self.size, self.size), 0)
        return canvas, ImageDraw.Draw(canvas)

    def add(self, part: str | None, colour, polygon=None, ellipse=None, line=None, width: float = 1) -> None:
        canvas, draw = self._canvas()
        if polygon is not None:
            draw.polygon([(float(x), float(y)) for x, y in polygon], fill=1)
        if ellipse is not None:
            x0, y0, x1, y1 = ellipse
            draw.ellipse([x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)], fill=1)
        if line is not None:
            draw.line([(float(x), float(y)) for x, y in line], fill=1, width=max(1, int(round(width))))
        mask = np.asarray(canvas, dtype=bool)
        if mask.any():
            self.parts.append((part, mask, tuple(float(c) for c in colour)))


def _rgb(name: str) -> tuple[int, int, int]:
    return COLOURS[name]


def _draw_thing(obj: SceneObject, scale: float, rng: np.random.Generator, size: int) -> _Painter:
    p = _Painter(size)
    x, y = obj.base
    s = scale
    c = obj.colour
    if obj.cls == "house":
        w, h = 40 * s * rng.uniform(0.8, 1.2), 26 * s * rng.uniform(0.85, 1.15)
        roof = [(_rgb("red")), (_rgb("brown")), (_rgb("grey"))][int(rng.integers(3))]
        p.add("wall", _rgb(c), polygon=[(x - w / 2, y - h), (x + w / 2, y - h), (x + w / 2, y), (x - w / 2, y)])
        p.add("roof", roof, polygon=[(x - w / 2 - 2 * s, y - h), (x + w / 2 + 2 * s, y - h), (x, y - h - 0.6 * w)])
        dx = rng.uniform(-0.25, 0.25) * w
        p.add("door", _rgb("brown"), polygon=[(x + dx - 0.09 * w, y), (x + dx - 0.09 * w, y - 0.55 * h),
                                              (x + dx + 0.09 * w, y - 0.55 * h), (x + dx + 0.09 * w, y)])
        for wx in (-0.32, 0.32):
            cx = x + wx * w
            if abs(cx - (x + dx)) > 0.2 * w:
                p.add("window", (150, 200, 235), polygon=[(cx - 0.08 * w, y - 0.8 * h), (cx + 0.08 * w, y - 0.8 * h),
                                                          (cx + 0.08 * w, y - 0.5 * h), (cx - 0.08 * w, y - 0.5 * h)])
    elif obj.cls == "tree":
        h = 44 * s * rng.uniform(0.8, 1.25)
        tw = max(2.0, 0.1 * h)
        p.add("trunk", (100, 65, 35), polygon=[(x - tw / 2, y), (x + tw / 2, y), (x + tw / 2, y - 0.45 * h),
                                                (x - tw / 2, y - 0.45 * h)])
        green = (rng.uniform(25, 60), rng.uniform(95, 140), rng.uniform(30, 55))
        if rng.random() < 0.5:  # round crown
            r = 0.32 * h
            p.add("crown", green, ellipse=(x - r, y - h, x + r, y - h + 2 * r))
        else:  # conifer
            p.add("crown", green, polygon=[(x, y - h), (x + 0.3 * h, y - 0.35 * h), (x - 0.3 * h, y - 0.35 * h)])
    elif obj.cls == "car":
        w = 34 * s * rng.uniform(0.85, 1.15)
        h = 0.32 * w
        r = 0.13 * w
        p.add("body", _rgb(c), polygon=[(x - w / 2, y - r), (x + w / 2, y - r), (x + w / 2, y - r - h),
                                        (x + 0.25 * w, y - r - h), (x + 0.12 * w, y - r - 1.7 * h),
                                        (x - 0.28 * w, y - r - 1.7 * h), (x - 0.38 * w, y - r - h),
                                        (x - w / 2, y - r - h)])
        p.add("window", (150, 195, 225), polygon=[(x - 0.3 * w, y - r - 1.05 * h), (x + 0.18 * w, y - r - 1.05 * h),
                                                  (x + 0.09 * w, y - r - 1.55 * h), (x - 0.24 * w, y - r - 1.55 * h)])
        for wx in (-0.3, 0.3):
            p.add("wheel", (25, 25, 25), ellipse=(x + wx * w - r, y - 2 * r, x + wx * w + r, y))
    elif obj.cls == "sailboat":
        w = 30 * s * rng.uniform(0.85, 1.2)
        p.add("hull", _rgb(c), polygon=[(x - w / 2, y - 0.22 * w), (x + w / 2, y - 0.22 * w), (x + 0.32 * w, y),
                                        (x - 0.32 * w, y)])
        p.add("mast", (90, 60, 35), line=[(x, y - 0.22 * w), (x, y - 1.2 * w)], width=max(1, 0.05 * w))
        p.add("sail", _rgb("white") if c != "white" else (225, 215, 190),
              polygon=[(x + 0.04 * w, y - 1.15 * w), (x + 0.04 * w, y - 0.3 * w), (x + 0.45 * w, y - 0.3 * w)])
    elif obj.cls == "person":
        h = 30 * s * rng.uniform(0.85, 1.15)
        skin = [(240, 200, 165), (200, 150, 110), (130, 90, 60)][int(rng.integers(3))]
        p.add("legs", (45, 50, 90), polygon=[(x - 0.12 * h, y), (x + 0.12 * h, y), (x + 0.1 * h, y - 0.45 * h),
                                             (x - 0.1 * h, y - 0.45 * h)])
        p.add("torso", _rgb(c), polygon=[(x - 0.15 * h, y - 0.45 * h), (x + 0.15 * h, y - 0.45 * h),
                                         (x + 0.13 * h, y - 0.8 * h), (x - 0.13 * h, y - 0.8 * h)])
        p.add("head", skin, ellipse=(x - 0.1 * h, y - h, x + 0.1 * h, y - 0.8 * h))
    elif obj.cls == "sun":
        r = 10 * s
        p.add(None, (255, 225, 90), ellipse=(x - r, y - r, x + r, y + r))
    elif obj.cls == "cloud":
        w = 34 * s
        for dx, dy, rr in ((-0.25, 0.0, 0.22), (0.0, -0.1, 0.3), (0.25, 0.0, 0.22), (0.05, 0.08, 0.25)):
            cx, cy, r = x + dx * w, y + dy * w, rr * w
            p.add(None, (245, 246, 250), ellipse=(cx - r, cy - 0.7 * r, cx + r, cy + 0.7 * r))
    elif obj.cls == "bird":
        w = 10 * s
        p.add(None, _rgb(c), line=[(x - w / 2, y - w / 4), (x, y), (x + w / 2, y - w / 4)], width=max(1.5, w / 5))
    elif obj.cls == "fish":
        w = 14 * s
        p.add(None, _rgb(c), ellipse=(x - w / 2, y - w / 4, x + w / 4, y + w / 4))
        p.add(None, _rgb(c), polygon=[(x + w / 5, y), (x + w / 2, y - w / 4), (x + w / 2, y + w / 4)])
    elif obj.cls == "flower":
        h = 10 * s
        p.add(None, (40, 120, 40), line=[(x, y), (x, y - h)], width=max(1, h / 8))
        r = 0.3 * h
        p.add(None, _rgb(c), ellipse=(x - r, y - h - r, x + r, y - h + r))
    elif obj.cls == "kite":
        w = 14 * s
        p.add(None, _rgb(c), polygon=[(x, y - w), (x + 0.45 * w, y - 0.4 * w), (x, y + 0.3 * w),
                                      (x - 0.45 * w, y - 0.4 * w)])
        p.add(None, (60, 60, 60), line=[(x, y + 0.3 * w), (x - 0.1 * w, y + 0.9 * w)], width=1)
    elif obj.cls == "hot air balloon":
        w = 20 * s
        p.add("envelope", _rgb(c), ellipse=(x - w / 2, y - 1.6 * w, x + w / 2, y - 0.5 * w))
        p.add("envelope", _rgb(c), polygon=[(x - 0.35 * w, y - 0.75 * w), (x + 0.35 * w, y - 0.75 * w),
                                            (x + 0.12 * w, y - 0.35 * w), (x - 0.12 * w, y - 0.35 * w)])
        p.add("basket", (130, 85, 45), polygon=[(x - 0.12 * w, y - 0.3 * w), (x + 0.12 * w, y - 0.3 * w),
                                                (x + 0.12 * w, y), (x - 0.12 * w, y)])
    elif obj.cls == "traffic cone":
        h = 12 * s
        p.add(None, (245, 110, 20), polygon=[(x - 0.4 * h, y), (x + 0.4 * h, y), (x, y - h)])
    elif obj.cls == "streetlight":
        h = 48 * s
        p.add("pole", (70, 72, 78), line=[(x, y), (x, y - h), (x + 0.18 * h, y - h)], width=max(1, h / 28))
        p.add("lamp", (255, 235, 150), ellipse=(x + 0.12 * h, y - h, x + 0.26 * h, y - 0.93 * h))
    elif obj.cls == "snowman":
        h = 28 * s
        p.add("body", (245, 247, 252), ellipse=(x - 0.3 * h, y - 0.6 * h, x + 0.3 * h, y))
        p.add("head", (245, 247, 252), ellipse=(x - 0.2 * h, y - h, x + 0.2 * h, y - 0.6 * h))
        p.add("head", (240, 120, 30), polygon=[(x, y - 0.82 * h), (x + 0.22 * h, y - 0.79 * h), (x, y - 0.76 * h)])
    else:
        raise ValueError(f"unknown thing {obj.cls!r}; expected one of {THINGS}")
    return p


def _sample_point(mask: np.ndarray, rng: np.random.Generator, margin: int = 0) -> tuple[float, float] | None:
    ys, xs = np.nonzero(mask)
    keep = (xs >= margin) & (xs < mask.shape[1] - margin)
    ys, xs = ys[keep], xs[keep]
    if len(ys) == 0:
        return None
    k = int(rng.integers(len(ys)))
    return float(xs[k]) + float(rng.uniform(0, 1)), float(ys[k]) + float(rng.uniform(0, 1))


def _plan_things(regions: dict[str, np.ndarray], layout: str, horizon: int, size: int,
                 rng: np.random.Generator) -> list[tuple[SceneObject, float]]:
    """The things of a scene and their scales, before drawing."""
    plan: list[tuple[str, str]] = []  # (class, region it stands in)

    def maybe(cls: str, region: str, p: float, most: int) -> None:
        if region in regions and rng.random() < p:
            plan.extend([(cls, region)] * int(rng.integers(1, most + 1)))

    maybe("sun", "sky", 0.3, 1)
    maybe("cloud", "sky", 0.55, 3)
    maybe("bird", "sky", 0.3, 3)
    maybe("kite", "sky", 0.12, 1)
    maybe("hot air balloon", "sky", 0.12, 2)
    maybe("sailboat", "water", 0.65, 2)
    maybe("fish", "water", 0.35, 2)
    maybe("car", "road", 0.7, 2)
    maybe("traffic cone", "road", 0.3, 3)
    ground = next(name for name in ("grass", "snow", "sand") if name in regions) if any(
        name in regions for name in ("grass", "snow", "sand")) else None
    if ground is not None:
        maybe("house", ground, 0.45 if ground != "sand" else 0.15, 2)
        maybe("tree", ground, 0.6 if ground != "sand" else 0.2, 3)
        maybe("person", ground, 0.4, 2)
        maybe("flower", ground, 0.4 if ground == "grass" else 0.0, 4)
        maybe("streetlight", ground, 0.5 if "road" in regions else 0.0, 2)
        maybe("snowman", ground, 0.6 if ground == "snow" else 0.0, 2)
    if not plan:  # every scene has a thing
        sky_cls = ("cloud", "sun", "bird")[int(rng.integers(3))]
        if "sky" in regions:
            plan.append((sky_cls, "sky"))
        else:  # a view without sky: a thing of the ground instead
            region = max((r for r in regions if r != "mountain"), key=lambda r: int(regions[r].sum()))
            plan.append(({"road": "traffic cone", "water": "fish", "snow": "snowman"}.get(region, "flower"), region))
    depth = max(size - horizon, 1)
    out = []
    for cls, region in plan:
        mask = regions[region]
        if cls in SKY_THINGS:
            point = _sample_point(mask[: max(horizon - 6, 4)], rng, margin=6)
        elif cls == "fish":
            point = _sample_point(mask & np.roll(mask, -6, 0) & np.roll(mask, 6, 0), rng, margin=6)
        else:
            point = _sample_point(mask & np.roll(mask, -2, 0), rng, margin=4)
        if point is None:
            continue
        jitter = float(rng.uniform(0.75, 1.3))
        if cls in SKY_THINGS:
            scale = jitter
        else:
            d = np.clip((point[1] - horizon) / depth, 0, 1)
            scale = (0.45 + 0.75 * d) * jitter
        options = THING_COLOURS[cls]
        colour = None if options is None else str(rng.choice(options))
        word = "small" if scale < 0.65 else "big" if scale > 1.15 else ""
        out.append((SceneObject(cls, colour, word, point), scale))
    return out[:9]


# ---------------------------------------------------------------------------------------------------- captions
def pick_word(name: str, rng: np.random.Generator | None) -> str:
    """A word for class `name`: the class name without `rng`, else a synonym drawn with its caption frequency."""
    words = SYNONYMS[name]
    if rng is None:
        return words[0][0]
    weights = np.array([w for _, w in words])
    return words[int(rng.choice(len(words), p=weights / weights.sum()))][0]


_COUNT = {2: "two", 3: "three", 4: "four"}
_WHERE = {"road": "on the {}", "water": "on the {}", "sky": "in the {}", "grass": "on the {}", "snow": "in the {}",
          "sand": "on the {}"}


def thing_phrase(cls: str, members: list[SceneObject], rng: np.random.Generator | None) -> str:
    """'a small red car', 'two trees': a noun phrase for the visible objects of one class."""
    word = pick_word(cls, rng)
    if len(members) > 1:
        return f"{_COUNT.get(len(members), 'several')} {plural(word)}"
    obj = members[0]
    words = []
    if obj.size and (rng is None or rng.random() < 0.5):
        words.append(obj.size)
    if obj.colour and (rng is None or rng.random() < 0.7):
        words.append(obj.colour)
    words.append(word)
    article = "an" if words[0][0] in "aeiou" else "a"
    return f"{article} {' '.join(words)}"


def make_caption(sample: ScenesSample, rng: np.random.Generator | None = None) -> str:
    """A caption of the scene: its things grouped by class, where they are, and its stuff.

    Without `rng` it is complete and deterministic (every visible thing, every stuff region, class names). With
    `rng` it varies as people's captions do: synonyms at their frequencies, colours and sizes sometimes dropped,
    some things and stuff left out, groups and stuff regions in random order.
    """
    return caption_parts(sample, rng)[0]


def caption_parts(sample: ScenesSample, rng: np.random.Generator | None = None):
    """`make_caption`'s text and what it claims: ([(class, colour or None)], [stuff]); a colour is claimed only
    for a class named once with its colour."""
    groups: dict[str, list[SceneObject]] = {}
    for obj in sorted(sample.visible, key=lambda o: o.base[0]):
        groups.setdefault(obj.cls, []).append(obj)
    classes = list(groups)
    if rng is not None:
        classes = [classes[i] for i in rng.permutation(len(classes))]
        kept = [c for c in classes if rng.random() > 0.2]
        classes = kept or classes[:1]
    clauses, claims, named = [], [], set()
    for cls in classes:
        phrase = thing_phrase(cls, groups[cls], rng)
        colour = groups[cls][0].colour if len(groups[cls]) == 1 else None
        claims.append((cls, colour if colour and f" {colour} " in f" {phrase} " else None))
        support = "sky" if cls in SKY_THINGS else SUPPORT.get(cls)
        if support in sample.stuff and (rng is None or rng.random() < 0.6):
            word = pick_word(support, rng)
            phrase += " " + ("in the {}" if cls == "fish" else _WHERE[support]).format(word)
            named.add(support)
        clauses.append(phrase)
    stuff = [s for s in sample.stuff if rng is None or rng.random() > 0.3]
    if rng is not None:  # in random order: listed top to bottom, "sky" would always come first and its place in
        stuff = [stuff[i] for i in rng.permutation(len(stuff))]  # the list would say as much as the word
    stuff_words = [plural(pick_word(s, rng)) if s == "mountain" else pick_word(s, rng) for s in stuff]
    text = _join(clauses)
    if stuff_words:
        text = f"{text} with {_join(stuff_words)}" if text else _join(stuff_words)
    return text, (claims, sorted(named | set(stuff)))


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------------------------------------------- rendering
def render_sample(split: str, index: int, size: int = SIZE) -> ScenesSample:
    """Render sample `index` of `split` ("train", "val" or "test") at `size` x `size` pixels.

    The same `(split, index, size)` always gives the same sample; splits are disjoint random streams.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    if size < 64:
        raise ValueError(f"size must be >= 64 pixels, got {size}")
    rng = np.random.default_rng([SPLITS[split], index, size])
    view = _view(split, index, size)
    layout, horizon, regions = _layout(rng, size, view)
    image = np.zeros((size, size, 3), np.float32)
    class_map = np.full((size, size), IGNORE_INDEX, np.uint8)
    order = [s for s in STUFF if s in regions]
    for name in order:
        mask = regions[name]
        image[mask] = _texture(name, size, rng, horizon)[mask]
        class_map[mask] = CLASS_NAMES.index(name)
    instance_map = np.zeros((size, size), np.uint8)
    part_map = np.full((size, size), IGNORE_INDEX, np.uint8)
    planned = _plan_things(regions, layout, horizon, size, rng)
    # far to near: sky things first (they are behind everything), then by base row
    planned.sort(key=lambda item: (item[0].cls not in SKY_THINGS, item[0].base[1]))
    objects = []
    for k, (obj, scale) in enumerate(planned):
        painter = _draw_thing(obj, scale, rng, size)
        obj.instance = k + 1
        for part, mask, colour in painter.parts:
            shade = rng.normal(0.0, 5.0, (size, size, 1)).astype(np.float32)
            image = np.where(mask[..., None], np.array(colour, np.float32) * rng.uniform(0.9, 1.05) + shade, image)
            class_map[mask] = CLASS_NAMES.index(obj.cls)
            instance_map[mask] = obj.instance
            part_map[mask] = PART_NAMES.index(f"{obj.cls} {part}") if part is not None else IGNORE_INDEX
        objects.append(obj)
    for obj in objects:
        visible = instance_map == obj.instance
        obj.area = int(visible.sum())
        if obj.area:
            ys, xs = np.nonzero(visible)
            obj.box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    stuff = [s for s in STUFF if s in regions and (class_map == CLASS_NAMES.index(s)).any()]
    stuff.sort(key=lambda s: float(np.nonzero(class_map == CLASS_NAMES.index(s))[0].mean()))
    sample = ScenesSample(np.clip(image, 0, 255).astype(np.uint8), class_map, instance_map, part_map, objects,
                          stuff, layout, horizon=horizon, view=view[0])
    sample.caption = make_caption(sample)
    return sample
