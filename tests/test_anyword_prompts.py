"""Prompt extraction from synthetic word maps, and the linguistic selection of regions."""

import numpy as np
import pytest

from promptseg.methods.anyword.prompts import (
    add_support,
    find_regions,
    referent_map,
    select,
)
from promptseg.text.language import Referent, Relation, Word


def blob(shape, box, value=1.0):
    out = np.zeros(shape, np.float32)
    x0, y0, x1, y1 = box
    out[y0:y1, x0:x1] = value
    return out


def word(text):
    return Word(text=text, lemma=text, start=0, end=len(text))


def test_regions_have_boxes_peaks_and_scores_best_first():
    score = blob((32, 32), (2, 2, 10, 8), 0.6) + blob((32, 32), (20, 20, 30, 28), 0.9)
    score[24, 25] = 1.0
    regions = find_regions(score, threshold=0.5, min_area=0.0)
    assert [r.box for r in regions] == [(20, 20, 30, 28), (2, 2, 10, 8)]
    assert regions[0].peak == (25, 24)
    assert regions[0].score > regions[1].score
    assert [r.box for r in find_regions(score, threshold=0.5, min_area=0.06)] == [(20, 20, 30, 28)]  # 48 px: too small


def test_binding_needs_every_word_to_agree():
    shape = (32, 32)
    red = blob(shape, (0, 0, 12, 12)) + blob(shape, (20, 0, 32, 12))  # two red things
    circle = blob(shape, (20, 0, 32, 12)) + blob(shape, (0, 20, 12, 32))  # two circles
    score = referent_map([red, circle])
    regions = find_regions(score, 0.5, 0.0)
    assert [r.box for r in regions] == [(20, 0, 32, 12)]  # the red circle only


def test_singular_plural_position_and_presence():
    shape = (32, 32)
    score = blob(shape, (0, 10, 8, 18), 0.8) + blob(shape, (24, 10, 32, 18), 0.9)
    regions = find_regions(score, 0.5, 0.0)
    add_support(regions, [score])
    one = Referent(head=word("circle"))
    assert [r.box for r in select(regions, one, 0.0, 0.5)[0]] == [(24, 10, 32, 18)]  # the best one
    many = Referent(head=word("circles"), plural=True)
    assert len(select(regions, many, 0.0, 0.5)[0]) == 2
    left = Referent(head=word("circle"), position="left")
    assert [r.box for r in select(regions, left, 0.0, 0.5)[0]] == [(0, 10, 8, 18)]
    assert select(regions, one, presence_threshold=0.95, plural_ratio=0.5) == ([], None)  # nothing bound well enough


def test_relation_picks_the_pair_and_never_anchors_on_the_target():
    shape = (32, 32)
    circles = find_regions(blob(shape, (0, 0, 8, 8), 0.7) + blob(shape, (24, 0, 32, 8), 0.9), 0.5, 0.0)
    square = find_regions(blob(shape, (12, 0, 20, 8)), 0.5, 0.0)
    target = Referent(head=word("circle"), relation=Relation("left", Referent(head=word("square"))))
    chosen, anchor = select(circles, target, 0.0, 0.5, anchors=square)
    assert [r.box for r in chosen] == [(0, 0, 8, 8)]  # left of the square, though the other circle scores higher
    assert anchor.box == (12, 0, 20, 8)
    same = find_regions(blob(shape, (24, 0, 32, 8)), 0.5, 0.0)  # the only "anchor" is the target itself
    assert select(same, target, 0.0, 0.5, anchors=same) == ([], None)


def test_referent_map_rejects_no_words():
    with pytest.raises(ValueError, match="at least one"):
        referent_map([])
