"""Train the bundled "scenes" latent diffusion model on the scenes world (seeded, resumable, CPU-friendly).

    python -m promptseg.training.scenes --work runs/scenes --out zoo/promptseg_models/scenes \
        --text-encoder zoo/promptseg_models/scenes-clip

Stable Diffusion's recipe at a small size: a VAE with SD's downsampling factor of 8 (128x128 RGB -> 16x16x4
latents), then a `UNet2DConditionModel` with cross-attention at three resolutions (16x16, 8x8, 4x4 and the mid
block) conditioned on the token states of a **frozen** CLIP text tower (`scenes-clip`'s, trained contrastively
beforehand and never updated here), with CLIP's real 49,408-token tokenizer and SD's 77-token prompts. Captions
are the world's varied ones (synonyms, colours, sizes, things left out); 10% are empty (classifier-free guidance).

Two phases, checkpointed to ``WORK/state.pt`` every ``--save-every`` steps so a killed run resumes where it stopped
(same seed, same data, same optimiser state); the model is exported (diffusers layout, weights stored in fp16)
every ``--export-every`` UNet steps, so localisation can be measured while it trains
(`benchmarks/scenes/scenes_token_auroc.py`). The export stores no text encoder or tokenizer: they are the CLIP's, named in
its `promptseg_settings.json` (`share_text_tower`). The rendered training set and, once the VAE is done, its
latents are cached in WORK.
"""

from __future__ import annotations

import argparse
import os
import pickle
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from promptseg.data.scenes_world import SIZE, VIEWS, make_caption, render_sample
from promptseg.training.common import cosine_lr, optimiser_step, report, resume_state, save_state
from promptseg.training.shapes import encode_latents, export, fresh_state, train_vae

TEXT_LENGTH = 77


def build_vae_unet(seed: int = 0):
    """Fresh (untrained) VAE, UNet and schedulers of the scenes model."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 64, 128, 128), latent_channels=4,
        layers_per_block=1, norm_num_groups=16, sample_size=SIZE, mid_block_add_attention=False,
    )
    unet = UNet2DConditionModel(
        sample_size=SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(64, 128, 192),
        down_block_types=("CrossAttnDownBlock2D",) * 3, up_block_types=("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=128, attention_head_dim=4,  # diffusers' name for the number of heads
        norm_num_groups=32,
    )
    betas = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return vae, unet, DDPMScheduler(**betas), DDIMScheduler(**betas, clip_sample=False, set_alpha_to_one=False,
                                                             steps_offset=1)


def load_text_encoder(folder: str | Path):
    """The frozen text tower and tokenizer of a trained scenes-clip folder."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from promptseg.models.hub import quiet_text_tower

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no trained scenes-clip (config.json missing): train it first with "
                                "python -m promptseg.training.scenes_clip")
    with quiet_text_tower():
        text_encoder = CLIPTextModel.from_pretrained(folder, torch_dtype=torch.float32).eval().requires_grad_(False)
    return text_encoder, CLIPTokenizer.from_pretrained(folder)


def training_set(work: Path, n: int):
    """(images uint8 (n, H, W, 3), samples without their maps), rendered once and cached in WORK."""
    cache = work / f"train_{n}.pkl"
    if cache.exists():
        with open(cache, "rb") as f:
            return pickle.load(f)
    t0 = time.time()
    samples = [render_sample("train", i) for i in range(n)]
    images = np.stack([s.image for s in samples])
    for s in samples:
        s.image = s.class_map = s.instance_map = s.part_map = None
    with open(work / "train.tmp", "wb") as f:
        pickle.dump((images, samples), f)
    os.replace(work / "train.tmp", cache)
    print(f"rendered {n} training images in {time.time() - t0:.0f}s", flush=True)
    return images, samples


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    vae, unet, noise_scheduler, sample_scheduler = build_vae_unet(args.seed)
    vae_opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.01)
    rng = np.random.default_rng(args.seed)
    ckpt = work / "state.pt"
    parts = {"vae": vae, "unet": unet, "vae_opt": vae_opt, "opt": opt}
    state = resume_state(ckpt, parts, rng, fresh_state())
    if args.init_from is not None and not ckpt.exists():
        state = init_from_export(Path(args.init_from), vae, unet)
        rng = np.random.default_rng([args.seed, 2, state["step"]])  # fresh draws: the old stream's place is lost
        torch.manual_seed(args.seed + 2 + state["step"])

    def save() -> None:
        save_state(ckpt, parts, rng, state)

    images, samples = training_set(work, args.n_train)
    if state["phase"] == "vae":
        train_vae(vae, vae_opt, images, rng, state, args, args.vae_batch, save, crop=args.vae_crop)
        if args.vae_only:
            return
    text_encoder, tokenizer = load_text_encoder(args.text_encoder)
    if state["step"] == 0:  # the UNet phase starts from its own seeds: a UNet retrained on a finished VAE (a new
        rng = np.random.default_rng([args.seed, 1])  # text encoder, say) draws what a run from scratch draws
        torch.manual_seed(args.seed + 1)
    latents = encode_latents(vae, images, state, 128, cache=work / f"latents_{args.n_train}.pt")

    unet.train()
    recipe = {"steps": args.steps, "lr": args.lr, "snr_gamma": args.snr_gamma, "views": dict(VIEWS),
              "caption_stuff_order": "random"}  # listed top to bottom before step 8,000
    history = state.setdefault("recipe", [])
    if history and history[-1]["from_step"] == state["step"]:  # nothing trained under the last entry yet
        history[-1].update(recipe)
    elif not history or {k: history[-1].get(k) for k in recipe} != recipe:  # a resumed run may change the recipe: say so
        history.append({"from_step": state["step"], **recipe})
    weights = min_snr_weights(noise_scheduler, args.snr_gamma)
    t0, running = time.time(), None
    while state["step"] < args.steps:
        lr = cosine_lr(state["step"], args.lr, 200, args.steps)
        if "restarted_at" in state:  # a fresh optimiser on trained weights warms up again (100 steps)
            lr *= min(1.0, (state["step"] - state["restarted_at"] + 1) / 100)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = rng.integers(0, len(images), args.batch)
        captions = ["" if rng.random() < args.uncond_prob else make_caption(samples[i], rng) for i in idx]
        ids = tokenizer(captions, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            context = text_encoder(ids).last_hidden_state
        x0 = latents[torch.from_numpy(idx)]
        noise = torch.randn_like(x0)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(idx),))
        pred = unet(noise_scheduler.add_noise(x0, noise, t), t, context).sample
        loss = (weights[t] * F.mse_loss(pred, noise, reduction="none").mean((1, 2, 3))).mean()
        value = optimiser_step(unet, opt, loss)
        running = value if running is None else 0.98 * running + 0.02 * value
        state["step"] += 1
        t0 = report(state, "unet", args.steps, running, t0)
        if state["step"] % args.save_every == 0 or state["step"] == args.steps:
            save()
        if state["step"] % args.export_every == 0 or state["step"] == args.steps:
            export(Path(args.out), tokenizer, text_encoder, vae, unet, sample_scheduler, state, dtype=torch.float16)
            share_text_tower(Path(args.out), args.text_encoder)


def init_from_export(folder: Path, vae, unet) -> dict:
    """A UNet-phase state from an exported model (`--init-from`): its VAE and UNet weights (stored in fp16, loaded
    into the fp32 training copies), its step count, latent scale, log and recipe; the optimiser starts afresh
    (an export has none) and warms up again. What carries a run across machines that keep no work folder: an
    export is 30 MB, a full checkpoint with the optimiser's moments 180 MB."""
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel

    log_path = folder / "training_log.json"
    if not log_path.is_file():
        raise FileNotFoundError(f"--init-from {folder}: no training_log.json there; pass a folder that "
                                "promptseg.training.scenes exported (its --out)")
    log = json.loads(log_path.read_text())
    exported_vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    vae.load_state_dict(exported_vae.state_dict())
    unet.load_state_dict(UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict())
    step = int(log["unet_steps"])
    recipe = list(log.get("recipe", []))
    if recipe:
        recipe.append({**recipe[-1], "from_step": step, "restart": f"weights of {folder.name}, fresh optimiser"})
    print(f"initialised from the export in {folder}: unet step {step}", flush=True)
    return {"phase": "unet", "step": step, "scaling": float(exported_vae.config.scaling_factor), "log": log.get("log", []),
            "recipe": recipe, "restarted_at": step}


def min_snr_weights(noise_scheduler, gamma: float | None) -> torch.Tensor:
    """Per-timestep loss weights: Min-SNR-gamma (Hang et al., 2023) for epsilon prediction, min(SNR, gamma) / SNR,
    or all ones with `gamma` None. It lowers the weight of the low-noise steps, whose epsilon loss is large and
    which the caption barely helps, so that the high-noise steps, where the caption decides what goes where, carry
    more of the gradient."""
    alphas = noise_scheduler.alphas_cumprod.float()
    if gamma is None:
        return torch.ones_like(alphas)
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / snr


def share_text_tower(out: Path, clip_folder: str | Path) -> None:
    """Drop the exported text encoder and tokenizer, which are the CLIP's text tower and tokenizer bit for bit, and
    name that CLIP in the model's `promptseg_settings.json` instead (`load_backbone` takes them from it): the
    bundle stores them once (14 MB of weights and 3.5 MB of tokenizer less)."""
    import json
    import shutil

    from promptseg.models import SETTINGS_FILE, bundled

    for part in ("text_encoder", "tokenizer"):
        shutil.rmtree(out / part, ignore_errors=True)
    clip = Path(clip_folder).resolve()
    name = next((key for key, folder in bundled("clip").items() if Path(folder).resolve() == clip), str(clip))
    path = out / SETTINGS_FILE
    settings = json.loads(path.read_text()) if path.exists() else {}
    settings["text_encoder"] = name
    path.write_text(json.dumps(settings, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/scenes", help="checkpoint folder (resumes from WORK/state.pt)")
    parser.add_argument("--out", default="zoo/promptseg_models/scenes", help="export folder (diffusers layout)")
    parser.add_argument("--text-encoder", default="zoo/promptseg_models/scenes-clip",
                        help="the trained scenes-clip folder whose text tower conditions the UNet (frozen)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=20000, help="training images rendered once")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--vae-crop", type=int, default=64, help="VAE trained on random crops of this size")
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--vae-only", action="store_true", help="stop after the VAE phase")
    parser.add_argument("--kl-weight", type=float, default=1e-6)
    parser.add_argument("--steps", type=int, default=4000, help="UNet steps")
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--snr-gamma", type=float, default=None,
                        help="Min-SNR-gamma loss weighting (e.g. 5); default: plain epsilon MSE")
    parser.add_argument("--uncond-prob", type=float, default=0.1, help="empty-caption rate (classifier-free guidance)")
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--export-every", type=int, default=1000)
    parser.add_argument("--init-from", default=None,
                        help="an exported model folder to continue from when WORK has no checkpoint (weights only: "
                             "the optimiser restarts)")
    parser.add_argument("--threads", type=int, default=2)
    train(parser.parse_args(argv))


if __name__ == "__main__":
    main()
