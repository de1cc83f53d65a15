"""The settings real transformers get from their architecture profiles: values re-derived from the references'
schedules with diffusers' own schedulers, and each profile's read-out doing what its reference does."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from promptseg.methods.base import build_method
from promptseg.models.dit_configs import dit_configs
from promptseg.models.flux_configs import flux_configs
from promptseg.models.profiles import PROFILES
from promptseg.models.zoo import model_settings


def profile(name):
    return next(p for p in PROFILES if p.name == name)


def test_profile_timesteps_are_the_references_schedules():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # Seg4Diff on SD3: 28 steps, shift 3, noise step 8 -> timesteps[-8]
    sd3 = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sd3.set_timesteps(28)
    assert round(float(sd3.timesteps[-8])) == profile("sd3-medium").settings["baseline"]["timestep"] == 515
    # ConceptAttention's SD3 pipeline: 4 steps, shift 3, timestep_index -2
    sd3.set_timesteps(4)
    assert round(float(sd3.timesteps[-2])) == profile("sd3-medium").settings["conceptattention"]["timestep"] == 602
    # GoCA on FLUX.1-dev: img2img strength 0.15 of 28 steps at 4096 tokens (mu 1.15): the first step run
    config = flux_configs("flux1")["scheduler"]
    flux = FlowMatchEulerDiscreteScheduler(**config)
    flux.set_timesteps(sigmas=np.linspace(1.0, 1 / 28, 28), mu=config["max_shift"])
    start = int(28 - 28 * 0.15)  # FluxImg2ImgPipeline.get_timesteps: t_start = int(steps - steps * strength)
    assert round(float(flux.timesteps[start])) == profile("flux1").settings["baseline"]["timestep"] == 407


def real_width(tmp_path, transformer: dict):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(transformer))
    return model_settings(tmp_path)


def test_sd3_runs_as_seg4diff_and_schnell_with_its_t5_length(tmp_path):
    (tmp_path / "sd3").mkdir()
    sd3 = real_width(tmp_path / "sd3", dit_configs("sd3")["transformer"])
    assert sd3["load_t5"] is False and sd3["max_sequence_length"] == 77 and sd3["blocks"] == [9]
    assert sd3["baseline"]["readout"] == "seg4diff" and sd3["baseline"]["refine_iterations"] == 0
    (tmp_path / "schnell").mkdir()
    schnell = real_width(tmp_path / "schnell", flux_configs("flux1-schnell")["transformer"])
    (tmp_path / "dev").mkdir()
    dev = real_width(tmp_path / "dev", flux_configs("flux1")["transformer"])
    assert schnell["max_sequence_length"] == 256 and "max_sequence_length" not in dev  # dev: diffusers' 512
    for settings in (schnell, dev):
        assert settings["baseline"]["goca_reference"] == "single8.attn"
        assert settings["conceptattention"] == {"blocks": [14, 15, 16, 17], "softmax": False}


@pytest.fixture(scope="module")
def sd3_77():
    """Reduced SD3 with Seg4Diff's text layout: 77 CLIP rows and 77 zero T5 rows."""
    from promptseg.models.dit_configs import build_dit
    from promptseg.models.mmdit import backbone_from_parts

    return backbone_from_parts("sd3", build_dit("sd3", reduced=True), device="cpu", dtype="fp32",
                               method_defaults={"max_sequence_length": 77})


def test_seg4diff_readout_compares_the_joint_softmax_shares_across_labels(sd3_77):
    from promptseg.diffusion.readout import resize_maps, tokens_to_maps
    from promptseg.text import build_prompt, parse_labels

    text = sd3_77.encode_text("cat dog")
    assert text.shape == (1, 77 + 77 + 1, 128) and torch.all(text[:, 77:154] == 0)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    settings = {**profile("sd3-medium").settings["baseline"], "places": ["block9"]}
    method = build_method("baseline", sd3_77, **settings)
    prepared = method.prepare(image)
    assert method.completed(prepared, "cat dog", "a cat on a sofa") == "cat dog"  # the names alone
    result = method.segment(prepared, ["cat", "dog"], caption="a cat on a sofa")
    tokens = build_prompt(sd3_77.tokenizer, parse_labels(["cat", "dog"]), "{}", " ")
    assert tokens.prompt == "cat dog"
    (shares,) = method.read_attention(prepared, tokens, text)[0].values()  # (1, N, 2) joint-softmax shares
    maps = resize_maps(tokens_to_maps(shares, sd3_77.grid), (48, 64))[0]
    assert np.array_equal(result.label_map, maps.argmax(0).numpy())
    # one common factor: the ratio of two labels' scores is the ratio of their shares (no per-label min-max)
    scale = result.scores[0] / maps[0].numpy()
    assert np.allclose(result.scores[1], maps[1].numpy() * scale, rtol=1e-4, atol=1e-6)


def test_goca_reads_its_reference_from_flux_single_block_8s_attention_output(reduced_folder):
    from promptseg.models import load_backbone

    flux = load_backbone(str(reduced_folder("flux1")), device="cpu", dtype="fp32")
    settings = {**profile("flux1").settings["baseline"], "timestep": 400}
    method = build_method("baseline", flux, **settings)
    assert method.reference == "single_transformer_blocks.8.attn"
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    result = method(image, ["cat", "dog"])
    weights = method.last_block_weights
    assert result.labels[-2:] == ["cat", "dog"] and weights.shape == (57,)
    assert weights.sum().item() == pytest.approx(1.0) and not torch.allclose(weights, torch.full((57,), 1 / 57))
    with pytest.raises(ValueError, match="goca_reference 'single8.out'"):
        build_method("baseline", flux, aggregation="goca", goca_reference="single8.out")
