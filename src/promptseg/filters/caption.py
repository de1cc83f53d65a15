"""Captions for the class filter: matching caption words to labels (the captioner is `promptseg.models.captioner`).

    captioner = load_captioner("Salesforce/blip-image-captioning-large")
    caption = captioner(image)                       # "a cat sitting on a sofa"
    mentioned(caption, parse_labels(["cat", "sofa, couch", "dog"]))   # {"cat", "sofa"}
"""

from __future__ import annotations

import re

from promptseg.models.captioner import BlipCaptioner, continuation, load_captioner

__all__ = ["BlipCaptioner", "continuation", "load_captioner", "mentioned"]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _singular(word: str) -> str:
    for suffix, repl in (("ies", "y"), ("ses", "s"), ("xes", "x"), ("ches", "ch"), ("shes", "sh"), ("s", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 1:
            return word[: -len(suffix)] + repl
    return word


def mentioned(caption: str, labels) -> set[str]:
    """Names of the labels any of whose synonyms occurs in `caption` as whole words; a caption word matches as
    written or made singular ("cats" names "cat", "buses" names "bus", "bus" still names "bus")."""
    forms = [{w, _singular(w)} for w in _words(caption)]
    found = set()
    for label in labels:
        for synonym in label.synonyms:
            words = _words(synonym)
            if words and any(
                all(word in forms[i + j] for j, word in enumerate(words)) for i in range(len(forms) - len(words) + 1)
            ):
                found.add(label.name)
    return found
