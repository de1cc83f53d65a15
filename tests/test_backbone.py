import json

import pytest
import torch
from PIL import Image

from promptseg import load_backbone
from promptseg.models import choose_device, choose_dtype


def test_sizes_are_read_from_the_configs(tiny):
    assert tiny.latent_size == (16, 16)
    assert tiny.vae_scale_factor == 2
    assert tiny.image_size == (32, 32)
    assert tiny.text_length == 20
    assert tiny.prediction_type == "epsilon"
    assert tiny.device == torch.device("cpu") and tiny.dtype == torch.float32
    assert not any(p.requires_grad for p in tiny.unet.parameters())
    assert not any(p.requires_grad for p in tiny.text_encoder.parameters())


def test_folder_and_single_file_load_the_same_model(tiny, tiny_single_file):
    packed = load_backbone(str(tiny_single_file), device="cpu")
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        text_a = tiny.encode_text("a cat")
        text_b = packed.encode_text("a cat")
        assert torch.equal(text_a, text_b)
        out_a = tiny.unet(latents, 10, encoder_hidden_states=text_a).sample
        out_b = packed.unet(latents, 10, encoder_hidden_states=text_b).sample
        pixels = torch.zeros(1, 3, 32, 32)
        assert torch.equal(tiny.encode_image(pixels), packed.encode_image(pixels))
    assert torch.allclose(out_a, out_b, atol=1e-5)
    assert packed.tokenizer("a cat").input_ids == tiny.tokenizer("a cat").input_ids
    assert packed.latent_size == tiny.latent_size and packed.text_length == tiny.text_length


def test_dtype_is_applied(tiny_folder):
    half = load_backbone(str(tiny_folder), device="cpu", dtype="bf16")
    assert half.dtype == torch.bfloat16
    assert next(half.unet.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt"])
def test_pickle_checkpoints_are_refused_without_the_flag(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match=f"refusing to load pickle checkpoint .*model{suffix}.*allow_pickle"):
        load_backbone(str(path), device="cpu")
    # with the flag the refusal is lifted and the (empty) checkpoint fails later, for another reason
    with pytest.raises(Exception) as info:
        load_backbone(str(path), device="cpu", allow_pickle=True, local_files_only=True)
    assert "refusing" not in str(info.value)


def test_missing_paths_and_unreachable_hub_ids_say_how_to_fix(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_backbone(str(tmp_path / "nowhere.safetensors"), device="cpu")
    with pytest.raises(FileNotFoundError, match="not a diffusers folder"):
        load_backbone(str(tmp_path), device="cpu")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(OSError) as info:
        load_backbone("someone/not-a-cached-model", device="cpu", local_files_only=True)
    message = str(info.value)
    assert "someone/not-a-cached-model" in message and "HF_HUB_OFFLINE" in message and "local diffusers folder" in message


def test_device_and_dtype_are_chosen_not_hard_coded(monkeypatch):
    assert choose_dtype(None, torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert choose_dtype(None, torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert choose_dtype("fp16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="'fp8'"):
        choose_dtype("fp8", torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device(None) == torch.device("cuda")
    with pytest.raises(ValueError, match="'gpu0'"):
        choose_device("gpu0")


def test_prompt_longer_than_the_encoder_is_an_error(tiny):
    with pytest.raises(ValueError, match="longer than the text encoder's 20 tokens"):
        tiny.encode_text(" ".join(["cat"] * 30))


def test_model_folders_can_recommend_method_settings(tiny_folder, tmp_path):
    import json
    import shutil

    from promptseg import build_method
    from promptseg.pipeline import Pipeline

    folder = tmp_path / "with_settings"
    shutil.copytree(tiny_folder, folder)
    (folder / "promptseg_settings.json").write_text(json.dumps({"baseline": {"timestep": 42, "template": "{}"}}))
    backbone = load_backbone(str(folder), device="cpu")
    assert backbone.method_defaults == {"baseline": {"timestep": 42, "template": "{}"}}
    assert build_method("baseline", backbone).config.timestep == 42
    assert build_method("baseline", backbone, timestep=7).config.timestep == 7  # the caller wins
    assert Pipeline(str(folder), "baseline", settings={"template": "a {}"}).method.config.template == "a {}"
    assert Pipeline(str(folder), "baseline").method.config.timestep == 42
    assert Pipeline(str(tiny_folder), "baseline").method.config.timestep == 100  # no file: the paper's defaults
    (folder / "promptseg_settings.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Pipeline(str(folder), "baseline")


def test_the_vae_runs_channels_last_and_encodes_what_a_contiguous_copy_does(tiny):
    import copy

    assert tiny.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    plain = copy.deepcopy(tiny.vae).to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        expected = plain.encode(pixels).latent_dist.mean * tiny.vae.config.scaling_factor
        latents = tiny.encode_image(pixels)
    assert latents.is_contiguous() and torch.allclose(latents, expected, atol=1e-5)


def test_the_unet_family_implements_the_backbone_interface_and_its_vae_round_trips():
    """decode_image undoes encode_image's scaling: the bundled shapes VAE reconstructs a test image closely (a
    missing or doubled scaling factor would not)."""
    from promptseg.data.shapes_world import render_sample
    from promptseg.models import DiffusionBackbone

    backbone = load_backbone("shapes", device="cpu")
    assert isinstance(backbone, DiffusionBackbone) and backbone.family == "unet"
    assert backbone.denoiser is backbone.unet and backbone.attention_grids("cross")[0] == backbone.latent_size
    pixels = backbone.preprocess(Image.fromarray(render_sample("val", 0).image))
    with torch.no_grad():
        back = backbone.decode_image(backbone.encode_image(pixels))
    assert back.shape == pixels.shape and (back - pixels).abs().mean() < 0.1


def test_folders_of_families_not_loaded_yet_are_refused_by_name(tmp_path):
    for pipeline in ("PixArtAlphaPipeline", "PixArtSigmaPipeline"):
        folder = tmp_path / pipeline
        (folder / "transformer").mkdir(parents=True)
        (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
        with pytest.raises(ValueError, match=f"diffusion transformer .*{pipeline}.* SD3/SD3.5 \\(MMDiT\\), FLUX.1, FLUX.2-klein, Z-Image and Qwen-Image"):
            load_backbone(str(folder), device="cpu")


def test_hub_ids_of_other_diffusion_transformers_are_refused_by_name(monkeypatch):
    from diffusers import DiffusionPipeline

    from promptseg.models.loader import UnsupportedModel

    indexes = {"black-forest-labs/FLUX.2-dev": "Flux2Pipeline", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": "WanPipeline",
               "PixArt-alpha/PixArt-XL-2-1024-MS": "PixArtAlphaPipeline"}
    monkeypatch.setattr(DiffusionPipeline, "load_config", classmethod(
        lambda cls, name, **kwargs: {"_class_name": indexes[name], "transformer": ["diffusers", "X"], "vae": []}))
    for name, pipeline in indexes.items():
        with pytest.raises(UnsupportedModel, match=f"{name} is a {pipeline} model, which promptseg does not load yet"):
            load_backbone(name, device="cpu", local_files_only=True)
