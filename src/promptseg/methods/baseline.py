"""The diffusion baseline: one noised UNet pass, cross-attention refined by self-attention.

This is the "Diffusion Baseline" of InvSeg's Table 1 and DiffSegmenter's recipe: resize to the native size,
VAE-encode, add noise once at `timestep`, run the UNet once with every label in one prompt, mix per-resolution
cross-attention with fixed weights, refine with self-attention (InvSeg eq. 2: M = norm(A_self · A_cross)),
upsample to the image size and take the argmax over labels.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from promptseg.diffusion.attention import attention_pass, plan_attention
from promptseg.diffusion.encode import PreparedImage, prepare_pixels
from promptseg.diffusion.noise import noised_latents
from promptseg.diffusion.readout import (
    maps_to_tokens,
    minmax,
    mix_self_attention,
    refine,
    resize_maps,
    tokens_to_maps,
    weighted_sum,
)
from promptseg.methods.base import ReferResult, SegmentationResult, as_labels, finish, register_method
from promptseg.text import build_prompt, label_scores, span_positions, split_to_fit


@dataclass
class BaselineConfig:
    """Settings of the diffusion baseline. Resolutions are fractions of the latent side (SD 1.5: 0.25 = 16x16)."""

    timestep: int = 100
    """Noise level of the single UNet pass (DiffSegmenter: t=100)."""
    cross_weights: dict[float, float] = field(default_factory=lambda: {0.125: 0.3, 0.25: 0.5, 0.5: 0.1, 1.0: 0.1})
    """Weight of each cross-attention resolution (DiffSegmenter: 8/16/32/64 -> 0.3/0.5/0.1/0.1)."""
    self_weights: dict[float, float] = field(default_factory=lambda: {1.0: 1.0})
    """Weight of each self-attention resolution (DiffSegmenter: the 64x64 maps alone); the finest sets the grid."""
    places: tuple[str, ...] = ("down", "mid", "up")
    """UNet parts whose attention layers are read."""
    template: str = "a photograph of {}"
    """Prompt template; `{}` becomes the labels joined by `joiner` (DiffSegmenter's "a photograph of")."""
    joiner: str = " and "
    """Text between label names in the prompt."""
    prompt_mode: str = "joint"
    """"joint": every label in one prompt, one pass per image (InvSeg's description of the baseline, whose Table 1
    this method is); "per_class": one prompt and one pass per label (DiffSegmenter's protocol, which prompts each
    candidate class alone; its BLIP caption continuation is not added). Labels that do not fit one joint prompt
    are split into passes either way."""
    conditioning: str = "labels"
    """"labels": the UNet sees the label prompt (one pass per label set, the paper's recipe); "prompt": the UNet
    sees the prompt given to `prepare` (default empty) once per image, and any label set is read from the kept
    queries (OVAM-style, cheap re-segmentation)."""
    refine_iterations: int = 1
    """Times the cross-attention is propagated by self-attention (1 = eq. 2; 0 = no refinement, and self-attention
    is then not recorded; the finest `self_weights` grid still sets the output grid)."""
    background_threshold: float | None = 0.5
    """Pixels whose best score is below this are background, unless a label is named "background"; None: never."""
    seed: int = 0
    """Seed of the noise added to the latents."""

    def __post_init__(self):
        if self.prompt_mode not in ("joint", "per_class"):
            raise ValueError(f"prompt_mode must be 'joint' or 'per_class', got {self.prompt_mode!r}")
        if self.conditioning not in ("labels", "prompt"):
            raise ValueError(f"conditioning must be 'labels' or 'prompt', got {self.conditioning!r}")
        if self.refine_iterations < 0:
            raise ValueError(f"refine_iterations must be >= 0, got {self.refine_iterations}")


@register_method("baseline", BaselineConfig)
class Baseline:
    """Diffusion baseline (DiffSegmenter recipe): one noised UNet pass, cross-attention refined by self-attention."""

    def __init__(self, backbone, config: BaselineConfig | None = None):
        self.backbone = backbone
        self.config = config or BaselineConfig()
        plan = plan_attention(backbone, self.config.cross_weights, self.config.self_weights, self.config.places)
        self.cross_grids, self.self_grids, self.target, self.layers = plan.cross, plan.self, plan.target, plan.layers
        if self.config.refine_iterations == 0:  # no refinement: self-attention is not needed, so not recorded
            self.self_grids = {}
            self.layers = [layer for layer in self.layers if layer.kind == "cross"]

    def prepare(self, image, prompt: str | None = None) -> PreparedImage:
        """Encode `image` (PIL or HxWx3 uint8) and noise it; with conditioning="prompt", also run the UNet once."""
        start = time.perf_counter()
        prepared = prepare_pixels(self.backbone, image)
        noisy, _ = noised_latents(self.backbone, prepared.latents, self.config.timestep, self.config.seed)
        prepared.extra["noisy"] = noisy
        if self.config.conditioning == "prompt":
            with torch.no_grad():
                text = self.backbone.encode_text(prompt or "")
            prepared.extra["store"] = attention_pass(
                self.backbone, noisy, self.config.timestep, text, self.layers, keep_queries=True,
                self_products=self.config.refine_iterations,
            )
        elif prompt is not None:
            raise ValueError("a prompt for prepare() needs conditioning='prompt'; with 'labels' the labels are the prompt")
        prepared.timings["prepare"] = time.perf_counter() - start
        return prepared

    def segment(self, prepared: PreparedImage, labels) -> SegmentationResult:
        """Segment a prepared image into `labels` (strings, commas separating synonyms, or `Label`s).

        Labels that do not fit one prompt are split into groups that do, one UNet pass per group (with
        conditioning="labels"); self-attention is then averaged over the passes.
        """
        start = time.perf_counter()
        labels = as_labels(labels)
        if self.config.prompt_mode == "per_class":
            groups = [group for label in labels
                      for group in split_to_fit(self.backbone.tokenizer, [label], self.config.template, self.config.joiner)]
        else:
            groups = split_to_fit(self.backbone.tokenizer, labels, self.config.template, self.config.joiner)
        crosses, self_attn = [], {}
        with torch.no_grad():
            for group in groups:
                tokens = build_prompt(self.backbone.tokenizer, group, self.config.template, self.config.joiner)
                cross, selfs = self.read_attention(prepared, tokens, self.backbone.encode_text(tokens.prompt))
                crosses.append(cross)
                # the mean over the passes, merged as they come: ADE-847's names take ~45 passes, and keeping each
                # pass's 64x64 queries and keys until the end held 2.4 GB at SD's size
                self_attn = {g: self_attn[g].merged(a) if g in self_attn else a for g, a in selfs.items()}
            label_cross = {g: torch.cat([c[g] for c in crosses], dim=-1) for g in self.cross_grids}  # (1, N, K)
            scores = self.scores(self_attn, label_cross)
        timings = {**prepared.timings, "segment": time.perf_counter() - start}
        return finish(scores[0], labels, prepared.size, self.config.background_threshold, timings)

    def read_attention(self, prepared: PreparedImage, tokens, text: torch.Tensor) -> tuple[dict, dict]:
        """Per-grid label cross-attention (1, N, K) and self-attention (1, N, N) for `text` (1, T, D), the encoded
        (or optimised) embeddings of the prompt described by `tokens`."""
        if self.config.conditioning == "labels":
            store = attention_pass(self.backbone, prepared.extra["noisy"], self.config.timestep, text, self.layers,
                                   self_products=self.config.refine_iterations)
            cross = {g: store.mean("cross", g) for g in self.cross_grids}
        else:
            store = prepared.extra["store"]
            context = self.backbone.context_of(text)
            cross = {g: store.cross_attention_for(context, g) for g in self.cross_grids}
        label_cross = {g: label_scores(c, tokens.positions) for g, c in cross.items()}
        return label_cross, {g: store.self_attention(g) for g in self.self_grids}

    def scores(self, self_attn: dict, label_cross: dict) -> torch.Tensor:
        """(B, K, h, w) refined scores in [0, 1] from per-grid label cross-attention (B, N, K) and self-attention
        ((B, N, N) tensors or `SelfAttention` operators)."""
        maps = {g: tokens_to_maps(c, g) for g, c in label_cross.items()}
        mixed = weighted_sum(maps, self.cross_grids, self.target)  # (B, K, H, W)
        if not self.self_grids:
            return minmax(mixed)
        propagate = mix_self_attention(self_attn, self.self_grids, self.target)
        refined = refine(propagate, maps_to_tokens(mixed), self.config.refine_iterations)
        return minmax(tokens_to_maps(refined, self.target))

    def refer(self, prepared: PreparedImage, expression: str) -> ReferResult:
        """The baseline's answer to a referring expression: the UNet sees the expression; the mean map of the target's
        head noun phrase (head and bound modifiers, from `promptseg.text.language`; every word when spaCy is missing)
        is refined like a label's and thresholded at `background_threshold` (0.5 when None). Never empty: it has
        no notion of an absent referent, relations or number, which is what Segment Anyword adds."""
        from promptseg.text.language import parse_expression

        if self.config.conditioning == "prompt":
            raise ValueError("baseline.refer needs conditioning='labels' (the expression is the prompt)")
        start = time.perf_counter()
        warnings = []
        try:
            spans = [(w.start, w.end) for w in parse_expression(expression).target.concept_words()]
        except ImportError as err:
            spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", expression)]
            warnings.append(f"no parse ({err}); the map of every word is used")
        positions = span_positions(self.backbone.tokenizer, expression, spans)
        tokens = SimpleNamespace(positions=[[[p for span in positions for p in span]]])
        with torch.no_grad():
            text = self.backbone.encode_text(expression)
            label_cross, self_attn = self.read_attention(prepared, tokens, text)
            scores = self.scores(self_attn, label_cross)
        score = resize_maps(scores.float(), prepared.size)[0, 0].clamp(0, 1).cpu().numpy()
        threshold = 0.5 if self.config.background_threshold is None else self.config.background_threshold
        timings = {**prepared.timings, "refer": time.perf_counter() - start}
        return ReferResult(mask=score >= threshold, score=score.astype(np.float32), expression=expression,
                           timings=timings, warnings=warnings, extra={"words": [expression[a:b] for a, b in spans]})

    def __call__(self, image, labels, prompt: str | None = None):
        """`segment(prepare(image), labels)`."""
        return self.segment(self.prepare(image, prompt), labels)
