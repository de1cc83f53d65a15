"""What every method shares: the result type, the method registry, and the steps all methods end with.

A method is a class with a two-stage API, like segment-anything's predictor:
`prepared = method.prepare(image)` pays for what depends on the image alone, and
`method.segment(prepared, labels)` may then be called for any number of label sets. `method(image, labels)` does
both. Methods register themselves by name with `@register_method("name", ConfigClass)`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from promptseg.capture import attention_grids, select_layers
from promptseg.refine import resize_maps
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


@dataclass
class PreparedImage:
    """What a method keeps about one image between `prepare` and `segment`.

    Attributes:
        size (`tuple[int, int]`): the original image size (h, w).
        pixels (`torch.Tensor`): (1, 3, H, W) in [-1, 1] at the model's native size.
        latents (`torch.Tensor`): (1, C, h, w) clean VAE latents.
        extra (`dict`): method-specific state (noise, captured attention, ...).
        timings (`dict[str, float]`): seconds spent preparing.
    """

    size: tuple[int, int]
    pixels: torch.Tensor
    latents: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


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


def method_config(name: str, **overrides):
    """The settings dataclass of method `name` with its defaults, changed by `overrides`.

    Raises:
        ValueError: an unknown method name or setting.
    """
    return METHODS.config(name, **overrides)


def config_for_model(name: str, model, **overrides):
    """The settings of method `name` for `model` (a name or path): the method's defaults, changed by what the model
    recommends (`promptseg_settings.json` in its folder), then by `overrides`. Needs no model loading."""
    from promptseg.backbone import model_settings

    return _recommended_config(name, model_settings(model), overrides)


def _recommended_config(name: str, recommended: dict, overrides: dict):
    """Method `name`'s settings: defaults, then the model's `recommended` {method: settings}, then `overrides`."""
    return method_config(name, **{**recommended.get(name, {}), **overrides})


def build_method(name: str, backbone, config=None, **overrides):
    """An instance of method `name` on `backbone`, with `config`, or else the method's defaults changed first by
    the settings the model recommends (`backbone.method_defaults`), then by `overrides`."""
    if config is None:
        config = _recommended_config(name, getattr(backbone, "method_defaults", {}), overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    return METHODS.get(name)[0](backbone, config)


def _import_builtin_methods() -> None:
    import promptseg.methods.anyword  # noqa: F401
    import promptseg.methods.baseline  # noqa: F401
    import promptseg.methods.dpseg  # noqa: F401
    import promptseg.methods.fastseg  # noqa: F401
    import promptseg.methods.invseg  # noqa: F401


def resolve_weights(weights: dict[float, float], unet, latent_hw, kind: str) -> dict[tuple[int, int], float]:
    """Map {fraction of the latent side: weight} onto the grids where the UNet has `kind` attention.

    A fraction f means the grid whose side is f times the latent side (SD 1.5's 16x16 cross-attention is 0.25 of
    its 64x64 latent). Fractions with no such grid in this UNet are dropped.

    Raises:
        ValueError: no requested grid exists in this UNet (the message lists the grids that do).
    """
    available = attention_grids(unet, latent_hw, kind)
    out: dict[tuple[int, int], float] = {}
    for fraction, weight in weights.items():
        side = latent_hw[0] * float(fraction)
        for grid in available:
            if abs(grid[0] - side) < 0.5 and weight > 0:
                out[grid] = out.get(grid, 0.0) + float(weight)
    if not out:
        fractions = [round(g[0] / latent_hw[0], 4) for g in available]
        raise ValueError(
            f"none of the {kind}-attention resolutions {sorted(weights)} (fractions of the latent side) exists in this "
            f"UNet; it has {kind}-attention at fractions {fractions}"
        )
    return out


@dataclass
class AttentionPlan:
    """Which attention a method reads: grids with weights, the refinement grid, and the layers to record.

    Attributes:
        cross (`dict[tuple[int, int], float]`): cross-attention grid -> weight.
        self (`dict[tuple[int, int], float]`): self-attention grid -> weight.
        target (`tuple[int, int]`): the finest self-attention grid, where maps are refined.
        layers (`list[AttentionLayer]`): the layers to record.
    """

    cross: dict
    self: dict
    target: tuple[int, int]
    layers: list


def plan_attention(backbone, cross_weights: dict, self_weights: dict, places) -> AttentionPlan:
    """Resolve {fraction: weight} settings on this backbone's UNet and select the layers to record."""
    latent_hw = backbone.latent_size
    cross = resolve_weights(cross_weights, backbone.unet, latent_hw, "cross")
    self_grids = resolve_weights(self_weights, backbone.unet, latent_hw, "self")
    layers = select_layers(backbone.unet, latent_hw, self_grids=self_grids, cross_grids=cross, places=places)
    return AttentionPlan(cross=cross, self=self_grids, target=max(self_grids, key=lambda g: g[0] * g[1]), layers=layers)


def to_pil(image) -> Image.Image:
    """An RGB PIL image from a PIL image or an HxWx3 uint8 array."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        return Image.fromarray(image)
    raise TypeError(f"expected a PIL image or an HxWx3 uint8 array, got {type(image).__name__}")


def prepare_pixels(backbone, image) -> PreparedImage:
    """Resize to the native size and VAE-encode: the first step of every method."""
    start = time.perf_counter()
    pil = to_pil(image)
    pixels = backbone.preprocess(pil)
    with torch.no_grad():
        latents = backbone.encode_image(pixels)
    return PreparedImage(
        size=(pil.height, pil.width),
        pixels=pixels,
        latents=latents,
        timings={"encode": time.perf_counter() - start},
    )


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
