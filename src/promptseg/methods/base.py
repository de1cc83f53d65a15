"""What every method shares: the result type, the method registry, and the steps all methods end with.

A method is a class with a two-stage API, like segment-anything's predictor:
`prepared = method.prepare(image)` pays for what depends on the image alone, and
`method.segment(prepared, labels)` may then be called for any number of label sets. `method(image, labels)` does
both. Methods register themselves by name with `@register_method("name", ConfigClass)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from promptseg.diffusion.readout import resize_maps
from promptseg.registry import Registry
from promptseg.text import Label, parse_labels

BACKGROUND = "background"


@dataclass
class SegmentationResult:
    """The output of a method for one image and one label set.

    Attributes:
        label_map (`np.ndarray`): HxW int32 at the input image's size; value i means `labels[i]`.
        scores (`np.ndarray`): KxHxW float32, one score map per entry of `labels`, in [0, 1]. When background comes
            from a threshold, `scores[0]` is that constant threshold.
        labels (`list[str]`): the names of the label-map values; "background" first when background comes from a
            score threshold.
        timings (`dict[str, float]`): seconds per stage ("prepare", "segment", ...).
        warnings (`list[str]`): anything the method wants the user to know (e.g. an optimisation stopped early).
        extra (`dict`): method-specific diagnostics (e.g. InvSeg's loss per step).
    """

    label_map: np.ndarray
    scores: np.ndarray
    labels: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReferResult:
    """The output of a method for one image and one referring expression.

    Attributes:
        mask (`np.ndarray`): HxW bool at the input image's size, the union of everything the expression refers to
            (all False when the method finds no referent).
        score (`np.ndarray`): HxW float32 in [0, 1], the referent's attention map before any mask model.
        expression (`str`): the expression, as given.
        timings (`dict[str, float]`), warnings (`list[str]`): as for `SegmentationResult`.
        extra (`dict`): method-specific diagnostics (the parse, the prompts, the inversion's loss).
    """

    mask: np.ndarray
    score: np.ndarray
    expression: str
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


METHODS = Registry("method", lambda: _import_builtin_methods())
"""Every segmentation method by name, with its settings dataclass."""


def register_method(name: str, config_cls: type):
    """Class decorator: make a method available by `name` with its settings dataclass `config_cls`."""
    return METHODS.register(name, config_cls)


def require_refer(name: str) -> None:
    """Raise a ValueError naming the methods that do, when method `name` does not answer referring expressions."""
    if not hasattr(METHODS.get(name)[0], "refer"):
        answering = sorted(n for n in METHODS.summaries() if hasattr(METHODS.get(n)[0], "refer"))
        raise ValueError(f"method {name!r} does not answer referring expressions; use one of {answering}")


def list_methods() -> dict[str, str]:
    """Registered method names with the first line of their docstrings."""
    return METHODS.summaries()


def methods_for(family: str) -> dict[str, str]:
    """`list_methods()` narrowed to the methods that run on a backbone of `family` ("unet", "mmdit", "flux"): a method class
    names the families it reads in `families` (every family when it names none)."""
    return {name: summary for name, summary in list_methods().items()
            if family in getattr(METHODS.get(name)[0], "families", (family,))}


def method_config(name: str, **overrides):
    """The settings dataclass of method `name` with its defaults, changed by `overrides`.

    Raises:
        ValueError: an unknown method name or setting.
    """
    return METHODS.config(name, **overrides)


def recommended_config(name: str, recommended: dict, overrides: dict):
    """Method `name`'s settings: defaults, then the model's `recommended` {method: settings}, then `overrides`."""
    return method_config(name, **{**recommended.get(name, {}), **overrides})


def build_method(name: str, backbone, config=None, **overrides):
    """An instance of method `name` on `backbone`, with `config`, or else the method's defaults changed first by
    the settings the model recommends (`backbone.method_defaults`), then by `overrides`."""
    if config is None:
        config = recommended_config(name, getattr(backbone, "method_defaults", {}), overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    return METHODS.get(name)[0](backbone, config)


def _import_builtin_methods() -> None:
    import promptseg.methods.anyword  # noqa: F401
    import promptseg.methods.baseline  # noqa: F401
    import promptseg.methods.conceptattention  # noqa: F401
    import promptseg.methods.dpseg  # noqa: F401
    import promptseg.methods.fastseg  # noqa: F401
    import promptseg.methods.invseg  # noqa: F401


def finish(
    scores: torch.Tensor,
    labels: Sequence[Label],
    size: tuple[int, int],
    background_threshold: float | None,
    timings: dict[str, float],
    warnings: list[str] | None = None,
) -> SegmentationResult:
    """Upsample (K, h, w) scores in [0, 1] to the image `size`, add background, take the argmax.

    Background: a label named "background" is an ordinary label; otherwise, when `background_threshold` is set, a
    pixel whose best score is below it is background.
    """
    names = [label.name for label in labels]
    offset = int(background_threshold is not None and BACKGROUND not in names)
    # one (K [+1], H, W) buffer filled in label chunks: with ADE-847's names at 512 px it is 0.9 GB, so no copy of it
    maps = torch.empty((scores.shape[0] + offset, *size), dtype=torch.float32, device=scores.device)
    if offset:
        maps[0] = float(background_threshold)
        names = [BACKGROUND] + names
    for start in range(0, scores.shape[0], 64):
        chunk = scores[None, start:start + 64].float()
        maps[offset + start:offset + start + chunk.shape[1]] = resize_maps(chunk, size)[0].clamp(0, 1)
    label_map = maps.argmax(dim=0).to(torch.int32)
    return SegmentationResult(
        label_map=label_map.cpu().numpy(),
        scores=maps.cpu().numpy(),
        labels=names,
        timings=dict(timings),
        warnings=list(warnings or []),
    )


def empty_result(size: tuple[int, int]) -> SegmentationResult:
    """An all-background result of `size` (h, w): what is left when a filter drops every label."""
    return SegmentationResult(
        label_map=np.zeros(size, np.int32),
        scores=np.zeros((1, *size), np.float32),
        labels=[BACKGROUND],
    )


def as_labels(labels) -> list[Label]:
    """`Label` objects from strings or labels."""
    if labels and all(isinstance(label, Label) for label in labels):
        return list(labels)
    return parse_labels(labels)
