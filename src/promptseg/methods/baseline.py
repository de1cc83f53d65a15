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
from promptseg.diffusion.encode import PreparedImage, prepare_pixels, to_pil
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
from promptseg.methods.batching import padded_label_scores, prepare_noised, shared_rows, timing_share
from promptseg.text import append_to_fit, build_prompt, label_scores, span_positions, split_to_fit


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
    candidate class alone, completed by `captioner`'s continuation). Labels that do not fit one joint prompt are
    split into passes either way."""
    captioner: str | None = None
    """per_class only: a BLIP captioning model (hub id or folder; DiffSegmenter: "blip-image-captioning-large")
    that continues each class's prompt for the image, "a photograph of cat" -> "a photograph of cat ++ sitting on a
    sofa" (DiffSegmenter, open_vocabulary/voc12/ptp_stable_best.py). None: no continuation; a caption given to the
    call (a filter's) is then appended to every pass's prompt instead."""
    caption_separator: str = " ++ "
    """Text between the label prompt and its caption (DiffSegmenter: "++"; spaces change nothing for CLIP's BPE and
    keep other tokenizers from joining it to the last label word)."""
    conditioning: str = "labels"
    """"labels": the UNet sees the label prompt (one pass per label set, the paper's recipe); "prompt": the UNet
    sees the prompt given to `prepare` (default empty) once per image, and any label set is read from the kept
    queries (OVAM-style, cheap re-segmentation)."""
    aggregation: str = "fixed"
    """How a transformer's blocks are combined: "fixed" (their mean, the resolution weights of a UNet) or "goca"
    (weights from the image's own activations: each block's self-attention against a reference block's feature
    affinity, and every label score divided pixel by pixel by the summed score of all label tokens; GoCA, CVPR
    2026, `promptseg.diffusion.aggregation`). "goca" reads transformers only."""
    goca_rescale: bool = True
    """With aggregation="goca": divide each label score, pixel by pixel, by the summed score of every label token
    of the prompt (GoCA's "sum-1 rescaling"); False keeps the activation-derived block weights alone."""
    goca_reference: str | None = None
    """With aggregation="goca": the block whose image features give the reference affinity, as a place ("block9",
    "single8"; with ".attn": its attention output, "single8.attn" is GoCA's FLUX reference 'vit-block27-attn-out');
    None: the output of the middle read block."""
    readout: str = "diffsegmenter"
    """How label maps become scores: "diffsegmenter" (each label's map min-max normalised over the image, refined
    by self-attention, a caption appended to the prompt: DiffSegmenter's recipe) or "seg4diff" (Seg4Diff's zero-shot
    read-out, `seg4diff_model_ovss.py`: the prompt is the label names alone, each label's score its tokens' mean
    attention share, no per-label normalisation, so the joint softmax's shares are compared across labels as they
    are; no caption; the scores are scaled by one common factor to [0, 1], which keeps the argmax). Refinement,
    template and threshold stay their own settings: the SD3 profile sets them as Seg4Diff runs (no refinement,
    names joined by spaces, no threshold)."""
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
        if self.readout not in ("diffsegmenter", "seg4diff"):
            raise ValueError(f"readout must be 'diffsegmenter' or 'seg4diff', got {self.readout!r}")
        if self.aggregation not in ("fixed", "goca"):
            raise ValueError(f"aggregation must be 'fixed' or 'goca', got {self.aggregation!r}")
        if self.refine_iterations < 0:
            raise ValueError(f"refine_iterations must be >= 0, got {self.refine_iterations}")
        if self.captioner is not None and self.readout == "seg4diff":
            raise ValueError("readout='seg4diff' prompts the label names alone: captioner must be null")
        if self.captioner is not None and self.prompt_mode != "per_class":
            raise ValueError(f"captioner={self.captioner!r} continues one class's prompt, so it needs "
                             "prompt_mode='per_class' (or captioner=null)")


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
        self.reference = None
        if self.config.aggregation == "goca":
            blocks = sorted({layer.block for layer in self.layers if layer.kind == "cross"})
            if getattr(backbone, "text_keys_reusable", True) or self.config.conditioning != "labels":
                raise ValueError("aggregation='goca' weighs a transformer's blocks with conditioning='labels'; "
                                 f"{backbone.name!r} is a UNet or conditioning is 'prompt': use aggregation='fixed'")
            if self.config.refine_iterations == 0:
                raise ValueError("aggregation='goca' weighs blocks by their self-attention, which refine_iterations=0 "
                                 "does not record: set refine_iterations >= 1, or aggregation='fixed'")
            if self.config.goca_reference is not None:
                self.reference, block = reference_module(backbone, self.config.goca_reference)
                last = max(blocks)
                if block > last:
                    raise ValueError(f"goca_reference {self.config.goca_reference!r} runs after the last block read "
                                     f"({last}): the forward stops before it; name an earlier block or read later ones")
            elif len(blocks) > 1:  # the reference: a middle block (the last ends the forward before its output)
                name = next(layer.name for layer in self.layers if layer.block == blocks[(len(blocks) - 1) // 2])
                self.reference = name.rsplit(".attn.", 1)[0]
        self.captioner = None
        if self.config.captioner:
            from promptseg.models.captioner import load_captioner

            try:
                self.captioner = load_captioner(self.config.captioner, device=backbone.device)
            except OSError as err:
                raise OSError(f"{err}\nThe baseline continues each class's prompt with this captioner "
                              "(DiffSegmenter's protocol): --set captioner=null runs it without") from err

    def prepare(self, image, prompt: str | None = None) -> PreparedImage:
        """Encode `image` (PIL or HxWx3 uint8) and noise it; with conditioning="prompt", also run the UNet once."""
        start = time.perf_counter()
        prepared = prepare_pixels(self.backbone, image)
        noisy, _ = noised_latents(self.backbone, prepared.latents, self.config.timestep, self.config.seed)
        prepared.extra["noisy"] = noisy
        if self.captioner is not None:  # it continues each class's prompt for this image
            prepared.extra["image"] = to_pil(image)
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

    @property
    def batches(self) -> bool:
        """Several images share one UNet forward (`promptseg.methods.batching`): with conditioning="labels",
        prompt_mode="joint", fixed aggregation and no captioner (each image's labels in one prompt of its own)."""
        c = self.config
        return (c.conditioning == "labels" and c.prompt_mode == "joint" and c.aggregation == "fixed"
                and self.captioner is None)

    def prepare_many(self, images) -> list[PreparedImage]:
        """`prepare` of each image, the VAE seeing them in chunks; each image's noise is its own seeded draw, as
        `prepare` makes it."""
        return prepare_noised(self.backbone, images, self.config.timestep, self.config.seed)

    def segment_many(self, prepared: list[PreparedImage], labels: list, captions: list) -> list[SegmentationResult]:
        """`segment` of several images: those whose labels fit one prompt share one UNet forward, each conditioned
        on its own prompt (its labels, its caption); any other image runs alone."""
        c, tokenizer = self.config, self.backbone.tokenizer
        labels = [as_labels(kept) for kept in labels]
        out, together = shared_rows(self, prepared, labels, captions,
                                    lambda i: len(split_to_fit(tokenizer, labels[i], c.template, c.joiner)) == 1)
        if not together:
            return out
        start = time.perf_counter()
        tokens = [build_prompt(tokenizer, labels[i], c.template, c.joiner) for i in together]
        with torch.no_grad():
            text = self.backbone.encode_text([self.completed(prepared[i], t.prompt, captions[i])
                                              for i, t in zip(together, tokens)])
            noisy = torch.cat([prepared[i].extra["noisy"] for i in together])
            store = attention_pass(self.backbone, noisy, c.timestep, text, self.layers, self_products=c.refine_iterations)
            label_cross = {g: padded_label_scores(store.mean("cross", g), [t.positions for t in tokens])
                           for g in self.cross_grids}
            scores = self.scores({g: store.self_attention(g) for g in self.self_grids}, label_cross)
        seconds = time.perf_counter() - start
        for row, i in enumerate(together):
            out[i] = finish(scores[row, :len(labels[i])], labels[i], prepared[i].size, c.background_threshold,
                            timing_share(prepared[i], seconds, len(together)))
        return out

    def segment(self, prepared: PreparedImage, labels, caption: str | None = None) -> SegmentationResult:
        """Segment a prepared image into `labels` (strings, commas separating synonyms, or `Label`s).

        Labels that do not fit one prompt are split into groups that do, one UNet pass per group (with
        conditioning="labels"); self-attention is then averaged over the passes. Each pass's prompt is completed
        by the captioner's continuation of it (per_class with `captioner`), else by `caption` (a filter's) as far
        as it fits, except with readout="seg4diff" (the names alone); the label tokens' positions are those of the
        label prompt either way.
        """
        if caption is not None and self.config.conditioning == "prompt":
            raise ValueError("with conditioning='prompt' the caption is the prompt given to prepare(), not to segment()")
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
                text = self.completed(prepared, tokens.prompt, caption)
                cross, selfs = self.read_attention(prepared, tokens, self.backbone.encode_text(text))
                crosses.append(cross)
                # the mean over the passes, merged as they come: ADE-847's names take ~45 passes, and keeping each
                # pass's 64x64 queries and keys until the end held 2.4 GB at SD's size
                self_attn = {g: self_attn[g].merged(a) if g in self_attn else a for g, a in selfs.items()}
            label_cross = {g: torch.cat([c[g] for c in crosses], dim=-1) for g in self.cross_grids}  # (1, N, K)
            scores = self.scores(self_attn, label_cross)
        timings = {**prepared.timings, "segment": time.perf_counter() - start}
        return finish(scores[0], labels, prepared.size, self.config.background_threshold, timings)

    def completed(self, prepared: PreparedImage, prompt: str, caption: str | None) -> str:
        """`prompt` followed by its caption: the captioner's continuation of it for this image (DiffSegmenter), or
        `caption`; words that do not fit the text encoder are dropped from the caption's end."""
        if self.captioner is not None and self.config.conditioning == "labels":
            from promptseg.models.captioner import continuation

            caption = continuation(self.captioner(prepared.extra["image"], prefix=prompt), prompt)
        if not caption or self.config.readout == "seg4diff":  # Seg4Diff's prompt is the names alone
            return prompt
        return append_to_fit(self.backbone.tokenizer, prompt, caption, self.config.caption_separator)

    def read_attention(self, prepared: PreparedImage, tokens, text: torch.Tensor) -> tuple[dict, dict]:
        """Per-grid label cross-attention (1, N, K) and self-attention (1, N, N) for `text` (1, T, D), the encoded
        (or optimised) embeddings of the prompt described by `tokens`."""
        if self.config.aggregation == "goca":
            return self.goca_attention(prepared, tokens, text)
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

    def goca_attention(self, prepared: PreparedImage, tokens, text: torch.Tensor) -> tuple[dict, dict]:
        """`read_attention` with GoCA's aggregation (`promptseg.diffusion.aggregation`): the blocks' cross maps
        weighted by how well each block's self-attention agrees with the reference block's feature affinity, then
        each label's score divided, pixel by pixel, by the summed score of every label token (`tokens.positions`;
        the caption's words are not labels, so they are left out, as GoCA leaves out words matched to no object)."""
        from promptseg.diffusion import aggregation

        store = attention_pass(self.backbone, prepared.extra["noisy"], self.config.timestep, text, self.layers,
                               self_products=self.config.refine_iterations, keep_layers=True,
                               reference=self.reference)
        (grid,) = self.cross_grids  # a transformer's blocks share one grid
        records = store.lazy.get(grid, [])
        if store.reference is not None and len(records) == len(store.layer_maps):
            weights = aggregation.layer_weights(aggregation.affinity(store.reference), records)
        else:
            weights = torch.full((len(store.layer_maps),), 1 / len(store.layer_maps))
        cross = aggregation.aggregate(store.layer_maps, weights)
        label = label_scores(cross, tokens.positions)
        # a pass of one label (refer(), per_class) is not rescaled: its score over its own total is 1/n everywhere
        if self.config.goca_rescale and len(tokens.positions) > 1:
            entities = [p for spans in tokens.positions for span in spans for p in span]
            label = aggregation.rescale(label, cross, entities)
        self.last_block_weights = weights
        return {grid: label}, {g: store.self_attention(g) for g in self.self_grids}

    def scores(self, self_attn: dict, label_cross: dict) -> torch.Tensor:
        """(B, K, h, w) refined scores in [0, 1] from per-grid label cross-attention (B, N, K) and self-attention
        ((B, N, N) tensors or `SelfAttention` operators)."""
        maps = {g: tokens_to_maps(c, g) for g, c in label_cross.items()}
        seg4diff = self.config.readout == "seg4diff"  # shares compared across labels: no per-label normalisation
        mixed = weighted_sum(maps, self.cross_grids, self.target, normalize=not seg4diff)  # (B, K, H, W)
        if self.self_grids:
            propagate = mix_self_attention(self_attn, self.self_grids, self.target)
            mixed = tokens_to_maps(refine(propagate, maps_to_tokens(mixed), self.config.refine_iterations),
                                   self.target)
        if seg4diff:  # one common factor a batch item: the argmax is kept
            return mixed / mixed.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None, None]
        return minmax(mixed)

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
        """`segment(prepare(image), labels)`; `prompt` (a caption, such as a filter's) completes the label prompts
        with conditioning="labels" and is the UNet's prompt with conditioning="prompt"."""
        if self.config.conditioning == "prompt":
            return self.segment(self.prepare(image, prompt), labels)
        return self.segment(self.prepare(image), labels, caption=prompt)


def reference_module(backbone, place: str) -> tuple[str, int]:
    """(module path, block number with double blocks first) of GoCA's reference `place` ("block9", "single8",
    either with ".attn") in `backbone`'s transformer.

    Raises:
        ValueError: a place that names no block of this transformer, or another suffix than ".attn".
    """
    block, _, part = place.partition(".")
    if part not in ("", "attn") or not re.fullmatch(r"(block|single)\d+", block):
        raise ValueError(f"goca_reference {place!r}: name a block ('block9', 'single8') or its attention output "
                         "('single8.attn')")
    (index,) = backbone.blocks_for([block])
    doubles = len(backbone.denoiser.transformer_blocks)
    path = f"transformer_blocks.{index}" if index < doubles else f"single_transformer_blocks.{index - doubles}"
    return (f"{path}.attn" if part else path), index
