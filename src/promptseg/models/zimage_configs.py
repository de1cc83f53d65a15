"""Z-Image architectures with random weights (Z-Image-Turbo's 6B single-stream transformer), full or reduced, and a
diffusers folder of them.

The transformer config is diffusers' `ZImageTransformer2DModel` defaults, which are Z-Image's published structure:
3840 wide, 30 heads, 30 single-stream layers after 2 noise-refiner (image) and 2 context-refiner (text) layers,
2x2 patches of the 16-channel VAE's latents, rotary axes 32 / 48 / 48 (theta 256), captions of 2560 channels. Its
text encoder is Qwen3-4B (`Qwen3Model`, 2560 wide, 36 layers; the pipeline reads the second-to-last hidden states of
the tokens its attention mask keeps) inside Qwen3's chat template with `enable_thinking=True`; the VAE is FLUX.1's
(shift 0.1159, scale 0.3611); the scheduler flow matching with shift 3 (the Turbo's). The tokenizer is
`flux2_configs.build_chat_tokenizer`'s byte-level BPE with Qwen3's template (Qwen's vocabulary cannot be had here).

`reduced=True` keeps the block structure (2 + 2 refiner layers, 30 main layers, 2x2 patches, 16 latent channels,
the VAE's 8x downsampling, three rotary axes) and shrinks every width (2 heads of 16 channels, a 4-layer Qwen3 32
wide), the native size to 256 px (a 16x16 token grid) and the text length to 64.

    save_zimage("zimage-turbo", "runs/zimage-random", reduced=True)    # a diffusers folder `load_backbone` reads
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from promptseg.models.flux_configs import FLUX_CONFIGS

ZIMAGE_CONFIGS = {
    "zimage-turbo": {
        "transformer": {"all_patch_size": [2], "all_f_patch_size": [1], "in_channels": 16, "dim": 3840, "n_layers": 30,
                        "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "norm_eps": 1e-5, "qk_norm": True,
                        "cap_feat_dim": 2560, "rope_theta": 256.0, "t_scale": 1000.0, "axes_dims": [32, 48, 48],
                        "axes_lens": [1024, 512, 512]},
        "qwen3": {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
                  "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960,
                  "rope_theta": 1000000},
        "vae": FLUX_CONFIGS["flux1"]["vae"],
        "scheduler": {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False},
        "max_sequence_length": 512,
    },
}
ZIMAGE_NAMES = tuple(ZIMAGE_CONFIGS)


def zimage_configs(name: str, reduced: bool = False) -> dict:
    """The component configs of Z-Image architecture `name` (`ZIMAGE_NAMES`), full or reduced.

    Raises:
        ValueError: an unknown name.
    """
    if name not in ZIMAGE_CONFIGS:
        raise ValueError(f"unknown Z-Image architecture {name!r}; choose from {list(ZIMAGE_CONFIGS)}")
    out = copy.deepcopy(ZIMAGE_CONFIGS[name])
    if reduced:
        out["transformer"].update(dim=32, n_heads=2, n_kv_heads=2, cap_feat_dim=32, axes_dims=[4, 6, 6])
        out["qwen3"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=8, vocab_size=512, max_position_embeddings=256)
        out["vae"].update(block_out_channels=[16, 32, 32, 32], layers_per_block=1, norm_num_groups=8, sample_size=256)
        out["max_sequence_length"] = 64
        out["sample_size"] = 32
    return out


def build_zimage(name: str = "zimage-turbo", reduced: bool = False, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> dict:
    """Random-weight components of Z-Image architecture `name`, seeded (the parts
    `promptseg.models.zimage.backbone_from_parts` takes)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from promptseg.models.flux2_configs import build_chat_tokenizer

    def cast(module):
        return module if dtype == torch.float32 else module.to(dtype)

    spec = zimage_configs(name, reduced)
    torch.manual_seed(seed)
    transformer = cast(ZImageTransformer2DModel(**spec["transformer"]))
    # diffusers initialises the learned pad tokens to zeros in memory (a checkpoint loads them): give them values
    with torch.no_grad():
        for pad in (transformer.x_pad_token, transformer.cap_pad_token):
            pad.normal_(0, 0.02)
    return {
        "transformer": transformer,
        "vae": cast(AutoencoderKL(**spec["vae"])),
        "scheduler": FlowMatchEulerDiscreteScheduler(**spec["scheduler"]),
        "text_encoders": [cast(Qwen3Model(Qwen3Config(**spec["qwen3"])))],
        "tokenizers": [build_chat_tokenizer(spec["qwen3"]["vocab_size"], spec["max_sequence_length"])],
    }


def save_zimage(name: str, folder: str | Path, reduced: bool = False, seed: int = 0) -> Path:
    """Save `build_zimage(name, reduced, seed)` as a diffusers Z-Image folder (`ZImagePipeline`); a reduced copy also
    gets a `promptseg_settings.json` with its native size and text length."""
    from diffusers import ZImagePipeline

    parts = build_zimage(name, reduced, seed)
    pipe = ZImagePipeline(transformer=parts["transformer"], vae=parts["vae"], scheduler=parts["scheduler"],
                          text_encoder=parts["text_encoders"][0], tokenizer=parts["tokenizers"][0])
    pipe.save_pretrained(folder, safe_serialization=True)
    spec = zimage_configs(name, reduced)
    if reduced:
        settings = {"sample_size": spec["sample_size"], "max_sequence_length": spec["max_sequence_length"]}
        (Path(folder) / "promptseg_settings.json").write_text(json.dumps(settings, indent=1))
    return Path(folder)
