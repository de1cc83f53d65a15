"""The `clip` filter: zero-shot presence from a CLIP model, optionally joined by a captioner's nouns.

DiffSegmenter's and InvSeg's recipe: CLIP scores each candidate class against the image, and class names that a
BLIP caption mentions are kept too. The score of a label is the cosine similarity between the image embedding and
the text embedding of each template filled with the label (mean over templates, max over synonyms); a label is
kept when its score reaches `threshold`. Real users pass e.g. `model="openai/clip-vit-large-patch14"` and
`captioner="Salesforce/blip-image-captioning-large"`; the bundled `shapes-clip` serves the shapes model, with its
threshold chosen on the val split and shipped in the shapes model's `promptseg_settings.json`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from promptseg.filters.base import Timer, decide, register_filter
from promptseg.models.clip import DEFAULT_CLIP


@dataclass
class ClipFilterConfig:
    """Settings of the CLIP filter."""

    model: str = DEFAULT_CLIP
    """CLIP model: hub id, local folder or bundled name ("shapes-clip")."""
    templates: tuple[str, ...] = ("a photo of a {}.",)
    """Text templates; `{}` becomes a synonym. Scores are averaged over templates."""
    threshold: float = 0.2
    """Keep a label whose cosine similarity reaches this (ViT-L/14 similarities of true classes are ~0.2-0.3;
    choose it on a val split for your model, as the shapes model does)."""
    captioner: str | None = None
    """Optional captioning model (transformers BLIP, e.g. "Salesforce/blip-image-captioning-large"): labels whose
    names its caption mentions are kept whatever their CLIP score, and the caption is passed to the method."""
    min_keep: int = 1
    """Keep at least this many labels (the best-scoring) when fewer pass; 0 allows an empty result."""

    def __post_init__(self):
        if not self.templates or any(t.count("{}") != 1 for t in self.templates):
            raise ValueError(f"templates must each contain '{{}}' once, got {self.templates!r}")
        if self.min_keep < 0:
            raise ValueError(f"min_keep must be >= 0, got {self.min_keep}")


@register_filter("clip", ClipFilterConfig)
class ClipFilter:
    """Zero-shot presence from CLIP (and a captioner's nouns): DiffSegmenter's and InvSeg's class filter."""

    def __init__(self, backbone=None, config: ClipFilterConfig | None = None):
        from promptseg.models.clip import load_clip

        self.config = config or ClipFilterConfig()
        device = backbone.device if backbone is not None else None
        try:
            self.clip = load_clip(self.config.model, device=device)
            self.captioner = None
            if self.config.captioner:
                from promptseg.models.captioner import load_captioner

                self.captioner = load_captioner(self.config.captioner, device=device)
        except OSError as err:
            raise OSError(f"{err}\nThe clip filter (with captioner {self.config.captioner!r}) is what this model runs "
                          "by default, as the papers filter: `--filter-set captioner=null` keeps CLIP without the "
                          "captioner (FastSeg then conditions on the class names alone unless you pass --caption), "
                          "`--filter diffusion` needs no second model, `--filter none` offers every label") from err
        self._text_cache: dict[str, torch.Tensor] = {}

    def label_embeds(self, labels) -> list[torch.Tensor]:
        """Per label, (synonyms, templates, D) text embeddings (cached: a vocabulary is encoded once)."""
        out = []
        for label in labels:
            missing = [s for s in label.synonyms if s not in self._text_cache]
            if missing:
                texts = [t.format(s) for s in missing for t in self.config.templates]
                embeds = self.clip.text_embeds(texts).view(len(missing), len(self.config.templates), -1)
                self._text_cache.update(zip(missing, embeds))
            out.append(torch.stack([self._text_cache[s] for s in label.synonyms]))
        return out

    def scores(self, image, labels) -> np.ndarray:
        """(K,) presence scores: cosine similarity, mean over templates, max over synonyms."""
        return self.scores_for(self.clip.image_embeds([image])[0], labels)

    def scores_for(self, image_embed: torch.Tensor, labels) -> np.ndarray:
        """`scores` from the image's (D,) CLIP embedding."""
        return np.array([float((e @ image_embed).mean(-1).max()) for e in self.label_embeds(labels)])

    def __call__(self, image, labels):
        return self.decide_many([image], [labels])[0]

    def decide_many(self, images, labels: list) -> list:
        """The decision of each image on its labels, the CLIP image tower seeing the images together; each
        decision's seconds are its share."""
        with Timer() as timer:
            embeds = self.clip.image_embeds(list(images))
            decisions = [decide(kept, self.scores_for(embed, kept), self.config.threshold, self.config.min_keep,
                                "CLIP similarity") for embed, kept in zip(embeds, labels)]
            for image, kept, decision in zip(images, labels, decisions) if self.captioner is not None else ():
                from promptseg.filters.caption import mentioned

                decision.caption = self.captioner(image)
                named = mentioned(decision.caption, kept)
                for label in kept:
                    if label.name in named and label.name in decision.dropped:
                        del decision.dropped[label.name]
                decision.kept = [label for label in kept if label.name not in decision.dropped]
        for decision in decisions:
            decision.seconds = timer.seconds / len(decisions)
        return decisions
