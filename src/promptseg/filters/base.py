"""What every class filter shares: the decision type, the registry, the keep/drop rule.

A filter answers "which of these labels are in this image?" before a method segments it. The published diffusion
segmenters all have this stage (DiffSegmenter and InvSeg: BLIP captions + CLIP; FA-Seg: per-image candidate
classes), because each label's map is min-max normalised on its own: an absent label offered to the method is
stretched as much as a present one and takes pixels. Filters register by name with
`@register_filter("name", ConfigClass)`; `build_filter(name, backbone, **settings)` makes one.

    label_filter = build_filter("clip", backbone, model="shapes-clip")
    decision = label_filter(image, ["circle", "square", "grass"])
    decision.kept, decision.dropped, decision.scores
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from promptseg.registry import Registry
from promptseg.text import Label

DEFAULT_FILTER = "diffusion"
"""The filter used when the model recommends none: it needs no second model, so it works with any backbone."""
FILTERS = Registry("filter", lambda: _import_builtin_filters(), default=DEFAULT_FILTER)
"""Every class filter by name, with its settings dataclass. `promptseg.pipeline` resolves which one runs (the
caller's, else the model's `"filter"` with its `"filters": {name: settings}`, else `DEFAULT_FILTER`)."""


@dataclass
class FilterDecision:
    """Which labels a filter kept for one image, and why the others were dropped.

    Attributes:
        kept (`list[Label]`): the labels judged present, in the order given.
        dropped (`dict[str, str]`): label name -> the reason it was dropped.
        scores (`dict[str, float]`): label name -> presence score (higher = more likely present), every label.
        caption (`str`, *optional*): the captioner's caption, when the filter has one.
        seconds (`float`): time spent filtering.
        warnings (`list[str]`): e.g. that no label passed the threshold and the best one was kept.
    """

    kept: list[Label]
    dropped: dict[str, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    caption: str | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """JSON-ready summary (kept names, dropped reasons, scores)."""
        return {
            "kept": [label.name for label in self.kept],
            "dropped": dict(self.dropped),
            "scores": {k: round(float(v), 5) for k, v in self.scores.items()},
            "caption": self.caption,
            "seconds": self.seconds,
        }


def register_filter(name: str, config_cls: type):
    """Class decorator: make a filter available by `name` with its settings dataclass `config_cls`."""
    return FILTERS.register(name, config_cls)


def _import_builtin_filters() -> None:
    import promptseg.filters.clip  # noqa: F401
    import promptseg.filters.diffusion  # noqa: F401
    import promptseg.filters.none  # noqa: F401


def list_filters() -> dict[str, str]:
    """Registered filter names with the first line of their docstrings."""
    return FILTERS.summaries()


def filter_config(name: str, **overrides):
    """The settings dataclass of filter `name` with its defaults, changed by `overrides` (text parsed as JSON).

    Raises:
        ValueError: an unknown filter name or setting.
    """
    return FILTERS.config(name, **overrides)


def build_filter(name: str, backbone=None, config=None, **overrides):
    """An instance of filter `name` (on `backbone` where it needs the diffusion model), with `config` or the
    defaults changed by `overrides`."""
    return FILTERS.build(name, backbone, config, **overrides)


def decide(labels: list[Label], scores: np.ndarray, threshold: float, min_keep: int, what: str) -> FilterDecision:
    """Keep labels whose score is at least `threshold`; if fewer than `min_keep` pass, keep the best `min_keep`
    and say so. `what` names the score in the reasons ("CLIP similarity", ...)."""
    scores = np.asarray(scores, np.float64)
    keep = scores >= threshold
    warnings = []
    if keep.sum() < min_keep:
        best = np.argsort(-scores, kind="stable")[:min_keep]
        rescued = [labels[i].name for i in best if not keep[i]]
        keep[best] = True
        warnings.append(
            f"no label reached the {what} threshold {threshold:g}; kept the best-scoring {rescued} "
            f"(min_keep={min_keep}; set min_keep=0 to allow an empty result)"
        )
    dropped = {
        label.name: f"{what} {score:.3f} < threshold {threshold:g}"
        for label, score, k in zip(labels, scores, keep)
        if not k
    }
    if not keep.any():
        warnings.append(f"every label was dropped ({what} below {threshold:g}): {sorted(dropped)}")
    return FilterDecision(
        kept=[label for label, k in zip(labels, keep) if k],
        dropped=dropped,
        scores={label.name: float(s) for label, s in zip(labels, scores)},
        warnings=warnings,
    )


class Timer:
    """`with Timer() as t: ...; t.seconds`."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
