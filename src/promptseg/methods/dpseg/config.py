"""DPSeg's settings."""

from __future__ import annotations

from dataclasses import dataclass

from promptseg.models.dpseg.cost import PROMPT_MODES

CROP_FILLS = ("mask", "box", "frame")


@dataclass
class DPSegConfig:
    """Settings of DPSeg (arXiv 2505.11676). Defaults are the paper's unless marked "ours"."""

    weights: str | None = None
    """Trained weights: a bundled name ("shapes-dpseg" or "scenes-dpseg", which the bundled `shapes` and
    `scenes` models recommend) or a folder written by `promptseg train dpseg`. Required: DPSeg is the one trained method."""
    prompts: str = "dual"
    """"dual" (R = mean of text and visual prompt embeddings), "text" or "visual": the prompt-strategy ablation."""
    rounds: int = 2
    """1: generated visual prompts only; 2: round II re-runs with each detected class's crop as its visual prompt."""
    crop_fill: str = "mask"
    """Round II's crop: "box" (the detected region's bounding box, as the paper describes), "mask" (ours: pixels
    of the box outside the region painted grey, so a background class's crop is not its objects) or "frame" (ours:
    the whole image with everything outside the region grey, so the region keeps its size and place)."""
    crop_weight: float = 1.0
    """Round II's visual prompt = crop_weight x the crop's features + (1 - crop_weight) x the generated ones
    (1: the paper's replacement)."""
    calibration: float = 0.0
    """Calibrated stacking (ours; Chao et al. 2016, as ZS3Net and CaGNet apply it to segmentation): this is
    subtracted from the logits of every offered class the weights were trained on (an offered label whose name is in
    their `trained_classes`), so that classes never seen in training, whose logits the decoder never learnt to push
    up, can win pixels. 0: the paper's (no calibration)."""
    tiles: int = 1
    """Tiled inference (ours): n > 1 also decodes the image as an n x n grid of crops, each resized to the encoder's
    input (a zoom of n), and averages each pixel's logits with the whole view's; things smaller than a ViT patch
    cover n^2 times the patches. Costs 1 + n^2 encoder and decoder passes. 1: the whole image only (the paper's)."""
    min_area: float = 0.005
    """A class counts as detected in round I when it wins at least this fraction of the pixels."""
    visual_cost: bool = True
    """Feed the multi-scale visual cost volumes (False zeroes them at inference; the fair ablation is weights
    trained with `--no-visual-cost`)."""
    prompt_images: int | None = None
    """Generated images per class and template; None: as many as the weights were trained with."""
    generation_steps: int = 25
    """Sampler steps for each visual prompt."""
    guidance_scale: float = 7.5
    """Classifier-free guidance of the visual prompts."""
    seed: int = 0
    """Seed of the first visual prompt of each template (then seed + 1, ...)."""
    cache_dir: str | None = None
    """Visual-prompt cache folder; None: $PROMPTSEG_CACHE/visual_prompts or ~/.cache/promptseg/visual_prompts."""
    other_backbone: bool = False
    """Run weights whose visual prompts were drawn by another diffusion model than this backbone (the weights record
    theirs, `training.diffusion_model`). Off: such weights are refused, since the decoder learnt the visual prompts
    of that model; on: for cost measurements, or when you know the two models draw alike."""
    background_threshold: float | None = None
    """Pixels whose best class probability is below this become "background"; None: every pixel gets a class
    (the open-vocabulary protocol offers a background class by name where the dataset has one)."""

    def __post_init__(self):
        if self.prompts not in PROMPT_MODES:
            raise ValueError(f"prompts must be one of {PROMPT_MODES}, got {self.prompts!r}")
        if self.rounds not in (1, 2):
            raise ValueError(f"rounds must be 1 or 2, got {self.rounds}")
        if self.crop_fill not in CROP_FILLS:
            raise ValueError(f"crop_fill must be one of {CROP_FILLS}, got {self.crop_fill!r}")
        if not 0 <= self.crop_weight <= 1:
            raise ValueError(f"crop_weight must be in [0, 1], got {self.crop_weight}")
        if self.calibration < 0:
            raise ValueError(f"calibration lowers seen classes' logits and must be >= 0, got {self.calibration}")
        if not isinstance(self.tiles, int) or self.tiles < 1:
            raise ValueError(f"tiles is the side of the crop grid, a whole number >= 1 (1: no tiles), got {self.tiles!r}")
        if not 0 <= self.min_area < 1:
            raise ValueError(f"min_area is a fraction of the image in [0, 1), got {self.min_area}")
        if self.prompt_images is not None and self.prompt_images < 1:
            raise ValueError(f"prompt_images must be >= 1, got {self.prompt_images}")
