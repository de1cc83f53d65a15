"""Qwen-Image with random weights (its 20B dual-stream MMDiT), full or reduced, and a diffusers folder of it.

The transformer config is diffusers' `QwenImageTransformer2DModel` defaults, Qwen-Image's published structure: 60
dual-stream blocks of 24 heads x 128, 2x2 patches of the 16-channel latents (64 input channels), rotary axes
16 / 56 / 56, text states 3584 wide. Its text encoder is Qwen2.5-VL-7B (`Qwen2_5_VLForConditionalGeneration`; the
pipeline reads the last hidden states of the prompt inside its template, the template's first 34 tokens dropped);
the VAE is `AutoencoderKLQwenImage` (a video VAE run on one frame, per-channel latent mean and std). The tokenizer
is `flux2_configs.build_chat_tokenizer`'s byte-level BPE (Qwen's vocabulary cannot be had here); with it the
template's system prefix is another number of tokens than the real tokenizer's 34, which the backbone counts
(`QwenImageBackbone.drop`).

`reduced=True` keeps the block structure (60 blocks, 2x2 patches, 16 latent channels, the VAE's 8x downsampling,
three rotary axes) and shrinks every width (2 heads of 16 channels, a 2-layer Qwen2.5-VL text tower 32 wide with a
one-block vision tower), the native size to 256 px (a 16x16 token grid) and the text length to 64.

    save_qwenimage("qwen-image", "runs/qwen-image-random", reduced=True)    # a diffusers folder `load_backbone` reads
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

QWENIMAGE_CONFIGS = {
    "qwen-image": {
        "transformer": {"patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60,
                        "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
                        "guidance_embeds": False, "axes_dims_rope": [16, 56, 56]},
        "text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                 "num_key_value_heads": 4, "vocab_size": 152064},
        "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584,
                   "fullatt_block_indexes": [7, 15, 23, 31], "window_size": 112, "patch_size": 14,
                   "spatial_merge_size": 2, "temporal_patch_size": 2},
        "vae": {"base_dim": 96, "z_dim": 16},
        "scheduler": {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 8192, "max_shift": 0.9,
                      "num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": True},
        "max_sequence_length": 512,
    },
}
QWENIMAGE_NAMES = tuple(QWENIMAGE_CONFIGS)


def qwenimage_configs(name: str, reduced: bool = False) -> dict:
    """The component configs of Qwen-Image architecture `name` (`QWENIMAGE_NAMES`), full or reduced.

    Raises:
        ValueError: an unknown name.
    """
    if name not in QWENIMAGE_CONFIGS:
        raise ValueError(f"unknown Qwen-Image architecture {name!r}; choose from {list(QWENIMAGE_CONFIGS)}")
    out = copy.deepcopy(QWENIMAGE_CONFIGS[name])
    if reduced:
        out["transformer"].update(attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  axes_dims_rope=[4, 6, 6])
        out["text"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=512, rope_parameters={"rope_type": "default",
                           "rope_theta": 1000000.0, "mrope_section": [1, 1, 2]})
        out["vision"].update(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                             fullatt_block_indexes=[0])
        out["vae"].update(base_dim=8)
        out["max_sequence_length"] = 64
        out["sample_size"] = 32
    return out


def build_qwenimage(name: str = "qwen-image", reduced: bool = False, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> dict:
    """Random-weight components of Qwen-Image architecture `name`, seeded (the parts
    `promptseg.models.qwenimage.backbone_from_parts` takes)."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from promptseg.models.flux2_configs import build_chat_tokenizer

    def cast(module):
        return module if dtype == torch.float32 else module.to(dtype)

    spec = qwenimage_configs(name, reduced)
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(text_config=spec["text"], vision_config=spec["vision"])
    return {
        "transformer": cast(QwenImageTransformer2DModel(**spec["transformer"])),
        "vae": cast(AutoencoderKLQwenImage(**spec["vae"])),
        "scheduler": FlowMatchEulerDiscreteScheduler(**spec["scheduler"]),
        "text_encoders": [cast(Qwen2_5_VLForConditionalGeneration(config))],
        "tokenizers": [build_chat_tokenizer(spec["text"]["vocab_size"], 1024)],
    }


def save_qwenimage(name: str, folder: str | Path, reduced: bool = False, seed: int = 0) -> Path:
    """Save `build_qwenimage(name, reduced, seed)` as a diffusers Qwen-Image folder (`QwenImagePipeline`); a reduced
    copy also gets a `promptseg_settings.json` with its native size and text length."""
    from diffusers import QwenImagePipeline

    parts = build_qwenimage(name, reduced, seed)
    pipe = QwenImagePipeline(transformer=parts["transformer"], vae=parts["vae"], scheduler=parts["scheduler"],
                             text_encoder=parts["text_encoders"][0], tokenizer=parts["tokenizers"][0])
    pipe.save_pretrained(folder, safe_serialization=True)
    spec = qwenimage_configs(name, reduced)
    if reduced:
        settings = {"sample_size": spec["sample_size"], "max_sequence_length": spec["max_sequence_length"]}
        (Path(folder) / "promptseg_settings.json").write_text(json.dumps(settings, indent=1))
    return Path(folder)
