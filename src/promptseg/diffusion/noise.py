"""Noise: seeded noising of clean latents and one deterministic inversion step.

The schedule's maths (how a timestep mixes latents and noise, what the denoiser's output means) belongs to the
backbone family (`add_noise`, `noise_from_output`, `denoising_target`); what is here is shared by every method.
`ddim_invert_step` still reads the DDPM schedule (`alphas_cumprod`) itself, in float32: it serves the UNet family
only, and a flow-matching family needs its own inversion step.
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
    """One deterministic DDIM inversion step from the clean `latents` to `timestep`:
    z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps(z_0, t, text)."""
    t = torch.full((latents.shape[0],), timestep, device=latents.device)
    with torch.no_grad():
        output = backbone.predict(latents, t, text)
    eps = backbone.noise_from_output(output, latents, timestep)
    alpha = backbone.scheduler.alphas_cumprod[timestep].to(latents.device, torch.float32)
    return (alpha.sqrt() * latents.float() + (1 - alpha).sqrt() * eps.float()).to(latents.dtype)
