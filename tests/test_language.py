"""Parsing referring expressions into referents (spaCy's English model, the `parse` extra)."""

import pytest

pytest.importorskip("spacy")

from promptseg.text.language import load_parser, parse_expression

try:
    load_parser()
except ImportError:  # pragma: no cover - make test installs the model
    pytest.skip("no spaCy English model installed (pip install 'promptseg[parse]')", allow_module_level=True)


def words(referent):
    return [w.text for w in referent.modifiers]


def test_colour_is_bound_to_its_head_noun():
    target = parse_expression("the red circle").target
    assert target.head.text == "circle"
    assert words(target) == ["red"]
    assert not target.plural and target.relation is None


def test_relation_splits_the_expression_and_keeps_both_heads():
    for text, kind, head, other in [
        ("the circle left of the square", "left", "circle", "square"),
        ("the square right of the triangle", "right", "square", "triangle"),  # spaCy alone reads "right" as the head
        ("the dog to the left of the red car", "left", "dog", "car"),
        ("the cup above the plate", "above", "cup", "plate"),
    ]:
        target = parse_expression(text).target
        assert target.head.text == head, text
        assert target.relation.kind == kind, text
        assert target.relation.other.head.text == other, text
    assert words(parse_expression("the dog to the left of the red car").target.relation.other) == ["red"]


def test_plural_generic_heads_and_numbers():
    circles = parse_expression("the circles").target
    assert circles.plural and circles.head.lemma == "circle"
    red = parse_expression("the red shapes").target
    assert red.plural and red.generic
    assert [w.text for w in red.concept_words()] == ["red"]  # "shapes" names nothing visual
    assert parse_expression("two dogs").target.plural
    assert not parse_expression("the dog").target.plural


def test_attributes_positions_and_character_spans():
    text = "man in red shirt on left"
    parsed = parse_expression(text)
    target = parsed.target
    assert target.head.text == "man"
    assert target.position == "left"
    assert sorted(w.text for w in target.attributes) == ["red", "shirt"]
    assert words(target) == []  # "red" describes the shirt, not the man
    for word in parsed.words():
        assert text[word.start : word.end] == word.text
    assert [w.text for w in parsed.words()] == ["man", "red", "shirt"]


def test_empty_expression_is_refused():
    with pytest.raises(ValueError, match="empty"):
        parse_expression("   ")
