"""The Qwen-Image family of backbones: a `QwenImageTransformer2DModel` (60 dual-stream blocks, text first, complex
rotary tables, a text mask), Qwen2.5-VL's last hidden states of the prompt inside its template with the template's
first tokens dropped, the video VAE `AutoencoderKLQwenImage` on one frame, rectified flow.

What the interface means here (`promptseg.models.base.DiffusionBackbone`), as `QwenImagePipeline` builds it:
- **latents**: the VAE's latents of one frame (its distribution's mode), normalised by its per-channel mean and std:
  (B, 16, H/8, W/8); `predict` packs 2x2 cells into tokens as FLUX's pipeline does (64 channels), token grid h/2;
- **timesteps**: t in [0, 1000) is sigma = t / 1000, the transformer called with sigma; it predicts the velocity;
- **text**: the pipeline's template (a system message describing the image, then the user turn) filled with the
  prompt; Qwen2.5-VL's last hidden states of the unpadded tokens, the template's first `drop` tokens dropped (34
  with Qwen's own tokenizer; counted from the tokenizer here), the prompt and the template's closing turn kept.
  `encode_text` zero-pads them to `max_sequence_length` (512); `predict` cuts the batch to its longest prompt and
  masks the shorter ones' padding, as the pipeline does. Words are found in the kept tokens
  (`promptseg.text.PrefixTemplateTokenizer`);
- **attention**: each block (`transformer_blocks.i.attn`) is one "cross" and one "self" layer
  (`MaskedJointRecordingProcessor`); places name them "block0".."block59", "joint" = every block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from promptseg.models.base import run_text_encoder
from promptseg.models.flux import FluxBackbone
from promptseg.models.llm_text import ChatTextEncoder, load_llm_folder
from promptseg.models.mmdit import DiTBackbone
from promptseg.models.mmdit import backbone_from_parts as dit_backbone_from_parts

PIPELINES = ("QwenImagePipeline",)
"""The diffusers pipelines whose folders this family loads."""
TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
            "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
            "<|im_start|>assistant\n")
"""`QwenImagePipeline.prompt_template_encode` (diffusers 0.42)."""


@dataclass
class QwenImageBackbone(ChatTextEncoder, DiTBackbone):
    """A frozen Qwen-Image transformer's parts (the `DiffusionBackbone` interface; module docstring)."""

    family = "qwenimage"

    @property
    def patch_size(self) -> int:
        return int(self.transformer.config.patch_size)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** len(self.vae.temperal_downsample)

    @property
    def tokenizer(self):
        """Qwen2.5-VL's tokenizer seen through the pipeline's template, its first `drop` tokens dropped."""
        view = self.__dict__.get("_template_view")
        if view is None or view.max_length != self.text_length:
            from promptseg.text.chat import PrefixTemplateTokenizer

            view = PrefixTemplateTokenizer(self.tokenizers[0], TEMPLATE, self.text_length)
            self.__dict__["_template_view"] = view
        return view

    # -- text -------------------------------------------------------------------------------------------------
    def encode_text(self, prompts, token_embeds=None) -> torch.Tensor:
        """(B, L, D): Qwen2.5-VL's last hidden states of the kept tokens of `prompts` in the template, zero-padded
        to `text_length`. `token_embeds` = (positions among the kept tokens, rows) replaces its input embeddings.

        Raises:
            ValueError: a prompt whose kept tokens exceed `text_length`.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        view, length = self.tokenizer, self.text_length
        encoded = self.tokenizers[0]([TEMPLATE.format(p) for p in prompts], padding=True, return_tensors="pt")
        kept = encoded.attention_mask.sum(dim=1) - view.drop
        too_long = [p for p, n in zip(prompts, kept.tolist()) if n > length]
        if too_long:
            raise ValueError(f"prompt(s) longer than the {length} tokens the text states hold: {too_long}")
        ids, mask = encoded.input_ids.to(self.device), encoded.attention_mask.to(self.device)
        if token_embeds is not None:
            token_embeds = ([p + view.drop for p in token_embeds[0]], token_embeds[1])
        states = run_text_encoder(self.text_encoder, ids, token_embeds, attention_mask=mask).hidden_states[-1]
        out = states.new_zeros(len(prompts), length, states.shape[-1])
        for i, n in enumerate(kept.tolist()):  # right padding: a prompt's kept tokens follow the dropped prefix
            out[i, :n] = states[i, view.drop:view.drop + n]
        return out.to(self.dtype)

    # -- images -----------------------------------------------------------------------------------------------
    def _normalisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.vae.config
        mean = torch.tensor(config.latents_mean, device=self.device, dtype=self.dtype).view(1, -1, 1, 1)
        std = torch.tensor(config.latents_std, device=self.device, dtype=self.dtype).view(1, -1, 1, 1)
        return mean, std

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 16, H/8, W/8): the VAE's latents of one frame (mode), normalised by its per-channel mean and std."""
        latents = self.vae.encode(pixels.to(self.device, self.dtype)[:, :, None]).latent_dist.mode()[:, :, 0]
        mean, std = self._normalisation()
        return (latents - mean) / std

    def decode_image(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._normalisation()
        latents = latents.to(self.device, self.dtype) * std + mean
        return self.vae.decode(latents[:, :, None]).sample[:, :, 0].clamp(-1, 1)

    # -- prediction -------------------------------------------------------------------------------------------
    def predict(self, noisy: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The velocity (B, C, h, w) for `noisy` at `t` (B,), conditioned on an `encode_text` result."""
        b, _, h, w = noisy.shape
        lengths = self.caption_lengths(text)
        states = text[:, :max(lengths)].to(self.dtype)
        mask = torch.arange(states.shape[1], device=noisy.device)[None] < torch.tensor(lengths, device=noisy.device)[:, None]
        sigma = self.call_sigma(t, noisy)
        out = self.transformer(hidden_states=FluxBackbone.pack(noisy.to(self.dtype)), encoder_hidden_states=states,
                               encoder_hidden_states_mask=None if bool(mask.all()) else mask.long(), timestep=sigma,
                               img_shapes=[[(1, h // 2, w // 2)]] * b).sample
        return FluxBackbone.unpack(out, h, w)


load_folder = load_llm_folder
"""The components of its diffusers folder or hub id (`llm_text.load_llm_folder`)."""


def backbone_from_parts(name: str, parts: dict, *, device=None, dtype=None, method_defaults: dict | None = None
                        ) -> QwenImageBackbone:
    """A `QwenImageBackbone` from components in memory, moved to `device` and `dtype` and frozen."""
    return dit_backbone_from_parts(name, parts, device=device, dtype=dtype, method_defaults=method_defaults,
                                   cls=QwenImageBackbone)
