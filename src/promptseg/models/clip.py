"""Load a CLIP model (transformers `CLIPModel` + `CLIPProcessor`): hub id, local folder, or a bundled name.

    clip = load_clip("shapes-clip")                         # bundled, offline
    clip = load_clip("openai/clip-vit-large-patch14")       # Hugging Face hub id (or its cache)
    clip = load_clip("/models/clip-vit-b16")                # a local transformers folder
    clip.image_embeds([image])                              # (N, D), unit length
    clip.text_embeds(["a photo of a cat"])                  # (N, D), unit length
    clip.vision_states([image])                             # every vision layer's tokens, for dense features

A reusable part beside the diffusion backbone: the class filter uses it for zero-shot presence, and dense-feature methods
(DPSeg) read the vision tower's intermediate states. Device and dtype are chosen like the backbone's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from PIL import Image

from promptseg.models.hub import load_pretrained
from promptseg.models.zoo import bundled

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


@dataclass
class ClipModel:
    """A frozen CLIP model with its processor, on one device and dtype.

    Attributes:
        name (`str`): what it was loaded from.
        model (`transformers.CLIPModel`): eval mode, `requires_grad` off.
        processor (`transformers.CLIPProcessor`): its tokenizer and image processor.
        device (`torch.device`), dtype (`torch.dtype`).
    """

    name: str
    model: torch.nn.Module
    processor: object
    device: torch.device
    dtype: torch.dtype

    @property
    def image_size(self) -> int:
        """The vision tower's input side in pixels (224 for ViT-L/14, 64 for shapes-clip)."""
        return int(self.model.config.vision_config.image_size)

    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, 3, S, S) normalised pixels. Each image is resized whole to S x S (no centre crop, which could cut
        away an object at the border: presence must see the whole image)."""
        side = self.image_size
        resized = [image.convert("RGB").resize((side, side), Image.BICUBIC) for image in images]
        pixels = self.processor.image_processor(images=resized, return_tensors="pt").pixel_values
        return pixels.to(self.device, self.dtype)

    @torch.no_grad()
    def image_embeds(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, D) unit-length projected image embeddings."""
        out = self.model.get_image_features(pixel_values=self.pixel_values(images))
        out = getattr(out, "pooler_output", out)
        return torch.nn.functional.normalize(out.float(), dim=-1)

    @torch.no_grad()
    def text_embeds(self, texts: list[str]) -> torch.Tensor:
        """(N, D) unit-length projected text embeddings.

        Raises:
            ValueError: a text longer than the text tower takes (the message names it).
        """
        tokenizer = self.processor.tokenizer
        limit = int(self.model.config.text_config.max_position_embeddings)
        too_long = [t for t in texts if len(tokenizer(t).input_ids) > limit]
        if too_long:
            raise ValueError(f"text(s) longer than this CLIP's {limit} tokens: {too_long}; shorten them")
        tokens = tokenizer(list(texts), padding="max_length", max_length=limit, return_tensors="pt").to(self.device)
        out = self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        out = getattr(out, "pooler_output", out)
        return torch.nn.functional.normalize(out.float(), dim=-1)

    @torch.no_grad()
    def vision_states(self, images: list[Image.Image]) -> tuple[torch.Tensor, ...]:
        """The vision tower's hidden states: embeddings, then every layer's output, each (N, 1 + P, width)
        (class token first, then P patches in row-major order)."""
        out = self.model.vision_model(pixel_values=self.pixel_values(images), output_hidden_states=True)
        return out.hidden_states


def load_clip(
    name: str | os.PathLike = DEFAULT_CLIP,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    local_files_only: bool | None = None,
) -> ClipModel:
    """Load a CLIP model, frozen, on `device` in `dtype`.

    Args:
        name (`str`, defaults to "openai/clip-vit-large-patch14"): a bundled name ("shapes-clip"), a local folder
            with `config.json` (transformers layout), or a Hugging Face hub id.
        device (`str`, *optional*): "cpu", "cuda", ...; CUDA when available if not given.
        dtype (`str` or `torch.dtype`, *optional*): "fp32", "fp16", "bf16"; bf16/fp16 on CUDA, fp32 on CPU if not given.
        local_files_only (`bool`, *optional*): never touch the network for hub ids; defaults to `HF_HUB_OFFLINE`.

    Raises:
        FileNotFoundError: a path that does not exist or is not a CLIP folder.
        OSError: a hub id that cannot be loaded (the message says how to fix it).
    """
    from transformers import CLIPModel, CLIPProcessor

    key = str(name)
    model, processor, device, dtype = load_pretrained(key, bundled("clip"), CLIPModel, CLIPProcessor, kind="CLIP model",
                                                      device=device, dtype=dtype, local_files_only=local_files_only)
    return ClipModel(name=key, model=model, processor=processor, device=device, dtype=dtype)
