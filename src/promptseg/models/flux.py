"""The FLUX.1 family of backbones: a `FluxTransformer2DModel` (19 double-stream and 38 single-stream blocks), packed
2x2 latents with rotary position ids, CLIP-L's pooled vector and T5's token states, rectified flow; from a diffusers
folder or a hub id (FLUX.1-dev is gated, FLUX.1-schnell is not).

What the interface means here (`promptseg.models.base.DiffusionBackbone`), where it differs from SD3's
(`promptseg.models.mmdit`):
- **latents**: the 16-channel VAE's latents (B, 16, h, w), shifted and scaled; `predict` packs them into 2x2 patches
  (B, h/2 * w/2, 64) with position ids (0, row, column) and unpacks the velocity, as `FluxPipeline` does, so every
  method sees (B, C, h, w) latents as on any other backbone. The token grid is (h/2, w/2);
- **timesteps**: t in [0, 1000) is sigma = t / 1000 (the transformer is called with sigma, as the pipeline calls it);
- **guidance**: FLUX.1-dev embeds a guidance scale instead of running classifier-free guidance; `predict` passes the
  model's `"guidance"` setting (default 3.5, `FluxPipeline`'s `guidance_scale`); schnell has no guidance embedding;
- **text**: T5's token states (the transformer's text stream, `max_sequence_length` tokens, 512 as the pipeline's
  default) with CLIP-L's pooled vector as one last row (split off by `predict`). Words are found among **T5's
  SentencePiece tokens** (`tokenizer` is T5's), and `encode_text(token_embeds=...)` replaces T5's input embeddings;
- **attention**: each double-stream block (`transformer_blocks.i.attn`) and each single-stream block
  (`single_transformer_blocks.i.attn`) is one "cross" layer (image queries against the text keys, rotary embedding
  applied as the processor applies it) and one "self" layer; blocks are numbered 0-18 (double) then 19-56 (single)
  in the model's `"blocks"` setting and named by places ("block9", "single3", "joint": every double block,
  "single": every single block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from promptseg.models.attention_layers import AttentionLayer, grid_at_level
from promptseg.models.base import run_text_encoder
from promptseg.models.mmdit import DiTBackbone, folder_parts
from promptseg.models.mmdit import backbone_from_parts as dit_backbone_from_parts

PIPELINES = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
"""The diffusers pipelines whose folders this family loads."""
DEFAULT_SAMPLE_SIZE = 128
"""Latent side at FLUX's native 1024 px (`FluxPipeline.default_sample_size`)."""
DEFAULT_GUIDANCE = 3.5
"""The guidance scale FLUX.1-dev embeds (`FluxPipeline.__call__`'s default `guidance_scale`)."""


@dataclass
class FluxBackbone(DiTBackbone):
    """A frozen FLUX.1 transformer's parts (the `DiffusionBackbone` interface; module docstring).

    Attributes (beyond `DiTBackbone`'s): `text_encoders` holds CLIP-L alone (its pooled vector conditions the
    adaLN), `t5_encoder` / `t5_tokenizer` the token states' encoder (required).
    """

    family = "flux"
    default_guidance = DEFAULT_GUIDANCE
    """The guidance a transformer that embeds guidance gets unless the model's `"guidance"` setting says otherwise."""

    def __post_init__(self):
        super().__post_init__()
        if self.t5_encoder is None or self.t5_tokenizer is None:
            raise ValueError("a FLUX model needs its T5 encoder and tokenizer (text_encoder_2, tokenizer_2): its "
                             "token states are the transformer's text stream")

    # -- sizes ------------------------------------------------------------------------------------------------
    @property
    def native_latent_size(self) -> tuple[int, int]:
        size = int(self.method_defaults.get("sample_size", DEFAULT_SAMPLE_SIZE))
        return (size, size)

    @property
    def patch_size(self) -> int:
        return 2  # the pipeline packs 2x2 latent cells into one token

    @property
    def tokenizer(self):
        """T5's tokenizer: words are found among its SentencePiece tokens (the text stream's rows); prompts are
        fitted to `text_length` (a `JointTokenizer` view when it differs from the tokenizer's own length)."""
        if int(self.t5_tokenizer.model_max_length) == self.text_length:
            return self.t5_tokenizer
        view = self.__dict__.get("_length_view")
        if view is None or view.max_length != self.text_length:
            from promptseg.text import JointTokenizer

            view = JointTokenizer(self.t5_tokenizer, max_length=self.text_length)
            self.__dict__["_length_view"] = view
        return view

    @property
    def t5_length(self) -> int:
        """T5's rows: `text_length` (FLUX's token states are T5's alone)."""
        return self.text_length

    @property
    def text_encoder(self) -> torch.nn.Module:
        """T5, whose input embeddings `encode_text(token_embeds=...)` replaces."""
        return self.t5_encoder

    @property
    def text_length(self) -> int:
        return int(self.method_defaults.get("max_sequence_length", self.t5_tokenizer.model_max_length))

    # -- text -------------------------------------------------------------------------------------------------
    def encode_text(self, prompts, token_embeds=None) -> torch.Tensor:
        """(B, T + 1, D): T5's token states for `prompts` (T = `text_length`) and CLIP-L's pooled vector as the last
        row, zero-padded to T5's width. `token_embeds` = (positions, rows) replaces T5's input embeddings there.

        Raises:
            ValueError: a prompt longer than T5's `text_length` tokens.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        length = self.text_length
        ids = self.t5_tokenizer(list(prompts), padding="max_length", max_length=length, truncation=False).input_ids
        too_long = [p for p, row in zip(prompts, ids) if len(row) > length]
        if too_long:
            raise ValueError(f"prompt(s) longer than T5's {length} tokens: {too_long}")
        t5 = self.t5_encoder
        if token_embeds is None:
            states = t5(torch.tensor(ids, device=self.device))[0]
        else:
            states = run_text_encoder(t5, torch.tensor(ids, device=self.device), token_embeds).last_hidden_state
        clip, clip_tokenizer = self.text_encoders[0], self.tokenizers[0]
        clip_ids = clip_tokenizer(list(prompts), padding="max_length", max_length=clip_tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt").input_ids.to(self.device)
        pooled = clip(clip_ids, output_hidden_states=False).pooler_output.to(states.dtype)
        pooled_row = torch.nn.functional.pad(pooled, (0, states.shape[-1] - pooled.shape[-1]))[:, None]
        return torch.cat([states, pooled_row], dim=1)

    # -- prediction -------------------------------------------------------------------------------------------
    def _ids(self, h: int, w: int, text_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.arange(h // 2, device=self.device)[:, None].expand(h // 2, w // 2)
        cols = torch.arange(w // 2, device=self.device)[None, :].expand(h // 2, w // 2)
        image = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).to(self.dtype)
        return image, torch.zeros(text_tokens, 3, device=self.device, dtype=self.dtype)

    @staticmethod
    def pack(latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, h/2 * w/2, 4C): 2x2 cells into tokens, row-major (`FluxPipeline._pack_latents`)."""
        b, c, h, w = latents.shape
        x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // 2) * (w // 2), c * 4)

    @staticmethod
    def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The inverse of `pack`."""
        b, _, d = tokens.shape
        x = tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, d // 4, h, w)

    def predict(self, noisy: torch.Tensor, t: torch.Tensor, text: torch.Tensor, guidance: float | None = None
                ) -> torch.Tensor:
        """The transformer's velocity (B, C, h, w) for `noisy` at `t` (B,), conditioned on an `encode_text` result;
        `guidance` (dev only) defaults to the model's `"guidance"` setting."""
        states, pooled = self.split_text(text.to(self.dtype))
        b, _, h, w = noisy.shape
        image_ids, text_ids = self._ids(h, w, states.shape[1])
        sigma = self.call_sigma(t, noisy)
        embedded = self._call_guidance(states, b, guidance)
        out = self.transformer(hidden_states=self.pack(noisy.to(self.dtype)), encoder_hidden_states=states,
                               pooled_projections=pooled, timestep=sigma, img_ids=image_ids, txt_ids=text_ids,
                               guidance=embedded).sample
        return self.unpack(out, h, w)

    def _call_guidance(self, states: torch.Tensor, batch: int, guidance: float | None) -> torch.Tensor | None:
        """The (B,) guidance a transformer that embeds it is called with (`guidance`, else the model's setting, else
        `default_guidance`; None where it embeds none), after checking that `states` has as many tokens as the
        single-stream blocks are captured with."""
        if states.shape[1] != self.transformer.promptseg_text_tokens:
            raise ValueError(f"text of {states.shape[1]} tokens; this backbone's single-stream blocks are captured with "
                             f"{self.transformer.promptseg_text_tokens} (encode it with encode_text)")
        if not self.transformer.config.get("guidance_embeds"):
            return None
        scale = self.method_defaults.get("guidance", self.default_guidance) if guidance is None else guidance
        return torch.full((batch,), float(scale), device=states.device, dtype=self.dtype)

    @torch.no_grad()
    def generate(self, prompts: list[str], steps: int, guidance: float, generators: list) -> list:
        """Euler sampling of the flow ODE as `FluxPipeline` samples it: sigmas from 1 to 1/steps, shifted by the
        resolution-dependent mu where the scheduler uses dynamic shifting (dev), then 0; no classifier-free
        guidance: FLUX.1-dev embeds `guidance` instead (schnell ignores it)."""
        from PIL import Image

        config = self.scheduler.config
        sigmas = torch.linspace(1.0, 1.0 / steps, steps)
        if config.get("use_dynamic_shifting"):
            tokens = (self.latent_size[0] // 2) * (self.latent_size[1] // 2)
            x1, x2 = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
            y1, y2 = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
            mu = y1 + (y2 - y1) * (tokens - x1) / (x2 - x1)
            sigmas = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
        else:
            shift = float(config.get("shift", 1.0))
            sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        sigmas = torch.cat([sigmas, torch.zeros(1)])
        channels = int(self.transformer.config.in_channels) // 4
        x = torch.stack([torch.randn(channels, *self.latent_size, generator=g) for g in generators]).to(self.device)
        text = self.encode_text(list(prompts))
        for i in range(steps):
            t = torch.full((len(prompts),), float(sigmas[i]) * self.num_train_timesteps, device=self.device)
            v = self.predict(x, t, text, guidance=guidance).float()
            x = x + (float(sigmas[i + 1]) - float(sigmas[i])) * v
        pixels = self.decode_image(x).float().add(1).mul(127.5).round().clamp(0, 255).byte()
        return [Image.fromarray(p.permute(1, 2, 0).cpu().numpy()) for p in pixels]

    # -- attention --------------------------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        return grid_at_level(self.latent_size, 1)

    @property
    def double_blocks(self) -> int:
        return len(self.transformer.transformer_blocks)

    def attention_layers(self) -> list[AttentionLayer]:
        """Each double-stream block's and single-stream block's cross and self layer (blocks numbered double
        first)."""
        n = self.double_blocks
        names = [f"transformer_blocks.{i}.attn.processor" for i in range(n)]
        names += [f"single_transformer_blocks.{i}.attn.processor"
                  for i in range(len(self.transformer.single_transformer_blocks))]
        return [AttentionLayer(name=name, place="joint" if i < n else "single", kind=kind, level=1, block=i)
                for i, name in enumerate(names) for kind in ("cross", "self")]


def load_folder(source: str, local_only: bool, dtype: torch.dtype, denoiser_kwargs: dict | None = None) -> dict:
    """The components of a FLUX diffusers folder or hub id: transformer, VAE, scheduler, CLIP-L and its tokenizer,
    T5 and its tokenizer."""
    _, part = folder_parts(source, local_only, dtype, denoiser_kwargs)
    return {"transformer": part("transformer"), "vae": part("vae"), "scheduler": part("scheduler"),
            "text_encoders": [part("text_encoder")], "tokenizers": [part("tokenizer")],
            "t5_encoder": part("text_encoder_2"), "t5_tokenizer": part("tokenizer_2")}


def backbone_from_parts(name: str, parts: dict, *, device=None, dtype=None, method_defaults: dict | None = None,
                        cls: type = FluxBackbone) -> FluxBackbone:
    """A `FluxBackbone` (or subclass `cls`, FLUX.2's) from components in memory, moved to `device` and `dtype` and
    frozen."""
    backbone = dit_backbone_from_parts(name, parts, device=device, dtype=dtype, method_defaults=method_defaults,
                                       cls=cls)
    backbone.transformer.promptseg_text_tokens = backbone.text_length  # single-stream blocks' text, for capture
    return backbone
