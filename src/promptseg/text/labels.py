"""Labels and prompts to token positions.

A *label* is one class with one or more synonyms ("person, people"); its map is the maximum over synonyms of the
mean over each synonym's tokens (class names split into several tokens are averaged, as DiffSegmenter does; the
field takes the maximum over synonyms). Token counts are read from the tokenizer, never assumed.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Label:
    """A class to segment.

    Attributes:
        name (`str`): the display name: the first synonym, except in a dataset list where every word of a class
            already names an earlier one (`parse_labels(..., shared_synonyms=True)`: "pot (2)").
        synonyms (`tuple[str, ...]`): every phrase that names the class, `name` first; the phrases prompts use.
    """

    name: str
    synonyms: tuple[str, ...]


def parse_labels(labels: Sequence[str], shared_synonyms: bool = False) -> list[Label]:
    """Labels from strings; commas inside one string separate synonyms of that label ("person, people").

    `shared_synonyms=True` is for a dataset's own class list, where lines share words (ADE20K-847 has "screen" in
    five lines, "dog" in two): each class keeps the first of its synonyms that no earlier class took as its name,
    and a synonym that is another class's name, or an earlier class's synonym, is left out; a class whose every
    word names an earlier class ("pot" after "pot, flowerpot") keeps its first word as its one synonym and is named
    "pot (2)". The classes keep their number and order.

    Raises:
        ValueError: no labels, an empty label or synonym, or (unless `shared_synonyms`) a name or synonym used twice.
        TypeError: a bare string was passed instead of a list of labels.
    """
    if isinstance(labels, str):
        raise TypeError(f"labels must be a list of strings, got the string {labels!r}; e.g. ['cat', 'dog']")
    parsed = []
    for i, text in enumerate(labels):
        if not isinstance(text, str):
            raise TypeError(f"label {i} is {type(text).__name__}, expected str: {text!r}")
        synonyms = tuple(" ".join(s.split()) for s in text.split(","))
        if not text.strip() or any(not s for s in synonyms):
            raise ValueError(f"label {i} ({text!r}) is empty or has an empty synonym; remove it or fill it in")
        parsed.append(Label(name=synonyms[0], synonyms=synonyms))
    if not parsed:
        raise ValueError("no labels given; pass at least one class name, e.g. ['cat', 'dog']")
    if shared_synonyms:
        return _without_shared(parsed)
    seen: dict[str, str] = {}
    for label in parsed:
        for synonym in label.synonyms:
            key = synonym.lower()
            if key in seen:
                raise ValueError(
                    f"duplicate label {synonym!r} (in {seen[key]!r} and {label.name!r}); each name may appear once"
                )
            seen[key] = label.name
    return parsed


def _without_shared(parsed: list[Label]) -> list[Label]:
    """`parse_labels(..., shared_synonyms=True)`'s rule: first unique names, then synonyms nobody else owns."""
    names: list[str] = []
    taken: set[str] = set()
    for label in parsed:
        name = next((s for s in label.synonyms if s.lower() not in taken), None)
        if name is None:  # every word already names a class (ADE20K-847: "pot, flowerpot" and "pot")
            count = 2
            while f"{label.synonyms[0]} ({count})".lower() in taken:
                count += 1
            name = f"{label.synonyms[0]} ({count})"
        names.append(name)
        taken.add(name.lower())
    out, used = [], set(taken)
    for label, name in zip(parsed, names):
        if name not in label.synonyms:  # a numbered name: the prompt still says the word
            out.append(Label(name=name, synonyms=(label.synonyms[0],)))
            continue
        rest = [s for s in label.synonyms if s != name and s.lower() not in used]
        used.update(s.lower() for s in rest)
        out.append(Label(name=name, synonyms=(name, *rest)))
    return out


@dataclass
class PromptTokens:
    """A prompt built from labels and where each label's tokens sit in it.

    Attributes:
        prompt (`str`): the text given to the text encoder.
        labels (`list[Label]`): the labels, in order.
        positions (`list[list[list[int]]]`): per label, per synonym, indices into the padded token sequence.
        length (`int`): the padded length (the tokenizer's `model_max_length`).
    """

    prompt: str
    labels: list[Label]
    positions: list[list[list[int]]]
    length: int


def _pieces(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids if text.strip() else []


_SPECIALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _special_counts(tokenizer) -> tuple[int, int]:
    """(special tokens before the text, special tokens in all) of `tokenizer`, read once per tokenizer."""
    if tokenizer not in _SPECIALS:
        probe = _pieces(tokenizer, "a")
        ids = tokenizer("a").input_ids
        lead = next((i for i in range(len(ids) - len(probe) + 1) if ids[i:i + len(probe)] == probe), None)
        if lead is None:
            raise ValueError("cannot find where the text starts among this tokenizer's special tokens")
        _SPECIALS[tokenizer] = (lead, len(ids) - len(probe))
    return _SPECIALS[tokenizer]


def leading_specials(tokenizer) -> int:
    """How many special tokens the tokenizer puts before the text: 1 for CLIP's BPE (its start token), 0 for T5's
    SentencePiece (which only ends the text)."""
    return _special_counts(tokenizer)[0]


def specials(tokenizer) -> int:
    """How many special tokens the tokenizer adds to a text (CLIP: start and end, 2; T5: end, 1)."""
    return _special_counts(tokenizer)[1]


def build_prompt(tokenizer, labels: Sequence[Label], template: str = "{}", joiner: str = " and ") -> PromptTokens:
    """Put every synonym of every label into one prompt, `template` with `{}` replaced by the joined synonyms.

    Raises:
        ValueError: `template` lacks exactly one "{}", or the prompt does not fit the text encoder; the message
            names the labels that fit and what to do.
    """
    if template.count("{}") != 1:
        raise ValueError(f"prompt template must contain '{{}}' exactly once, got {template!r}")
    prefix, suffix = template.split("{}")
    length = int(tokenizer.model_max_length)
    raw = prefix + joiner.join(synonym for label in labels for synonym in label.synonyms) + suffix
    prompt = raw.strip()
    ids = tokenizer(prompt, verbose=False).input_ids  # an overlong prompt is measured here, and refused below
    if len(ids) > length:
        raise ValueError(
            f"the prompt for labels {[lab.name for lab in labels]} needs {len(ids)} tokens but the text encoder takes "
            f"{length}: use fewer labels or synonyms per call, or a shorter template ({template!r})"
        )
    # each synonym's tokens found from its characters (`span_positions`: SentencePiece's pieces, unlike CLIP's words,
    # depend on the neighbours, so a joiner's token count alone cannot place them)
    spans, char = [], len(prefix) - (len(raw) - len(raw.lstrip()))
    for label in labels:
        for synonym in label.synonyms:
            spans.append((char, char + len(synonym)))
            char += len(synonym) + len(joiner)
    try:
        found = iter(span_positions(tokenizer, prompt, spans))
    except ValueError as err:
        raise RuntimeError(f"token positions of the labels do not match the tokenized prompt {prompt!r}: {err}") from err
    positions = [[next(found) for _ in label.synonyms] for label in labels]
    return PromptTokens(prompt=prompt, labels=list(labels), positions=positions, length=length)


def fit_synonyms(tokenizer, label: Label, template: str = "{}", joiner: str = " and ") -> Label:
    """`label` itself when its prompt alone fits the text encoder, else the label with as many of its synonyms, in
    order, as fit (a class line of 27 background words does not fit 77 tokens).

    Raises:
        ValueError: not even the label's name alone fits (the message names it).
    """
    for count in range(len(label.synonyms), 0, -1):
        candidate = label if count == len(label.synonyms) else Label(label.name, label.synonyms[:count])
        try:
            build_prompt(tokenizer, [candidate], template, joiner)
            return candidate
        except ValueError:
            if count == 1:
                raise
    raise AssertionError("unreachable")


def fit_prompt(tokenizer, labels: Sequence[Label], template: str = "{}", joiner: str = " and "
               ) -> tuple[list[Label], dict[str, list[str]]]:
    """`labels` with synonyms dropped until one prompt holds them all: each time the last synonym of the label with
    the most synonyms (the first such label on a tie). Returns the labels and the dropped synonyms by label name
    ({} when all fit). Every label keeps its name; when even one word each does not fit, the result holds one word
    each and still does not fit (split it with `split_to_fit`).

    For a method that needs every label in one prompt (InvSeg compares each class with every other): VOC's
    "background" line of 27 words fits SD's 77 tokens only without most of them.
    """
    fitted = list(labels)
    dropped: dict[str, list[str]] = {}
    while True:
        try:
            build_prompt(tokenizer, fitted, template, joiner)
            return fitted, dropped
        except ValueError:
            most = max(range(len(fitted)), key=lambda i: (len(fitted[i].synonyms), -i))
            label = fitted[most]
            if len(label.synonyms) == 1:
                return fitted, dropped
            dropped.setdefault(label.name, []).insert(0, label.synonyms[-1])
            fitted[most] = Label(label.name, label.synonyms[:-1])


def fit_words(tokenizer, head: str, words: Sequence[str], separator: str, joiner: str
              ) -> tuple[str, list[str], bool]:
    """`head` + `separator` + `words` joined by `joiner`, with words dropped from the end until the text fits the
    text encoder (start and end tokens included); returns the text, the words dropped, and whether `head` itself
    had to be cut to the tokens that fit (its last tokens go first).

    For a conditioning prompt that starts with a caption and lists the class names after it (FastSeg's).
    """
    length = int(tokenizer.model_max_length) - specials(tokenizer)
    words = list(words)
    for keep in range(len(words), -1, -1):
        text = separator.join(t for t in (head, joiner.join(words[:keep])) if t)
        if len(_pieces(tokenizer, text)) <= length:
            return text, words[keep:], False
    pieces = _pieces(tokenizer, head)[:length]
    return tokenizer.decode(pieces).strip(), words, True


def append_to_fit(tokenizer, prompt: str, tail: str, separator: str) -> str:
    """`prompt` + `separator` + `tail`, with `tail`'s words dropped from its end until the text fits the text encoder;
    `prompt` alone when no word of `tail` fits or when appending would change `prompt`'s own tokens (so the token
    positions read from `prompt` stay valid). For a label prompt completed by a caption (DiffSegmenter's)."""
    length = int(tokenizer.model_max_length) - specials(tokenizer)
    own = _pieces(tokenizer, prompt)
    words = tail.split()
    for keep in range(len(words), 0, -1):
        text = prompt + separator + " ".join(words[:keep])
        pieces = _pieces(tokenizer, text)
        if len(pieces) <= length:
            return text if pieces[: len(own)] == own else prompt
    return prompt


def split_to_fit(tokenizer, labels: Sequence[Label], template: str = "{}", joiner: str = " and ") -> list[list[Label]]:
    """Split `labels`, in order, into groups whose prompts each fit the text encoder (one group when all fit). A
    label whose synonyms alone do not fit one prompt keeps the first synonyms that do (`fit_synonyms`).

    Raises:
        ValueError: a label's name alone does not fit (the message names it).
    """
    groups: list[list[Label]] = []
    current: list[Label] = []
    for label in labels:
        label = fit_synonyms(tokenizer, label, template, joiner)
        try:
            build_prompt(tokenizer, current + [label], template, joiner)
            current.append(label)
        except ValueError:
            groups.append(current)
            current = [label]
    groups.append(current)
    return groups


def label_scores(cross: torch.Tensor, positions: list[list[list[int]]]) -> torch.Tensor:
    """Per-label maps from token maps: (..., T) -> (..., K), mean over a synonym's tokens, max over synonyms."""
    per_label = []
    for spans in positions:
        synonym_maps = torch.stack([cross[..., span].mean(dim=-1) for span in spans], dim=-1)
        per_label.append(synonym_maps.amax(dim=-1))
    return torch.stack(per_label, dim=-1)


def span_positions(tokenizer, text: str, spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Token indices in the tokenized `text` (special tokens included: CLIP's start token is 0) of each character
    span [start, end) of it.

    A span must start and end at word boundaries (CLIP's BPE, T5's SentencePiece and an LLM's byte-level BPE split
    words, never across them).

    Raises:
        ValueError: `text` does not fit the text encoder, or a span's tokens do not match the tokenized text.
    """
    ids = tokenizer(text).input_ids
    if len(ids) > int(tokenizer.model_max_length):
        raise ValueError(
            f"the expression {text!r} needs {len(ids)} tokens but the text encoder takes {tokenizer.model_max_length}; "
            "shorten it"
        )
    out = []
    lead = leading_specials(tokenizer)
    for start, end in spans:
        # a trailing space is a piece of its own in some SentencePiece-style tokenizers ("▁"), never a piece of the
        # word after it; a byte-level BPE (an LLM's: Qwen, Mistral) puts the space inside the word's first token
        # ("Ġcat"), so the word's tokens are those its text adds to the text before it, not those of the word alone
        before = _pieces(tokenizer, text[:start].rstrip())
        upto = _pieces(tokenizer, text[:end])
        first = lead + len(before)
        pieces = upto[len(before):] if upto[:len(before)] == before else []
        if not pieces or ids[first : first + len(pieces)] != pieces:
            raise ValueError(f"{text[start:end]!r} at characters {start}-{end} is not a whole word of {text!r}")
        out.append(list(range(first, first + len(pieces))))
    for other, offset, limit in getattr(tokenizer, "also", ()):  # the same words in a second encoder's rows
        found = span_positions(other, text, spans)
        out = [span + [offset + p for p in extra if p < limit] for span, extra in zip(out, found)]
    return out


class JointTokenizer:
    """A view of the tokenizer a backbone's words are found with: its calls and decoding are the `primary`
    tokenizer's, with two additions.

    - `also`: words are also read in other encoders' rows of the same text states. SD3's conditioning is CLIP's 77
      rows, then T5's; a word's positions (`span_positions`, `build_prompt`) are its CLIP tokens and, after them,
      its T5 tokens offset by CLIP's rows.
    - `max_length`: the rows the encoder is run with, when the backbone's setting differs from the tokenizer's own
      `model_max_length` (FLUX.1-schnell's T5 runs with 256 of its tokenizer's 512): prompts are fitted to it.

    Args:
        primary: the tokenizer whose tokens start the text states (and whose input embeddings methods may learn).
        also (`list[tuple]`, defaults to none): (tokenizer, row offset, row count) of each further encoder; tokens
            past its row count (truncated by the encoder) are not read.
        max_length (`int`, *optional*): the `model_max_length` to report; None: the primary's.
    """

    def __init__(self, primary, also=(), max_length: int | None = None):
        self.primary, self.also, self.max_length = primary, list(also), max_length

    def __call__(self, *args, **kwargs):
        return self.primary(*args, **kwargs)

    def __len__(self) -> int:
        return len(self.primary)

    @property
    def model_max_length(self) -> int:
        return int(self.primary.model_max_length if self.max_length is None else self.max_length)

    def __getattr__(self, name):
        if name.startswith("__") or name in ("primary", "also", "max_length"):  # copy / pickle before __init__
            raise AttributeError(name)
        return getattr(self.primary, name)


def input_positions(tokenizer, positions: Sequence[int]) -> list[int]:
    """Of text-state `positions`, those that are the primary encoder's own tokens (whose input embeddings can be
    replaced: `encode_text(token_embeds=...)`), not another encoder's rows (`JointTokenizer`)."""
    return [p for p in positions if p < int(tokenizer.model_max_length)]


STUFF_WORDS = (
    "sky", "grass", "lawn", "sand", "beach", "water", "sea", "ocean", "river", "lake", "snow", "ice", "road", "street",
    "pavement", "sidewalk", "ground", "earth", "dirt", "gravel", "mud", "field", "floor", "ceiling", "wall", "fog",
    "mountain", "hill", "rock", "stone", "forest", "bush", "vegetation", "leaves", "platform", "railroad", "runway",
    "carpet", "rug", "background",
)
"""Stuff words of the field's class lists (COCO-Stuff, ADE20K, Pascal Context): amorphous regions, not countable
objects. A label is matched by its whole name or its last word ("blue sky"), so "potted plant" stays a thing."""


def is_stuff(name: str, stuff=STUFF_WORDS) -> bool:
    """Whether label `name` is stuff (a region, not an object): "background", or its name or last word in `stuff`
    (lower-case words)."""
    words = name.lower().split()
    return name.lower() == "background" or name.lower() in stuff or (bool(words) and words[-1] in stuff)
