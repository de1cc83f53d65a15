"""What every refiner shares: the outcome type, the registry, and applying a refiner to a method's result.

A refiner runs after a method, between its scores and its label map: attention lives on 8x8-64x64 grids, so every
object edge a method draws is an upsampled blur, and a refiner redraws the edges from the image itself (`pamr`) or
from a promptable mask model (`sam`). It works on any semantic method's `SegmentationResult`, so baseline, invseg,
fastseg and dpseg all share it. Refiners register by name with `@register_refiner("name", ConfigClass)`:

    refiner = build_refiner("sam", backbone, sam="shapes-sam", mode="prompts")
    refined = apply_refiner(refiner, image, result)     # a new SegmentationResult; extra["refine"] says what changed
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from promptseg.registry import Registry

DEFAULT_REFINER = "none"
"""The refiner used when the model recommends none: the method's own label map."""
REFINERS = Registry("refiner", lambda: _import_builtin_refiners(), default=DEFAULT_REFINER)
"""Every refiner by name, with its settings dataclass. `promptseg.pipeline` resolves which one runs (the caller's,
else the model's `"refine"` with its `"refiners": {name: settings}`, else `DEFAULT_REFINER`)."""


@dataclass
class Refinement:
    """What a refiner returns for one image.

    Attributes:
        label_map (`np.ndarray`): HxW int32, indices into the result's labels (the same labels, the same order).
        scores (`np.ndarray`, *optional*): KxHxW float32 refined scores, when the refiner refines scores (`pamr`);
            None keeps the method's scores.
        regions (`list[dict]`): one entry per region the refiner drew: `label`, `source` (what drew it: "proposal",
            "box", "point", ...), `area` in pixels, and refiner-specific fields (a box, the agreement with the
            method's region).
        warnings (`list[str]`): e.g. that the mask model found nothing.
    """

    label_map: np.ndarray
    scores: np.ndarray | None = None
    regions: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def register_refiner(name: str, config_cls: type):
    """Class decorator: make a refiner available by `name` with its settings dataclass `config_cls`."""
    return REFINERS.register(name, config_cls)


def _import_builtin_refiners() -> None:
    import promptseg.refiners.none  # noqa: F401
    import promptseg.refiners.pamr  # noqa: F401
    import promptseg.refiners.sam  # noqa: F401


def list_refiners() -> dict[str, str]:
    """Registered refiner names with the first line of their docstrings."""
    return REFINERS.summaries()


def refiner_config(name: str, **overrides):
    """The settings dataclass of refiner `name` with its defaults, changed by `overrides` (text parsed as JSON).

    Raises:
        ValueError: an unknown refiner name or setting.
    """
    return REFINERS.config(name, **overrides)


def build_refiner(name: str, backbone=None, config=None, **overrides):
    """An instance of refiner `name` (with `backbone` for its device and dtype), with `config` or the defaults
    changed by `overrides`."""
    return REFINERS.build(name, backbone, config, **overrides)


def apply_refiner(refiner, image, result):
    """Refine a method's `result` for `image` (PIL): a new `SegmentationResult` with the refined label map (and
    scores, where the refiner refines them), `timings["refine"]`, and `extra["refine"]`: the refiner's name, its
    regions, the seconds it took, and `erased`: labels the method gave pixels to that the refinement left none
    (each also named in a warning, never dropped silently). `refiner` None returns `result` unchanged."""
    if refiner is None:
        return result
    start = time.perf_counter()
    out = refiner(image, result)
    seconds = time.perf_counter() - start
    if out.label_map.shape != result.label_map.shape:
        raise RuntimeError(f"refiner {refiner.name!r} returned a {out.label_map.shape} map for a "
                           f"{result.label_map.shape} image")
    before = set(np.unique(result.label_map).tolist())
    after = set(np.unique(out.label_map).tolist())
    erased = [result.labels[i] for i in sorted(before - after)]
    warnings = list(result.warnings) + list(out.warnings)
    if erased:
        warnings.append(f"refiner {refiner.name!r} left no pixels to {erased} (the method gave them some): "
                        "see extra['refine']")
    report = {"name": refiner.name, "regions": out.regions, "erased": erased, "seconds": seconds}
    return dataclasses.replace(
        result,
        label_map=out.label_map.astype(np.int32),
        scores=result.scores if out.scores is None else out.scores.astype(np.float32),
        timings={**result.timings, "refine": seconds},
        warnings=warnings,
        extra={**result.extra, "refine": report},
    )
