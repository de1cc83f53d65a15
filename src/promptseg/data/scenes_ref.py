"""Referring expressions on the scenes world (`scenes_ref`): a grammar much wider than shapes_ref's five templates.

Eight kinds, each in several wordings, each expression checked to pick out exactly its target in its image:

| kind | examples | target |
| --- | --- | --- |
| attribute | "the red car", "the automobile that is blue", "the big house", "the man in green" | one instance |
| position | "the tree on the left", "the rightmost boat", "the car at the far right" | one instance |
| relation | "the car left of the tree", "the person next to the house", "the boat in front of the other boat" | one instance |
| part | "the roof of the red house", "the wheels of the car", "the house's door" | one instance's part |
| plural | "the trees", "all the people", "the two cars" | all instances of a class |
| ordinal | "the second boat from the left", "the first tree from the right" | one instance |
| stuff | "the road", "the ocean", "the area of sand" | a stuff region |
| no-target | "the snowman" (none in the image), "the purple car" (cars, none purple) | nothing (empty mask) |

Class words come from the world's synonyms at their caption frequencies, so one meaning appears in many wordings.
The expressions of an image are a pure function of (split, index); `ScenesRefDataset` takes images 0, 1, ... of a
split until it has `n`, so the first `n` are always the same, and the test split is never seen in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from promptseg.data.scenes_world import (
    CLASS_NAMES,
    PART_NAMES,
    PARTS,
    SIZE,
    SPLITS,
    THING_COLOURS,
    SceneObject,
    ScenesSample,
    pick_word,
    plural,
    render_sample,
)
from promptseg.data.shapes_ref import RefSample, RenderedRefDataset

KINDS = ("attribute", "position", "relation", "part", "plural", "ordinal", "stuff", "no-target")
MIN_AREA = 12
"""Fewest visible pixels of a target instance (smaller ones are not referred to)."""
MIN_PART_AREA = 6
GAP = 4
"""Pixels by which boxes must be apart for "left of", "above", "leftmost" to hold without doubt."""
PART_PLURALS = {"wheel": "wheels", "window": "windows"}
_COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
_ORDINALS = ("first", "second", "third", "fourth")


@dataclass(frozen=True)
class Expression:
    """One referring expression of an image: its kind, text, and target (instance ids, or a part, or a stuff class).

    Attributes:
        kind (`str`): one of `KINDS`.
        text (`str`): the expression.
        instances (`tuple[int, ...]`): the referred instance ids (`ScenesSample.instance_map` values).
        part (`str | None`): with one instance, the part of it referred to (a `PART_NAMES` entry).
        stuff (`str | None`): the referred stuff class.
    """

    kind: str
    text: str
    instances: tuple[int, ...] = ()
    part: str | None = None
    stuff: str | None = None

    def mask(self, sample: ScenesSample) -> np.ndarray:
        """The HxW bool target of this expression in `sample` (all False for a no-target expression)."""
        if self.stuff is not None:
            return sample.class_map == CLASS_NAMES.index(self.stuff)
        mask = np.isin(sample.instance_map, self.instances)
        if self.part is not None:
            mask &= sample.part_map == PART_NAMES.index(self.part)
        return mask


def _centre(obj: SceneObject) -> tuple[float, float]:
    x0, y0, x1, y1 = obj.box
    return (x0 + x1) / 2, (y0 + y1) / 2


def _left_of(a: SceneObject, b: SceneObject) -> bool:
    return a.box[2] + GAP <= b.box[0]


def _above(a: SceneObject, b: SceneObject) -> bool:
    return a.box[3] + GAP <= b.box[1]


def _next_to(a: SceneObject, b: SceneObject) -> bool:
    """Side by side: rows overlap and the horizontal gap is small."""
    rows = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
    gap = max(a.box[0], b.box[0]) - min(a.box[2], b.box[2])
    return rows > 0 and gap <= 8


def _in_front_of(a: SceneObject, b: SceneObject, sample: ScenesSample) -> bool:
    """`a` is drawn after `b` and covers part of `b`'s box."""
    if a.instance < b.instance:
        return False
    x0, y0, x1, y1 = b.box
    return int((sample.instance_map[y0:y1, x0:x1] == a.instance).sum()) >= 10


RELATIONS = {
    "left of": (lambda a, b, s: _left_of(a, b), ("the {a} left of the {b}", "the {a} to the left of the {b}")),
    "right of": (lambda a, b, s: _left_of(b, a), ("the {a} right of the {b}", "the {a} to the right of the {b}")),
    "above": (lambda a, b, s: _above(a, b), ("the {a} above the {b}", "the {a} over the {b}")),
    "below": (lambda a, b, s: _above(b, a), ("the {a} below the {b}", "the {a} under the {b}")),
    "next to": (lambda a, b, s: _next_to(a, b), ("the {a} next to the {b}", "the {a} beside the {b}")),
    "in front of": (_in_front_of, ("the {a} in front of the {b}",)),
}


class _Grammar:
    """The expressions of one sample, drawn with `rng`."""

    def __init__(self, sample: ScenesSample, rng: np.random.Generator):
        self.sample, self.rng = sample, rng
        self.targets = [o for o in sample.visible if o.area >= MIN_AREA]
        self.by_class: dict[str, list[SceneObject]] = {}
        for obj in sample.visible:  # every visible instance counts for uniqueness, small ones too
            self.by_class.setdefault(obj.cls, []).append(obj)

    def word(self, cls: str) -> str:
        return pick_word(cls, self.rng)

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def coloured(self, cls: str, colour: str) -> str:
        """"red car"; a person's colour is their clothes: "person in red"."""
        return f"{self.word(cls)} in {colour}" if cls == "person" else f"{colour} {self.word(cls)}"

    def alone(self, obj: SceneObject) -> bool:
        return len(self.by_class[obj.cls]) == 1

    def naming(self, obj: SceneObject) -> str | None:
        """A noun phrase naming `obj` alone among the visible things ("tree", "red car"), or None."""
        if self.alone(obj):
            return self.word(obj.cls)
        same = [o for o in self.by_class[obj.cls] if o.colour == obj.colour]
        if obj.colour and len(same) == 1:
            return self.coloured(obj.cls, obj.colour)
        return None

    # -- the kinds -------------------------------------------------------------------------------------------
    def attribute(self) -> Expression | None:
        options = []
        for obj in self.targets:
            group = self.by_class[obj.cls]
            if obj.colour and sum(o.colour == obj.colour for o in group) == 1:
                options.append((obj, "colour"))
            if obj.size and len(group) > 1 and sum(o.size == obj.size for o in group) == 1:
                options.append((obj, "size"))
            if obj.colour and len(group) == 1:
                options.append((obj, "colour"))
        if not options:
            return None
        obj, attribute = self.choice(options)
        word = self.word(obj.cls)
        if attribute == "colour" and obj.cls == "person":
            text = self.choice((f"the {word} in {obj.colour}", f"the {word} wearing {obj.colour}"))
        elif attribute == "colour":
            text = self.choice((f"the {obj.colour} {word}", f"the {word} that is {obj.colour}",
                                f"the {obj.colour} {word} in the picture"))
        else:
            text = self.choice((f"the {obj.size} {word}", f"the {word} that is {obj.size}"))
        return Expression("attribute", text, (obj.instance,))

    def position(self) -> Expression | None:
        options = []
        for group in self.by_class.values():
            if len(group) < 2:
                continue
            ordered = sorted(group, key=lambda o: o.box[0])
            if ordered[0].area >= MIN_AREA and _left_of(ordered[0], ordered[1]):
                options.append((ordered[0], "left"))
            ordered = sorted(group, key=lambda o: -o.box[2])
            if ordered[0].area >= MIN_AREA and _left_of(ordered[1], ordered[0]):
                options.append((ordered[0], "right"))
        if not options:
            return None
        obj, side = self.choice(options)
        word = self.word(obj.cls)
        text = self.choice((f"the {word} on the {side}", f"the {side}most {word}", f"the {word} at the far {side}",
                            f"the {word} on the {side} side of the picture"))
        return Expression("position", text, (obj.instance,))

    def relation(self) -> Expression | None:
        options = []
        for a in self.targets:
            for b in self.sample.visible:
                if b is a:
                    continue
                b_name = self.naming(b) if b.cls != a.cls else None
                if b.cls == a.cls:  # "the boat left of the other boat": only with exactly two of the class
                    if len(self.by_class[a.cls]) != 2:
                        continue
                    b_name = f"other {self.word(b.cls)}"
                if b_name is None:
                    continue
                for holds, templates in RELATIONS.values():
                    if not holds(a, b, self.sample):
                        continue
                    others = [o for o in self.by_class[a.cls] if o is not a and o is not b and holds(o, b, self.sample)]
                    if not others:
                        options.append((a, b_name, templates))
        if not options:
            return None
        a, b_name, templates = self.choice(options)
        return Expression("relation", self.choice(templates).format(a=self.word(a.cls), b=b_name), (a.instance,))

    def part(self) -> Expression | None:
        options = []
        for obj in self.targets:
            name = self.naming(obj)
            if obj.cls not in PARTS or name is None:
                continue
            for part in PARTS[obj.cls]:
                index = PART_NAMES.index(f"{obj.cls} {part}")
                area = int(((self.sample.instance_map == obj.instance) & (self.sample.part_map == index)).sum())
                if area >= MIN_PART_AREA:
                    options.append((obj, name, part))
        if not options:
            return None
        obj, name, part = self.choice(options)
        said = PART_PLURALS.get(part, part) if self.rng.random() < 0.5 or part == "wheel" else part
        text = self.choice((f"the {said} of the {name}", f"the {name}'s {said}"))
        return Expression("part", text, (obj.instance,), part=f"{obj.cls} {part}")

    def plural(self) -> Expression | None:
        groups = [(cls, g) for cls, g in self.by_class.items() if len(g) > 1 and any(o.area >= MIN_AREA for o in g)]
        if not groups:
            return None
        cls, group = self.choice(groups)
        words = plural(self.word(cls))
        count = _COUNT_WORDS.get(len(group), "several")
        text = self.choice((f"the {words}", f"all the {words}", f"the {count} {words}", f"every {self.word(cls)}"))
        return Expression("plural", text, tuple(o.instance for o in group))

    def ordinal(self) -> Expression | None:
        options = []
        for group in self.by_class.values():
            ordered = sorted(group, key=lambda o: o.box[0])
            if len(ordered) < 2 or not all(_centre(p)[0] + GAP < _centre(q)[0] for p, q in zip(ordered, ordered[1:])):
                continue
            for k, obj in enumerate(ordered[:4]):
                if obj.area >= MIN_AREA:
                    options.append((obj, k, "left"))
            for k, obj in enumerate(ordered[::-1][:4]):
                if obj.area >= MIN_AREA:
                    options.append((obj, k, "right"))
        if not options:
            return None
        obj, k, side = self.choice(options)
        word = self.word(obj.cls)
        text = self.choice((f"the {_ORDINALS[k]} {word} from the {side}", f"the {_ORDINALS[k]} {word} counting from "
                            f"the {side}"))
        return Expression("ordinal", text, (obj.instance,))

    def stuff(self) -> Expression | None:
        present = [s for s in self.sample.stuff if (self.sample.class_map == CLASS_NAMES.index(s)).sum() >= 50]
        if not present:
            return None
        name = self.choice(present)
        word = plural(self.word(name)) if name == "mountain" else self.word(name)
        text = self.choice((f"the {word}", f"the area of {word}", f"the {word} region"))
        return Expression("stuff", text, stuff=name)

    def no_target(self) -> Expression | None:
        present = set(self.sample.class_names)
        absent = [c for c in CLASS_NAMES if c not in present]
        coloured = [(cls, c) for cls in self.by_class if THING_COLOURS.get(cls)
                    for c in THING_COLOURS[cls] if all(o.colour != c for o in self.by_class[cls])]
        if coloured and self.rng.random() < 0.5:
            cls, colour = self.choice(coloured)
            return Expression("no-target", f"the {self.coloured(cls, colour)}")
        if not absent:
            return None
        cls = self.choice(absent)
        return Expression("no-target", self.choice((f"the {self.word(cls)}", f"the {plural(self.word(cls))}")))


def expressions(sample: ScenesSample, rng: np.random.Generator) -> list[Expression]:
    """At most one expression of each kind for `sample`, in `KINDS` order."""
    grammar = _Grammar(sample, rng)
    out = []
    for kind in KINDS:
        expression = getattr(grammar, kind.replace("-", "_"))()
        if expression is not None:
            out.append(expression)
    return out


def image_expressions(split: str, index: int, size: int = SIZE) -> tuple[ScenesSample, list[Expression]]:
    """The sample and its expressions: a pure function of (split, index, size)."""
    sample = render_sample(split, index, size)
    rng = np.random.default_rng([SPLITS[split], index, size, 7])
    return sample, expressions(sample, rng)


class ScenesRefDataset(RenderedRefDataset):
    """The first `n` referring expressions of a split of the scenes world ("test" by default).

    Args:
        split (`str`, defaults to "test"): "train", "val" or "test".
        n (`int`, defaults to 300): number of expressions.
        size (`int`, defaults to 128): rendered size in pixels.
    """

    name, default_size = "scenes_ref", SIZE

    def _kinds(self, image: int) -> list[str]:
        return [e.kind for e in image_expressions(self.split, image, self.size)[1]]

    def _sample(self, image: int, j: int) -> RefSample:
        sample, found = image_expressions(self.split, image, self.size)
        return RefSample(image=Image.fromarray(sample.image), expression=found[j].text, mask=found[j].mask(sample),
                         id=f"{self.split}_{image:05d}_{j}", kind=found[j].kind)
