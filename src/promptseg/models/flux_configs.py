"""FLUX.1 architectures with random weights (dev and schnell), full or reduced, and a diffusers folder of them.

The configs are written from the published `config.json` files of `black-forest-labs/FLUX.1-dev` and
`FLUX.1-schnell`: the transformer (19 double-stream and 38 single-stream blocks of 24 heads x 128 channels, rotary
axes 16/56/56; dev embeds guidance, schnell does not), the 16-channel VAE with FLUX's shift and scale, CLIP-L (its
pooled vector), T5-v1.1-XXL (4096 wide, 24 layers) and the flow-matching scheduler (dev: dynamic shifting, schnell:
none). T5's SentencePiece vocabulary cannot be had here: its tokenizer is a Unigram model over SentencePiece's
conventions ("▁" word starts, no start token, "</s>" at the end) trained by `build_t5_tokenizer` on the bundled class
names, so word finding runs on real SentencePiece-style tokens.

`reduced=True` keeps the block structure (19 double + 38 single blocks, 2x2 packing, 16 latent channels, the VAE's
8x downsampling, rotary embedding over three axes) and shrinks every width (2 heads of 16 channels, 2-layer CLIP and
T5 encoders 32 and 64 wide) and the native size to 256 px (a 16x16 token grid), with T5's length 64.

    save_flux("flux1", "runs/flux-random", reduced=True)    # a diffusers folder `load_backbone` reads
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

_VAE = {"act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3, "latent_channels": 16, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
        "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
        "up_block_types": ["UpDecoderBlock2D"] * 4, "use_post_quant_conv": False, "use_quant_conv": False}
_T5_XXL = {"d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64, "vocab_size": 32128,
           "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32, "dense_act_fn": "gelu_new",
           "is_gated_act": True}
FLUX_CONFIGS = {
    "flux1": {  # FLUX.1-dev
        "transformer": {"attention_head_dim": 128, "guidance_embeds": True, "in_channels": 64,
                        "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
                        "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768,
                        "axes_dims_rope": [16, 56, 56]},
        "vae": _VAE,
        "clip": {"hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072,
                 "max_position_embeddings": 77, "num_attention_heads": 12, "num_hidden_layers": 12,
                 "vocab_size": 49408},
        "t5": _T5_XXL,
        "max_sequence_length": 512,
        "scheduler": {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
                      "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True},
    },
}
FLUX_CONFIGS["flux1-schnell"] = copy.deepcopy(FLUX_CONFIGS["flux1"])
FLUX_CONFIGS["flux1-schnell"]["transformer"]["guidance_embeds"] = False
FLUX_CONFIGS["flux1-schnell"]["max_sequence_length"] = 256
FLUX_CONFIGS["flux1-schnell"]["scheduler"].update(shift=1.0, use_dynamic_shifting=False)
FLUX_NAMES = tuple(FLUX_CONFIGS)


def flux_configs(name: str, reduced: bool = False) -> dict:
    """The component configs of FLUX architecture `name` (`FLUX_NAMES`), full or reduced.

    Raises:
        ValueError: an unknown name.
    """
    if name not in FLUX_CONFIGS:
        raise ValueError(f"unknown FLUX architecture {name!r}; choose from {list(FLUX_CONFIGS)}")
    out = copy.deepcopy(FLUX_CONFIGS[name])
    if reduced:
        out["transformer"].update(attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                                  pooled_projection_dim=32, axes_dims_rope=[4, 6, 6])
        out["clip"].update(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)
        out["t5"].update(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=512)
        out["vae"].update(block_out_channels=[16, 32, 32, 32], layers_per_block=1, norm_num_groups=8, sample_size=256)
        out["max_sequence_length"] = 64
        out["sample_size"] = 32
    return out


def build_t5_tokenizer(model_max_length: int, vocab_size: int = 500):
    """A `T5TokenizerFast` with SentencePiece's conventions (a Unigram model over "▁"-marked pieces, no start token,
    "</s>" closing every text; pad 0, end 1, unknown 2 as T5's) trained on the bundled class names and prompt words:
    T5's own vocabulary cannot be downloaded here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    from promptseg.data.base import bundled_class_names

    words = ["a photograph of a", "a photo of the", "and", "on", "in", "with", "left", "right", "of"]
    for name in ("voc21", "context60", "coco_object", "ade150"):
        words += bundled_class_names(name)
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tokenizer.train_from_iterator([", ".join(words)] * 4 + words, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                             special_tokens=[("</s>", tokenizer.token_to_id("</s>"))])
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=model_max_length)


def build_flux(name: str = "flux1", reduced: bool = False, seed: int = 0, dtype: torch.dtype = torch.float32,
               with_t5: bool = True) -> dict:
    """Random-weight components of FLUX architecture `name`, seeded (the parts
    `promptseg.models.flux.backbone_from_parts` takes). `with_t5=False` leaves T5 unbuilt (`t5_encoder` None:
    the scale benchmark's full size, where T5-XXL's 4.7B parameters do not fit this machine)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from promptseg.models.sd_configs import clip_text_tower

    def cast(module):
        return module if dtype == torch.float32 else module.to(dtype)

    spec = flux_configs(name, reduced)
    torch.manual_seed(seed)
    clip, clip_tokenizer = clip_text_tower(spec["clip"], "<|endoftext|>", CLIPTextModel, dtype)
    t5 = cast(T5EncoderModel(T5Config(**spec["t5"]))) if with_t5 else None
    return {
        "transformer": cast(FluxTransformer2DModel(**spec["transformer"])),
        "vae": cast(AutoencoderKL(**spec["vae"])),
        "scheduler": FlowMatchEulerDiscreteScheduler(**spec["scheduler"]),
        "text_encoders": [clip], "tokenizers": [clip_tokenizer],
        "t5_encoder": t5, "t5_tokenizer": build_t5_tokenizer(spec["max_sequence_length"]),
    }


def save_flux(name: str, folder: str | Path, reduced: bool = False, seed: int = 0) -> Path:
    """Save `build_flux(name, reduced, seed)` as a diffusers FLUX folder (`FluxPipeline.save_pretrained`); a reduced
    copy also gets a `promptseg_settings.json` with its native size and T5 length."""
    from diffusers import FluxPipeline

    parts = build_flux(name, reduced, seed)
    pipe = FluxPipeline(transformer=parts["transformer"], vae=parts["vae"], scheduler=parts["scheduler"],
                        text_encoder=parts["text_encoders"][0], tokenizer=parts["tokenizers"][0],
                        text_encoder_2=parts["t5_encoder"], tokenizer_2=parts["t5_tokenizer"])
    pipe.save_pretrained(folder, safe_serialization=True)
    spec = flux_configs(name, reduced)
    if reduced:
        settings = {"sample_size": spec["sample_size"], "max_sequence_length": spec["max_sequence_length"]}
        (Path(folder) / "promptseg_settings.json").write_text(json.dumps(settings, indent=1))
    return Path(folder)
