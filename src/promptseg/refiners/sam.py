"""The `sam` refiner: a promptable mask model redraws the method's objects with their real edges.

Two designs (`mode`), both measured on the shapes val split (`benchmarks/shapes/refine_benchmark.py`):

- "prompts": each connected region of a thing label in the method's label map prompts SAM with its box, its peak
  point, or both; the SAM mask replaces that region (pixels of the region outside the mask fall to the best other
  label that was not redrawn, usually the stuff around it). A mask that agrees with its region by less than
  `min_agreement` IoU is rejected and the region kept as the method drew it.
- "proposals": SAM's automatic proposals (`SamPredictor.propose`: a point grid, stability filter, nested-mask
  suppression) are each relabelled with the label whose mean score over the proposal is highest, painted largest
  first (smaller ones on top). Pixels no proposal covers keep the method's label, except (with `confine`) the parts
  of a thing region that meets a proposal its label won, which fall to the best other label: the method's blur
  around an object SAM found is not kept.

Stuff (sky, grass, road, wall, ...) is not an object: SAM's masks of it are unreliable and one region of it may be
the whole image. Labels named in `stuff` (or the label "background") are never prompted and never confined; they
keep the method's pixels except where a thing's mask takes them, and they take back the pixels a thing's mask gives
up. In "proposals" mode a proposal may still be won by a stuff label (it is painted like any other).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from promptseg.io.regions import regions as connected_regions
from promptseg.refiners.base import Refinement, register_refiner
from promptseg.text import STUFF_WORDS, is_stuff


@dataclass
class SamRefinerConfig:
    """Settings of the `sam` refiner."""

    sam: str = "facebook/sam-vit-base"
    """The mask model: a hub id, a local folder, or a bundled name (`shapes-sam`)."""
    mode: str = "prompts"
    """"prompts" (each thing region prompts SAM) or "proposals" (SAM's automatic proposals, relabelled)."""
    prompt: str = "box"
    """In "prompts" mode: "box", "point" (the region's highest-scoring pixel) or "box+point" (the masks' union)."""
    min_agreement: float = 0.3
    """In "prompts" mode: the lowest IoU between a SAM mask and the region that prompted it for the mask to replace
    the region (below it, SAM answered another object, and the region stays)."""
    stuff: tuple = STUFF_WORDS
    """Label names treated as stuff (compared lower-case, the whole name or its last word): never prompted or
    confined."""
    min_region: float = 0.002
    """Regions (and proposals) smaller than this fraction of the image are left alone."""
    points_per_side: int = 8
    """In "proposals" mode: the point grid's side."""
    min_stability: float = 0.7
    """In "proposals" mode: the lowest stability score of a kept proposal (`benchmarks/referring/results/sam_proposals.md`)."""
    max_overlap: float = 0.6
    """In "proposals" mode: nested-mask suppression (intersection over the smaller mask)."""
    confine: bool = True
    """In "proposals" mode: cut a thing region that meets a proposal its label won down to the proposals."""
    classify: str = "scores"
    """How a SAM mask that is a thing gets its label: "scores" (the thing label with the highest mean method score
    over the mask; in "prompts" mode the prompting region's label) or "denoising" (ours: the thing label whose
    prompt `evidence_template` most lowers the backbone's noise-prediction error over the mask, `promptseg.diffusion.evidence`;
    costs thing labels x len(`evidence_timesteps`) UNet items; inside a pipeline the image's latents are the
    method's, not encoded again). Whether a
    mask is a thing or stuff is decided by the method's mean scores either way."""
    evidence_template: str = "a {}"
    """With classify="denoising": the prompt each thing label is read with."""
    evidence_timesteps: tuple = (100, 153, 207, 260, 313, 367, 420, 473, 527, 580, 633, 687, 740, 793, 847, 900)
    """With classify="denoising": one (timestep, noise) draw per entry, one UNet batch per label."""
    seed: int = 0
    """With classify="denoising": seed of the noise draws."""
    pamr_first: bool = False
    """Refine the method's scores with `pamr` first (ours): masks are then named, and the pixels no mask covers
    labelled, from PAMR's edge-aware maps instead of the method's blurred ones."""
    pamr_dilations: tuple = (1, 2, 4, 8)
    """With pamr_first: PAMR's ring radii (its other settings are its defaults)."""

    def __post_init__(self):
        if self.mode not in ("prompts", "proposals"):
            raise ValueError(f"mode must be 'prompts' or 'proposals', got {self.mode!r}")
        if self.prompt not in ("box", "point", "box+point"):
            raise ValueError(f"prompt must be 'box', 'point' or 'box+point', got {self.prompt!r}")
        if not self.sam:
            raise ValueError("the sam refiner needs a mask model: sam=facebook/sam-vit-base, a folder, or shapes-sam")
        if self.classify not in ("scores", "denoising"):
            raise ValueError(f"classify must be 'scores' or 'denoising', got {self.classify!r}")
        if self.classify == "denoising" and (not self.evidence_timesteps or "{}" not in self.evidence_template):
            raise ValueError("classify='denoising' needs evidence_timesteps and an evidence_template with {}; got "
                             f"{self.evidence_timesteps!r}, {self.evidence_template!r}")
        self.stuff = tuple(str(s).lower() for s in self.stuff)


def fallback_labels(scores: np.ndarray, excluded: set[int], label_map: np.ndarray) -> np.ndarray:
    """HxW: each pixel's best-scoring label outside `excluded`, or its label in `label_map` when all are excluded."""
    allowed = [k for k in range(len(scores)) if k not in excluded]
    if not allowed:
        return label_map.copy()
    return np.asarray(allowed, np.int32)[np.argmax(scores[allowed], axis=0)]


def name_mask(mask: np.ndarray, scores: np.ndarray, things: set[int], evidence: np.ndarray | None = None) -> int:
    """The label of HxW bool `mask`: the label with the highest mean of (K, H, W) `scores` over it; when that is one
    of `things` and (K, H, W) `evidence` is given, the thing label with the highest mean evidence instead."""
    winner = int(np.argmax(scores[:, mask].mean(axis=1)))
    if evidence is None or winner not in things:
        return winner
    candidates = sorted(things)
    return candidates[int(np.argmax(evidence[candidates][:, mask].mean(axis=1)))]


def relabel_proposals(label_map: np.ndarray, scores: np.ndarray, proposals: np.ndarray, things: set[int],
                      confine: bool = True, evidence: np.ndarray | None = None) -> tuple[np.ndarray, list[dict]]:
    """Each (P, H, W) proposal takes its label from `name_mask` (the highest mean score; with `evidence`, a thing's
    label by evidence), painted largest first.

    Pixels no proposal covers keep their label in `label_map`; with `confine`, a connected region of a label in
    `things` that meets a proposal won by that label loses its uncovered pixels to the best other label outside the
    won thing labels. Returns the new HxW map and one dict per proposal (index, label index, area, mean score).
    """
    out = label_map.copy()
    info = []
    if not len(proposals):
        return out, info
    areas = proposals.reshape(len(proposals), -1).sum(1)
    for index in np.argsort(-areas, kind="stable"):
        mask = proposals[index]
        winner = name_mask(mask, scores, things, evidence)
        out[mask] = winner
        info.append({"index": int(index), "label": winner, "area": int(areas[index]),
                     "mean_score": float(scores[winner][mask].mean())})
    if confine:
        covered = proposals.any(axis=0)
        won = {entry["label"] for entry in info} & set(things)
        fallback = fallback_labels(scores, won, label_map)
        for k in won:
            mine = np.any([proposals[e["index"]] for e in info if e["label"] == k], axis=0)
            for _, region in connected_regions(label_map == k):
                if (region & mine).any():
                    cut = region & ~covered
                    out[cut] = fallback[cut]
    return out, info


@register_refiner("sam", SamRefinerConfig)
class SamRefiner:
    """A promptable mask model (SAM) redraws each object region: prompted by the method's regions, or its proposals
    relabelled by the method's scores."""

    def __init__(self, backbone=None, config: SamRefinerConfig | None = None, predictor=None):
        """`predictor`, if given, is used instead of loading `config.sam` (anything with `SamPredictor`'s `predict`
        and `propose`)."""
        from promptseg.models.sam import load_sam_cached

        self.config = config or SamRefinerConfig()
        if self.config.classify == "denoising" and backbone is None:
            raise ValueError("the sam refiner with classify='denoising' needs the diffusion backbone")
        self.backbone = backbone
        device = getattr(backbone, "device", None)
        dtype = getattr(backbone, "dtype", None)
        self.sam = predictor if predictor is not None else load_sam_cached(self.config.sam, device, dtype)

    def __call__(self, image, result) -> Refinement:
        things = {k for k, name in enumerate(result.labels) if not is_stuff(name, self.config.stuff)}
        before = None
        if self.config.pamr_first:
            from promptseg.refiners.pamr import PamrConfig, PamrRefiner

            before = PamrRefiner(None, PamrConfig(dilations=tuple(self.config.pamr_dilations)))(image, result)
            result = dataclasses.replace(result, label_map=before.label_map, scores=before.scores)
        evidence = self._evidence(image, result, things) if self.config.classify == "denoising" else None
        if self.config.mode == "proposals":
            out = self._proposals(image, result, things, evidence)
        else:
            out = self._prompts(image, result, things, evidence)
        if before is not None:  # the map and scores SAM worked from are PAMR's
            out.scores = before.scores
        return out

    def _evidence(self, image, result, things: set[int]) -> np.ndarray | None:
        """(K, H, W): each thing label's negated denoising error (`promptseg.diffusion.evidence`) at the image's
        size, -inf elsewhere; None when there are fewer than two thing labels (nothing to choose)."""
        import torch

        from promptseg.diffusion.encode import prepare_pixels
        from promptseg.diffusion.evidence import DenoisingEvidence
        from promptseg.diffusion.readout import resize_maps

        if len(things) < 2:
            return None
        c = self.config
        prepared = prepare_pixels(self.backbone, image)
        # a mask is named by comparing labels over its pixels: the empty prompt's pass would change no choice
        source = DenoisingEvidence(self.backbone, prepared.latents, tuple(int(t) for t in c.evidence_timesteps), c.seed,
                                   relative=False)
        out = np.full(result.scores.shape, -np.inf, np.float32)
        gains = torch.stack([source.gain(c.evidence_template.format(result.labels[k])) for k in sorted(things)])
        out[sorted(things)] = resize_maps(gains[None].float(), result.label_map.shape)[0].cpu().numpy()
        return out

    def _proposals(self, image, result, things: set[int], evidence) -> Refinement:
        c = self.config
        proposals, stability = self.sam.propose(image, c.points_per_side, c.min_stability, max_overlap=c.max_overlap,
                                                min_area=c.min_region)
        if not len(proposals):
            return Refinement(label_map=result.label_map.copy(),
                              warnings=["sam refiner: SAM proposed no region; the method's label map is kept"])
        label_map, info = relabel_proposals(result.label_map, result.scores, proposals, things, c.confine, evidence)
        regions = [{"label": result.labels[e["label"]], "source": "proposal", "area": e["area"],
                    "mean_score": round(e["mean_score"], 4), "stability": round(float(stability[e["index"]]), 4)}
                   for e in info]
        return Refinement(label_map=label_map, regions=regions)

    def _prompts(self, image, result, things: set[int], evidence) -> Refinement:
        c = self.config
        label_map, scores = result.label_map, result.scores
        h, w = label_map.shape
        min_area = max(1, int(round(c.min_region * h * w)))
        found = [(k, box, region) for k in sorted(things) for box, region in connected_regions(label_map == k, min_area)]
        if not found:
            return Refinement(label_map=label_map.copy())
        masks = self._masks(image, scores, found)
        regions, accepted = [], []
        for (k, box, region), mask in zip(found, masks):
            union = (region | mask).sum()
            agreement = float((region & mask).sum() / union) if union else 0.0
            ok = agreement >= c.min_agreement
            regions.append({"label": result.labels[k], "source": c.prompt, "box": list(box), "area": int(mask.sum()),
                            "agreement": round(agreement, 4), "accepted": ok})
            if ok:
                named = k if evidence is None else name_mask(mask, scores, things, evidence)
                regions[-1]["label"] = result.labels[named]
                accepted.append((named, region, mask))
        out = label_map.copy()
        fallback = fallback_labels(scores, {k for k, _, _ in accepted} | {k for k, _, _ in found}, label_map)
        for _, region, mask in accepted:
            cut = region & ~mask
            out[cut] = fallback[cut]
        for k, _, mask in sorted(accepted, key=lambda item: -int(item[2].sum())):  # smaller objects end on top
            out[mask] = k
        return Refinement(label_map=out, regions=regions)

    def _masks(self, image, scores: np.ndarray, found) -> np.ndarray:
        """(R, H, W) SAM masks for the regions `found` [(label, box, mask)], prompted as `config.prompt` says."""
        boxes = [list(box) for _, box, _ in found]
        points = []
        for k, _, region in found:
            flat = np.where(region, scores[k], -np.inf).argmax()
            y, x = np.unravel_index(flat, region.shape)
            points.append([[float(x) + 0.5, float(y) + 0.5]])
        kind = self.config.prompt
        if kind == "box":
            return self.sam.predict(image, boxes=boxes)[0]
        by_point = self.sam.predict(image, points=points, labels=[[1]] * len(points))[0]
        return by_point if kind == "point" else by_point | self.sam.predict(image, boxes=boxes)[0]
