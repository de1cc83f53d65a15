"""BLIP captioning models (transformers): a caption for an image, or BLIP's continuation of a text prefix.

    captioner = load_captioner("Salesforce/blip-image-captioning-large")
    captioner(image)                                  # "a cat sitting on a sofa"
    captioner(image, prefix="a photograph of cat")    # "a photograph of cat sitting on a sofa"

Used by the class filter (`promptseg.filters.caption`) and by the baseline's per-class prompts (DiffSegmenter's).
"""

from __future__ import annotations

import functools

import torch

from promptseg.models.hub import load_pretrained


class BlipCaptioner:
    """A transformers BLIP captioning model with its processor; `captioner(image) -> str`."""

    def __init__(self, model, processor, device: torch.device, dtype: torch.dtype, max_new_tokens: int = 30):
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype
        self.max_new_tokens = max_new_tokens

    @torch.no_grad()
    def __call__(self, image, prefix: str | None = None) -> str:
        """The caption of `image`; with `prefix`, BLIP's conditional captioning: the caption starts with `prefix`
        (as BLIP writes it, lower-cased) and continues it (DiffSegmenter continues "a photograph of {class}")."""
        inputs = self.processor(images=image.convert("RGB"), text=prefix, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        return self.processor.decode(ids[0], skip_special_tokens=True).strip()


def continuation(caption: str, prefix: str) -> str:
    """What a conditional caption adds after `prefix` (compared without case, as BLIP lower-cases); the whole caption
    when it does not start with the prefix."""
    caption, prefix = caption.strip(), prefix.strip()
    return caption[len(prefix):].strip() if caption.lower().startswith(prefix.lower()) else caption


@functools.lru_cache(maxsize=2)
def load_captioner(name: str, device=None, dtype=None, local_files_only: bool | None = None) -> BlipCaptioner:
    """Load a BLIP captioner (`BlipForConditionalGeneration` + `BlipProcessor`) from a hub id or local folder; one
    per (name, device, dtype) a process (the class filter and the baseline's per-class continuation share it).

    Raises:
        FileNotFoundError: a path that is not a model folder.
        OSError: a hub id that cannot be loaded (the message says how to fix it).
    """
    from transformers import BlipForConditionalGeneration, BlipProcessor

    model, processor, device, dtype = load_pretrained(name, {}, BlipForConditionalGeneration, BlipProcessor,
                                                      kind="captioner", device=device, dtype=dtype,
                                                      local_files_only=local_files_only)
    return BlipCaptioner(model, processor, device, dtype)
