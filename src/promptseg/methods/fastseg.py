"""FastSeg: (1+1)-step inversion, all classes in one pass, dual prompt, HARD, test-time flipping.

Design (the paper gives its abstract only; the published FA-Seg code fills in the rest):

1. The image and its horizontal flip are VAE-encoded as one batch of two (test-time flipping).
2. With `invert=True` (the paper's first "1"), one DDIM inversion step moves the clean latents to a small
   `timestep`, with the UNet's noise prediction under the conditioning prompt. Our default skips it and records
   the clean latents at that timestep: a UNet pass less, and no loss on shapes val (see `FastSegConfig.invert`).
3. One UNet pass at that timestep, conditioned on a descriptive prompt (an optional caption followed by the class
   names), records the queries of the cross-attention layers and the self-attention maps (the second "1").
4. Dual prompt: the class maps are the recorded queries against the keys of a *second* prompt made only of the
   class names (`AttentionStore.cross_attention_for`), so any number of classes costs no extra UNet pass.
5. Cross-attention is mixed over resolutions; hierarchical attention refinement (HARD) propagates it with every
   resolution's self-attention raised to the power `tau`, and mixes the min-max normalised results.
6. The flipped view's maps are flipped back and averaged with the others'; background is a score threshold.

On a diffusion transformer (`backbone.text_keys_reusable` False) step 4 cannot be done: the text keys are made
inside the joint forward, from a text stream the image has already changed, so kept queries cannot be read against
a second prompt. There the class maps are read from the class names' own tokens in the conditioning prompt
(caption, separator, class names: the same string FA-Seg conditions on), one pass per group of labels that fits it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from promptseg.diffusion.attention import plan_attention
from promptseg.diffusion.capture import AttentionStore, capture, lazy_tokens_for, run_until_captured
from promptseg.diffusion.encode import PreparedImage, prepare_batch
from promptseg.diffusion.noise import ddim_invert_step
from promptseg.diffusion.readout import hierarchical_refine, tokens_to_maps, weighted_sum
from promptseg.methods.base import SegmentationResult, as_labels, finish, register_method
from promptseg.methods.batching import padded_label_scores, shared_rows, timing_share
from promptseg.text import build_prompt, fit_words, label_scores, split_to_fit


@dataclass
class FastSegConfig:
    """Settings of FastSeg (values from the published FA-Seg code). Resolutions are fractions of the latent side
    (SD: 0.125/0.25/0.5/1.0 = 8/16/32/64)."""

    timestep: int = 1
    """Timestep reached by the single DDIM inversion step and used by the recording pass (FA-Seg: the last of
    one inference step, t = 1 with `steps_offset` 1)."""
    cross_weights: dict[float, float] = field(default_factory=lambda: {0.125: 0.15, 0.25: 0.7, 0.5: 0.15, 1.0: 0.0})
    """Weight of each cross-attention resolution, mixed without per-resolution normalisation (FA-Seg)."""
    hard_weights: dict[float, float] = field(default_factory=lambda: {0.125: 0.1, 0.25: 0.1, 0.5: 0.5, 1.0: 0.3})
    """HARD: weight of each self-attention resolution's refined maps (FA-Seg); the finest sets the grid."""
    invert: bool = False
    """True: the paper's first "1", one DDIM inversion step moving the clean latents to `timestep` before the
    recording pass (FA-Seg). False (default): the recording pass reads the clean latents at `timestep`, and the
    inversion's full UNet pass (batch of 2 with the flip) is saved. Why: at SD's t = 1 the inverted latents differ
    from the clean ones by sqrt(1 - alphabar_1) = 0.03 of a noise estimate, and on shapes val (where t = 500) the
    inversion adds nothing (mIoU 80.7 with it, 80.8 without; `benchmarks/scale/results/savings.md`)."""
    tau: int = 2
    """HARD: power of each self-attention matrix (propagation steps)."""
    flip: bool = True
    """Test-time flipping: average with the horizontally flipped image's maps."""
    flip_from: str = "pixels"
    """Where the flipped view's latents come from: "pixels" (VAE-encode the flipped image, FA-Seg) or "latents"
    (flip the image's latents: one VAE encode less, 1.36 UNet forwards at SD-1.5's 512 px on this CPU; the VAE is
    not exactly flip-equivariant: on shapes val it scores like no flip at all, `benchmarks/scale/results/savings.md`)."""
    places: tuple[str, ...] = ("down", "mid", "up")
    """UNet parts whose attention layers are read."""
    class_template: str = "{}"
    """Template of the class-name prompt (the second prompt of the dual prompt)."""
    joiner: str = ", "
    """Text between class names (FA-Seg: "cat, dog")."""
    caption_separator: str = "; "
    """Text between the caption and the class names in the conditioning prompt (FA-Seg: " ; ")."""
    background_threshold: float | None = 0.55
    """Pixels whose best score is below this are background (FA-Seg: 0.55 VOC, 0.5 Context, 0.6 COCO-Object);
    None: never. A label named "background" turns the threshold off."""

    def __post_init__(self):
        if self.tau < 1:
            raise ValueError(f"tau must be >= 1, got {self.tau}")
        if self.flip_from not in ("pixels", "latents"):
            raise ValueError(f"flip_from must be 'pixels' or 'latents', got {self.flip_from!r}")


@register_method("fastseg", FastSegConfig)
class FastSeg:
    """FastSeg: (1+1)-step inversion, every class in one pass (dual prompt), HARD, test-time flipping."""

    def __init__(self, backbone, config: FastSegConfig | None = None):
        self.backbone = backbone
        self.config = config or FastSegConfig()
        c = self.config
        if not 0 <= c.timestep < backbone.num_train_timesteps:
            raise ValueError(f"timestep must be in [0, {backbone.num_train_timesteps}), got {c.timestep}")
        plan = plan_attention(backbone, c.cross_weights, c.hard_weights, c.places)
        self.cross_grids, self.hard_grids, self.target, self.layers = plan.cross, plan.self, plan.target, plan.layers

    batches = True
    """Several images share one recording forward, each with its views (`promptseg.methods.batching`)."""

    def prepare(self, image) -> PreparedImage:
        """VAE-encode the image; with `flip`, add its horizontal flip (encoded, or its latents flipped)."""
        return self.prepare_many([image])[0]

    def prepare_many(self, images, chunk: int = 8) -> list[PreparedImage]:
        """`prepare` of each image, the VAE seeing the images, then their flips, `chunk` at a time."""
        start = time.perf_counter()
        prepared = prepare_batch(self.backbone, images, chunk)
        if self.config.flip:
            flipped = []
            for first in range(0, len(prepared), chunk):
                part = prepared[first:first + chunk]
                if self.config.flip_from == "latents":
                    flipped += [item.latents.flip(-1) for item in part]
                else:
                    with torch.no_grad():
                        pixels = torch.cat([item.pixels.flip(-1) for item in part])
                        flipped += list(self.backbone.encode_image(pixels).split(1))
            for item, view in zip(prepared, flipped):
                item.latents = torch.cat([item.latents, view])
        for item in prepared:
            item.timings["prepare"] = (time.perf_counter() - start) / len(prepared)
        return prepared

    def conditioning_prompt(self, labels, caption: str | None) -> str:
        """The caption (if any) followed by the class names, as many as fit the text encoder (`fit_conditioning`)."""
        return self.fit_conditioning(labels, caption)[0]

    def fit_conditioning(self, labels, caption: str | None) -> tuple[str, list[str]]:
        """(prompt, warnings): the caption (if any), then every synonym of every label; words that do not fit the
        text encoder are dropped from the end and named in a warning (their maps still come from the class prompt,
        which the conditioning prompt only shapes). A caption too long alone is cut."""
        words = [s for label in labels for s in label.synonyms]
        c = self.config
        prompt, dropped, cut = fit_words(self.backbone.tokenizer, caption or "", words, c.caption_separator, c.joiner)
        warnings = []
        if dropped:
            warnings.append(f"the conditioning prompt holds {self.backbone.text_length} tokens: left out of it "
                            f"{dropped} (their maps still come from the class prompt)")
        if cut:
            warnings.append(f"the caption alone is longer than the text encoder takes; cut to {prompt!r}")
        return prompt, warnings

    def record(self, prepared: PreparedImage, prompt: str, keep_queries: bool = True) -> AttentionStore:
        """Invert one DDIM step (with `invert`) and run one recording denoiser pass conditioned on `prompt`; returns
        the store (with the cross-attention layers' queries when `keep_queries`)."""
        return self.record_views(prepared.latents, [prompt], keep_queries)

    def record_views(self, latents: torch.Tensor, prompts: list[str], keep_queries: bool = True) -> AttentionStore:
        """`record` of several images: (B * V, C, h, w) latents, each image's V views in a row, and one prompt per
        image."""
        backbone = self.backbone
        with torch.no_grad():
            text = backbone.encode_text(prompts).repeat_interleave(latents.shape[0] // len(prompts), dim=0)
            if self.config.invert:
                noisy = ddim_invert_step(backbone, latents, self.config.timestep, text)
            else:
                noisy = latents
            # HARD multiplies by each grid's self-attention tau times
            store = AttentionStore(latent_hw=tuple(noisy.shape[-2:]), keep_queries=keep_queries,
                                   lazy_self_tokens=lazy_tokens_for(self.config.tau))
            t = torch.full((noisy.shape[0],), self.config.timestep, device=noisy.device)
            with capture(backbone.denoiser, self.layers, store, stop_after_last=True):
                run_until_captured(backbone.predict, noisy, t, text)
        return store

    def view_scores(self, store: AttentionStore, labels) -> torch.Tensor:
        """Refined scores (V, K, H, W) per view, flipped views already flipped back."""
        c = self.config
        tokenizer = self.backbone.tokenizer
        per_grid = {g: [] for g in self.cross_grids}
        with torch.no_grad():
            for group in split_to_fit(tokenizer, labels, c.class_template, c.joiner):
                tokens = build_prompt(tokenizer, group, c.class_template, c.joiner)
                class_text = self.backbone.context_of(self.backbone.encode_text(tokens.prompt))  # the class-name half
                for g in self.cross_grids:
                    per_grid[g].append(label_scores(store.cross_attention_for(class_text, g), tokens.positions))
            return self.refined(per_grid, {g: store.self_attention(g) for g in self.hard_grids})

    def joint_view_scores(self, prepared: PreparedImage, labels, caption: str | None) -> torch.Tensor:
        """`view_scores` on a transformer: each group of labels that fits one conditioning prompt (caption,
        separator, class names) gets a recording pass, and its class names' own tokens give their maps; the
        self-attention is the first pass's."""
        c = self.config
        tokenizer = self.backbone.tokenizer
        template = self.joint_template(caption)
        per_grid, self_attn = {g: [] for g in self.cross_grids}, None
        for group in split_to_fit(tokenizer, labels, template, c.joiner):
            tokens = build_prompt(tokenizer, group, template, c.joiner)
            store = self.record(prepared, tokens.prompt, keep_queries=False)
            for g in self.cross_grids:
                per_grid[g].append(label_scores(store.mean("cross", g), tokens.positions))
            if self_attn is None:
                self_attn = {g: store.self_attention(g) for g in self.hard_grids}
        with torch.no_grad():
            return self.refined(per_grid, self_attn)

    def joint_template(self, caption: str | None) -> str:
        """A transformer's conditioning template: the caption (if any), the separator, then the class names."""
        head = (caption or "").replace("{}", "") + self.config.caption_separator if caption else ""
        return head + self.config.class_template

    def refined(self, per_grid: dict, self_attn: dict) -> torch.Tensor:
        """HARD on per-grid label cross-attention (lists of (B * V, N, k) parts, each image's views in a row),
        flipped views flipped back."""
        c = self.config
        maps = {g: tokens_to_maps(torch.cat(parts, dim=-1), g) for g, parts in per_grid.items()}
        cross = weighted_sum(maps, self.cross_grids, self.target, normalize=False)  # (B * V, K, H, W)
        scores = hierarchical_refine(self_attn, cross.flatten(2).transpose(1, 2), self.hard_grids, self.target, c.tau)
        if c.flip:
            views = scores.unflatten(0, (-1, 2))
            scores = torch.stack([views[:, 0], views[:, 1].flip(-1)], dim=1).flatten(0, 1)
        return scores

    def segment(self, prepared: PreparedImage, labels, caption: str | None = None) -> SegmentationResult:
        """Segment into `labels`; `caption` (optional) describes the image and starts the conditioning prompt."""
        start = time.perf_counter()
        labels = as_labels(labels)
        if self.backbone.text_keys_reusable:
            prompt, warnings = self.fit_conditioning(labels, caption)
            scores = self.view_scores(self.record(prepared, prompt), labels).mean(dim=0)
        else:
            scores, warnings = self.joint_view_scores(prepared, labels, caption).mean(dim=0), []
        timings = {**prepared.timings, "segment": time.perf_counter() - start}
        return finish(scores, labels, prepared.size, self.config.background_threshold, timings, warnings)

    def segment_many(self, prepared: list[PreparedImage], labels: list, captions: list) -> list[SegmentationResult]:
        """`segment` of several images: those whose class names fit one prompt share one recording forward (every
        image's views, each image conditioned on its own prompt); any other image runs alone."""
        c, tokenizer, reusable = self.config, self.backbone.tokenizer, self.backbone.text_keys_reusable
        labels = [as_labels(kept) for kept in labels]
        templates = [c.class_template if reusable else self.joint_template(caption) for caption in captions]
        out, together = shared_rows(self, prepared, labels, captions,
                                    lambda i: len(split_to_fit(tokenizer, labels[i], templates[i], c.joiner)) == 1)
        if not together:
            return out
        start = time.perf_counter()
        latents = torch.cat([prepared[i].latents for i in together])
        views = latents.shape[0] // len(together)
        tokens = [build_prompt(tokenizer, labels[i], templates[i], c.joiner) for i in together]
        positions = [t.positions for t in tokens for _ in range(views)]
        warnings = [[] for _ in together]
        with torch.no_grad():
            if reusable:  # conditioned on caption + names, read against the class-name prompt (dual prompt)
                fitted = [self.fit_conditioning(labels[i], captions[i]) for i in together]
                warnings = [w for _, w in fitted]
                store = self.record_views(latents, [prompt for prompt, _ in fitted])
                class_text = self.backbone.context_of(self.backbone.encode_text([t.prompt for t in tokens]))
                class_text = class_text.repeat_interleave(views, dim=0)
                per_grid = {g: [padded_label_scores(store.cross_attention_for(class_text, g), positions)]
                            for g in self.cross_grids}
            else:  # the class names' own tokens in each image's conditioning prompt
                store = self.record_views(latents, [t.prompt for t in tokens], keep_queries=False)
                per_grid = {g: [padded_label_scores(store.mean("cross", g), positions)] for g in self.cross_grids}
            scores = self.refined(per_grid, {g: store.self_attention(g) for g in self.hard_grids})
            scores = scores.unflatten(0, (len(together), views)).mean(dim=1)
        seconds = time.perf_counter() - start
        for row, i in enumerate(together):
            out[i] = finish(scores[row, :len(labels[i])], labels[i], prepared[i].size, c.background_threshold,
                            timing_share(prepared[i], seconds, len(together)), warnings[row])
        return out

    def __call__(self, image, labels, prompt: str | None = None) -> SegmentationResult:
        """`segment(prepare(image), labels, caption=prompt)`."""
        return self.segment(self.prepare(image), labels, caption=prompt)
