"""Train the bundled "shapes" latent diffusion model (seeded, resumable, CPU-friendly).

    python -m promptseg.training.shapes --work runs/shapes --out zoo/promptseg_models/shapes

Two phases, both checkpointed to ``WORK/state.pt`` every ``--save-every`` steps so a killed run resumes where it
stopped (same seed, same data, same optimiser state):

1. a small `AutoencoderKL` (64x64 RGB -> 16x16x4 latents, scale factor 4) trained with MSE + a tiny KL term;
2. a `UNet2DConditionModel` on those latents, jointly with a `CLIPTextModel` that has **no transformer layers**
   (token + position embedding, then the final layer norm). Why no layers: with a contextual (causal) encoder
   trained from scratch, every later token carries the whole caption and the UNet learns to read the caption from
   one sink token, so a word's cross-attention no longer says where that word is (measured before this model:
   shape-token AUROC 0.53). A per-token encoder leaves the UNet one way to learn what a shape looks like: attend
   to that shape's word at that shape's pixels. That is the property segmentation reads from Stable Diffusion,
   whose CLIP token embeddings are dominated by their own word.

The result is saved in the diffusers folder layout (safetensors), loadable by
`StableDiffusionPipeline.from_pretrained(folder)` and by `promptseg.load_backbone("shapes")`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from promptseg.data.shapes_world import VOCABULARY, make_caption, render_sample
from promptseg.models.tokenizers import build_word_tokenizer
from promptseg.training.common import cosine_lr, optimiser_step, report, resume_state, save_state

TEXT_LENGTH = 24


def build_components(seed: int = 0):
    """Fresh (untrained) tokenizer, text encoder, VAE, UNet and schedulers of the shapes model."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(VOCABULARY, model_max_length=TEXT_LENGTH)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=0,
        num_attention_heads=4,
        max_position_embeddings=TEXT_LENGTH,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
        eos_token_id=eos,
        pad_token_id=eos,
    )
    text_encoder = CLIPTextModel(text_config)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=64,
        mid_block_add_attention=False,
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128,
        attention_head_dim=4,  # diffusers' name for the number of heads
        norm_num_groups=32,
    )
    betas = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    train_scheduler = DDPMScheduler(**betas)
    sample_scheduler = DDIMScheduler(**betas, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return tokenizer, text_encoder, vae, unet, train_scheduler, sample_scheduler


def _render_train_set(n: int) -> tuple[np.ndarray, list]:
    images = np.empty((n, 64, 64, 3), np.uint8)
    scenes = []
    for i in range(n):
        sample = render_sample("train", i)
        images[i] = sample.image
        visible = [o for k, o in enumerate(sample.objects) if (sample.instance_map == k + 1).any()]
        scenes.append((visible, sample.background))
    return images, scenes


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]


def fresh_state() -> dict:
    """The progress of a backbone run that has not started: the VAE phase first, then the UNet's."""
    return {"phase": "vae", "step": 0, "scaling": None, "log": []}


def train_vae(vae, vae_opt, images: np.ndarray, rng: np.random.Generator, state: dict, args, batch: int,
              save, crop: int | None = None) -> None:
    """The VAE phase (MSE + `args.kl_weight` KL, cosine lr with 100 warm-up steps), checkpointed by `save()`
    every `args.save_every` steps and at its end, which moves `state` to the UNet phase. With `crop` it trains on
    random crop x crop windows (one per image, SD's VAE recipe): the VAE is convolutional, so it encodes whole
    images afterwards, at a fraction of the cost a step."""
    vae.train()
    t0, running = time.time(), None
    while state["step"] < args.vae_steps:
        for group in vae_opt.param_groups:
            group["lr"] = cosine_lr(state["step"], args.vae_lr, 100, args.vae_steps)
        x = images[rng.integers(0, len(images), batch)]
        if crop is not None:
            corners = rng.integers(0, np.array(x.shape[1:3]) - crop + 1, (len(x), 2))
            x = np.stack([im[r: r + crop, c: c + crop] for im, (r, c) in zip(x, corners)])
        x = _to_tensor(x)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, x) + args.kl_weight * posterior.kl().mean()
        vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        vae_opt.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        state["step"] += 1
        t0 = report(state, "vae", args.vae_steps, running, t0)
        if state["step"] % args.save_every == 0:
            save()
    state.update(phase="unet", step=0)
    save()


def vae_fingerprint(vae) -> float:
    """A number that changes with any change of the VAE's weights (the latents cache is checked against it)."""
    with torch.no_grad():
        return float(sum((p.double() * (i + 1)).sum() for i, p in enumerate(vae.parameters())))


def encode_latents(vae, images: np.ndarray, state: dict, chunk: int, cache: Path | None = None) -> torch.Tensor:
    """The frozen VAE's latent means of `images`, scaled to unit std (the scale is fixed in `state` once). With
    `cache`, the unscaled means are read from that file if it holds this VAE's (`vae_fingerprint`) and written to it
    otherwise: a resumed run skips the encoding."""
    vae.eval().requires_grad_(False)
    t0 = time.time()
    fingerprint = vae_fingerprint(vae)
    saved = torch.load(cache) if cache is not None and cache.exists() else None
    if saved is not None and saved["vae"] == fingerprint and len(saved["latents"]) == len(images):
        latents = saved["latents"]
    else:  # no cache, or one made by another VAE
        with torch.no_grad():
            latents = torch.cat([vae.encode(_to_tensor(images[i: i + chunk])).latent_dist.mean
                                 for i in range(0, len(images), chunk)])
        if cache is not None:
            torch.save({"latents": latents, "vae": fingerprint}, cache.with_suffix(".tmp"))
            os.replace(cache.with_suffix(".tmp"), cache)
    if state["scaling"] is None:
        state["scaling"] = float(1.0 / latents.std())
    print(f"encoded latents {tuple(latents.shape)} in {time.time() - t0:.1f}s, scaling {state['scaling']:.4f}",
          flush=True)
    return latents * state["scaling"]


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tokenizer, text_encoder, vae, unet, noise_scheduler, sample_scheduler = build_components(args.seed)
    vae_opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    rng = np.random.default_rng(args.seed)
    ckpt = work / "state.pt"
    parts = {"vae": vae, "unet": unet, "text_encoder": text_encoder, "vae_opt": vae_opt, "opt": opt}
    state = resume_state(ckpt, parts, rng, fresh_state())

    def save() -> None:
        save_state(ckpt, parts, rng, state)

    t0 = time.time()
    images, scenes = _render_train_set(args.n_train)
    print(f"rendered {len(images)} training images in {time.time() - t0:.1f}s", flush=True)
    if state["phase"] == "vae":
        train_vae(vae, vae_opt, images, rng, state, args, args.batch, save)
    latents = encode_latents(vae, images, state, 256)

    unet.train()
    text_encoder.train()
    t0, running = time.time(), None
    while state["step"] < args.steps:
        step = state["step"]
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, args.lr, 200, args.steps)
        idx = rng.integers(0, len(images), args.batch)
        captions = ["" if rng.random() < args.uncond_prob else make_caption(*scenes[i], rng=rng) for i in idx]
        ids = tokenizer(captions, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt").input_ids
        x0 = latents[torch.from_numpy(idx)]
        noise = torch.randn_like(x0)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),))
        xt = noise_scheduler.add_noise(x0, noise, t)
        pred = unet(xt, t, text_encoder(ids).last_hidden_state).sample
        loss = F.mse_loss(pred, noise)
        value = optimiser_step(params, opt, loss)
        running = value if running is None else 0.98 * running + 0.02 * value
        state["step"] += 1
        t0 = report(state, "unet", args.steps, running, t0)
        if state["step"] % args.save_every == 0 or state["step"] == args.steps:
            save()
            export(Path(args.out), tokenizer, text_encoder, vae, unet, sample_scheduler, state)


def export(out: Path, tokenizer, text_encoder, vae, unet, scheduler, state: dict, dtype=None) -> None:
    """Write the model in the diffusers folder layout, with its training log; with `dtype` (e.g. fp16) the weights
    are stored in it (copies: the training models keep theirs)."""
    import copy

    from diffusers import StableDiffusionPipeline

    vae.register_to_config(scaling_factor=state["scaling"])
    stored = [m if dtype is None else copy.deepcopy(m).to(dtype) for m in (vae, text_encoder, unet)]
    pipe = StableDiffusionPipeline(
        vae=stored[0],
        text_encoder=stored[1],
        tokenizer=tokenizer,
        unet=stored[2],
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "training_log.json").write_text(json.dumps({"unet_steps": state["step"], "recipe": state.get("recipe", []),
                                                   "log": state["log"]}, indent=1))
    print(f"exported to {out} at unet step {state['step']}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/shapes", help="checkpoint folder (resumes from WORK/state.pt)")
    parser.add_argument("--out", default="zoo/promptseg_models/shapes", help="export folder (diffusers layout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=20000, help="training images rendered once")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument("--steps", type=int, default=8000, help="UNet + text encoder steps")
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--uncond-prob", type=float, default=0.1, help="empty-caption rate (classifier-free guidance)")
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    train(parser.parse_args(argv))


if __name__ == "__main__":
    main()
