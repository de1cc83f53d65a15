"""The interface every backbone family implements: what methods, filters and refiners may ask of a diffusion model.

A family is a kind of denoiser with its own noise schedule, text encoders and attention layout. Today there is one,
the UNet (`promptseg.models.unet`: Stable Diffusion 1.x/2.x and the bundled models); a second (diffusion
transformers: SD3, FLUX) implements the same methods. Nothing above `promptseg.models` touches a family's modules
(`unet`, `vae`, ...) except through this interface or the module it names as `denoiser` for attention capture.

The interface, in five parts:
- sizes: `latent_size` (`native_latent_size`, `working_size`), `image_size`, `vae_scale_factor`, `text_length`, `num_train_timesteps`, `prediction_type`;
- images: `preprocess` (PIL -> pixels), `encode_image` (pixels -> latents), `decode_image` (latents -> pixels);
- text: `encode_text` (prompts -> conditioning, optionally with learnt input embeddings) and `tokenizer`, with which
  `promptseg.text` finds a word's tokens in a prompt;
- noise and prediction: `add_noise`, `predict` (one denoiser forward), `noise_from_output` (the noise estimate from
  whatever the denoiser predicts), `denoising_target` (what it is trained to predict);
- attention: `denoiser` (the module whose attention processors are captured), `attention_layers()` and
  `attention_grids(kind)`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
"""What `load_backbone` loads when no model is named (the papers' backbone)."""


class DiffusionBackbone(abc.ABC):
    """A frozen text-to-image diffusion model on one device and dtype.

    Attributes every family sets:
        name (`str`): what it was loaded from.
        device (`torch.device`), dtype (`torch.dtype`): where and how its modules run.
        tokenizer: the prompt tokenizer (`promptseg.text` finds words' tokens with it).
        method_defaults (`dict`): what the model folder recommends (`promptseg_settings.json`).
    """

    family: str = ""
    """The family's name ("unet", "mmdit", "flux")."""
    text_keys_reusable: bool = True
    """Whether a cross-attention layer's keys depend on the text alone, so that kept queries can be read against any
    other text (`AttentionStore.cross_attention_for`: FastSeg's dual prompt, the baseline's "prompt" conditioning).
    True in a UNet; False in a joint-attention transformer, whose text keys come from a text stream the image has
    changed."""

    # -- sizes ------------------------------------------------------------------------------------------------
    # Read from the loaded configs; both families keep `vae`, `tokenizer`, `scheduler` and a `denoiser` whose config
    # has `sample_size`, so these defaults serve them.
    @property
    def latent_size(self) -> tuple[int, int]:
        """The latent grid (h, w) the backbone works at: `native_latent_size`, or the size `working_size` sets for
        the duration of its block (prompt inversion at a smaller size, `promptseg.diffusion.memory`). Every size
        below (`image_size`, the attention grids, `preprocess`) follows it."""
        return self.__dict__.get("_working_latent") or self.native_latent_size

    @property
    def native_latent_size(self) -> tuple[int, int]:
        """The denoiser's native latent grid (h, w)."""
        size = self.denoiser.config.sample_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @contextmanager
    def working_size(self, latent_hw: tuple[int, int] | None) -> Iterator[None]:
        """Work at the latent grid `latent_hw` inside the block (None: no change); the size before it is restored
        after, also when the block fails. Not thread-safe: one backbone serves one call at a time."""
        before = self.__dict__.get("_working_latent")
        if latent_hw is not None:
            self.__dict__["_working_latent"] = tuple(int(s) for s in latent_hw)
        try:
            yield
        finally:
            self.__dict__["_working_latent"] = before

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along a side: 2 ** (number of VAE blocks - 1)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_size(self) -> tuple[int, int]:
        """The image size (h, w) in pixels the backbone works at (`latent_size`'s; native outside `working_size`)."""
        return tuple(s * self.vae_scale_factor for s in self.latent_size)

    @property
    def text_length(self) -> int:
        """Padded prompt length in tokens, start and end tokens included (77 for CLIP; read from the tokenizer)."""
        return int(self.tokenizer.model_max_length)

    @property
    def num_train_timesteps(self) -> int:
        """Timesteps are integers in [0, num_train_timesteps) (the scheduler's)."""
        return int(self.scheduler.config.num_train_timesteps)

    @property
    @abc.abstractmethod
    def prediction_type(self) -> str:
        """What the denoiser predicts: "epsilon", "v_prediction", "sample" (or a family's own, e.g. "flow")."""

    # -- images -----------------------------------------------------------------------------------------------
    # Both families decode with a diffusers `AutoencoderKL` at `self.vae`: these defaults serve them (shift and
    # scale from the VAE's config: SD3/FLUX have a shift, SD 1.x/2.x none).
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image at `image_size` (native outside `working_size`) as (1, 3, H, W) in [-1, 1] on the
        backbone's device."""
        h, w = self.image_size
        array = np.asarray(image.convert("RGB").resize((w, h), Image.BICUBIC), dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1)[None].to(self.device, self.dtype)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents (the VAE posterior's mean, shifted and scaled as the denoiser expects them) of
        (B, 3, H, W) pixels in [-1, 1]."""
        pixels = pixels.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        latents = self.vae.encode(pixels).latent_dist.mean.contiguous()
        shift = self.vae.config.get("shift_factor") or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    def decode_image(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [-1, 1] of latents scaled as `encode_image` returns them."""
        shift = self.vae.config.get("shift_factor") or 0.0
        latents = latents.to(self.device, self.dtype) / self.vae.config.scaling_factor + shift
        return self.vae.decode(latents).sample.clamp(-1, 1)

    # -- text -------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_text(self, prompts: list[str] | str, token_embeds=None) -> torch.Tensor:
        """(B, text_length, D) conditioning of `prompts`; `token_embeds` = (positions, rows) replaces input token
        embeddings at those positions, differentiably in `rows`."""

    def context_of(self, text: torch.Tensor) -> torch.Tensor:
        """The rows of an `encode_text` result that cross-attention keys read (a family that appends a pooled row
        to the token states, SDXL's or SD3's, drops it)."""
        return text

    # -- noise and prediction ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """`latents` noised with `noise` to timesteps `t` (B,) by the family's forward process."""

    @abc.abstractmethod
    def predict(self, noisy: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """One denoiser forward: its raw output for `noisy` (B, C, h, w) at `t` (B,) conditioned on `text`."""

    @abc.abstractmethod
    def noise_from_output(self, output: torch.Tensor, noisy: torch.Tensor, timestep: int) -> torch.Tensor:
        """The noise estimate implied by the denoiser's `output` for `noisy` at `timestep`."""

    @abc.abstractmethod
    def denoising_target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser is trained to predict for clean `latents` noised with `noise` at `t`."""

    # -- attention --------------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def denoiser(self) -> torch.nn.Module:
        """The module whose attention processors `promptseg.diffusion.capture` swaps."""

    @abc.abstractmethod
    def attention_layers(self) -> list:
        """Every capturable attention layer (`promptseg.models.attention_layers.AttentionLayer`)."""

    @abc.abstractmethod
    def attention_grids(self, kind: str) -> list[tuple[int, int]]:
        """The distinct (h, w) grids, finest first, at which the denoiser has `kind` ("self"/"cross") attention."""

    @abc.abstractmethod
    def select_layers(self, self_grids, cross_grids, places) -> list:
        """The layers to record: `kind` attention on the given grids, in `places` (a UNet's "down"/"mid"/"up"; a
        transformer's blocks, "block9"). Raises ValueError naming what exists when a grid or place does not."""

    @abc.abstractmethod
    def generate(self, prompts: list[str], steps: int, guidance: float, generators: list) -> list[Image.Image]:
        """Sample one image per prompt at the native size (`steps` sampler steps, classifier-free `guidance`, one
        seeded `torch.Generator` per image): DPSeg's visual prompts."""

    def invert_step(self, latents: torch.Tensor, timestep: int, text: torch.Tensor) -> torch.Tensor:
        """One deterministic inversion step from clean `latents` to `timestep`: the latents noised with the
        denoiser's own noise estimate at them (DDIM's z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps(z_0, t) on a UNet;
        x_t = (1 - sigma) x_0 + sigma eps(x_0, t) under flow matching)."""
        t = torch.full((latents.shape[0],), timestep, device=latents.device)
        with torch.no_grad():
            output = self.predict(latents, t, text)
        eps = self.noise_from_output(output, latents, timestep)
        return self.add_noise(latents, eps, t)


def run_text_encoder(encoder, ids: torch.Tensor, token_embeds=None, **kwargs):
    """`encoder(ids, **kwargs)` with every hidden state; `token_embeds` = (positions, rows) replaces its input
    embeddings at those positions, differentiably in `rows`."""
    if token_embeds is None:
        return encoder(ids, output_hidden_states=True, **kwargs)
    positions, rows = token_embeds

    def replace(module, args, output):
        output = output.clone()
        output[:, positions] = rows.to(output.device, output.dtype)
        return output

    # the embedding the forward calls: T5's encoder has its own `embed_tokens` (tied to `shared`, which
    # `get_input_embeddings` returns, but a different module in transformers 5); CLIP calls its input embeddings
    stack = getattr(encoder, "encoder", None)
    embedding = getattr(stack, "embed_tokens", None) or encoder.get_input_embeddings()
    handle = embedding.register_forward_hook(replace)
    try:
        return encoder(ids, output_hidden_states=True, **kwargs)
    finally:
        handle.remove()
