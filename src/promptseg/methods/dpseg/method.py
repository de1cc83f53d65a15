"""The DPSeg method: prepare an image once (the fine-tuned CLIP image encoder), then segment any label set.

    segment(prepared, labels):
        1. R = Avg(V, T) per class and template: T from the frozen CLIP text tower, V from the frozen CLIP vision
           tower over images the diffusion backbone generated from the same templates (cached on disk).
        2. Round I: cost volume of R with the image's dense CLIP features -> CVGD decoder (with the multi-scale
           visual cost volumes) -> per-class logits -> argmax. With `tiles` n > 1 (ours) the image is also decoded
           as an n x n grid of crops, each at the encoder's full input, and each pixel's logits are averaged
           (`tiles.py`).
        3. Round II: each class that won at least `min_area` of the image gets the crop of its region as its
           visual prompt (for every template); undetected classes keep the generated ones; decode again.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import torch
from PIL import Image

from promptseg.diffusion.encode import PreparedImage, to_pil
from promptseg.diffusion.readout import resize_maps
from promptseg.methods.base import SegmentationResult, as_labels, finish, register_method
from promptseg.methods.dpseg.bank import PromptBank
from promptseg.methods.dpseg.config import DPSegConfig
from promptseg.methods.dpseg.prompts import VisualPromptCache, crop_region
from promptseg.methods.dpseg.tiles import merge_tiles, tile_boxes
from promptseg.models.dpseg.network import load_dpseg, read_net_config


@functools.lru_cache(maxsize=2)
def _load(weights: str, device: torch.device, dtype: torch.dtype):
    """One (net, clip) per (weights, device, dtype) per process: several DPSeg instances share them."""
    return load_dpseg(weights, device=device, dtype=dtype)


def same_model(a: str, b: str) -> bool:
    """Whether two model names (bundled names, hub ids or folders) name the same model: equal, or the same folder."""
    if str(a) == str(b):
        return True
    pa, pb = Path(str(a)).expanduser(), Path(str(b)).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


@register_method("dpseg", DPSegConfig)
class DPSeg:
    """DPSeg: CLIP cost volume of text + diffusion-generated visual prompts, trained decoder, two-round inference."""

    takes_prompt = False  # the prompts are the class templates; a filter's caption is not used
    one_at_a_time = "its decoder reads one image's cost volume"

    def __init__(self, backbone, config: DPSegConfig | None = None):
        self.config = config or DPSegConfig()
        if self.config.weights is None:
            raise ValueError(
                "dpseg needs trained weights: --set weights=FOLDER (train them with `promptseg train dpseg`), or "
                "--model shapes or --model scenes, which recommend the bundled shapes-dpseg and scenes-dpseg"
            )
        self.backbone = backbone
        # the decoder and its CLIP run in float32 whatever the backbone's dtype: they were trained in float32 (as
        # CAT-Seg and DPSeg train theirs), they are small beside the backbone, and a bf16 cost volume (cosines
        # quantised to 1/128 near 1) flattens the decoder's input; only the visual prompts come from the backbone
        self.net, self.clip = _load(str(self.config.weights), backbone.device, torch.float32)
        net_config = self.net.config
        drawn_by = net_config.training.get("diffusion_model")
        if drawn_by is not None and not self.config.other_backbone and not same_model(drawn_by, backbone.name):
            raise ValueError(
                f"the DPSeg weights {self.config.weights!r} were trained on visual prompts drawn by {drawn_by!r} (and "
                f"encoded by the CLIP {net_config.clip!r}), not by this backbone {backbone.name!r}: use --model "
                f"{drawn_by}, weights trained for this model (`promptseg train dpseg --model ...`), or --set "
                "other_backbone=true if you know the two draw alike")
        images = self.config.prompt_images or int(net_config.training.get("prompt_images", 4))
        cache = VisualPromptCache(backbone, self.config.cache_dir, images=images, steps=self.config.generation_steps,
                                  guidance=self.config.guidance_scale, seed=self.config.seed)
        self.bank = PromptBank(self.clip, net_config.templates, net_config.visual_layers, cache)

    @classmethod
    def seen_classes(cls, config: DPSegConfig) -> list[str] | None:
        """The class names the weights were trained on (evaluation reports seen vs unseen IoU with them)."""
        return None if config.weights is None else read_net_config(config.weights).trained_classes

    def prepare(self, image) -> PreparedImage:
        """Run the image encoder once: dense CLIP features and the decoder's intermediate features."""
        start = time.perf_counter()
        pil = to_pil(image)
        pixels = self.clip.pixel_values([pil])
        tiles = None
        with torch.no_grad():
            encoded = self.net.encode(pixels)
            if self.config.tiles > 1:  # the n x n crops, one batch
                crops = [pil.crop(box) for box in tile_boxes(pil.size, self.config.tiles)]
                tiles = self.net.encode(self.clip.pixel_values(crops))
        # no diffusion latents: DPSeg reads CLIP features only (the backbone draws visual prompts, once per class)
        return PreparedImage(size=(pil.height, pil.width), pixels=pixels, latents=torch.empty(0),
                             extra={"image": pil, "encoded": encoded, "tiles": tiles},
                             timings={"encode": time.perf_counter() - start})

    @torch.no_grad()
    def _probabilities(self, prepared: PreparedImage, classes, seen: torch.Tensor, replace=None) -> torch.Tensor:
        """(K, H, W) per-class probabilities; `seen` (K,) bool marks the classes the weights were trained on."""
        prompts = self.bank.features(classes, self.config.prompts, replace, self.config.crop_weight)
        logits = self.net.decode(prepared.extra["encoded"], prompts, visual_cost=self.config.visual_cost)[0].float()
        tiles = prepared.extra.get("tiles")
        if tiles is not None:
            tiled = self.net.decode(tiles, prompts, visual_cost=self.config.visual_cost).float()
            logits = merge_tiles(logits, tiled, self.config.tiles)
        if self.config.calibration:  # calibrated stacking: seen classes' logits lowered
            logits = logits - self.config.calibration * seen.to(logits.device, logits.dtype)[:, None, None]
        return torch.sigmoid(logits)  # (K, H, W)

    def segment(self, prepared: PreparedImage, labels) -> SegmentationResult:
        """Segment the prepared image into `labels` (strings or `Label`s); scores are per-class probabilities."""
        labels = as_labels(labels)
        classes = [label.synonyms for label in labels]
        trained = set(self.net.config.trained_classes)
        seen = torch.tensor([label.name in trained for label in labels])
        timings = dict(prepared.timings)
        start = time.perf_counter()
        probs = self._probabilities(prepared, classes, seen)
        timings["round1"] = time.perf_counter() - start
        extra = {"prompts": self.config.prompts, "rounds": self.config.rounds, "detected": []}
        if self.config.rounds == 2 and self.config.prompts != "text":
            start = time.perf_counter()
            replace = self._round_two_prompts(prepared, probs)
            extra["detected"] = [labels[k].name for k in sorted(replace)]
            if replace:
                probs = self._probabilities(prepared, classes, seen, replace)
            timings["round2"] = time.perf_counter() - start
        result = finish(probs, labels, prepared.size, self.config.background_threshold, timings)
        result.extra.update(extra)
        return result

    def _round_two_prompts(self, prepared: PreparedImage, probs: torch.Tensor) -> dict:
        """{class index: crop features} for every class that wins at least `min_area` of the image in round I."""
        image: Image.Image = prepared.extra["image"]
        winner = resize_maps(probs[None], prepared.size)[0].argmax(0).cpu().numpy()
        fill = None
        if self.config.crop_fill in ("mask", "frame"):
            mean = getattr(self.clip.processor.image_processor, "image_mean", (0.5, 0.5, 0.5))
            fill = tuple(int(round(255 * m)) for m in mean)
        replace = {}
        for k in range(probs.shape[0]):
            mask = winner == k
            if mask.mean() >= max(self.config.min_area, 1e-12):
                with torch.no_grad():
                    replace[k] = self.bank.crop(crop_region(image, mask, fill, self.config.crop_fill == "frame"))
        return replace

    def __call__(self, image, labels, prompt: str | None = None) -> SegmentationResult:
        """`segment(prepare(image), labels)`; DPSeg's prompts are its templates, so `prompt` must stay None."""
        if prompt is not None:
            raise ValueError("dpseg builds its prompts from the class templates; it takes no prompt or caption")
        return self.segment(self.prepare(image), labels)


__all__ = ["DPSeg", "DPSegConfig"]
