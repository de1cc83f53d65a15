"""The MMDiT family (SD3-style diffusion transformers) on a reduced SD3: loading, flow-matching maths, joint-attention
capture, block selection, and every method and the diffusion filter running on it."""

import numpy as np
import pytest
import torch

from promptseg.diffusion.attention import attention_pass, plan_attention
from promptseg.diffusion.capture import AttentionStore, capture, run_until_captured
from promptseg.methods.base import build_method
from promptseg.models import load_backbone
from promptseg.models.dit_configs import dit_configs
from promptseg.models.loader import family_of
from promptseg.text import parse_labels


@pytest.fixture(scope="module")
def sd3(reduced_folder):
    return load_backbone(str(reduced_folder("sd3")), device="cpu", dtype="fp32")


def test_an_sd3_folder_loads_as_the_mmdit_family_with_its_topology(sd3):
    assert family_of(__import__("pathlib").Path(sd3.name)) == "mmdit" and sd3.family == "mmdit"
    assert len(sd3.text_encoders) == 2 and sd3.t5_encoder is None
    assert sd3.latent_size == (32, 32) and sd3.grid == (16, 16) and sd3.image_size == (256, 256)
    assert len(sd3.transformer.transformer_blocks) == 24 == dit_configs("sd3")["transformer"]["num_layers"]
    text = sd3.encode_text(["a cat", "a dog"])
    # 77 CLIP rows (CLIP-L | CLIP-G, padded to the joint width) + 77 zero T5 rows (the SD3 profile's
    # max_sequence_length, Seg4Diff's; diffusers' default would be 256) + the pooled row
    assert sd3.method_defaults["max_sequence_length"] == 77 and sd3.t5_length == 77
    assert text.shape == (2, 77 + 77 + 1, 128)
    assert torch.all(text[:, 77:154] == 0)
    states, pooled = sd3.split_text(text)
    assert states.shape == (2, 154, 128) and pooled.shape == (2, 32 + 48)
    assert not torch.equal(pooled[0], pooled[1])


def test_flow_matching_noising_and_its_inverse(sd3):
    x0, eps = torch.randn(2, 16, 32, 32), torch.randn(2, 16, 32, 32)
    t = torch.tensor([250, 750])
    noisy = sd3.add_noise(x0, eps, t)
    assert torch.allclose(noisy[0], 0.75 * x0[0] + 0.25 * eps[0], atol=1e-6)
    velocity = sd3.denoising_target(x0, eps, t)
    assert torch.allclose(velocity, eps - x0)
    for i, step in enumerate((250, 750)):  # the true velocity gives the true noise back
        assert torch.allclose(sd3.noise_from_output(velocity[i:i + 1], noisy[i:i + 1], step), eps[i:i + 1], atol=1e-5)


@pytest.mark.parametrize("cross_readout", ["joint", "text", "output"])
def test_joint_capture_records_softmaxed_image_to_text_and_image_to_image_slices(sd3, cross_readout, monkeypatch):
    monkeypatch.setattr(sd3.transformer, "promptseg_cross_readout", cross_readout, raising=False)
    text = sd3.encode_text("a cat on the grass")
    latents = torch.randn(1, 16, 32, 32)
    layers = sd3.select_layers({(16, 16)}, {(16, 16)}, ["block4"])
    assert {(layer.block, layer.kind) for layer in layers} == {(4, "cross"), (4, "self")}
    inputs = {}
    attn = sd3.transformer.transformer_blocks[4].attn
    handle = attn.register_forward_pre_hook(lambda m, args, kwargs: inputs.update(kwargs), with_kwargs=True)
    store = AttentionStore(latent_hw=(32, 32), lazy_self_tokens=None)
    t = torch.tensor([300])
    try:
        with torch.no_grad(), capture(sd3.denoiser, layers, store, stop_after_last=True):
            run_until_captured(sd3.predict, latents, t, text)
    finally:
        handle.remove()
    # the block's own inputs, projected by hand: softmax over the text keys, and over the image keys
    with torch.no_grad():
        x, c = inputs["hidden_states"], inputs["encoder_hidden_states"]
        heads = attn.heads
        q = attn.to_q(x).unflatten(-1, (heads, -1)).transpose(1, 2)
        k = attn.to_k(x).unflatten(-1, (heads, -1)).transpose(1, 2)
        kt = attn.add_k_proj(c).unflatten(-1, (heads, -1)).transpose(1, 2)
        image_logits, text_logits = (q @ k.transpose(-1, -2)) * attn.scale, (q @ kt.transpose(-1, -2)) * attn.scale
        joint = torch.cat([image_logits, text_logits], dim=-1).softmax(-1)[..., image_logits.shape[-1]:]
        cross = (joint if cross_readout == "joint" else text_logits.softmax(-1)).mean(1)
        self_ = image_logits.softmax(-1).mean(1)
        if cross_readout == "output":  # attention outputs of image and text tokens, dot product, softmax over text
            qt = attn.add_q_proj(c).unflatten(-1, (heads, -1)).transpose(1, 2)
            keys = torch.cat([k, kt], 2)
            values = torch.cat([attn.to_v(x), attn.add_v_proj(c)], 1).unflatten(-1, (heads, -1)).transpose(1, 2)
            out_i = (torch.cat([image_logits, text_logits], -1).softmax(-1) @ values).transpose(1, 2).flatten(2)
            out_t = ((qt @ keys.transpose(-1, -2)) * attn.scale).softmax(-1) @ values
            cross = (out_i @ out_t.transpose(1, 2).flatten(2).transpose(1, 2)).softmax(-1)
    assert torch.allclose(store.mean("cross", (16, 16)), cross, atol=1e-5)
    rows = store.mean("cross", (16, 16)).sum(-1)  # over the text keys alone: 1 only when normalised over them
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5) == (cross_readout != "joint")
    assert torch.allclose(store.mean("self", (16, 16)), self_, atol=1e-5)
    # and capture leaves the forward itself unchanged
    with torch.no_grad():
        plain = sd3.predict(latents, t, text)
        with capture(sd3.denoiser, layers, AttentionStore(latent_hw=(32, 32))):
            captured = sd3.predict(latents, t, text)
    assert torch.allclose(plain, captured, atol=1e-5)


def test_blocks_are_named_by_places_and_default_to_the_grounding_block(sd3):
    assert sd3.blocks_for(("down", "mid", "up")) == [9]  # the SD3 profile: Seg4Diff's block, recognised from the config
    assert sd3.method_defaults["baseline"]["timestep"] == 515
    assert sd3.blocks_for(["block2", "block17"]) == [2, 17]
    assert sd3.blocks_for(["joint"]) == list(range(24))
    with pytest.raises(ValueError, match="'block24'.*block0'..'block23'"):
        sd3.blocks_for(["block24"])
    plan = plan_attention(sd3, {0.125: 0.3, 0.25: 0.5, 0.5: 0.1, 1.0: 0.1}, {1.0: 1.0}, ("down", "mid", "up"))
    # the UNet's resolution weights read the transformer's one grid (0.5 of the latent side with 2x2 patches), and
    # self-attention at 1.0, which no block has, goes to the nearest grid instead of failing
    assert list(plan.cross) == [(16, 16)] and plan.self == {(16, 16): 1.0}
    assert {layer.block for layer in plan.layers} == {9}
    store = attention_pass(sd3, torch.randn(1, 16, 32, 32), 100, sd3.encode_text("a cat"), plan.layers)
    assert store.mean("cross", (16, 16)).shape == (1, 256, 154)


def test_other_text_cannot_be_read_from_kept_queries_on_a_transformer(sd3):
    layers = sd3.select_layers({}, {(16, 16)}, ["block0"])
    with pytest.raises(ValueError, match="text keys are made inside its joint forward"):
        attention_pass(sd3, torch.randn(1, 16, 32, 32), 100, sd3.encode_text("a cat"), layers, keep_queries=True)


@pytest.mark.parametrize("method,settings", [
    ("baseline", {}),
    ("fastseg", {}),
    ("invseg", {"steps": 2, "num_views": 2}),
    ("dpseg", {"weights": "shapes-dpseg", "other_backbone": True, "prompt_images": 1, "generation_steps": 1}),
])
def test_every_semantic_method_segments_on_reduced_sd3(sd3, image, method, settings, tmp_path):
    if method == "dpseg":
        settings = {**settings, "cache_dir": str(tmp_path)}
    result = build_method(method, sd3, **settings)(image, ["cat", "grass"])
    assert result.label_map.shape == (96, 128)
    assert set(result.labels) >= {"cat", "grass"} and np.isfinite(result.scores).all()


def test_anyword_refers_on_reduced_sd3(sd3, image):
    result = build_method("anyword", sd3, sam=None, proposals="attention", steps=2).refer(
        build_method("anyword", sd3, sam=None, proposals="attention", steps=2).prepare(image), "the cat on the left")
    assert result.mask.shape == (96, 128) and result.score.shape == (96, 128)


def test_the_diffusion_filter_runs_on_reduced_sd3(sd3, image):
    from promptseg.filters import build_filter

    decision = build_filter("diffusion", sd3)(image, parse_labels(["cat", "grass"]))
    assert {label.name for label in decision.kept} | set(decision.dropped) == {"cat", "grass"}


def test_generation_samples_the_flow_at_the_native_size(sd3):
    images = sd3.generate(["a cat", "a dog"], 2, 3.0, [torch.Generator().manual_seed(i) for i in (0, 1)])
    again = sd3.generate(["a cat"], 2, 3.0, [torch.Generator().manual_seed(0)])
    assert [im.size for im in images] == [(256, 256)] * 2
    # seeded: the same image alone as in a batch of two (up to a grey level of batch-dependent float rounding)
    assert np.abs(np.asarray(images[0], np.int16) - np.asarray(again[0], np.int16)).max() <= 2
    assert np.abs(np.asarray(images[0], np.int16) - np.asarray(images[1], np.int16)).mean() > 5


def test_architecture_profiles_are_recognised_from_the_config_and_the_folder_overrides_them(tmp_path):
    import json

    from promptseg.models.profiles import architecture_profile
    from promptseg.models.zoo import model_settings

    folder = tmp_path / "my-sd3-finetune"
    (folder / "transformer").mkdir(parents=True)
    config = {"num_layers": 24, "patch_size": 2, "in_channels": 16, "sample_size": 128}
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    assert architecture_profile(folder).name == "sd3-medium"
    settings = model_settings(str(folder))
    assert settings["blocks"] == [9] and settings["baseline"]["timestep"] == 515
    assert settings["baseline"]["readout"] == "seg4diff" and settings["load_t5"] is False
    assert settings["filter"] == "clip" and "blip" in settings["filters"]["clip"]["captioner"]  # the papers' filter
    (folder / "promptseg_settings.json").write_text(json.dumps({"blocks": [2], "baseline": {"template": "a {}"}}))
    settings = model_settings(str(folder))
    assert settings["blocks"] == [2] and settings["baseline"]["template"] == "a {}"  # the folder's, over Seg4Diff's
    assert settings["baseline"]["timestep"] == 515
    (folder / "transformer" / "config.json").write_text(json.dumps({**config, "num_layers": 6}))
    assert architecture_profile(folder) is None
    assert architecture_profile("owner/not-in-the-cache") is None


def test_settings_command_names_each_values_origin(tmp_path, capsys):
    import json

    from promptseg.cli import main

    folder = tmp_path / "sd3-copy"
    (folder / "transformer").mkdir(parents=True)
    (folder / "transformer" / "config.json").write_text(json.dumps({"num_layers": 24, "patch_size": 2, "in_channels": 16}))
    (folder / "promptseg_settings.json").write_text(json.dumps({"baseline": {"seed": 3}}))
    assert main(["settings", str(folder), "--method", "baseline"]) == 0
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()}
    assert "515" in lines["timestep"] and "profile sd3-medium: Seg4Diff" in lines["timestep"]
    assert lines["seed"].split()[2] == "3" and lines["seed"].endswith("model folder")
    assert lines["cross_weights"].endswith("default") and "[9]" in lines["blocks"]
    assert "profile sd3-medium" in lines["load_t5"] and "77" in lines["max_sequence_length"]


def test_real_sd_widths_get_the_papers_filter_and_reduced_copies_do_not(tmp_path):
    import json

    from promptseg.models.profiles import architecture_profile
    from promptseg.models.sd_configs import configs

    for name in ("sd15", "sd21-base", "sd21", "sdxl"):
        for reduced in (False, True):
            folder = tmp_path / f"{name}-{reduced}"
            (folder / "unet").mkdir(parents=True)
            (folder / "unet" / "config.json").write_text(json.dumps(configs(name, reduced)["unet"]))
            profile = architecture_profile(folder)
            assert (profile.name if profile else None) == (None if reduced else name)
            if profile:
                assert profile.settings["filter"] == "clip" and "filter" in profile.sources


def test_with_t5_loaded_words_are_read_in_t5s_rows_too(image):
    """SD3 with T5: a word's positions are its CLIP tokens and its T5 tokens (after CLIP's 77 rows), so its map is
    read from both encoders' rows; Segment Anyword still learns CLIP's input embeddings only."""
    from transformers import T5Config, T5EncoderModel

    from promptseg.models.dit_configs import build_dit
    from promptseg.models.flux_configs import build_t5_tokenizer
    from promptseg.models.mmdit import backbone_from_parts
    from promptseg.text import build_prompt

    torch.manual_seed(0)
    parts = build_dit("sd3", reduced=True)
    parts["t5_encoder"] = T5EncoderModel(T5Config(d_model=128, d_kv=16, d_ff=128, num_layers=1, num_heads=4,
                                                  vocab_size=512))
    parts["t5_tokenizer"] = build_t5_tokenizer(256)
    backbone = backbone_from_parts("sd3-t5", parts, device="cpu", dtype="fp32", method_defaults={"max_sequence_length": 32})
    text = backbone.encode_text("a cat")
    assert text.shape == (1, 77 + 32 + 1, 128) and not torch.all(text[:, 77:109] == 0)
    tokens = build_prompt(backbone.tokenizer, parse_labels(["potted plant", "cat"]), "a photograph of {}", " and ")
    (plant,), (cat,) = tokens.positions
    clip_rows, t5_rows = [p for p in plant if p < 77], [p - 77 for p in plant if p >= 77]
    clip_pieces = backbone.tokenizers[0].convert_ids_to_tokens(backbone.tokenizers[0](tokens.prompt).input_ids)
    t5_pieces = backbone.t5_tokenizer.convert_ids_to_tokens(backbone.t5_tokenizer(tokens.prompt).input_ids)
    assert "".join(clip_pieces[i] for i in clip_rows).replace("</w>", " ").strip() == "potted plant"
    assert "".join(t5_pieces[i] for i in t5_rows).replace("▁", " ").strip() == "potted plant"
    assert all(77 <= p < 77 + 32 for p in cat if p >= 77) and any(p >= 77 for p in cat)
    import copy
    import pickle

    for clone in (copy.deepcopy(backbone.tokenizer), pickle.loads(pickle.dumps(backbone.tokenizer))):
        assert clone.model_max_length == 77 and clone("a cat").input_ids == backbone.tokenizer("a cat").input_ids
    result = build_method("baseline", backbone, places=["block9"])(image, ["cat", "potted plant"])
    assert result.labels[-2:] == ["cat", "potted plant"]
    anyword = build_method("anyword", backbone, sam=None, steps=1)
    answer = anyword.refer(anyword.prepare(image), "the cat left of the plant")
    assert answer.mask.shape == (96, 128)
