"""Denoising evidence: where conditioning on a phrase helps the frozen UNet predict the image's noise.

A reusable part: Segment Anyword ranks referent regions with it, and the `sam` refiner names regions with it.

The per-pixel drop of the noise-prediction error when the UNet is conditioned on a phrase ("red circle") instead of
the empty prompt, averaged over fixed (timestep, noise) draws, relative to the empty prompt's mean error. The same
reconstruction objective that mask-prompt inversion minimises, read per pixel; on the bundled model it separates the
referred object from the others better than cross-attention alone for multi-word phrases (the "evidence" rows of
`benchmarks/referring/results/anyword.md`), and names a whole object far better than a method's min-max normalised scores
(`benchmarks/shapes/results/refine_val.md`). Ours, not the papers': off unless `AnywordConfig.evidence` is "denoising" or
the `sam` refiner's `classify` is "denoising". The same idea as a diffusion classifier (the label whose prompt
denoises best), read per pixel and averaged over a region.
"""

from __future__ import annotations

import torch


class DenoisingEvidence:
    """Per-image cache of the empty prompt's errors, and the gain maps of phrases.

    Args:
        backbone: the loaded backbone.
        latents (`torch.Tensor`): (1, C, h, w) clean latents of the image.
        timesteps (`tuple[int, ...]`): one (timestep, noise) draw per entry, one UNet batch.
        seed (`int`): seed of the noise draws.
        relative (`bool`, defaults to `True`): the gain relative to the empty prompt (one UNet batch more); False:
            the negated error alone, for a reader that only compares phrases over the same pixels (the `sam`
            refiner naming a mask: the empty prompt's error and scale are the same for every phrase, so they change
            no choice).
    """

    def __init__(self, backbone, latents: torch.Tensor, timesteps: tuple[int, ...], seed: int, relative: bool = True):
        self.backbone = backbone
        n = len(timesteps)
        self.t = torch.tensor(timesteps, device=latents.device)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn((n, *latents.shape[1:]), generator=generator).to(latents.device, latents.dtype)
        clean = latents.expand(n, -1, -1, -1)
        self.noisy = backbone.add_noise(clean, noise, self.t)
        self.target = backbone.denoising_target(clean, noise, self.t).float()
        self.empty = self._errors("") if relative else None
        self.scale = self.empty.mean().clamp_min(1e-12) if relative else None
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _errors(self, prompt: str) -> torch.Tensor:
        text = self.backbone.encode_text([prompt] * len(self.t))
        prediction = self.backbone.predict(self.noisy, self.t, text).float()
        return ((prediction - self.target) ** 2).mean(1).mean(0)  # (h, w)

    def gain(self, phrase: str) -> torch.Tensor:
        """(h, w) relative error drop for `phrase` (positive where the phrase explains the image); the negated error
        when not `relative`."""
        if phrase not in self.cache:
            errors = self._errors(phrase)
            self.cache[phrase] = -errors if self.empty is None else (self.empty - errors) / self.scale
        return self.cache[phrase]
