"""The FLUX.2 family of backbones (klein 4B / 9B): a `Flux2Transformer2DModel` (double-stream blocks, then
single-stream blocks with one fused projection, modulation shared across blocks), a Qwen3 text encoder read at
three layers inside its chat template, the 32-channel `AutoencoderKLFlux2`, rectified flow.

What the interface means here (`promptseg.models.base.DiffusionBackbone`), as `Flux2KleinPipeline` builds it:
- **latents**: the VAE's latents (its distribution's mode) patchified 2x2 into 128 channels and normalised by the
  VAE's batch-norm statistics: (B, 128, H/16, W/16); every latent cell is one token (patch size 1), so the token
  grid is the latent grid. `predict` flattens them row-major with position ids (0, row, column, 0);
- **timesteps**: t in [0, 1000) is sigma = t / 1000, the transformer called with sigma (as the pipeline calls it);
- **guidance**: klein embeds none (a distilled klein runs no guidance; the base runs classifier-free guidance in
  `generate`); a transformer with a guidance embedding gets the model's `"guidance"` setting (default 4.0, FLUX.2's);
- **text**: each prompt is wrapped in Qwen3's chat template as one user turn (`enable_thinking=False`, as the
  pipeline renders it), padded on the right to `max_sequence_length` tokens (512; the reduced copies 64), and the
  hidden states of layers 9, 18 and 27 (`"text_layers"`) are concatenated per token: (B, L, 3 x width). Nothing
  is dropped, template and padding included, as the pipeline passes them; text ids are (0, 0, 0, i). Words are
  found among the tokens inside the template (`promptseg.text.ChatTokenizer`), and `encode_text(token_embeds=...)`
  replaces Qwen3's input embeddings;
- **attention**: each double-stream block (`transformer_blocks.i.attn`, text first in the joint sequence) and each
  single-stream block (`single_transformer_blocks.i.attn`, whose fused projection is read,
  `ParallelRecordingProcessor`) is one "cross" and one "self" layer, numbered double first, as FLUX.1's.

FLUX.2-dev (Mistral-Small's text encoder, a system message, layers 10 / 20 / 30) is refused by name for now.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from promptseg.models.flux import FluxBackbone
from promptseg.models.flux import backbone_from_parts as flux_backbone_from_parts
from promptseg.models.llm_text import ChatTextEncoder, load_llm_folder
from promptseg.models.mmdit import DiTBackbone

PIPELINES = ("Flux2KleinPipeline",)
"""The diffusers pipelines whose folders this family loads."""
UNLOADED = ("Flux2Pipeline",)
"""FLUX.2 pipelines refused by name (dev: its Mistral text encoder)."""
DEFAULT_SAMPLE_SIZE = 64
"""Token grid side at the native 1024 px (the VAE's 8x, then 2x2 patches)."""
DEFAULT_TEXT_LAYERS = (9, 18, 27)
"""Qwen3's hidden states `Flux2KleinPipeline` concatenates (`text_encoder_out_layers`)."""
DEFAULT_GUIDANCE = 4.0
"""`Flux2Pipeline`'s default `guidance_scale`, for a transformer that embeds guidance."""


@dataclass
class Flux2Backbone(ChatTextEncoder, FluxBackbone):
    """A frozen FLUX.2 transformer's parts (the `DiffusionBackbone` interface; module docstring). `text_encoders` holds
    Qwen3 and `tokenizers` its tokenizer (with its chat template); there is no T5 and no pooled vector."""

    family = "flux2"
    default_guidance = DEFAULT_GUIDANCE
    template_kwargs = {"enable_thinking": False}
    default_sample_size = DEFAULT_SAMPLE_SIZE

    def __post_init__(self):
        DiTBackbone.__post_init__(self)
        if not self.text_encoders or self.text_encoders[0] is None:
            raise ValueError("a FLUX.2 model needs its text encoder (text_encoder: Qwen3) and tokenizer")

    # -- sizes ------------------------------------------------------------------------------------------------
    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) * 2  # the VAE's, then 2x2 patches

    @property
    def patch_size(self) -> int:
        return 1

    @property
    def grid(self) -> tuple[int, int]:
        return self.latent_size  # every latent cell is a token

    # -- text -------------------------------------------------------------------------------------------------
    def encode_text(self, prompts, token_embeds=None) -> torch.Tensor:
        """(B, L, 3 x width): Qwen3's hidden states at `"text_layers"` for `prompts` in the chat template, padded to
        `text_length` (`run_llm`). `token_embeds` = (positions, rows) replaces Qwen3's input embeddings there."""
        out, _ = self.run_llm(prompts, token_embeds, use_cache=False)
        layers = self.method_defaults.get("text_layers", DEFAULT_TEXT_LAYERS)
        states = torch.stack([out.hidden_states[k] for k in layers], dim=1)  # (B, layers, L, D)
        return states.permute(0, 2, 1, 3).reshape(states.shape[0], self.text_length, -1).to(self.dtype)

    # -- images -----------------------------------------------------------------------------------------------
    def _normalisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(self.device, self.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps).to(self.device, self.dtype)
        return mean, std

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 128, H/16, W/16): the VAE's latents (mode), patchified 2x2 and normalised by its batch-norm statistics
        (`Flux2Pipeline._encode_vae_image`)."""
        pixels = pixels.to(self.device, self.dtype)
        latents = self.vae.encode(pixels).latent_dist.mode()
        b, c, h, w = latents.shape
        patches = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)
        mean, std = self._normalisation()
        return (patches - mean) / std

    def decode_image(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._normalisation()
        patches = latents.to(self.device, self.dtype) * std + mean
        b, c4, h, w = patches.shape
        latents = patches.view(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, h * 2, w * 2)
        return self.vae.decode(latents).sample.clamp(-1, 1)

    # -- prediction -------------------------------------------------------------------------------------------
    def _ids(self, h: int, w: int, text_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(h, device=self.device)[:, None].expand(h, w).reshape(-1)
        cols = torch.arange(w, device=self.device)[None, :].expand(h, w).reshape(-1)
        zeros = torch.zeros_like(rows)
        image = torch.stack([zeros, rows, cols, zeros], dim=-1)
        steps = torch.arange(text_tokens, device=self.device)
        text = torch.stack([torch.zeros_like(steps)] * 3 + [steps], dim=-1)
        return image, text

    def predict(self, noisy: torch.Tensor, t: torch.Tensor, text: torch.Tensor, guidance: float | None = None
                ) -> torch.Tensor:
        """The transformer's velocity (B, C, h, w) for `noisy` at `t` (B,), conditioned on an `encode_text` result."""
        states = text.to(self.dtype)
        b, c, h, w = noisy.shape
        embedded = self._call_guidance(states, b, guidance)
        image_ids, text_ids = self._ids(h, w, states.shape[1])
        sigma = self.call_sigma(t, noisy)
        tokens = noisy.to(self.dtype).flatten(2).transpose(1, 2)
        out = self.transformer(hidden_states=tokens, encoder_hidden_states=states, timestep=sigma, img_ids=image_ids,
                               txt_ids=text_ids, guidance=embedded).sample
        return out.transpose(1, 2).reshape(b, c, h, w)

    @torch.no_grad()
    def generate(self, prompts: list[str], steps: int, guidance: float, generators: list) -> list:
        """Euler sampling of the flow ODE as `Flux2KleinPipeline` samples it: sigmas from 1 to 1/steps shifted by its
        empirical mu (for the token count and steps) where the scheduler shifts dynamically, classifier-free
        guidance against the empty prompt when `guidance` > 1 (klein's base; a distilled klein is sampled at 1)."""
        from PIL import Image

        sigmas = torch.linspace(1.0, 1.0 / steps, steps)
        if self.scheduler.config.get("use_dynamic_shifting"):
            from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

            mu = compute_empirical_mu(self.latent_size[0] * self.latent_size[1], steps)
            sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
        sigmas = torch.cat([sigmas, torch.zeros(1)])
        channels = int(self.transformer.config.in_channels)
        x = torch.stack([torch.randn(channels, *self.latent_size, generator=g) for g in generators]).to(self.device)
        text = self.encode_text(list(prompts))
        empty = self.encode_text([""] * len(prompts)) if guidance > 1 else None
        for i in range(steps):
            t = torch.full((len(prompts),), float(sigmas[i]) * self.num_train_timesteps, device=self.device)
            v = self.predict(x, t, text).float()
            if empty is not None:
                v_empty = self.predict(x, t, empty).float()
                v = v_empty + guidance * (v - v_empty)
            x = x + (float(sigmas[i + 1]) - float(sigmas[i])) * v
        pixels = self.decode_image(x).float().add(1).mul(127.5).round().clamp(0, 255).byte()
        return [Image.fromarray(p.permute(1, 2, 0).cpu().numpy()) for p in pixels]


load_folder = load_llm_folder
"""The components of its diffusers folder or hub id (`llm_text.load_llm_folder`)."""


def backbone_from_parts(name: str, parts: dict, *, device=None, dtype=None, method_defaults: dict | None = None
                        ) -> Flux2Backbone:
    """A `Flux2Backbone` from components in memory, moved to `device` and `dtype` and frozen (as FLUX.1's)."""
    return flux_backbone_from_parts(name, parts, device=device, dtype=dtype, method_defaults=method_defaults,
                                    cls=Flux2Backbone)
