"""At Stable Diffusion's scale: CLIP's real tokenizer on the field's class lists, SD 1.5 / 2.1 / 2.1-base
architectures with random weights (reduced widths in CI, full size marked slow), every method end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from promptseg.methods import build_method, list_methods, method_config
from promptseg.models.sd_configs import SD_NAMES, configs, save_sd
from promptseg.text import build_prompt, parse_labels, span_positions, split_to_fit

CLASSNAMES = Path(__file__).resolve().parents[1] / "src" / "promptseg" / "data" / "classnames"
LISTS = ("voc21", "context60", "coco_object", "ade150", "ade847", "context459", "coco_stuff171")


@pytest.fixture(scope="module")
def clip_tokenizer():
    from promptseg.models.tokenizers import build_clip_tokenizer

    return build_clip_tokenizer()


def test_the_real_vocabulary_tokenises_as_clip_does(clip_tokenizer):
    assert len(clip_tokenizer) == 49408
    assert clip_tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert clip_tokenizer.tokenize("pottedplant") == ["pot", "ted", "plant</w>"]  # a VOC name of three tokens


def prompt_forms():
    """(who, template, joiner) of every prompt built from a label list, read from the settings dataclasses."""
    from promptseg.filters import filter_config

    base, fast, inv = method_config("baseline"), method_config("fastseg"), method_config("invseg")
    diffusion = filter_config("diffusion")
    return [("baseline", base.template, base.joiner), ("fastseg", fast.class_template, fast.joiner),
            ("invseg", inv.template, inv.joiner), ("diffusion filter", diffusion.template, diffusion.joiner)]


@pytest.mark.parametrize("name", LISTS)
def test_every_class_name_finds_its_tokens_in_every_prompt(clip_tokenizer, name):
    from promptseg.data.base import read_class_names

    labels = parse_labels(read_class_names(CLASSNAMES / f"{name}.txt"), shared_synonyms=True)  # as eval reads it
    lengths = [len(clip_tokenizer(s, add_special_tokens=False).input_ids) for label in labels for s in label.synonyms]
    assert max(lengths) > 1  # multi-token names are part of every list
    for who, template, joiner in prompt_forms():
        groups = split_to_fit(clip_tokenizer, labels, template, joiner)
        kept = [label for group in groups for label in group]
        assert [label.name for label in kept] == [label.name for label in labels], who  # each label once, in order
        assert all(k.synonyms == x.synonyms[: len(k.synonyms)] for k, x in zip(kept, labels))  # a prefix at worst
        for group in groups:
            tokens = build_prompt(clip_tokenizer, group, template, joiner)
            ids = clip_tokenizer(tokens.prompt).input_ids
            assert len(ids) <= 77
            for label, spans in zip(group, tokens.positions):
                for synonym, span in zip(label.synonyms, spans):
                    assert ids[span[0]: span[-1] + 1] == clip_tokenizer(synonym, add_special_tokens=False).input_ids
    for label in labels[:50]:  # referring: a name inside a sentence
        text = f"the {label.name} on the left"
        (span,) = span_positions(clip_tokenizer, text, [(4, 4 + len(label.name))])
        ids = clip_tokenizer(text).input_ids
        assert ids[span[0]: span[-1] + 1] == clip_tokenizer(label.name, add_special_tokens=False).input_ids


def test_a_vocabulary_too_long_for_one_prompt_is_split_or_refused_clearly(clip_tokenizer):
    from promptseg.data.base import read_class_names

    labels = parse_labels(read_class_names(CLASSNAMES / "ade150.txt"))
    background = parse_labels(read_class_names(CLASSNAMES / "voc21.txt"))[0]  # 27 synonyms: too long alone
    (kept,) = split_to_fit(clip_tokenizer, [background], "a photo of a {}", " and a ")[0]
    assert kept.name == "background" and 1 < len(kept.synonyms) < len(background.synonyms)
    groups = split_to_fit(clip_tokenizer, labels, "a photograph of {}", " and ")
    assert len(groups) > 2
    with pytest.raises(ValueError, match="needs .* tokens but the text encoder takes 77"):
        build_prompt(clip_tokenizer, labels, "a photograph of {}", " and ")  # InvSeg needs one prompt


def attention_layout(unet_config: dict) -> list[tuple[str, int, int]]:
    """(block path, self/cross, transformer count) of every attention module, built on the meta device."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config)
    return [(name.rsplit(".attn", 1)[0], int(name.endswith("attn2")), module.heads)
            for name, module in unet.named_modules() if name.endswith(("attn1", "attn2"))]


@pytest.mark.parametrize("name", SD_NAMES)
def test_reduced_copies_keep_the_topology(name):
    full, reduced = configs(name), configs(name, reduced=True)
    assert attention_layout(full["unet"]) == attention_layout(reduced["unet"])  # places, kinds, head counts
    for key in ("sample_size", "down_block_types", "up_block_types", "layers_per_block"):
        assert full["unet"][key] == reduced["unet"][key]
    assert full["unet"].get("use_linear_projection") == reduced["unet"].get("use_linear_projection")
    assert len(full["vae"]["block_out_channels"]) == len(reduced["vae"]["block_out_channels"])
    assert full["scheduler"]["prediction_type"] == reduced["scheduler"]["prediction_type"]
    assert full["text_encoder"]["max_position_embeddings"] == 77
    if name == "sd21":
        assert full["text_encoder"]["hidden_size"] == 1024 and full["text_encoder"]["num_hidden_layers"] == 23
        assert full["unet"]["sample_size"] * 8 == 768 and full["scheduler"]["prediction_type"] == "v_prediction"


@pytest.fixture(scope="module")
def reduced_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd_reduced")
    return {name: save_sd(name, root / name, reduced=True) for name in SD_NAMES}


def check_result(result, size, labels):
    assert result.label_map.shape == size and result.scores.shape[1:] == size
    assert np.isfinite(result.scores).all()
    assert set(labels) <= set(result.labels)


METHOD_SETTINGS = {  # the defaults, made cheap where a default is a loop count; SAM off (none can load here)
    "baseline": {}, "fastseg": {}, "invseg": {"steps": 2}, "anyword": {"sam": None, "steps": 2},
    "dpseg": {"weights": "shapes-dpseg", "generation_steps": 2, "rounds": 1, "other_backbone": True},
}
IN_CI = ("baseline", "fastseg")  # one UNet pass or two; the optimising methods cost minutes at 64x64 latents


def run_methods(backbone, methods, tmp_path):
    image = Image.fromarray((np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8))
    labels = ["pottedplant", "person, people", "sky"]
    for method in methods:
        settings = dict(METHOD_SETTINGS[method])
        if method == "dpseg":
            settings["cache_dir"] = str(tmp_path / "prompts")
        result = build_method(method, backbone, **settings)(image, labels)
        check_result(result, (300, 400), ["pottedplant", "person", "sky"])


@pytest.mark.parametrize("name", ["sd15", "sd21-base", pytest.param("sd21", marks=pytest.mark.slow),
                                  pytest.param("sdxl", marks=pytest.mark.slow)])
def test_one_pass_methods_run_on_each_architecture_at_its_native_size(reduced_folders, name, tmp_path):
    """sd21 (768 px: 9,216-token self-attention maps) and sdxl (1024 px) take minutes even at reduced width: slow."""
    from promptseg import load_backbone

    backbone = load_backbone(str(reduced_folders[name]), device="cpu", dtype="fp32")
    assert backbone.image_size == {"sd21": (768, 768), "sdxl": (1024, 1024)}.get(name, (512, 512))
    run_methods(backbone, IN_CI, tmp_path)


def test_sdxl_is_conditioned_on_both_encoders_the_pooled_vector_and_size_ids(reduced_folders, tmp_path):
    """Reduced SDXL, run at 512 px in CI (its UNet takes any size; 1024 px is the slow test above)."""
    from promptseg import load_backbone

    backbone = load_backbone(str(reduced_folders["sdxl"]), device="cpu", dtype="fp32")
    assert backbone.text_encoder_2 is not None and backbone.attention_grids("cross") == [(64, 64), (32, 32)]
    text = backbone.encode_text(["a cat", "a dog"])
    widths = backbone.text_encoder.config.hidden_size + backbone.text_encoder_2.config.hidden_size
    assert text.shape == (2, 78, widths) and backbone.context_of(text).shape == (2, 77, widths)
    seen = {}
    real = backbone.unet.forward

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    backbone.unet.forward = spy
    try:
        backbone.predict(torch.randn(2, 4, 128, 128), torch.tensor([10, 10]), text)
    finally:
        del backbone.unet.forward
    assert seen["encoder_hidden_states"].shape == (2, 77, widths)
    assert torch.equal(seen["added_cond_kwargs"]["time_ids"][0], torch.tensor([1024.0, 1024, 0, 0, 1024, 1024]))
    assert seen["added_cond_kwargs"]["text_embeds"].shape == (2, backbone.text_encoder_2.config.projection_dim)
    # DiffSegmenter's 8x8 / 16x16 weights (fractions 1/8, 1/4 of SD-1.5's latent) have no grid on SDXL: they move to
    # the nearest there is (32x32 at 1024 px) instead of vanishing
    from promptseg.diffusion.attention import resolve_weights
    from promptseg.methods.baseline import BaselineConfig

    weights = resolve_weights(BaselineConfig().cross_weights, backbone, "cross")
    assert {g: round(w, 6) for g, w in weights.items()} == {(32, 32): 0.8, (64, 64): 0.2}
    backbone.unet.register_to_config(sample_size=64)  # 512 px: the UNet is convolutional
    run_methods(backbone, IN_CI, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", SD_NAMES)
def test_every_method_runs_on_each_architecture_at_its_native_size(reduced_folders, name, tmp_path):
    from promptseg import load_backbone

    assert set(METHOD_SETTINGS) == set(list_methods())
    run_methods(load_backbone(str(reduced_folders[name]), device="cpu", dtype="fp32"), METHOD_SETTINGS, tmp_path)


@pytest.mark.parametrize("name", ["sd15", pytest.param("sd21", marks=pytest.mark.slow)])
def test_bf16_weights_run_on_the_cpu(reduced_folders, name):
    from promptseg import load_backbone

    backbone = load_backbone(str(reduced_folders[name]), device="cpu", dtype="bf16")
    assert backbone.unet.dtype == torch.bfloat16
    image = Image.fromarray((np.random.default_rng(1).random((256, 256, 3)) * 255).astype(np.uint8))
    for method in ("baseline", "fastseg"):
        check_result(build_method(method, backbone)(image, ["cat", "sky"]), (256, 256), ["cat", "sky"])


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SD_NAMES if n != "sdxl"])  # SDXL at full size: the scale benchmark
def test_full_size_architectures_run_every_method(name, tmp_path):
    from promptseg.models import backbone_from_parts
    from promptseg.models.sd_configs import build_sd

    run_methods(backbone_from_parts(f"random-{name}", build_sd(name), device="cpu", dtype="fp32"), METHOD_SETTINGS,
                tmp_path)
