"""Load a promptable mask model (transformers `SamModel` + `SamProcessor`): hub id, local folder, bundled name.

    sam = load_sam("facebook/sam-vit-base")              # Hugging Face hub id (or its cache)
    sam = load_sam("shapes-sam")                         # the bundled shapes-world SAM (model card in zoo/shapes-sam)
    sam = load_sam("runs/shapes-sam-out")                # a local folder (`python -m promptseg.training.shapes_sam`)
    masks, scores = sam.predict(image, boxes=[[x0, y0, x1, y1]])          # (N, H, W) bool, (N,)
    masks, scores = sam.predict(image, points=[[[x, y]]], labels=[[1]])   # one point prompt
    masks, scores = sam.propose(image, points_per_side=8)                   # every object: a point grid, deduplicated

A reusable part beside the backbone and CLIP: referring segmentation (Segment Anyword) turns attention-derived
prompts into masks with it. Device and dtype are chosen like the backbone's; coordinates are in the input image's
pixels, masks come back at the input image's size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from promptseg.models.hub import load_pretrained
from promptseg.models.zoo import bundled

DEFAULT_SAM = "facebook/sam-vit-base"
_LOADED: dict = {}


@dataclass
class SamPredictor:
    """A frozen SAM with its processor, on one device and dtype.

    Attributes:
        name (`str`): what it was loaded from.
        model (`transformers.SamModel`): eval mode, `requires_grad` off.
        processor (`transformers.SamProcessor`).
        device (`torch.device`), dtype (`torch.dtype`).
    """

    name: str
    model: torch.nn.Module
    processor: object
    device: torch.device
    dtype: torch.dtype

    @torch.no_grad()
    def predict(self, image, boxes=None, points=None, labels=None) -> tuple[np.ndarray, np.ndarray]:
        """Masks for N prompts on one image: one box each (`boxes` Nx4, x0 y0 x1 y1) or points (`points` NxPx2 with
        `labels` NxP, 1 = on the object, 0 = not).

        Returns:
            (`np.ndarray`, `np.ndarray`): (N, H, W) bool masks at the image's size and (N,) predicted IoU scores.

        Raises:
            ValueError: neither or both prompt kinds, or points without labels.
        """
        logits, scores = self.logits(image, boxes, points, labels)
        return logits > 0, scores

    @torch.no_grad()
    def logits(self, image, boxes=None, points=None, labels=None) -> tuple[np.ndarray, np.ndarray]:
        """As `predict`, but the masks' (N, H, W) float logits (positive inside) instead of bool masks."""
        if (boxes is None) == (points is None):
            raise ValueError("give exactly one of boxes (Nx4) or points (NxPx2 with labels NxP)")
        if points is not None and labels is None:
            raise ValueError("point prompts need labels (1 = on the object, 0 = background), one per point")
        kwargs = {"input_boxes": [np.asarray(boxes, np.float32).tolist()]} if boxes is not None else {
            "input_points": [np.asarray(points, np.float32).tolist()],
            "input_labels": [np.asarray(labels, np.int64).tolist()],
        }
        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt", **kwargs).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        sizes = {k: inputs.pop(k) for k in ("original_sizes", "reshaped_input_sizes")}
        out = self.model(**inputs, multimask_output=False)
        logits = self.processor.image_processor.post_process_masks(
            out.pred_masks.float().cpu(), sizes["original_sizes"].cpu(), sizes["reshaped_input_sizes"].cpu(),
            binarize=False,
        )[0]
        return logits[:, 0].numpy(), out.iou_scores[0, :, 0].float().cpu().numpy()

    def propose(
        self, image, points_per_side: int = 8, min_stability: float = 0.9, min_score: float = 0.0,
        max_overlap: float = 0.6, min_area: float = 0.002,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every object SAM finds, segment-anything's automatic mask generation reduced to its core: one positive
        point at each node of a `points_per_side` x `points_per_side` grid; a mask is kept when its stability (the IoU
        of the mask at logit thresholds +1 and -1) is at least `min_stability`, its predicted IoU at least `min_score`
        (segment-anything: 0.88; the bundled `shapes-sam` never trained its IoU head, hence 0) and its area at least
        `min_area` of the image; then greedy non-maximum suppression, most stable first, of every mask whose overlap with
        a kept one (intersection over the smaller mask) exceeds `max_overlap`. Unlike segment-anything's box-IoU
        suppression this also drops masks nested in a more stable one (a part of an object, or an object merged with
        its neighbour: on the bundled model the more stable mask of a nested pair is nearly always the whole object),
        so each object comes back once.
        One mask per point (no multimask outputs, no crops), which is what `shapes-sam` was trained for. Masks of
        background stuff come back too: choosing among them is the caller's job.

        Returns:
            (`np.ndarray`, `np.ndarray`): (K, H, W) bool masks at the image's size, most stable first, and their (K,)
            stability scores; K may be 0.

        Raises:
            ValueError: `points_per_side` < 1.
        """
        if points_per_side < 1:
            raise ValueError(f"points_per_side must be >= 1, got {points_per_side}")
        w, h = image.size
        offsets = (np.arange(points_per_side) + 0.5) / points_per_side
        points = [[[float(x * w), float(y * h)]] for y in offsets for x in offsets]
        logits, predicted = self.logits(image, points=points, labels=[[1]] * len(points))
        flat = (logits > 0).reshape(len(logits), h * w).astype(np.float32)
        areas = flat.sum(1)
        stability = (logits > 1).reshape(len(logits), -1).sum(1) / np.maximum((logits > -1).reshape(len(logits), -1).sum(1), 1)
        keep = (stability >= min_stability) & (predicted >= min_score) & (areas >= max(1.0, min_area * h * w))
        flat, areas, stability = flat[keep], areas[keep], stability[keep]
        chosen: list[int] = []
        for k in np.argsort(-stability, kind="stable"):
            if chosen:
                inter = flat[chosen] @ flat[k]
                if (inter / np.maximum(np.minimum(areas[chosen], areas[k]), 1)).max() > max_overlap:
                    continue
            chosen.append(int(k))
        return flat[chosen].reshape(-1, h, w).astype(bool), stability[chosen].astype(np.float32)


def load_sam(
    name: str | os.PathLike = DEFAULT_SAM,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    local_files_only: bool | None = None,
) -> SamPredictor:
    """Load a SAM, frozen, on `device` in `dtype`.

    Args:
        name (`str`, defaults to "facebook/sam-vit-base"): a bundled name (`bundled("sam")`), a local folder with
            `config.json` (transformers layout), or a Hugging Face hub id (`facebook/sam-vit-large`, `-huge`).
        device, dtype: as for `load_backbone`.
        local_files_only (`bool`, *optional*): never touch the network for hub ids; defaults to `HF_HUB_OFFLINE`.

    Raises:
        FileNotFoundError: a path that does not exist or is not a model folder.
        OSError: a hub id that cannot be loaded (the message says how to fix it).
    """
    from transformers import SamModel, SamProcessor

    key = str(name)
    model, processor, device, dtype = load_pretrained(
        key, bundled("sam"), SamModel, SamProcessor, kind="SAM model", device=device, dtype=dtype,
        local_files_only=local_files_only,
        missing_hint="its files are missing from this install; train it with `python -m promptseg.training.shapes_sam "
        "--out FOLDER` and pass FOLDER",
    )
    return SamPredictor(name=key, model=model, processor=processor, device=device, dtype=dtype)


def load_sam_cached(name: str, device=None, dtype=None) -> SamPredictor:
    """`load_sam(name, device=device, dtype=dtype)`, loaded once per (name, device, dtype) per process, so every
    method and refiner that uses the same SAM shares one copy (it is frozen)."""
    key = (str(name), str(device), str(dtype))
    if key not in _LOADED:
        _LOADED[key] = load_sam(name, device=device, dtype=dtype)
    return _LOADED[key]
