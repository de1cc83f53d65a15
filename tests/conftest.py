"""Tiny real diffusers components, built once per session, seeded (diffusers' `get_dummy_components` habit)."""

from __future__ import annotations

import pytest
import torch

TINY_WORDS = ("a", "photograph", "of", "and", "cat", "dog", "person", "people", "grass", "sky", "tree", "red")


def make_tiny_components(seed: int = 0):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from promptseg.models.tokenizers import build_word_tokenizer

    torch.manual_seed(seed)
    tokenizer = build_word_tokenizer(TINY_WORDS, model_max_length=20)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=20,
            bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>"),
            eos_token_id=eos,
            pad_token_id=eos,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=32,
    )
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """The tiny model saved in the diffusers folder layout."""
    from diffusers import StableDiffusionPipeline

    folder = tmp_path_factory.mktemp("tiny_sd")
    pipe = StableDiffusionPipeline(
        **make_tiny_components(), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny(tiny_folder):
    """The tiny model loaded through `load_backbone` on CPU, float32."""
    from promptseg import load_backbone

    return load_backbone(str(tiny_folder), device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_single_file(tiny, tmp_path_factory):
    """The tiny model as one packed `.safetensors` file."""
    from promptseg.models.unet import save_packed

    return save_packed(tiny, tmp_path_factory.mktemp("tiny_file") / "tiny.safetensors")


def make_tiny_clip(folder, words=("a", "photo", "of", "cat", "dog")):
    """A tiny random transformers CLIPModel whose tokenizer knows `words`, with its processor, saved in `folder`."""
    from transformers import CLIPConfig, CLIPModel

    from promptseg.models.tokenizers import build_word_tokenizer
    from promptseg.training.shapes_clip import make_processor

    torch.manual_seed(0)
    tokenizer = build_word_tokenizer(words, model_max_length=12)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=12, eos_token_id=eos, pad_token_id=eos,
                         bos_token_id=tokenizer.convert_tokens_to_ids("<|startoftext|>")),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2),
        projection_dim=8,
    )
    model = CLIPModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    make_processor(tokenizer, image_size=32).save_pretrained(folder)
    return model


@pytest.fixture(scope="session")
def tiny_clip_folder(tmp_path_factory):
    """A tiny random transformers CLIPModel with its processor, saved as a local folder."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    return folder, make_tiny_clip(folder)


@pytest.fixture(scope="session")
def reduced_folder(tmp_path_factory):
    """`reduced_folder(arch)`: the folder of a reduced copy of a real diffusion transformer ("sd3", "flux1",
    "flux2-klein-4b", "zimage-turbo", "qwen-image": the exact block structure at tiny widths, by promptseg's config
    writers), written once per session; each test module loads its own backbone from it."""
    folders = {}

    def folder(arch: str):
        if arch not in folders:
            from promptseg.models.dit_configs import save_dit
            from promptseg.models.flux2_configs import save_flux2
            from promptseg.models.flux_configs import save_flux
            from promptseg.models.qwenimage_configs import save_qwenimage
            from promptseg.models.zimage_configs import save_zimage

            writer = {"sd3": save_dit, "flux1": save_flux, "flux2-klein-4b": save_flux2, "zimage-turbo": save_zimage,
                      "qwen-image": save_qwenimage}[arch]
            folders[arch] = writer(arch, tmp_path_factory.mktemp(arch) / f"{arch}-reduced", reduced=True)
        return folders[arch]

    return folder


@pytest.fixture(scope="session")
def image():
    """A 96 x 128 random RGB image (seeded): not square, and not the models' size."""
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
