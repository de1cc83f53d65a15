"""The Z-Image family of backbones (Z-Image-Turbo): a `ZImageTransformer2DModel`, one stream of [image; caption]
tokens through 30 layers of one set of weights (after two image-only and two caption-only refiner layers), Qwen3's
second-to-last hidden states inside its chat template, FLUX.1's 16-channel VAE, rectified flow.

What the interface means here (`promptseg.models.base.DiffusionBackbone`), as `ZImagePipeline` builds it:
- **latents**: the VAE's latents, shifted and scaled (B, 16, H/8, W/8); the transformer patchifies them 2x2, so the
  token grid is half the latent grid;
- **timesteps**: t in [0, 1000) is sigma = t / 1000; the transformer is called with 1 - sigma (Z-Image counts time
  from the noise), and its output is the negative of the velocity (the pipeline negates it): `predict` returns
  the velocity eps - x_0, as every flow backbone here;
- **text**: each prompt in Qwen3's chat template as one user turn (`enable_thinking=True`, as the pipeline renders
  it), the second-to-last hidden states of the tokens the attention mask keeps (the template's included, the
  padding not): `encode_text` returns them zero-padded to `max_sequence_length` rows (512), and `predict` passes
  each prompt's own rows (up to its last non-zero row) as the pipeline passes its list. Words are found among the
  tokens inside the template (`promptseg.text.ChatTokenizer`);
- **attention**: each of the 30 main layers (`layers.i.attention`) is one "cross" layer (image queries against the
  caption's keys, in the softmax over every key of the layer, pad tokens included) and one "self" layer
  (`UnifiedRecordingProcessor`, laid out by `promptseg_layout`, which `predict` records); places name them
  "block0".."block29", "joint" = every layer. The refiner layers see one modality each and are not read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from promptseg.models.attention_layers import AttentionLayer
from promptseg.models.llm_text import ChatTextEncoder, load_llm_folder
from promptseg.models.mmdit import DiTBackbone
from promptseg.models.mmdit import backbone_from_parts as dit_backbone_from_parts

PIPELINES = ("ZImagePipeline",)
"""The diffusers pipelines whose folders this family loads."""
DEFAULT_SAMPLE_SIZE = 128
"""Latent side at the native 1024 px."""
SEQUENCE_MULTIPLE = 32
"""Z-Image pads the image part and the caption part of its sequence to multiples of this (`SEQ_MULTI_OF`)."""


@dataclass
class ZImageBackbone(ChatTextEncoder, DiTBackbone):
    """A frozen Z-Image transformer's parts (the `DiffusionBackbone` interface; module docstring). `text_encoders`
    holds Qwen3 and `tokenizers` its tokenizer (with its chat template)."""

    family = "zimage"
    template_kwargs = {"enable_thinking": True}
    default_sample_size = DEFAULT_SAMPLE_SIZE

    # -- sizes ------------------------------------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        return int(self.transformer.config.all_patch_size[0])

    # -- text -------------------------------------------------------------------------------------------------
    def encode_text(self, prompts, token_embeds=None) -> torch.Tensor:
        """(B, L, D): Qwen3's second-to-last hidden states of `prompts` in the chat template (`run_llm`), the kept
        tokens' rows first and zeros after them. `token_embeds` = (positions, rows) replaces Qwen3's input
        embeddings there."""
        out, mask = self.run_llm(prompts, token_embeds)
        return (out.hidden_states[-2] * mask[..., None]).to(self.dtype)

    # -- prediction -------------------------------------------------------------------------------------------
    def predict(self, noisy: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The velocity eps - x_0 (B, C, h, w) for `noisy` at `t` (B,), conditioned on an `encode_text` result."""
        b, _, h, w = noisy.shape
        states = text.to(self.dtype)
        lengths = self.caption_lengths(states)
        tokens = (h // self.patch_size) * (w // self.patch_size)
        self.transformer.promptseg_layout = (tokens, math.ceil(tokens / SEQUENCE_MULTIPLE) * SEQUENCE_MULTIPLE,
                                             lengths)
        sigma = self.call_sigma(t, noisy)
        out = self.transformer([x[:, None] for x in noisy.to(self.dtype)], 1 - sigma,
                               [s[:n] for s, n in zip(states, lengths)]).sample
        return -torch.stack([o[:, 0] for o in out])

    # -- attention --------------------------------------------------------------------------------------------
    @property
    def joint_blocks(self) -> torch.nn.ModuleList:
        """The 30 main layers (the refiners see one modality each and are not read)."""
        return self.transformer.layers

    def attention_layers(self) -> list[AttentionLayer]:
        """Each main layer's cross (image-to-caption) and self (image-to-image) layer."""
        level = int(math.log2(self.patch_size))
        return [AttentionLayer(name=f"layers.{i}.attention.processor", place="joint", kind=kind, level=level, block=i)
                for i in range(len(self.joint_blocks)) for kind in ("cross", "self")]


load_folder = load_llm_folder
"""The components of its diffusers folder or hub id (`llm_text.load_llm_folder`)."""


def backbone_from_parts(name: str, parts: dict, *, device=None, dtype=None, method_defaults: dict | None = None
                        ) -> ZImageBackbone:
    """A `ZImageBackbone` from components in memory, moved to `device` and `dtype` and frozen."""
    return dit_backbone_from_parts(name, parts, device=device, dtype=dtype, method_defaults=method_defaults,
                                   cls=ZImageBackbone)
