"""Stable Diffusion's architectures with random weights: SD 1.5, SD 2.1 (768 px, v-prediction), SD 2.1-base and SDXL.

No SD weights can be downloaded where promptseg is built and tested, so its cost and memory at SD's scale, and
whether every method runs there, are measured on these: the configs below are written from the published
`config.json` files of `stable-diffusion-v1-5/stable-diffusion-v1-5`, `stabilityai/stable-diffusion-2-1` and
`stabilityai/stable-diffusion-2-1-base` and `stabilityai/stable-diffusion-xl-base-1.0` (UNet, VAE, CLIP text
encoder(s), scheduler), with CLIP's real tokenizer (`build_clip_tokenizer`). SDXL has a second text encoder
(OpenCLIP bigG with projection: its pooled embedding and six size ids condition the UNet, `addition_embed_type`
"text_time"); its reduced copy keeps 1024 px and the per-level transformer depths (1, 2, 10). `reduced=True` divides every width (keeping head counts, so SD 2.x keeps its per-block
head numbers) and shortens the text encoder to 2 layers, but keeps the topology: the same resolutions, the same
count and placement of attention layers, linear projections and upcasting, 77 tokens, the latent size of the native
image (64x64 for 512 px, 96x96 for 768 px), the prediction type. CI runs the reduced copies; the benchmark
(`benchmarks/scale/scale.py`) and the tests marked slow run the full ones.

    parts = build_sd("sd15")                       # unet, vae, text_encoder, tokenizer, scheduler
    save_sd("sd21", "runs/sd21-random", reduced=True)   # a diffusers folder `load_backbone` reads
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

SD_CONFIGS = {
    "sd15": {
        "unet": {
            "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
            "center_input_sample": False, "cross_attention_dim": 768,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
            "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
            "sample_size": 64,
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        },
        "vae": {
            "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
            "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
            "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4,
        },
        "text_encoder": {
            "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072, "max_position_embeddings": 77,
            "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768, "vocab_size": 49408,
            "layer_norm_eps": 1e-05,
        },
        "scheduler": {
            "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
            "clip_sample": False, "prediction_type": "epsilon",
        },
        "pad_token": "<|endoftext|>",
    },
    "sd21": {
        "unet": {
            "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
            "center_input_sample": False, "cross_attention_dim": 1024,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
            "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
            "norm_num_groups": 32, "out_channels": 4, "sample_size": 96,
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "upcast_attention": True, "use_linear_projection": True,
        },
        "vae": {
            "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
            "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
            "sample_size": 768, "up_block_types": ["UpDecoderBlock2D"] * 4,
        },
        "text_encoder": {
            "hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096, "max_position_embeddings": 77,
            "num_attention_heads": 16, "num_hidden_layers": 23, "projection_dim": 512, "vocab_size": 49408,
            "layer_norm_eps": 1e-05,
        },
        "scheduler": {
            "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
            "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
        },
        "pad_token": "!",
    },
}
SD_CONFIGS["sdxl"] = {
    "unet": {
        "act_fn": "silu", "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "center_input_sample": False,
        "cross_attention_dim": 2048, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
        "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True,
    },
    "vae": {
        "act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
        "sample_size": 1024, "scaling_factor": 0.13025, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "force_upcast": True,
    },
    "text_encoder": {
        "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072, "max_position_embeddings": 77,
        "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768, "vocab_size": 49408,
        "layer_norm_eps": 1e-05,
    },
    "text_encoder_2": {
        "hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120, "max_position_embeddings": 77,
        "num_attention_heads": 20, "num_hidden_layers": 32, "projection_dim": 1280, "vocab_size": 49408,
        "layer_norm_eps": 1e-05,
    },
    "scheduler": {
        "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "num_train_timesteps": 1000, "prediction_type": "epsilon", "steps_offset": 1,
        "timestep_spacing": "leading", "interpolation_type": "linear", "use_karras_sigmas": False,
    },
    "pad_token": "<|endoftext|>",
    "pad_token_2": "!",
}
SD_CONFIGS["sd21-base"] = copy.deepcopy(SD_CONFIGS["sd21"])
SD_CONFIGS["sd21-base"]["unet"].update(sample_size=64, upcast_attention=False)
SD_CONFIGS["sd21-base"]["vae"].update(sample_size=512)
SD_CONFIGS["sd21-base"]["scheduler"] = {**SD_CONFIGS["sd15"]["scheduler"]}
SD_NAMES = tuple(SD_CONFIGS)


def configs(name: str, reduced: bool = False) -> dict:
    """The component configs of SD architecture `name` (see `SD_NAMES`), full or reduced (module docstring).

    Raises:
        ValueError: an unknown name.
    """
    if name not in SD_CONFIGS:
        raise ValueError(f"unknown SD architecture {name!r}; choose from {list(SD_CONFIGS)}")
    out = copy.deepcopy(SD_CONFIGS[name])
    if not reduced:
        return out
    unet, vae, text = out["unet"], out["vae"], out["text_encoder"]
    heads = unet["attention_head_dim"]
    # head counts kept: SD 1.x has 8 heads everywhere, SD 2.x 5/10/20/20 heads of 64 channels; 8 channels a head
    unet["block_out_channels"] = [8 * h for h in heads] if isinstance(heads, list) else [32, 64, 128, 128]
    unet["norm_num_groups"] = 8
    text.update(hidden_size=32 if name in ("sd15", "sdxl") else 40, intermediate_size=64, num_attention_heads=4,
                num_hidden_layers=2, projection_dim=32)
    unet["cross_attention_dim"] = text["hidden_size"]
    if "text_encoder_2" in out:  # SDXL: the two encoders' states are concatenated, the second's pooled vector added
        out["text_encoder_2"].update(hidden_size=48, intermediate_size=96, num_attention_heads=4, num_hidden_layers=2,
                                     projection_dim=48)
        unet["cross_attention_dim"] = text["hidden_size"] + 48
        unet["projection_class_embeddings_input_dim"] = 48 + 6 * unet["addition_time_embed_dim"]
    vae.update(block_out_channels=[16, 32, 32, 32], layers_per_block=1, norm_num_groups=8)
    return out


def clip_text_tower(config: dict, pad_token: str, cls, dtype: torch.dtype = torch.float32):
    """A random-weight CLIP text encoder of class `cls` (`CLIPTextModel` or `CLIPTextModelWithProjection`) with
    `config`, and CLIP's real tokenizer padding with `pad_token`: (encoder, tokenizer)."""
    from transformers import CLIPTextConfig

    from promptseg.models.tokenizers import BOS, EOS, build_clip_tokenizer

    tokenizer = build_clip_tokenizer(model_max_length=77, pad_token=pad_token)
    encoder = cls(CLIPTextConfig(**config, bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
                                 eos_token_id=tokenizer.convert_tokens_to_ids(EOS), pad_token_id=tokenizer.pad_token_id))
    return (encoder if dtype == torch.float32 else encoder.to(dtype)), tokenizer


def build_sd(name: str, reduced: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """Random-weight components of SD architecture `name`: unet, vae, text_encoder, tokenizer (CLIP's real BPE
    vocabulary), scheduler, seeded."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    spec = configs(name, reduced)
    torch.manual_seed(seed)

    text, tokenizer = clip_text_tower(spec["text_encoder"], spec["pad_token"], CLIPTextModel, dtype)
    unet = UNet2DConditionModel(**spec["unet"]).to(dtype)
    vae = AutoencoderKL(**spec["vae"]).to(dtype)
    scheduler_spec = dict(spec["scheduler"])
    scheduler = getattr(diffusers, scheduler_spec.pop("_class_name")).from_config(scheduler_spec)
    parts = {"unet": unet, "vae": vae, "text_encoder": text, "tokenizer": tokenizer, "scheduler": scheduler}
    if "text_encoder_2" in spec:
        parts["text_encoder_2"], parts["tokenizer_2"] = clip_text_tower(spec["text_encoder_2"], spec["pad_token_2"],
                                                                        CLIPTextModelWithProjection, dtype)
    return parts


def save_sd(name: str, folder: str | Path, reduced: bool = False, seed: int = 0) -> Path:
    """Save `build_sd(name, reduced, seed)` as a diffusers folder (`StableDiffusionPipeline.save_pretrained`, or
    `StableDiffusionXLPipeline`'s for SDXL)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    parts = build_sd(name, reduced, seed)
    if "text_encoder_2" in parts:
        pipe = StableDiffusionXLPipeline(**parts)
    else:
        pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return Path(folder)
