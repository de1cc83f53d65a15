"""Diffusion-transformer architectures with random weights: SD3-medium, SD3.5-medium and SD3.5-large (MMDiT).

The configs are written from the published `config.json` files of `stabilityai/stable-diffusion-3-medium-diffusers`
and `stabilityai/stable-diffusion-3.5-medium` (transformer, 16-channel VAE with shift and scale, CLIP-L and CLIP-G
with projection, flow-matching scheduler with shift 3), with CLIP's real tokenizer for both CLIP encoders (SD3's
second tokenizer pads with "!"). T5-XXL is not built: its SentencePiece vocabulary cannot be had here, and SD3 runs
without it (the pipeline's zeros take its 256 rows; `promptseg.models.mmdit`).

`reduced=True` keeps the topology (24 joint blocks, the last context-pre-only; SD3.5's dual-attention blocks 0-12
and RMS q/k norms; 2x2 patches; 16 latent channels; the VAE's 8x downsampling; 77 CLIP tokens and T5's 256 zero
rows) and shrinks every width (24 heads of 8 channels, 2-layer CLIP encoders of widths 32 and 48, a small VAE) and
the native size: 256 px, a 32x32 latent and a 16x16 token grid instead of 1024 px and 64x64 tokens (a transformer's
cost is quadratic in its tokens: the reduced SD3 at 1024 px takes 21 s a forward on one CPU core). CI runs the
reduced copies; the scale benchmark the full transformer at 1024 px.

    parts = build_dit("sd3", reduced=True)          # transformer, vae, text_encoders, tokenizers, scheduler
    save_dit("sd35", "runs/sd35-random", reduced=True)   # a diffusers folder `load_backbone` reads
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

_CLIP_L = {"hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072, "max_position_embeddings": 77,
           "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768, "vocab_size": 49408}
_CLIP_G = {"hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120, "max_position_embeddings": 77,
           "num_attention_heads": 20, "num_hidden_layers": 32, "projection_dim": 1280, "vocab_size": 49408}
_SD3_VAE = {"act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
            "in_channels": 3, "latent_channels": 16, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
            "sample_size": 1024, "scaling_factor": 1.5305, "shift_factor": 0.0609, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "use_post_quant_conv": False, "use_quant_conv": False, "force_upcast": True}

DIT_CONFIGS = {
    "sd3": {
        "transformer": {"attention_head_dim": 64, "caption_projection_dim": 1536, "in_channels": 16,
                        "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 24, "out_channels": 16,
                        "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 192, "sample_size": 128},
        "vae": _SD3_VAE,
        "text_encoders": [_CLIP_L, _CLIP_G],
        "pad_tokens": ["<|endoftext|>", "!"],
        "scheduler": {"num_train_timesteps": 1000, "shift": 3.0},
    },
}
DIT_CONFIGS["sd35"] = copy.deepcopy(DIT_CONFIGS["sd3"])
DIT_CONFIGS["sd35"]["transformer"].update(dual_attention_layers=list(range(13)), qk_norm="rms_norm",
                                          pos_embed_max_size=384)
DIT_CONFIGS["sd35-large"] = copy.deepcopy(DIT_CONFIGS["sd3"])
DIT_CONFIGS["sd35-large"]["transformer"].update(num_attention_heads=38, num_layers=38, caption_projection_dim=2432,
                                                qk_norm="rms_norm")  # stabilityai/stable-diffusion-3.5-large: 8.1B
DIT_NAMES = tuple(DIT_CONFIGS)


def dit_configs(name: str, reduced: bool = False) -> dict:
    """The component configs of transformer architecture `name` (see `DIT_NAMES`), full or reduced.

    Raises:
        ValueError: an unknown name.
    """
    if name not in DIT_CONFIGS:
        raise ValueError(f"unknown diffusion-transformer architecture {name!r}; choose from {list(DIT_CONFIGS)}")
    out = copy.deepcopy(DIT_CONFIGS[name])
    if not reduced:
        return out
    widths = (32, 48)
    for spec, width in zip(out["text_encoders"], widths):
        spec.update(hidden_size=width, intermediate_size=2 * width, num_attention_heads=4, num_hidden_layers=2,
                    projection_dim=width)
    heads = out["transformer"]["num_attention_heads"]  # kept: 24 (SD3-medium, SD3.5-medium) or 38 (SD3.5-large)
    out["transformer"].update(attention_head_dim=8, caption_projection_dim=heads * 8, joint_attention_dim=128,
                              pooled_projection_dim=sum(widths), sample_size=32)
    out["vae"].update(block_out_channels=[16, 32, 32, 32], layers_per_block=1, norm_num_groups=8, sample_size=256)
    return out


def build_dit(name: str, reduced: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """Random-weight components of transformer architecture `name`, seeded: transformer, vae, text_encoders,
    tokenizers, scheduler (the parts `promptseg.models.mmdit.backbone_from_parts` takes)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    from promptseg.models.sd_configs import clip_text_tower

    def cast(module):
        return module if dtype == torch.float32 else module.to(dtype)

    spec = dit_configs(name, reduced)
    torch.manual_seed(seed)
    towers = [clip_text_tower(text, pad, CLIPTextModelWithProjection, dtype)
              for text, pad in zip(spec["text_encoders"], spec["pad_tokens"])]
    encoders, tokenizers = [tower[0] for tower in towers], [tower[1] for tower in towers]
    return {
        "transformer": cast(SD3Transformer2DModel(**spec["transformer"])),
        "vae": cast(AutoencoderKL(**spec["vae"])),
        "text_encoders": encoders,
        "tokenizers": tokenizers,
        "scheduler": FlowMatchEulerDiscreteScheduler(**spec["scheduler"]),
    }


def save_dit(name: str, folder: str | Path, reduced: bool = False, seed: int = 0) -> Path:
    """Save `build_dit(name, reduced, seed)` as a diffusers SD3 folder (`StableDiffusion3Pipeline.save_pretrained`,
    T5 absent)."""
    from diffusers import StableDiffusion3Pipeline

    parts = build_dit(name, reduced, seed)
    pipe = StableDiffusion3Pipeline(
        transformer=parts["transformer"], vae=parts["vae"], scheduler=parts["scheduler"],
        text_encoder=parts["text_encoders"][0], tokenizer=parts["tokenizers"][0],
        text_encoder_2=parts["text_encoders"][1], tokenizer_2=parts["tokenizers"][1],
        text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)
