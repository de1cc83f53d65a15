"""Noise: seeded noising of clean latents and one deterministic inversion step.

The schedule's maths (how a timestep mixes latents and noise, what the denoiser's output means) belongs to the
backbone family (`add_noise`, `noise_from_output`, `denoising_target`, `invert_step`); what is here is shared by
every method and every family.
"""

from __future__ import annotations

import torch


def noised_latents(backbone, latents: torch.Tensor, timestep: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`latents` noised to `timestep` with seeded Gaussian noise: (noisy, noise)."""
    if not 0 <= timestep < backbone.num_train_timesteps:
        raise ValueError(f"timestep must be in [0, {backbone.num_train_timesteps}), got {timestep}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
    t = torch.tensor([timestep], device=latents.device)
    return backbone.add_noise(latents, noise, t), noise


def ddim_invert_step(backbone, latents: torch.Tensor, timestep: int, text: torch.Tensor) -> torch.Tensor:
    """One deterministic inversion step from the clean `latents` to `timestep` (`DiffusionBackbone.invert_step`:
    DDIM's z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps(z_0, t, text) on a UNet, its flow-matching analogue on a
    transformer)."""
    return backbone.invert_step(latents, timestep, text)
