"""The `diffusion` filter: presence from the diffusion backbone alone, no second model.

Two criteria (setting `criterion`), both on the clean VAE latents noised with seeded noise:

- "denoising" (diffusion-classifier style): how much worse the UNet predicts the added noise when the label is
  taken out of the prompt of all labels (`leave_one_out`, the default), or how much better it predicts it told
  "a {label}" than told nothing. The per-cell error change, divided by the mean error of the reference prompt, is
  averaged over `timesteps`; the score is its mean over the top `top_fraction` cells (1.0: the whole image, which
  measured best). Cost: one batched UNet call of (labels + 1) items per timestep.
- "attention": every label in one prompt, one UNet pass; a label's score is its share of the cross-attention
  mass (un-normalised: before any per-label min-max), divided by the largest label's. Cost: one UNet pass.

Which wins on the bundled model is measured in `benchmarks/shapes/filter_presence.py` (results in
`benchmarks/shapes/results/filters.md`); the threshold for each is chosen there on the val split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from promptseg.diffusion.attention import attention_pass, resolve_weights
from promptseg.diffusion.encode import prepare_pixels
from promptseg.diffusion.noise import noised_latents
from promptseg.filters.base import FilterDecision, Timer, decide, register_filter
from promptseg.models.attention_layers import PLACES
from promptseg.text import Label, build_prompt, label_scores, split_to_fit

CRITERIA = ("denoising", "attention")


@dataclass
class DiffusionFilterConfig:
    """Settings of the diffusion filter."""

    criterion: str = "denoising"
    """"denoising" (error reduction a label's prompt brings) or "attention" (cross-attention share)."""
    timesteps: tuple[int, ...] = (300, 500, 700)
    """Noise levels the denoising criterion averages over; "attention" uses the first."""
    template: str = "a photo of a {}"
    """Prompt for one label (denoising) or for all labels joined by `joiner` (attention)."""
    joiner: str = " and a "
    """Text between labels in the attention criterion's prompt."""
    leave_one_out: bool = True
    """Denoising: compare the prompt of all labels with the prompt lacking each label (the label in context);
    False: each label's own prompt against the empty prompt."""
    top_fraction: float = 1.0
    """Denoising: the score is the mean error change over this fraction of the latent cells where it is largest
    (1.0: the whole image)."""
    cross_weights: dict[float, float] = field(default_factory=lambda: {0.125: 0.3, 0.25: 0.5, 0.5: 0.1, 1.0: 0.1})
    """Attention: cross-attention resolutions read, as fractions of the latent side."""
    threshold: float = 0.0
    """Keep a label whose score reaches this. 0 is the natural point of the leave-one-out score: taking the label
    out of the prompt makes the noise prediction no worse. Choose it on a val split for your model."""
    min_keep: int = 1
    """Keep at least this many labels (the best-scoring) when fewer pass; 0 allows an empty result."""
    seed: int = 0
    """Seed of the noise."""
    max_labels: int | None = 32
    """Offered more labels than this, the filter keeps them all and says so instead of scoring them: the
    denoising criterion costs (labels + 1) x len(timesteps) UNet items, about 2,500 for ADE20K-847's names
    (hours a image on a CPU, minutes on a GPU). 32 covers VOC; None: always score. It is the default filter of
    every model that recommends none, so a large vocabulary must stay usable; for one, use `clip` or raise this."""

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if not self.timesteps:
            raise ValueError("timesteps must name at least one noise level")
        if not 0 < self.top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        if self.min_keep < 0:
            raise ValueError(f"min_keep must be >= 0, got {self.min_keep}")
        if self.max_labels is not None and self.max_labels < 1:
            raise ValueError(f"max_labels must be >= 1 or None, got {self.max_labels}")


@register_filter("diffusion", DiffusionFilterConfig)
class DiffusionFilter:
    """Presence from the diffusion backbone alone: denoising gain of each label's prompt, or attention share."""

    def __init__(self, backbone, config: DiffusionFilterConfig | None = None):
        if backbone is None:
            raise ValueError("the diffusion filter needs the diffusion backbone; pass backbone=load_backbone(...)")
        self.backbone = backbone
        self.config = config or DiffusionFilterConfig()
        for t in self.config.timesteps:
            if not 0 <= t < backbone.num_train_timesteps:
                raise ValueError(f"timesteps must be in [0, {backbone.num_train_timesteps}), got {t}")
        if self.config.criterion == "attention":
            self.cross = resolve_weights(self.config.cross_weights, backbone, "cross")
            self.layers = backbone.select_layers({}, self.cross, PLACES)
        self._text_cache: dict[str, torch.Tensor] = {}

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if len(self._text_cache) + len(missing) > 512:  # a long-running demo sees ever new label sets
            self._text_cache.clear()
            missing = list(dict.fromkeys(prompts))
        if missing:
            self._text_cache.update(zip(missing, self.backbone.encode_text(missing)))
        return torch.stack([self._text_cache[p] for p in prompts])

    @torch.no_grad()
    def denoising_scores(self, latents: torch.Tensor, labels) -> np.ndarray:
        """(K,) mean over the top-fraction cells of the relative per-cell error change (see the module docstring).

        Leave-one-out prompts hold every label (first synonyms); labels that do not fit one prompt are split into
        groups that do, each its own reference. Otherwise each synonym has its own prompt (max over synonyms)."""
        c = self.config
        if not c.leave_one_out:
            prompts = [""] + [c.template.format(s) for label in labels for s in label.synonyms]
            per_prompt = self._error_change(latents, prompts[0], prompts[1:], sign=-1.0)
            out, i = [], 0
            for label in labels:
                out.append(per_prompt[i : i + len(label.synonyms)].max())
                i += len(label.synonyms)
            return np.array(out)
        first = [Label(label.name, label.synonyms[:1]) for label in labels]
        out = []
        for group in split_to_fit(self.backbone.tokenizer, first, c.template, c.joiner):
            join = lambda ls: c.template.format(c.joiner.join(x.synonyms[0] for x in ls))  # noqa: E731
            others = [join([x for x in group if x is not label]) for label in group]
            out.extend(self._error_change(latents, join(group), others, sign=1.0))
        return np.array(out)

    def _error_change(self, latents: torch.Tensor, reference: str, prompts: list[str], sign: float) -> np.ndarray:
        """Per prompt, sign x (its noise-prediction error - the reference prompt's), per latent cell, divided by
        the reference's mean error, averaged over the timesteps; then the mean of the top-fraction cells."""
        c = self.config
        text = self._encode([reference] + prompts)  # (P + 1, T, D)
        change = 0.0
        for i, timestep in enumerate(c.timesteps):
            noisy, noise = noised_latents(self.backbone, latents, timestep, c.seed * 1000 + i)
            batch = noisy.expand(len(text), -1, -1, -1)
            t = torch.full((len(text),), timestep, device=latents.device)
            output = self.backbone.predict(batch, t, text)
            eps = self.backbone.noise_from_output(output, batch, timestep)
            error = (eps.float() - noise.float()).pow(2).mean(1).flatten(1)  # (P + 1, cells)
            change = change + sign * (error[1:] - error[:1]) / error[0].mean()
        change = change / len(c.timesteps)
        k = max(1, int(round(c.top_fraction * change.shape[1])))
        return change.topk(k, dim=1).values.mean(1).cpu().numpy()

    @torch.no_grad()
    def attention_scores(self, latents: torch.Tensor, labels) -> np.ndarray:
        """(K,) each label's cross-attention mass divided by the largest (labels split into prompts that fit)."""
        c = self.config
        noisy, _ = noised_latents(self.backbone, latents, c.timesteps[0], c.seed * 1000)
        mass = []
        for group in split_to_fit(self.backbone.tokenizer, labels, c.template, c.joiner):
            tokens = build_prompt(self.backbone.tokenizer, group, c.template, c.joiner)
            store = attention_pass(self.backbone, noisy, c.timesteps[0], self._encode([tokens.prompt]), self.layers)
            per_grid = [label_scores(store.mean("cross", g), tokens.positions).mean(1)[0] * w for g, w in self.cross.items()]
            mass.append(sum(per_grid))
        mass = torch.cat(mass).float().cpu().numpy()
        return mass / max(mass.max(), 1e-12)

    def scores(self, image, labels) -> np.ndarray:
        latents = prepare_pixels(self.backbone, image).latents
        if self.config.criterion == "attention":
            return self.attention_scores(latents, labels)
        return self.denoising_scores(latents, labels)

    def __call__(self, image, labels):
        limit = self.config.max_labels
        if limit is not None and len(labels) > limit:
            return FilterDecision(kept=list(labels), warnings=[
                f"the diffusion filter was offered {len(labels)} labels, more than max_labels={limit}: it kept them all "
                f"unscored (scoring would cost {(len(labels) + 1) * len(self.config.timesteps)} UNet items); use "
                "--filter clip, or --filter-set max_labels=null to pay for it"])
        with Timer() as timer:
            decision = decide(labels, self.scores(image, labels), self.config.threshold, self.config.min_keep,
                              f"{self.config.criterion} score")
        decision.seconds = timer.seconds
        return decision
