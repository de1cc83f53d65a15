"""Per-class prompt features for DPSeg, from the frozen CLIP: text prompts (templates) and visual prompts (the
diffusion model's images of the same templates, or round II's crops), kept in memory per class name.

Shapes: K classes, P templates, D the CLIP embedding size, W the vision tower's width.
"""

from __future__ import annotations

import torch

from promptseg.models.dpseg.cost import fuse_prompts
from promptseg.models.dpseg.network import PromptFeatures, prompt_image_features


class PromptBank:
    """Text and visual prompt features per class.

    Args:
        clip (`ClipModel`): the frozen CLIP (text tower for T, vision tower for V).
        templates (`list[str]`): P templates with one "{}".
        layers (`list[int]`): the vision layers whose features the decoder's visual cost volumes read.
        cache (`VisualPromptCache`, *optional*): where generated visual prompts come from; without one, only the
            "text" prompt mode works.
    """

    def __init__(self, clip, templates: list[str], layers: list[int], cache=None):
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(f"every template needs one '{{}}' for the class name, got {templates}")
        self.clip, self.templates, self.layers, self.cache = clip, list(templates), list(layers), cache
        self._text: dict[str, torch.Tensor] = {}
        self._visual: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    def text(self, synonyms: list[str]) -> torch.Tensor:
        """(P, D): each template's text embedding, averaged over the class's synonyms."""
        key = "\x1f".join(synonyms)
        if key not in self._text:
            embeds = self.clip.text_embeds([t.format(s) for s in synonyms for t in self.templates])
            self._text[key] = embeds.reshape(len(synonyms), len(self.templates), -1).mean(0)
        return self._text[key]

    def visual(self, synonyms: list[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """((P, D) image embeddings, three (P, W) layer features): per template, the mean over its generated
        images and the class's synonyms."""
        if self.cache is None:
            raise ValueError("visual prompts need a diffusion backbone to generate them (no VisualPromptCache given)")
        key = "\x1f".join(synonyms)
        if key not in self._visual:
            images = [im for s in synonyms for t in self.templates for im in self.cache.images(t.format(s))]
            embeds, feats = prompt_image_features(self.clip, images, self.layers)
            shape = (len(synonyms), len(self.templates), -1)  # images of one prompt are consecutive
            n = self.cache.images_per_prompt
            embeds = embeds.reshape(len(synonyms) * len(self.templates), n, -1).mean(1).reshape(shape).mean(0)
            feats = [f.reshape(len(synonyms) * len(self.templates), n, -1).mean(1).reshape(shape).mean(0) for f in feats]
            self._visual[key] = (embeds, feats)
        return self._visual[key]

    def crop(self, image) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """((D,), three (W,)): the features of one cropped region (round II's visual prompt)."""
        embeds, feats = prompt_image_features(self.clip, [image], self.layers)
        return embeds[0], [f[0] for f in feats]

    def features(self, classes: list[list[str]], mode: str = "dual",
                 replace: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] | None = None,
                 weight: float = 1.0) -> PromptFeatures:
        """The decoder's prompts for `classes` (each a list of synonyms).

        Args:
            mode (`str`, defaults to "dual"): "dual" (R = mean of T and V), "text" or "visual". With "text" the
                layer features are zero (no visual prompt exists).
            replace (`dict`, *optional*): class index -> a crop's features, used instead of that class's generated
                visual prompts for every template (round II)...
            weight (`float`, defaults to 1): ...with this weight, the generated ones keeping the rest (1: replaced).
        """
        text = torch.stack([self.text(c) for c in classes]) if mode != "visual" else None
        visual, layers = None, None
        if mode != "text":
            pairs = [self.visual(c) for c in classes]
            vis = [p[0] for p in pairs]
            lay = [[p[1][j] for p in pairs] for j in range(len(self.layers))]
            for k, (emb, feats) in (replace or {}).items():
                vis[k] = weight * emb.expand_as(vis[k]) + (1 - weight) * vis[k]
                for j in range(len(self.layers)):
                    lay[j][k] = weight * feats[j].expand_as(lay[j][k]) + (1 - weight) * lay[j][k]
            visual = torch.stack(vis)
            layers = [torch.stack(lay_j) for lay_j in lay]
        embeds = fuse_prompts(text, visual, mode)
        if layers is None:
            k, p = embeds.shape[:2]
            width = self.clip.model.config.vision_config.hidden_size
            layers = [torch.zeros(k, p, width, device=embeds.device) for _ in self.layers]
        return PromptFeatures(embeds=embeds, layers=layers)
