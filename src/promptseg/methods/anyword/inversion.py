"""Mask-prompt inversion: learn the concept words' token embeddings for one image with the denoising loss.

The expression is the generation condition. Only the *input* token embeddings of its visual-concept words are
trainable (textual inversion's parameters: tokens x width, e.g. 3 x 768 = 2.3k values on SD 1.5, far under the
paper's 0.1M); they pass through the frozen text encoder into the frozen UNet, which must reconstruct the image's
noise at random timesteps: L = || target - UNet(z_t, t, c(V)) ||^2, the diffusion model's own training loss (the
target is the noise, the velocity or the sample, as the scheduler predicts).
"""

from __future__ import annotations

import math

import torch

from promptseg.diffusion.precision import loss_scaler


def invert_tokens(
    backbone,
    latents: torch.Tensor,
    prompt: str,
    positions: list[int],
    steps: int,
    lr: float,
    batch: int,
    timesteps: tuple[int, int],
    seed: int,
    on_step=None,
    micro_batch: int | None = None,
) -> tuple[torch.Tensor, dict]:
    """Optimise the input token embeddings at `positions` of `prompt` so the UNet denoises `latents` (1, C, h, w).

    Each step draws `batch` (timestep, noise) pairs; they go through the UNet `micro_batch` at a time (all at once
    when None) and their gradients are accumulated: the same gradient as one batch (float noise), with the
    activation memory of `micro_batch` draws.

    Returns:
        (`torch.Tensor`, `dict`): the text-encoder output (1, T, D) with the learnt embeddings, and a log with
        "loss" per step, "change" (relative distance of the embeddings from the word's own) and "warnings".
    """
    embedding = backbone.text_encoder.get_input_embeddings()
    ids = backbone.tokenizer(prompt, padding="max_length", max_length=backbone.text_length).input_ids
    index = torch.tensor([ids[p] for p in positions], device=embedding.weight.device)
    # on the backbone's device: under offload the encoder's weights wait in CPU memory
    start = embedding.weight[index].detach().float().clone().to(backbone.device)
    log = {"loss": [], "change": [], "warnings": []}
    if steps == 0 or not positions:
        with torch.no_grad():
            return backbone.encode_text(prompt), log
    rows = torch.nn.Parameter(start.clone())  # float32 whatever the backbone's dtype
    optimiser = torch.optim.Adam([rows], lr=lr)
    scaler = loss_scaler(backbone)  # fp16 backbones: loss scaling (`promptseg.diffusion.precision`)
    generator = torch.Generator().manual_seed(seed)
    clean = latents.expand(batch, -1, -1, -1)
    last = rows.detach().clone()
    for _ in range(steps):
        t = torch.randint(timesteps[0], timesteps[1] + 1, (batch,), generator=generator).to(latents.device)
        noise = torch.randn(clean.shape, generator=generator).to(latents.device, latents.dtype)
        noisy = backbone.add_noise(clean, noise, t)
        optimiser.zero_grad(set_to_none=True)
        total, chunk = 0.0, micro_batch or batch
        for lo in range(0, batch, chunk):
            part = slice(lo, min(batch, lo + chunk))
            n = part.stop - part.start
            text = backbone.encode_text([prompt] * n, token_embeds=(positions, rows))
            prediction = backbone.predict(noisy[part], t[part], text)
            target = backbone.denoising_target(clean[part], noise[part], t[part]).float()
            loss = torch.nn.functional.mse_loss(prediction.float(), target) * (n / batch)
            scaler.scale(loss).backward()
            total += float(loss.detach())
        if not math.isfinite(total):
            log["warnings"].append(f"non-finite denoising loss at step {len(log['loss'])}; kept the last embeddings")
            with torch.no_grad():
                rows.copy_(last)
            break
        last = rows.detach().clone()
        scaler.step(optimiser)
        scaler.update()
        log["loss"].append(total)
        log["change"].append(float((rows.detach() - start).norm() / start.norm().clamp_min(1e-12)))
        if on_step is not None:
            on_step(len(log["loss"]), steps)
    with torch.no_grad():
        return backbone.encode_text(prompt, token_embeds=(positions, rows.detach())), log
