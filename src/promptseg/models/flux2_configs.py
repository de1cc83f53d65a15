"""FLUX.2 architectures with random weights (klein 4B and 9B; dev's transformer), full or reduced, and a diffusers
folder of klein.

The transformer configs are the published block structures (BFL's `Flux2Params` / `Klein4BParams` /
`Klein9BParams`, as diffusers' `Flux2Transformer2DModel` reads them): klein-4B 5 double- and 20 single-stream blocks
of 24 heads x 128, klein-9B 8 + 24 of 32 heads, dev 8 + 48 of 48 heads; rotary embedding over four axes of 32
(theta 2000), 128 input channels (the 32-channel VAE's latents patchified 2x2), no guidance embedding on klein. The
text side of klein is Qwen3 (4B: 2560 wide, 36 layers; 8B: 4096), whose hidden states at layers 9, 18 and 27 are
concatenated per token (`Flux2KleinPipeline`), so the transformer's text width is 3 x the LLM's. The VAE is
`AutoencoderKLFlux2` (32 latent channels, batch-norm statistics over the patchified latents). The scheduler's
config is not published in this project's reach: flow-matching defaults with FLUX.1-dev's dynamic shifting, said
here. Qwen's byte-level BPE vocabulary cannot be downloaded here: `build_chat_tokenizer` trains a byte-level BPE
(Qwen's conventions: "Ġ" word starts, `<|im_start|>` / `<|im_end|>` turns, `<|endoftext|>` padding on the right)
on the bundled class names, with Qwen3's chat template (a user turn, the generation prompt and, with
`enable_thinking=False`, the empty think block), so word finding runs on real LLM-style tokens inside the template.

`reduced=True` keeps the block structure (5 + 20 blocks, 4 rotary axes, 2x2 patchifying of 32 channels, the VAE's
8x downsampling, Qwen3's 36 layers so that layers 9, 18 and 27 exist) and shrinks every width (2 heads of 16
channels, Qwen3 32 wide), the native size to 256 px (a 16x16 token grid) and the text length to 64.

    save_flux2("flux2-klein-4b", "runs/flux2-random", reduced=True)    # a diffusers folder `load_backbone` reads
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
"""Qwen3's chat template for what the pipeline renders: user turns, the generation prompt, the empty think block
when `enable_thinking` is False (its published template, cut to these cases)."""
_VAE = {"block_out_channels": [128, 256, 512, 512], "latent_channels": 32, "layers_per_block": 2,
        "norm_num_groups": 32, "sample_size": 1024}
_SCHEDULER = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
              "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}
FLUX2_CONFIGS = {
    "flux2-klein-4b": {
        "transformer": {"attention_head_dim": 128, "guidance_embeds": False, "in_channels": 128,
                        "joint_attention_dim": 7680, "num_attention_heads": 24, "num_layers": 5,
                        "num_single_layers": 20, "patch_size": 1, "axes_dims_rope": [32, 32, 32, 32],
                        "rope_theta": 2000, "mlp_ratio": 3.0},
        "qwen3": {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
                  "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960,
                  "rope_theta": 1000000, "tie_word_embeddings": True},
        "vae": _VAE,
        "scheduler": _SCHEDULER,
        "max_sequence_length": 512,
        "text_layers": [9, 18, 27],
    },
}
FLUX2_CONFIGS["flux2-klein-9b"] = copy.deepcopy(FLUX2_CONFIGS["flux2-klein-4b"])
FLUX2_CONFIGS["flux2-klein-9b"]["transformer"].update(num_attention_heads=32, num_layers=8, num_single_layers=24,
                                                      joint_attention_dim=12288)
FLUX2_CONFIGS["flux2-klein-9b"]["qwen3"].update(hidden_size=4096, intermediate_size=12288, tie_word_embeddings=False)
FLUX2_NAMES = tuple(FLUX2_CONFIGS)
FLUX2_DEV_TRANSFORMER = {"attention_head_dim": 128, "guidance_embeds": True, "in_channels": 128,
                         "joint_attention_dim": 15360, "num_attention_heads": 48, "num_layers": 8,
                         "num_single_layers": 48, "patch_size": 1, "axes_dims_rope": [32, 32, 32, 32],
                         "rope_theta": 2000, "mlp_ratio": 3.0}
"""FLUX.2-dev's transformer (diffusers' `Flux2Transformer2DModel` defaults): its text side is Mistral-Small 3.x
(layers 10, 20, 30; 5120 wide), which promptseg does not load yet."""


def flux2_configs(name: str, reduced: bool = False) -> dict:
    """The component configs of FLUX.2 architecture `name` (`FLUX2_NAMES`), full or reduced.

    Raises:
        ValueError: an unknown name.
    """
    if name not in FLUX2_CONFIGS:
        raise ValueError(f"unknown FLUX.2 architecture {name!r}; choose from {list(FLUX2_CONFIGS)}")
    out = copy.deepcopy(FLUX2_CONFIGS[name])
    if reduced:
        out["qwen3"].update(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=8, vocab_size=512, max_position_embeddings=256)
        out["transformer"].update(attention_head_dim=16, num_attention_heads=2, axes_dims_rope=[4, 4, 4, 4],
                                  joint_attention_dim=3 * 32)
        out["vae"].update(block_out_channels=[16, 32, 32, 32], layers_per_block=1, norm_num_groups=8, sample_size=256)
        out["max_sequence_length"] = 64
        out["sample_size"] = 16
    return out


def build_chat_tokenizer(vocab_size: int = 512, model_max_length: int = 512):
    """A `Qwen2Tokenizer` with Qwen's conventions (a byte-level BPE, "Ġ"-marked word starts, `<|endoftext|>` padding
    on the right, no start token) and Qwen3's chat template, trained on the bundled class names and prompt words:
    Qwen's own vocabulary cannot be downloaded here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    from promptseg.data.base import bundled_class_names

    words = ["a photograph of a", "a photo of the", "and", "on", "in", "with", "left", "right", "of"]
    for name in ("voc21", "context60", "coco_object", "ade150"):
        words += bundled_class_names(name)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([", ".join(words)] * 4 + words, trainer)
    out = Qwen2TokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                             unk_token=None, bos_token=None, model_max_length=model_max_length, padding_side="right")
    out.chat_template = QWEN3_CHAT_TEMPLATE
    return out


def build_flux2(name: str = "flux2-klein-4b", reduced: bool = False, seed: int = 0,
                dtype: torch.dtype = torch.float32, with_text: bool = True) -> dict:
    """Random-weight components of FLUX.2 architecture `name`, seeded (the parts
    `promptseg.models.flux2.backbone_from_parts` takes); `with_text=False` leaves Qwen3 unbuilt."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    def cast(module):
        return module if dtype == torch.float32 else module.to(dtype)

    spec = flux2_configs(name, reduced)
    torch.manual_seed(seed)
    tokenizer = build_chat_tokenizer(spec["qwen3"]["vocab_size"], spec["max_sequence_length"])
    text = cast(Qwen3ForCausalLM(Qwen3Config(**spec["qwen3"]))) if with_text else None
    return {
        "transformer": cast(Flux2Transformer2DModel(**spec["transformer"])),
        "vae": cast(AutoencoderKLFlux2(**spec["vae"])),
        "scheduler": FlowMatchEulerDiscreteScheduler(**spec["scheduler"]),
        "text_encoders": [text], "tokenizers": [tokenizer],
    }


def save_flux2(name: str, folder: str | Path, reduced: bool = False, seed: int = 0) -> Path:
    """Save `build_flux2(name, reduced, seed)` as a diffusers FLUX.2-klein folder (`Flux2KleinPipeline`); a reduced
    copy also gets a `promptseg_settings.json` with its native size and text length."""
    from diffusers import Flux2KleinPipeline

    parts = build_flux2(name, reduced, seed)
    pipe = Flux2KleinPipeline(transformer=parts["transformer"], vae=parts["vae"], scheduler=parts["scheduler"],
                              text_encoder=parts["text_encoders"][0], tokenizer=parts["tokenizers"][0])
    pipe.save_pretrained(folder, safe_serialization=True)
    spec = flux2_configs(name, reduced)
    if reduced:
        settings = {"sample_size": spec["sample_size"], "max_sequence_length": spec["max_sequence_length"]}
        (Path(folder) / "promptseg_settings.json").write_text(json.dumps(settings, indent=1))
    return Path(folder)
