"""ConceptAttention on a diffusion transformer: every label word becomes concept tokens with a residual stream of
their own, and the map is read in the attention's output space.

ConceptAttention (Helbling et al., ICML 2025, arXiv 2502.04320; code helblazer811/ConceptAttention) on the joint
blocks of an SD3-style transformer or FLUX's double-stream blocks (`promptseg.diffusion.concepts`):
1. resize to the native size, encode, noise once to `timestep` (rectified flow);
2. one transformer pass conditioned on the caption (a filter's, or `prompt`), else on the labels' own prompt
   ("a cat, a dog", the prompt the reference's VOC experiment conditions on; as many labels as fit one prompt);
   beside it, the concept tokens: every
   token of every synonym of every label, read from the labels' prompt encoded by the backbone's text encoders
   (multi-token names count whole: the reference keeps a concept's first token only, its issue #18), plus the
   background concepts;
3. per read block, each image token's attention output dotted with each concept's (concepts normalised per
   channel, or to unit length as the reference's SD3 pipeline); per label the mean over a synonym's tokens and the
   max over its synonyms, then the softmax over the labels (pooled before the softmax, so a label's share is not
   divided among its tokens and synonyms: the reference's concepts are one token each, a name of several tokens
   or synonyms would otherwise lose to a one-token name); mean over the blocks;
4. pixels won by a background concept are background.

On FLUX the pooled CLIP vector is zeroed for the whole pass, as the reference encodes images (its
`concept_vec = zeros_like(vec)`, concept_attention/utils.py; segmentation.py passes it as `y`).

The pass stops after the last read block. UNets have no joint attention: this method needs a transformer backbone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from promptseg.diffusion.capture import run_until_captured
from promptseg.diffusion.concepts import NORMALIZATIONS, ConceptStream
from promptseg.diffusion.encode import PreparedImage
from promptseg.diffusion.readout import minmax, tokens_to_maps
from promptseg.methods.base import BACKGROUND, SegmentationResult, as_labels, finish, register_method
from promptseg.methods.batching import prepare_noised, timing_share
from promptseg.text import Label, build_prompt, label_scores, split_to_fit


@dataclass
class ConceptAttentionConfig:
    """Settings of ConceptAttention (values from the paper's code, helblazer811/ConceptAttention)."""

    timestep: int = 513
    """Noise level of the single pass, sigma = t / 1000. 513: the reference's PASCAL VOC experiment
    (experiments/pascal_voc_segmentation: `noise_timestep` 3 of 4 steps on FLUX's shifted schedule at 1024 px,
    sigma = 0.513)."""
    blocks: tuple[int, ...] | None = None
    """Joint blocks whose maps are averaged; None: every block (the reference's SD3 segmentation reads
    `layer_range` (0, 38), every block of SD3.5-large; its FLUX VOC experiment reads double blocks 14-17 of 19)."""
    normalize_concepts: str = "linear"
    """How the concepts' output vectors are normalised: "linear", per channel over the concepts (the reference's
    FLUX code, `linear_normalization`); "l2", each to unit length (its current SD3 pipeline, `_compute_heatmaps`);
    "none" (true and false are read as "linear" and "none")."""
    pool_before_softmax: bool = True
    """Pool a label's tokens and synonyms (mean, then max) before the softmax over concepts, so that a label's
    share is not divided by its token and synonym count; False: every token is a concept of its own in the
    softmax and the label's score is pooled after it (a one-token concept per name, as the reference)."""
    zero_pooled: bool | None = None
    """Zero the pooled text vector that conditions the adaLN; None: as the reference on this family (FLUX: zeroed,
    `concept_vec = zeros_like(vec)`; SD3: the prompt's pooled vector, its SD3 pipeline)."""
    softmax: bool = True
    """Softmax each image token's concept scores over the concepts, per block (the paper, eq. 9; its SD3 code)."""
    attend_prompt: bool = False
    """Let the concepts also attend to the prompt's tokens (one way still). False: the paper's concepts attend to the
    image and to each other only."""
    template: str = "a {}"
    """Template of the labels' prompt (the reference conditions its VOC runs on ",".join("a {class}"))."""
    joiner: str = ", a "
    """Text between label names in the labels' prompt."""
    background_concepts: tuple[str, ...] = ("background",)
    """Concepts that stand for the background when no label is named "background": a pixel one of them wins is
    background (the reference's VOC experiment: "background", "floor", "grass", "tree", "sky"). Empty: every pixel
    goes to a label unless `background_threshold` is set."""
    background_threshold: float | None = None
    """Pixels whose best label score (a share of the concepts' softmax) is below this are background; None: never."""
    seed: int = 0
    """Seed of the noise added to the latents."""

    def __post_init__(self):
        if self.blocks is not None:
            self.blocks = tuple(int(b) for b in self.blocks)
            if not self.blocks:
                raise ValueError("blocks must name at least one block, or be None (every block)")


@register_method("conceptattention", ConceptAttentionConfig)
class ConceptAttention:
    """ConceptAttention (ICML 2025): concept tokens beside a transformer's joint blocks, output-space maps."""

    families = ("mmdit", "flux")  # joint attention only: the demo offers it when a transformer is loaded

    def __init__(self, backbone, config: ConceptAttentionConfig | None = None):
        self.config = config or ConceptAttentionConfig()
        blocks = getattr(getattr(backbone, "denoiser", None), "transformer_blocks", None)
        family = getattr(backbone, "family", None)
        if family in ("flux2", "zimage", "qwenimage"):
            why = {"flux2": "FLUX.2, whose blocks share one modulation across the model",
                   "zimage": "Z-Image, whose single stream has no text weights of its own to run concepts through",
                   "qwenimage": "Qwen-Image, whose blocks (complex rotary tables, a text mask) the concept stream"
                                " does not run"}[family]
            raise ValueError(f"conceptattention runs its concept stream through SD3's and FLUX.1's joint blocks; "
                             f"{backbone.name!r} is {why}, not adapted yet: use baseline, fastseg or invseg on it")
        if family not in self.families or blocks is None:
            raise ValueError(f"conceptattention reads a diffusion transformer's joint attention; {backbone.name!r} is "
                             "a UNet: use baseline, fastseg or invseg on it, or load an SD3-style or FLUX.1 model")
        self.backbone = backbone
        n = len(blocks)
        self.blocks = list(range(n)) if self.config.blocks is None else sorted(set(self.config.blocks))
        if self.config.normalize_concepts not in NORMALIZATIONS:
            raise ValueError(f"normalize_concepts must be 'linear', 'l2' or 'none', got "
                             f"{self.config.normalize_concepts!r}")
        if self.blocks[0] < 0 or self.blocks[-1] >= n:
            raise ValueError(f"blocks {list(self.config.blocks)} are not blocks of this transformer (0..{n - 1})")

    batches = True
    """Images offered the same labels share one forward, each conditioned on its own prompt (the concept rows are
    the labels', one set a forward); `promptseg.methods.batching`."""

    def prepare(self, image) -> PreparedImage:
        """Encode `image` and noise it to `timestep`."""
        return self.prepare_many([image])[0]

    def prepare_many(self, images) -> list[PreparedImage]:
        """`prepare` of each image, the VAE seeing them in chunks; each image's noise is its own seeded draw."""
        return prepare_noised(self.backbone, images, self.config.timestep, self.config.seed)

    def labels_prompt(self, labels: list[Label]) -> str:
        """The prompt that conditions the pass when no caption is given: the labels in `template` (as many as fit
        one prompt, the first group of `split_to_fit`)."""
        group = split_to_fit(self.backbone.tokenizer, labels, self.config.template, self.config.joiner)[0]
        return build_prompt(self.backbone.tokenizer, group, self.config.template, self.config.joiner).prompt

    def concepts(self, labels: list[Label]) -> tuple[torch.Tensor, list[list[list[int]]]]:
        """(rows (1, C, D), positions of each label's synonyms' tokens among the C concepts): the labels' prompt,
        split into groups that fit the text encoder, encoded group by group."""
        rows, positions = [], []
        for group in split_to_fit(self.backbone.tokenizer, labels, self.config.template, self.config.joiner):
            tokens = build_prompt(self.backbone.tokenizer, group, self.config.template, self.config.joiner)
            context = self.backbone.context_of(self.backbone.encode_text(tokens.prompt))
            for spans in tokens.positions:
                label_positions = []
                for span in spans:
                    start = sum(r.shape[1] for r in rows)
                    rows.append(context[:, span])
                    label_positions.append(list(range(start, start + len(span))))
                positions.append(label_positions)
        return torch.cat(rows, dim=1), positions

    def segment(self, prepared: PreparedImage, labels, caption: str | None = None) -> SegmentationResult:
        """Segment into `labels`; `caption` (optional) conditions the pass in place of the labels' prompt."""
        return self.segment_same([prepared], as_labels(labels), [caption])[0]

    def segment_many(self, prepared: list[PreparedImage], labels: list, captions: list) -> list[SegmentationResult]:
        """`segment` of several images: the images offered the same labels share one forward."""
        labels = [as_labels(kept) for kept in labels]
        groups: dict[tuple, list[int]] = {}
        for i, kept in enumerate(labels):
            groups.setdefault(tuple((label.name, label.synonyms) for label in kept), []).append(i)
        out: list[SegmentationResult | None] = [None] * len(prepared)
        for rows in groups.values():
            results = self.segment_same([prepared[i] for i in rows], labels[rows[0]], [captions[i] for i in rows])
            for i, result in zip(rows, results):
                out[i] = result
        return out

    @torch.no_grad()
    def segment_same(self, prepared: list[PreparedImage], labels: list[Label], captions: list) -> list[SegmentationResult]:
        """`segment` of images offered the same `labels`, in one forward, each conditioned on its caption (or, when
        it is None, on the labels' prompt)."""
        start = time.perf_counter()
        background = None
        if BACKGROUND not in [label.name for label in labels] and self.config.background_concepts:
            background = Label(BACKGROUND, tuple(self.config.background_concepts))
        read = ([background] if background else []) + labels
        rows, positions = self.concepts(read)
        conditioning = [caption or self.labels_prompt(labels) for caption in captions]
        text = self.backbone.encode_text(conditioning)
        zero = self.config.zero_pooled
        if zero or (zero is None and self.backbone.family == "flux"):
            text = text.clone()
            text[:, -1] = 0  # the pooled row (`split_text`)
        pool = self.config.pool_before_softmax
        stream = ConceptStream(self.backbone.transformer, rows, self.blocks, normalize=self.config.normalize_concepts,
                               softmax=self.config.softmax, attend_prompt=self.config.attend_prompt,
                               groups=positions if pool else None)
        with stream:
            t = torch.full((len(prepared),), self.config.timestep, device=self.backbone.device)
            run_until_captured(self.backbone.predict, torch.cat([p.extra["noisy"] for p in prepared]), t, text)
        scores = stream.mean_map() if pool else label_scores(stream.mean_map(), positions)  # (B, N, K)
        maps = tokens_to_maps(scores, self.backbone.grid)  # (B, K, h, w)
        if not self.config.softmax:  # raw dot products: scaled to [0, 1] over every label at once (argmax kept)
            maps = minmax(maps.flatten(1)[:, None]).view_as(maps)
        seconds = time.perf_counter() - start
        threshold = None if background else self.config.background_threshold
        results = []
        for item, image_maps, prompt in zip(prepared, maps, conditioning):
            results.append(finish(image_maps, read, item.size, threshold, timing_share(item, seconds, len(prepared))))
            results[-1].extra["conditioning"] = prompt
        return results

    def __call__(self, image, labels, prompt: str | None = None) -> SegmentationResult:
        """`segment(prepare(image), labels, caption=prompt)`."""
        return self.segment(self.prepare(image), labels, caption=prompt)
