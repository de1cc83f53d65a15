"""The interface every backbone family implements: what methods, filters and refiners may ask of a diffusion model.

A family is a kind of denoiser with its own noise schedule, text encoders and attention layout. Today there is one,
the UNet (`promptseg.models.unet`: Stable Diffusion 1.x/2.x and the bundled models); a second (diffusion
transformers: SD3, FLUX) implements the same methods. Nothing above `promptseg.models` touches a family's modules
(`unet`, `vae`, ...) except through this interface or the module it names as `denoiser` for attention capture.

The interface, in five parts:
- sizes: `latent_size`, `image_size`, `vae_scale_factor`, `text_length`, `num_train_timesteps`, `prediction_type`;
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
    """The family's name ("unet")."""

    # -- sizes ------------------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def latent_size(self) -> tuple[int, int]:
        """The denoiser's native latent grid (h, w)."""

    @property
    @abc.abstractmethod
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along a side."""

    @property
    def image_size(self) -> tuple[int, int]:
        """The native image size (h, w) in pixels."""
        return tuple(s * self.vae_scale_factor for s in self.latent_size)

    @property
    @abc.abstractmethod
    def text_length(self) -> int:
        """Padded prompt length in tokens, start and end tokens included."""

    @property
    @abc.abstractmethod
    def num_train_timesteps(self) -> int:
        """Timesteps are integers in [0, num_train_timesteps)."""

    @property
    @abc.abstractmethod
    def prediction_type(self) -> str:
        """What the denoiser predicts: "epsilon", "v_prediction", "sample" (or a family's own, e.g. "flow")."""

    # -- images -----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image at the native size as (1, 3, H, W) in [-1, 1] on the backbone's device."""

    @abc.abstractmethod
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents of (B, 3, H, W) pixels in [-1, 1], scaled as the denoiser expects them."""

    @abc.abstractmethod
    def decode_image(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) pixels in [-1, 1] of latents scaled as `encode_image` returns them."""

    # -- text -------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def encode_text(self, prompts: list[str] | str, token_embeds=None) -> torch.Tensor:
        """(B, text_length, D) conditioning of `prompts`; `token_embeds` = (positions, rows) replaces input token
        embeddings at those positions, differentiably in `rows`."""

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
