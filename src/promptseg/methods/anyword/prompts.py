"""Mask prompts from word maps, and the linguistic-guided regularisation that picks them.

A referent's map is the geometric mean of the maps of the words bound to it (head noun and modifiers: "red" and
"circle" must both light a pixel up). Its connected parts above a threshold are the candidate regions; each region
gives SAM a box and/or a point. The parse then decides which regions are the referent: an absolute position ("on the
left") or a relation to another referent ("left of the square") filters them, a singular referent keeps its best
region, a plural one every region close to the best, and a region where a bound word is absent is no region at all
(which lets a no-target expression come out empty).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from promptseg.io.regions import connected_components
from promptseg.text.language import Referent


@dataclass
class Region:
    """A candidate region on the work grid.

    Attributes:
        mask (`np.ndarray`): hxw bool.
        box (`tuple`): (x0, y0, x1, y1) in grid pixels, x1/y1 exclusive.
        peak (`tuple`): (x, y) of the highest referent score inside, in grid pixels.
        score (`float`): mean referent score inside (times the relative denoising evidence, when used).
        support (`float`): the lowest mean score inside over the referent's bound words (1 when unbound).
        prior (`float`): the mean referent map inside, before any evidence; a plural referent compares regions by it.
        gain (`float`, *optional*): the referent phrase's mean denoising gain inside (with denoising evidence).
        source (`np.ndarray`, *optional*): the image-size mask the region came from (a SAM proposal), which is then the
            final mask as it is.
    """

    mask: np.ndarray
    box: tuple[int, int, int, int]
    peak: tuple[int, int]
    score: float
    support: float = 1.0
    prior: float | None = None
    gain: float | None = None
    source: np.ndarray | None = None

    def __post_init__(self):
        if self.prior is None:
            self.prior = self.score

    @property
    def centre(self) -> tuple[float, float]:
        ys, xs = np.nonzero(self.mask)
        return float(xs.mean()), float(ys.mean())


def referent_map(word_maps: list[np.ndarray]) -> np.ndarray:
    """The geometric mean of word maps in [0, 1] (every bound word must agree), min-max normalised."""
    if not word_maps:
        raise ValueError("a referent needs at least one word map")
    stacked = np.clip(np.stack(word_maps), 0, None)
    combined = np.exp(np.log(stacked + 1e-6).mean(0))
    low, high = combined.min(), combined.max()
    return ((combined - low) / (high - low)).astype(np.float32) if high > low else np.zeros_like(combined)


def find_regions(score: np.ndarray, threshold: float, min_area: float) -> list[Region]:
    """Connected parts of `score` >= `threshold` with at least `min_area` (fraction of the grid), best first."""
    labels, count = connected_components(score >= threshold)
    masks = [labels == k for k in range(1, count + 1)]
    return mask_regions(np.array([m for m in masks if m.sum() >= max(1.0, min_area * m.size)], bool).reshape(
        -1, *score.shape), score)


def mask_regions(masks: np.ndarray, score: np.ndarray, sources: np.ndarray | None = None) -> list[Region]:
    """Regions from given (K, h, w) bool masks on `score`'s grid (proposals), scored by the mean of `score` inside,
    best first; empty masks are dropped. `sources`: the (K, H, W) masks they were resized from, kept on the regions."""
    regions = []
    for k, mask in enumerate(np.asarray(masks, bool)):
        if not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        j = int(np.argmax(score[ys, xs]))
        regions.append(Region(
            mask=mask,
            box=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
            peak=(int(xs[j]), int(ys[j])),
            score=float(score[mask].mean()),
            source=None if sources is None else sources[k],
        ))
    return sorted(regions, key=lambda r: -r.score)


def add_support(regions: list[Region], bound_maps: list[np.ndarray]) -> None:
    """Set each region's `support`: the lowest mean over `bound_maps` inside it."""
    for region in regions:
        region.support = min((float(m[region.mask].mean()) for m in bound_maps), default=1.0)


def by_position(regions: list[Region], position: str | None) -> list[Region]:
    """Order regions so that the one at `position` ("left", "right", "top", "bottom", "middle") comes first."""
    if position is None or not regions:
        return regions
    h, w = regions[0].mask.shape
    keys = {
        "left": lambda r: r.centre[0],
        "right": lambda r: -r.centre[0],
        "top": lambda r: r.centre[1],
        "bottom": lambda r: -r.centre[1],
        "middle": lambda r: np.hypot(r.centre[0] - w / 2, r.centre[1] - h / 2),
    }
    return sorted(regions, key=keys[position])


def satisfies(region: Region, kind: str, other: Region) -> bool:
    """Whether `region` stands in relation `kind` (a key of `language.RELATIONS`) to `other`; never to itself."""
    overlap = (region.mask & other.mask).sum() / max(1, min(region.mask.sum(), other.mask.sum()))
    if overlap > 0.5:
        return False
    (x, y), (ox, oy) = region.centre, other.centre
    if kind == "left":
        return x < ox
    if kind == "right":
        return x > ox
    if kind == "above":
        return y < oy
    if kind == "below":
        return y > oy
    return True  # "near": any other region; the nearest is ranked first by `select`


def select(
    regions: list[Region],
    referent: Referent,
    presence_threshold: float,
    plural_ratio: float,
    anchors: list[Region] | None = None,
) -> tuple[list[Region], Region | None]:
    """The regions that are the referent (see the module docstring), and the related referent's region used.

    With a relation, target and anchor are chosen together: the pair (target region, anchor region from `anchors`,
    the related referent's kept regions) that satisfies the relation with the highest product of scores, so that
    "the circle left of the square" never anchors on the circle itself.
    """
    kept = [r for r in regions if r.support >= presence_threshold]
    if not kept:
        return [], None
    if referent.relation is not None and anchors:
        kind = referent.relation.kind
        pairs = [(t.score * a.score, t, a) for t in kept for a in anchors if satisfies(t, kind, a)]
        if kind == "near":
            pairs = [(p / (1.0 + np.hypot(t.centre[0] - a.centre[0], t.centre[1] - a.centre[1]) / t.mask.shape[1]), t, a)
                     for p, t, a in pairs]
        if not pairs:
            return [], None
        _, target, anchor = max(pairs, key=lambda p: p[0])
        if referent.plural:
            return [t for t in kept if satisfies(t, kind, anchor) and t.prior >= plural_ratio * target.prior], anchor
        return [target], anchor
    if referent.plural:  # every region about as strong in the map as the best one (evidence has judged presence)
        best = max(r.prior for r in kept)
        return [r for r in kept if r.prior >= plural_ratio * best], None
    if referent.position is not None:
        return by_position(kept, referent.position)[:1], None
    return [max(kept, key=lambda r: r.score)], None
