"""scenes_ref: the referring grammar's expressions pick out exactly their targets, in every kind."""

import collections

import numpy as np
import pytest

from promptseg.data import get_refer_dataset
from promptseg.data.scenes_ref import KINDS, ScenesRefDataset, image_expressions
from promptseg.data.scenes_world import CLASS_NAMES, PART_NAMES, class_words, plural

IMAGES = range(12)


@pytest.fixture(scope="module")
def found():
    return [image_expressions("val", i) for i in IMAGES]


def _named_class(text: str) -> str | None:
    """The class whose word (or plural) appears in the text; the longest match wins ("traffic cone" over "cone")."""
    best = None
    for cls in CLASS_NAMES:
        for word in class_words(cls):
            for form in (word, plural(word)):
                if f" {form} " in f" {text} " or f" {form}'s " in f" {text} ":
                    if best is None or len(form) > best[1]:
                        best = (cls, len(form))
    return best and best[0]


def test_expressions_are_a_pure_function_of_split_and_index():
    first = [e for _, exprs in (image_expressions("test", i) for i in range(3)) for e in exprs]
    again = [e for _, exprs in (image_expressions("test", i) for i in range(3)) for e in exprs]
    assert first == again
    other = [e for _, exprs in (image_expressions("val", i) for i in range(3)) for e in exprs]
    assert first != other


def test_targets_match_their_kind(found):
    seen = collections.Counter()
    for sample, expressions in found:
        for e in expressions:
            seen[e.kind] += 1
            mask = e.mask(sample)
            if e.kind == "no-target":
                assert not mask.any() and not e.instances and e.stuff is None
                continue
            assert mask.any(), e
            if e.kind == "stuff":
                assert np.array_equal(mask, sample.class_map == CLASS_NAMES.index(e.stuff))
                continue
            objects = [o for o in sample.objects if o.instance in e.instances]
            classes = {o.cls for o in objects}
            assert classes == {_named_class(e.text.split(" of the ")[-1] if e.kind == "part" else e.text)} or \
                e.kind == "relation", e  # a relation names two classes; its target is the first
            if e.kind == "plural":
                assert len(e.instances) == len([o for o in sample.visible if o.cls in classes]) >= 2
            else:
                assert len(e.instances) == 1, e
            if e.kind == "part":
                assert e.part in PART_NAMES and e.part.split(" ")[-1] in e.text.replace("wheels", "wheel").replace(
                    "windows", "window")
                assert (sample.part_map[mask] == PART_NAMES.index(e.part)).all()
                assert mask.sum() < (sample.instance_map == e.instances[0]).sum()
    assert set(seen) == set(KINDS), seen


def test_singular_expressions_are_unambiguous(found):
    for sample, expressions in found:
        for e in expressions:
            if e.kind not in ("attribute", "position", "ordinal"):
                continue
            (target,) = [o for o in sample.objects if o.instance == e.instances[0]]
            group = sorted((o for o in sample.visible if o.cls == target.cls), key=lambda o: o.box[0])
            if e.kind == "attribute":
                word = target.colour if target.colour and target.colour in e.text.split() else target.size
                assert word in e.text.split()
                assert sum(word in (o.colour, o.size) for o in group) == 1, e
            elif e.kind == "position":
                assert len(group) >= 2
                side = "left" if "left" in e.text else "right"
                assert target is (group[0] if side == "left" else max(group, key=lambda o: o.box[2])), e
            else:
                k = ("first", "second", "third", "fourth").index(e.text.split()[1])
                order = group if "left" in e.text else group[::-1]
                assert order[k] is target, e


def test_no_target_names_nothing_in_the_image(found):
    for sample, expressions in found:
        for e in expressions:
            if e.kind != "no-target":
                continue
            cls = _named_class(e.text)
            colours = {o.colour for o in sample.visible if o.cls == cls}
            assert cls not in sample.class_names or not any(f" {c} " in f" {e.text} " for c in colours if c), e


def test_the_test_split_has_every_kind_at_least_30_times_in_300():
    data = get_refer_dataset("scenes_ref", split="test", limit=300)
    assert isinstance(data, ScenesRefDataset) and len(data) == 300
    counts = collections.Counter(data.kinds)
    assert set(counts) == set(KINDS) and min(counts.values()) >= 30, counts
    sample = data[0]
    assert sample.kind == data.kinds[0] and sample.mask.shape == (128, 128) and sample.id.startswith("test_")
    assert len({data[k].expression for k in range(0, 300, 7)}) > 30  # many wordings, not a few templates
