"""What every class filter shares: the decision type, the registry, the keep/drop rule, and filtered segmentation.

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

FILTERS = Registry("filter", lambda: _import_builtin_filters())
"""Every class filter by name, with its settings dataclass."""
DEFAULT_FILTER = "diffusion"
"""The filter used when the model recommends none: it needs no second model, so it works with any backbone."""


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


def resolve_filter(model_settings: dict, name: str | None, overrides: dict) -> tuple[str, dict]:
    """(name, settings) of the filter to use: `name`, or else the filter the model recommends, or else
    `DEFAULT_FILTER`; its settings are the model's for that filter, changed by `overrides`.

    A model folder recommends in `promptseg_settings.json`: `"filter": "clip"` and
    `"filters": {"clip": {"model": "shapes-clip", "threshold": 0.32}, "diffusion": {...}}`.
    """
    return FILTERS.resolve(model_settings, name, overrides, DEFAULT_FILTER, "filter", "filters")


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


def segment_filtered(method, label_filter, image, labels, prompt: str | None = None, refiner=None):
    """Filter `labels` for `image`, segment it into the kept ones, then refine the label map with `refiner` (a
    `promptseg.refiners` instance; None: no refinement).

    The result's `extra["filter"]` holds the decision (kept, dropped with reasons, scores) and its warnings join
    the result's. A filter caption, if any, becomes the method's prompt unless `prompt` is given or the method
    learns its own (`takes_prompt = False`, InvSeg). When every label is dropped (only possible with
    `min_keep=0`) the result is all background, with a warning.
    """
    from promptseg.methods.base import as_labels, empty_result, to_pil

    labels = as_labels(labels)
    pil = to_pil(image)
    decision = label_filter(pil, labels) if label_filter is not None else FilterDecision(kept=list(labels))
    if prompt is None and getattr(method, "takes_prompt", True):
        prompt = decision.caption
    if decision.kept:
        result = method(pil, decision.kept, prompt=prompt) if prompt is not None else method(pil, decision.kept)
    else:
        result = empty_result((pil.height, pil.width))
    result.warnings = list(decision.warnings) + result.warnings
    if decision.dropped:
        result.warnings.append(f"filter dropped {sorted(decision.dropped)}: see extra['filter']['dropped']")
    result.extra["filter"] = decision.as_dict()
    result.timings["filter"] = decision.seconds
    if decision.kept and refiner is not None:
        from promptseg.refiners import apply_refiner

        result = apply_refiner(refiner, pil, result)
    return result


class Timer:
    """`with Timer() as t: ...; t.seconds`."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
