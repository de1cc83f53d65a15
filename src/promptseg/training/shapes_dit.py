"""Train the bundled "shapes-dit": an SD3-style MMDiT with flow matching on the shapes world (seeded, resumable).

    python -m promptseg.training.shapes_dit --work runs/shapes-dit --out zoo/promptseg_models/shapes-dit

What is trained and what is reused: the transformer only. The VAE, tokenizer and text encoder are the bundled
`shapes` model's, frozen, as SD3 trains its MMDiT on frozen encoders: so the UNet and the DiT see the same latents
and the same token embeddings, and the shapes benchmark's UNet-against-DiT rows differ by the denoiser alone.

The recipe is SD3's (Esser et al. 2024, "Scaling Rectified Flow Transformers", section 3 and 5): rectified flow
x_t = (1 - sigma) x0 + sigma eps, the network predicts the velocity eps - x0, sigma drawn logit-normal (m=0, s=1),
timestep = 1000 sigma; the pooled text vector goes to the adaLN conditioning, the token states to the joint
attention. Captions are the shapes script's (20% of colour words and 10% of backgrounds dropped, 10% empty).

The result is a diffusers folder: `transformer/` (`SD3Transformer2DModel`), `vae/`, `text_encoder/`, `tokenizer/`,
`scheduler/` (`FlowMatchEulerDiscreteScheduler`, shift 1: 16x16 latents need none of SD3's 1024 px shift) and a
`model_index.json` naming `StableDiffusion3Pipeline` with its second and third text encoders absent (one CLIP
encoder of width 128; `promptseg.load_backbone("shapes-dit")` reads it, stock diffusers' SD3 pipeline expects
CLIP-L + CLIP-G widths and does not).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from promptseg.data.shapes_world import make_caption
from promptseg.training.common import cosine_lr, optimiser_step, report, resume_state, save_state
from promptseg.training.shapes import TEXT_LENGTH, _render_train_set, encode_latents

TRANSFORMER = dict(sample_size=16, patch_size=1, in_channels=4, out_channels=4, num_layers=6,
                   attention_head_dim=32, num_attention_heads=4, joint_attention_dim=128,
                   caption_projection_dim=128, pooled_projection_dim=128, pos_embed_max_size=16)
"""The transformer's config: SD3's block structure (joint blocks, the last one context-pre-only), 6 blocks of width
128 over 16x16 latent tokens (patch 1: a 2x2 patch would leave an 8x8 token grid, too coarse for the shapes)."""


def build_transformer(seed: int = 0):
    """A fresh `SD3Transformer2DModel` with `TRANSFORMER`'s config."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(**TRANSFORMER)


def pooled_text(encoder_output) -> torch.Tensor:
    """The pooled text vector SD3 conditions adaLN on: a projected encoder's `text_embeds`, else `pooler_output`."""
    pooled = getattr(encoder_output, "text_embeds", None)
    return encoder_output.pooler_output if pooled is None else pooled


def logit_normal_sigmas(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """SD3's training noise levels: sigmoid of a standard normal draw (logit-normal, m=0, s=1)."""
    return torch.sigmoid(torch.randn(n, generator=generator))


def train(args: argparse.Namespace) -> None:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    from promptseg.models.zoo import BUNDLED

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = Path(args.source) if args.source else BUNDLED["shapes"].folder
    tokenizer = CLIPTokenizer.from_pretrained(source / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(source / "text_encoder").eval().requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(source / "vae").eval().requires_grad_(False)
    transformer = build_transformer(args.seed)
    opt = torch.optim.AdamW(transformer.parameters(), lr=args.lr, weight_decay=0.01)
    rng = np.random.default_rng(args.seed)
    ckpt = work / "state.pt"
    parts = {"transformer": transformer, "opt": opt}
    state = resume_state(ckpt, parts, rng, {"phase": "transformer", "step": 0, "scaling": None, "log": []})
    state["scaling"] = float(vae.config.scaling_factor)  # the shapes VAE's, fixed when it was trained

    t0 = time.time()
    images, scenes = _render_train_set(args.n_train)
    print(f"rendered {len(images)} training images in {time.time() - t0:.1f}s", flush=True)
    latents = encode_latents(vae, images, state, 256, cache=work / "latents.pt")

    transformer.train()
    t0, running = time.time(), None
    while state["step"] < args.steps:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(state["step"], args.lr, 200, args.steps)
        idx = rng.integers(0, len(images), args.batch)
        captions = ["" if rng.random() < args.uncond_prob else make_caption(*scenes[i], rng=rng) for i in idx]
        ids = tokenizer(captions, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            out = text_encoder(ids)
        x0 = latents[torch.from_numpy(idx)]
        noise = torch.randn_like(x0)
        sigma = logit_normal_sigmas(len(idx)).view(-1, 1, 1, 1)
        xt = (1 - sigma) * x0 + sigma * noise
        pred = transformer(xt, encoder_hidden_states=out.last_hidden_state, pooled_projections=pooled_text(out),
                           timestep=sigma.flatten() * 1000).sample
        loss = F.mse_loss(pred, noise - x0)
        value = optimiser_step(transformer, opt, loss)
        running = value if running is None else 0.98 * running + 0.02 * value
        state["step"] += 1
        t0 = report(state, "transformer", args.steps, running, t0)
        if state["step"] % args.save_every == 0 or state["step"] == args.steps:
            save_state(ckpt, parts, rng, state)
            export(Path(args.out), source, transformer, state)


def export(out: Path, source: Path, transformer, state: dict) -> None:
    """Write the diffusers folder: the trained transformer, the frozen shapes parts copied from `source`, a
    flow-matching scheduler and `model_index.json`, with the training log."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    out.mkdir(parents=True, exist_ok=True)
    transformer.save_pretrained(out / "transformer", safe_serialization=True)
    for part in ("vae", "text_encoder", "tokenizer"):
        shutil.copytree(source / part, out / part, dirs_exist_ok=True)
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0).save_pretrained(out / "scheduler")
    index = {
        "_class_name": "StableDiffusion3Pipeline",
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": [None, None],
        "text_encoder_3": [None, None],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": [None, None],
        "tokenizer_3": [None, None],
        "transformer": ["diffusers", "SD3Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "training_log.json").write_text(json.dumps({"transformer_steps": state["step"], "log": state["log"]},
                                                      indent=1))
    print(f"exported to {out} at transformer step {state['step']}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/shapes-dit", help="checkpoint folder (resumes from WORK/state.pt)")
    parser.add_argument("--out", default="zoo/promptseg_models/shapes-dit", help="export folder (diffusers layout)")
    parser.add_argument("--source", default=None, help="the shapes model whose VAE and text encoder are reused")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=20000, help="training images rendered once")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--uncond-prob", type=float, default=0.1, help="empty-caption rate (classifier-free guidance)")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    train(parser.parse_args(argv))


if __name__ == "__main__":
    main()
