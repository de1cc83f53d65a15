"""InvSeg: test-time prompt inversion with Contrastive Soft Clustering (Lin et al., AAAI 2025).

For one image, the text embeddings of the class tokens are optimised (UNet, VAE and text encoder frozen) so that
each class's refined attention map M^c = norm(A_self · A_cross^c) (eq. 2) agrees with the image's structure:
Contrastive Soft Clustering pulls pixels towards the soft anchors of their own class and away from other classes
in the KL geometry of self-attention (eqs. 3-8), and the entropy of the class maps averaged over augmented views
is minimised. The final segmentation is the baseline's read-out with the optimised embeddings at t = 50.

Beyond the paper (same maths, less work): the optimisation's forward pass stops after the last layer the loss
reads (`stop_forward_early`), so neither it nor the backward pass visits the rest of the UNet; with
`view_pool > 0` (the default, 2: the paper's two augmented views) the views are drawn once and their VAE latents
cached, not drawn afresh each step; with `views_from="latents"` they are
cropped from the image's latents (no VAE encode a step; measured on shapes, `benchmarks/scale/results/savings.md`);
on a diffusion transformer of 1024 px the optimisation runs at 512 px (`inversion_side`), the read-out at 1024.

The paper against this code, checked equation by equation (issue 14; measurements in
`benchmarks/shapes/results/invseg_diagnosis.md`):

| paper | here |
| --- | --- |
| learnt: the text-encoder outputs P_0^k of the class tokens (Method, "we optimize {P_0^k} directly") | the rows of `text_encoder(prompt)` at every token of every synonym, one `nn.Parameter`; the rest frozen |
| eq. 2: M = norm(A_self · A_cross), min-max per class | `_loss_maps`: weighted cross-attention of the loss grids, refined once by self-attention, min-max |
| eq. 3: S = KL(a_i || a_j) + KL(a_j || a_i) over self-attention rows | `losses.symmetric_kl`, exact (property-tested against the double loop) |
| eqs. 4-5: anchor-weighted mean of M-weighted distances | `losses.cluster_loss`, two matrix products, hand-checked |
| anchors: "sigmoid to binarize M^c" (offset unstated) | sigmoid(4 (M - 0.5)): scale from Table 3, offset 0.5 ours |
| eqs. 6-8: D_intra / C - 2 D_inter / (C (C - 1)), D_inter over c > c' only | the same, c > c' as written; C = 1 gives D_intra |
| entropy: -sum_c M̄ log M̄ of the view-averaged maps (pixel reduction unstated) | mean over the pixels covered by a view; a sum over pixels would weigh it 256x more at 16x16 |
| "augmented for 2 times" with random resized crops (min scale 0.6), a batch of 2 a step; Adam lr 0.01, 15 steps, alpha 1, t ~ U[5, 300] | the same (config defaults): 2 views drawn once, the batch of every step (`view_pool=2`; 0 draws fresh ones each step) |
| loss on the 16x16 layers (Table 5), read-out at t = 50 (Table 7) | defaults the same; the shapes model ships its val-chosen grids and read-out timestep |
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from promptseg.diffusion.attention import plan_attention
from promptseg.diffusion.capture import AttentionStore, capture, run_until_captured
from promptseg.diffusion.encode import PreparedImage, to_pil
from promptseg.diffusion.memory import check_inversion_side, inversion_size, recomputed, working_latents
from promptseg.diffusion.precision import loss_scaler
from promptseg.diffusion.readout import (
    maps_to_tokens,
    minmax,
    refine,
    resize_self_attention,
    tokens_to_maps,
    weighted_sum,
)
from promptseg.methods.base import SegmentationResult, as_labels, finish, register_method
from promptseg.methods.baseline import Baseline, BaselineConfig
from promptseg.methods.invseg.augment import crop_resize, crop_resize_scaled, random_crop_box, uncrop
from promptseg.methods.invseg.losses import cluster_loss, entropy_loss, symmetric_kl
from promptseg.text import build_prompt, fit_prompt, label_scores, split_to_fit


@dataclass
class InvSegConfig:
    """Settings of InvSeg; defaults are the paper's (section "Implementation Details" and the ablation tables).
    Resolutions are fractions of the latent side (SD: 0.25 = the 16x16 layers)."""

    steps: int = 15
    """Optimisation steps per image (Implementation Details)."""
    lr: float = 0.01
    """Adam learning rate (Implementation Details)."""
    num_views: int = 2
    """Augmented views per step, one batch (Implementation Details)."""
    min_crop_scale: float = 0.6
    """Smallest random-resized-crop area, as a fraction of the image (Implementation Details)."""
    train_timesteps: tuple[int, int] = (5, 300)
    """Range of the random timestep drawn each step (Table 6: 5 to 300 best)."""
    timestep: int = 50
    """Timestep of the final inference pass (Table 7: t = 50 best)."""
    alpha: float = 1.0
    """Weight of the entropy loss (Table 2: alpha = 1 best)."""
    anchor_scale: float = 4.0
    """Sigmoid steepness of the soft anchors (Table 3: 4 best)."""
    anchor_offset: float = 0.5
    """Anchor^c = sigmoid(scale * (M^c - offset)); M^c is min-max normalised, 0.5 centres the sigmoid (our choice)."""
    loss_cross_weights: dict[float, float] = field(default_factory=lambda: {0.25: 1.0})
    """Cross-attention resolutions feeding the loss (Table 5: 16x16 alone best)."""
    loss_self_weights: dict[float, float] = field(default_factory=lambda: {0.25: 1.0})
    """Self-attention resolutions feeding the loss (and the KL distance matrix of eq. 3)."""
    cross_weights: dict[float, float] = field(default_factory=lambda: {0.125: 0.3, 0.25: 0.5, 0.5: 0.1, 1.0: 0.1})
    """Cross-attention resolutions of the final maps (the baseline's, DiffSegmenter's weights)."""
    self_weights: dict[float, float] = field(default_factory=lambda: {1.0: 1.0})
    """Self-attention resolutions of the final maps (the baseline's)."""
    places: tuple[str, ...] = ("down", "mid", "up")
    """UNet parts whose attention layers are read."""
    loss_places: tuple[str, ...] | None = None
    """The places whose layers feed the loss, where they differ from `places` (the final read-out's): on a
    transformer, blocks ("block0", ...) that end the optimisation's forward early (`stop_forward_early`); None: the
    same as `places`. Not a default anywhere: on `shapes-dit` val (its SAM refiner after) the first half of the read
    blocks cost 38% less time and 2.9 mIoU (70.6 against 73.5, `benchmarks/scale/results/transformer_costs.md`)."""
    template: str = "a photograph of {}"
    """Prompt template; `{}` becomes the labels joined by `joiner`."""
    joiner: str = " and "
    """Text between label names in the prompt."""
    background_threshold: float | None = 0.5
    """As in the baseline: pixels below this are background unless a label is named "background"; None: never."""
    stop_forward_early: bool = True
    """End the optimisation's UNet forward after the last layer the loss reads (beyond the paper; same result)."""
    view_pool: int = 2
    """Views drawn once, their VAE latents cached, `num_views` of them picked each step; 0: fresh random views
    every step. The paper: "each test image is augmented for 2 times using random resized crops ..., which construct
    a batch of size 2 in each optimization step": 2 views of the image, the batch of every step. Read so (the
    default), the 15 steps cost 2 VAE encodes, not 30 (at SD-1.5's 512 px one encode is ~1 UNet forward on a CPU);
    on shapes val it scores as fresh views do (79.4 and 79.4 mIoU, `benchmarks/scale/results/savings.md`)."""
    views_from: str = "pixels"
    """"pixels": each view is the crop of the image, resized and VAE-encoded (the paper; once per view of the pool,
    or 2 encodes a step with `view_pool=0`);
    "latents": the crop of the image's latents, resampled to the latent size (no VAE encode after the first: at
    SD-1.5's 512 px one encode costs 1.36 UNet forwards on this CPU). Its effect on shapes:
    `benchmarks/scale/results/savings.md`."""
    inversion_side: int | None = None
    """Longest image side, in pixels, of the optimisation (its views, its loss grid); the final read-out stays at the
    model's native size. None: 512 px on a diffusion transformer whose native size is larger (FLUX.1, SD3 at 1024 px:
    the paper's 512 px and 16x16 loss grid, a quarter of the image tokens), the native size on a UNet and on smaller
    models (`promptseg.diffusion.memory.inversion_size`); the native size or more: the native size. Beyond the paper."""
    recompute: bool | None = None
    """Recompute the denoiser's blocks in the backward pass instead of keeping their activations (gradient
    checkpointing, `promptseg.diffusion.memory`): about one more forward a step for the memory of one block. None:
    on a transformer (FLUX.1's kept activations are tens of GB), off on a UNet (SD's fit)."""
    seed: int = 0
    """Seed of views, timesteps and noise."""

    def __post_init__(self):
        if self.steps < 0 or self.num_views < 1:
            raise ValueError(f"steps must be >= 0 and num_views >= 1, got {self.steps} and {self.num_views}")
        low, high = self.train_timesteps
        if not 0 <= low <= high:
            raise ValueError(f"train_timesteps must be (low, high) with 0 <= low <= high, got {self.train_timesteps}")
        if self.view_pool and self.view_pool < self.num_views:
            raise ValueError(f"view_pool={self.view_pool} cannot give num_views={self.num_views} views a step; use "
                             f"view_pool >= {self.num_views}, or 0 for fresh views every step")
        if self.views_from not in ("pixels", "latents"):
            raise ValueError(f"views_from must be 'pixels' or 'latents', got {self.views_from!r}")
        check_inversion_side(self.inversion_side)
        if not 0 < self.min_crop_scale <= 1:
            raise ValueError(f"min_crop_scale must be in (0, 1], got {self.min_crop_scale}")


@register_method("invseg", InvSegConfig)
class InvSeg:
    """InvSeg: per-image prompt inversion with Contrastive Soft Clustering and entropy minimisation."""

    takes_prompt = False  # the prompt is built from the labels and learnt; a filter's caption is not passed
    one_at_a_time = "it optimises the prompt's embeddings for each image"

    def __init__(self, backbone, config: InvSegConfig | None = None):
        self.backbone = backbone
        self.config = config or InvSegConfig()
        self.on_step = None
        """Optional `on_step(done, total)` called after each optimisation step (the demo's progress bar)."""
        c = self.config
        self.readout = Baseline(
            backbone,
            BaselineConfig(
                timestep=c.timestep,
                cross_weights=c.cross_weights,
                self_weights=c.self_weights,
                places=c.places,
                template=c.template,
                joiner=c.joiner,
                background_threshold=c.background_threshold,
                seed=c.seed,
            ),
        )
        self._plan_loss()

    def _plan_loss(self) -> None:
        """The loss's layers and grids at the backbone's working size (`loss_layers`, `loss_cross`, `loss_self`,
        `loss_grid`, `pool_grid`): at the native size when built (bad settings fail there), at the inversion size
        inside `invert`."""
        c = self.config
        plan = plan_attention(self.backbone, c.loss_cross_weights, c.loss_self_weights, c.loss_places or c.places)
        self.loss_cross, self.loss_self, self.loss_grid, self.loss_layers = plan.cross, plan.self, plan.target, plan.layers
        self.pool_grid = self._transformer_loss_grid()
        if self.pool_grid is not None:  # the loss's coarse grid, read by pooling the blocks' image tokens
            self.loss_cross, self.loss_self, self.loss_grid = {self.pool_grid: 1.0}, {self.pool_grid: 1.0}, self.pool_grid

    def _transformer_loss_grid(self) -> tuple[int, int] | None:
        """On a transformer (every block on one token grid), the grid the loss weights name (the paper's 16x16 at
        SD's 512 px: 1/4 of the latent side), reached by average-pooling the blocks' image queries and keys
        (`AttentionStore.pool_grid`): the loss's self-attention is then (N/4)^2 a head, not N^2 (at FLUX's 1024 px
        a 4096 x 4096 map per head and block, kept with its gradients). None on a UNet (its layers have the grid),
        or when the fraction does not divide the token grid evenly."""
        if self.backbone.family == "unet" or not hasattr(self.backbone, "grid"):
            return None
        if getattr(self.backbone.denoiser, "promptseg_cross_readout", "joint") == "output":
            raise ValueError("invseg's loss reads attention probabilities; this model's cross_readout='output' (the "
                             "attention outputs) has none on a coarse grid: set cross_readout to 'joint'")
        token = tuple(self.backbone.grid)
        latent = self.backbone.latent_size
        fraction = max(float(f) for f in {**self.config.loss_cross_weights, **self.config.loss_self_weights})
        target = (round(latent[0] * fraction), round(latent[1] * fraction))
        if not (0 < target[0] < token[0] and token[0] % target[0] == 0 and token[1] % target[1] == 0):
            return None
        return target

    def prepare(self, image) -> PreparedImage:
        """Encode `image` for the final pass and keep its full-size pixels for the augmented views."""
        prepared = self.readout.prepare(image)
        prepared.extra["image"] = to_pil(image)  # for the latents at the inversion size (`views_from="latents"`)
        array = np.asarray(prepared.extra["image"], dtype=np.float32) / 127.5 - 1.0
        prepared.extra["original"] = torch.from_numpy(array).permute(2, 0, 1)[None]  # (1, 3, H, W) on CPU
        return prepared

    # -- the optimisation ------------------------------------------------------------------------------------

    def _view_latents(self, prepared: PreparedImage, boxes) -> torch.Tensor:
        original = prepared.extra["original"]
        if self.config.views_from == "latents":
            image_hw = tuple(original.shape[-2:])
            latents = working_latents(self.backbone, prepared)  # at the inversion size: the image encoded there
            return torch.cat([crop_resize_scaled(latents, box, image_hw) for box in boxes])
        size = self.backbone.image_size
        views = torch.cat([crop_resize(original, box, size) for box in boxes])
        with torch.no_grad():
            return self.backbone.encode_image(views.to(self.backbone.device))

    def _loss_maps(self, store: AttentionStore, positions) -> tuple[torch.Tensor, torch.Tensor]:
        """Refined class maps (V, N, K) in [0, 1] and self-attention (V, N, N) on the loss grid, with gradients."""
        grid = self.loss_grid
        cross = {g: tokens_to_maps(label_scores(store.mean("cross", g), positions), g) for g in self.loss_cross}
        mixed = weighted_sum(cross, self.loss_cross, grid)  # (V, K, h, w)
        total = sum(self.loss_self.values())
        attn = sum(resize_self_attention(store.mean("self", g), g, grid) * (w / total) for g, w in self.loss_self.items())
        refined = refine(attn, maps_to_tokens(mixed))  # (V, N, K)
        maps = maps_to_tokens(minmax(tokens_to_maps(refined, grid)))
        return maps, attn

    def loss(self, maps: torch.Tensor, attn: torch.Tensor, boxes, image_hw) -> tuple[torch.Tensor, dict]:
        """L = L_cluster (mean over views) + alpha * L_etrp (views mapped back onto the image grid, averaged)."""
        c = self.config
        clusters = torch.stack([cluster_loss(symmetric_kl(a), m, c.anchor_scale, c.anchor_offset) for a, m in zip(attn, maps)])
        grid = self.loss_grid
        total, coverage = 0, 0
        for view_maps, box in zip(maps, boxes):
            values, inside = uncrop(tokens_to_maps(view_maps[None], grid)[0], box, image_hw, grid)
            total, coverage = total + values, coverage + inside
        mean = total / coverage.clamp_min(1)  # (K, h, w), 0 where no view covers
        entropy = entropy_loss(maps_to_tokens(mean[None])[0], weight=(coverage > 0).flatten().to(mean.dtype))
        loss = clusters.mean() + c.alpha * entropy
        return loss, {"cluster": float(clusters.mean().detach()), "entropy": float(entropy.detach())}

    def invert(self, prepared: PreparedImage, tokens) -> tuple[torch.Tensor, dict]:
        """Optimise the class-token embeddings for this image at the inversion size (`inversion_side`); returns
        the text (1, T, D) and a log."""
        try:
            with inversion_size(self.backbone, self.config.inversion_side):
                self._plan_loss()
                return self._invert(prepared, tokens)
        finally:
            self._plan_loss()  # back to the native size's

    def _invert(self, prepared: PreparedImage, tokens) -> tuple[torch.Tensor, dict]:
        c = self.config
        backbone = self.backbone
        generator = torch.Generator().manual_seed(c.seed)
        with torch.no_grad():
            text0 = backbone.encode_text(tokens.prompt).float()  # (1, T, D)
        index = sorted({i for spans in tokens.positions for span in spans for i in span})
        learn = torch.nn.Parameter(text0[0, index].clone())  # P: the only trainable tensor, float32 always
        optimiser = torch.optim.Adam([learn], lr=c.lr)
        scaler = loss_scaler(backbone)  # fp16 backbones: loss scaling (`promptseg.diffusion.precision`)
        original = prepared.extra["original"]
        image_hw = tuple(original.shape[-2:])
        pool = None
        if c.view_pool > 0:
            pool_boxes = [random_crop_box(generator, *image_hw, (c.min_crop_scale, 1.0)) for _ in range(c.view_pool)]
            pool = (pool_boxes, self._view_latents(prepared, pool_boxes))
        log = {"loss": [], "cluster": [], "entropy": [], "grad_norm": [], "change": [], "warnings": []}
        start_norm = float(learn.detach().norm())
        last_finite = learn.detach().clone()
        with recomputed(backbone, c.recompute) as blocks_recomputed:
            for _ in range(c.steps):
                if pool is None:
                    boxes = [random_crop_box(generator, *image_hw, (c.min_crop_scale, 1.0)) for _ in range(c.num_views)]
                    latents = self._view_latents(prepared, boxes)
                else:
                    pick = torch.randperm(len(pool[0]), generator=generator)[: c.num_views].tolist()
                    boxes, latents = [pool[0][i] for i in pick], pool[1][pick]
                t = int(torch.randint(c.train_timesteps[0], c.train_timesteps[1] + 1, (1,), generator=generator))
                noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
                noisy = backbone.add_noise(latents, noise, torch.tensor([t], device=latents.device))
                text = text0.expand(len(boxes), -1, -1).clone()
                text[:, index] = learn  # differentiable in `learn` only
                store = AttentionStore(latent_hw=tuple(noisy.shape[-2:]), keep_graph=True, pool_grid=self.pool_grid,
                                       blocks_recomputed=blocks_recomputed)
                timesteps = torch.full((len(boxes),), t, device=noisy.device)
                # the backward pass runs under the capture too: a block that gradient checkpointing re-runs there
                # must compute its maps again (`blocks_recomputed`)
                with capture(backbone.denoiser, self.loss_layers, store, stop_after_last=c.stop_forward_early):
                    if c.stop_forward_early:
                        run_until_captured(backbone.predict, noisy, timesteps, text)
                    else:
                        backbone.predict(noisy, timesteps, text)
                    maps, attn = self._loss_maps(store, tokens.positions)
                    loss, parts = self.loss(maps, attn, boxes, image_hw)
                    finite = math.isfinite(float(loss.detach()))
                    if finite:
                        optimiser.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                if not finite:
                    with torch.no_grad():
                        learn.copy_(last_finite)
                    log["warnings"].append(f"non-finite loss at step {len(log['loss'])}; kept the last finite prompt")
                    break
                last_finite = learn.detach().clone()
                log["loss"].append(float(loss.detach()))
                log["cluster"].append(parts["cluster"])
                log["entropy"].append(parts["entropy"])
                scaler.unscale_(optimiser)
                log["grad_norm"].append(float(learn.grad.norm()))
                scaler.step(optimiser)
                scaler.update()
                log["change"].append(float((learn.detach() - text0[0, index]).norm()) / max(start_norm, 1e-12))
                if self.on_step is not None:
                    self.on_step(len(log["loss"]), c.steps)
        with torch.no_grad():
            if not torch.isfinite(learn).all():  # the last step's update itself went bad
                learn.copy_(last_finite)
                log["warnings"].append("non-finite prompt after the last step; kept the last finite prompt")
            text = text0.clone()
            text[0, index] = learn.detach()
        return text.to(backbone.dtype), log

    def segment(self, prepared: PreparedImage, labels) -> SegmentationResult:
        """Invert the prompt of `labels` on the prepared image, then segment with the optimised embeddings.

        The clustering loss compares every class with every other, so all labels go into one prompt: where they do
        not fit the text encoder, synonyms are dropped first (`fit_prompt`, the last synonym of the label with the
        most first); where even one word each does not fit (ADE's 150 names), the labels are split into prompts that
        do, each inverted on its own (classes are then compared within a prompt only). Both are said in warnings.
        """
        start = time.perf_counter()
        c = self.config
        labels, dropped = fit_prompt(self.backbone.tokenizer, as_labels(labels), c.template, c.joiner)
        groups = split_to_fit(self.backbone.tokenizer, labels, c.template, c.joiner)
        warnings = []
        if dropped:
            warnings.append(f"the prompt holds {self.backbone.text_length} tokens: dropped the synonyms {dropped}")
        if len(groups) > 1:
            warnings.append(f"{len(labels)} labels do not fit one prompt even with one word each: inverted in "
                            f"{len(groups)} prompts of {[len(g) for g in groups]} labels, classes compared within one")
        scores, logs, inverting = [], [], 0.0
        for group in groups:
            tokens = build_prompt(self.backbone.tokenizer, group, c.template, c.joiner)
            before = time.perf_counter()
            text, log = self.invert(prepared, tokens)
            inverting += time.perf_counter() - before
            with torch.no_grad():
                label_cross, self_attn = self.readout.read_attention(prepared, tokens, text)
                scores.append(self.readout.scores(self_attn, label_cross)[0])
            logs.append(log)
            warnings += log["warnings"]
        timings = {**prepared.timings, "invert": inverting, "segment": time.perf_counter() - start}
        result = finish(torch.cat(scores), labels, prepared.size, c.background_threshold, timings, warnings)
        keys = ("loss", "cluster", "entropy", "grad_norm", "change")
        result.extra = {k: logs[0][k] for k in keys} if len(logs) == 1 else {"groups": [{k: g[k] for k in keys}
                                                                                         for g in logs]}
        return result

    def __call__(self, image, labels, prompt: str | None = None):
        """`segment(prepare(image), labels)`; InvSeg learns its prompt, so `prompt` must stay None."""
        if prompt is not None:
            raise ValueError("invseg builds its prompt from the labels and optimises it; it takes no prompt or caption")
        return self.segment(self.prepare(image), labels)
