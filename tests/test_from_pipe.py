"""`Pipeline.from_pipe`: a diffusers pipeline the user loaded is read as it is, nothing loaded twice, and segments as
promptseg's own loading of the same folder does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from promptseg import Pipeline

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ["grass", "sand", "water", "sky", "circle", "square", "triangle"]


def _no_loading(monkeypatch):
    """Make every promptseg loading path fail, so a test proves nothing is loaded a second time."""
    import promptseg.models.flux as flux
    import promptseg.models.loader as loader
    import promptseg.models.mmdit as mmdit
    import promptseg.models.unet as unet

    def refuse(*args, **kwargs):
        raise AssertionError("from_pipe loaded weights again")

    for module, name in ((loader, "load_backbone"), (unet, "load_folder"), (flux, "load_folder"),
                         (mmdit, "load_folder")):
        monkeypatch.setattr(module, name, refuse)


def test_a_stable_diffusion_pipeline_of_the_bundled_model_segments_as_pipeline_shapes(monkeypatch):
    from diffusers import StableDiffusionPipeline

    from promptseg.models.zoo import BUNDLED

    image = Image.open(ROOT / "examples" / "shapes_test_1.png")
    expected = Pipeline("shapes", device="cpu").segment(image, SHAPES)
    pipe = StableDiffusionPipeline.from_pretrained(str(BUNDLED["shapes"].folder), safety_checker=None)
    _no_loading(monkeypatch)
    ours = Pipeline.from_pipe(pipe)
    assert ours.backbone.unet is pipe.unet and ours.backbone.vae is pipe.vae
    assert ours.backbone.text_encoder is pipe.text_encoder and ours.backbone.dtype == pipe.dtype == torch.float32
    assert ours.refiner.name == Pipeline("shapes").refiner.name != "none"  # the folder's settings came with it
    result = ours.segment(image, SHAPES)
    assert result.labels == expected.labels and np.array_equal(result.label_map, expected.label_map)


@pytest.mark.parametrize("arch", ["sd3", "flux1"])
def test_transformer_pipelines_give_the_maps_of_their_folder(arch, tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    from promptseg.models.dit_configs import save_dit
    from promptseg.models.flux_configs import save_flux

    folder = (save_flux if arch == "flux1" else save_dit)(arch, tmp_path / arch, reduced=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    labels = ["cat", "dog"]
    expected = Pipeline(str(folder), device="cpu", filter="none", refine="none").segment(image, labels)
    no_t5 = {} if arch == "flux1" else {"text_encoder_3": None, "tokenizer_3": None}  # the reduced SD3 has no T5
    pipe = DiffusionPipeline.from_pretrained(str(folder), **no_t5)
    _no_loading(monkeypatch)
    ours = Pipeline.from_pipe(pipe, filter="none", refine="none")
    assert ours.backbone.transformer is pipe.transformer and ours.backbone.family == ("flux" if arch == "flux1" else "mmdit")
    result = ours.segment(image, labels)
    assert np.allclose(result.scores, expected.scores, atol=1e-5)


def test_other_pipelines_and_fixed_loading_options_are_refused():
    class Other:
        transformer = torch.nn.Linear(1, 1)

    with pytest.raises(ValueError, match="Other \\(denoiser Linear\\) is none of them"):
        Pipeline.from_pipe(Other())
    with pytest.raises(ValueError, match=r"\['device'\] cannot be set here"):
        Pipeline.from_pipe(Other(), device="cuda")


def test_a_pipeline_under_offload_hooks_is_refused_with_the_way_out():
    from accelerate.hooks import ModelHook, add_hook_to_module
    from diffusers import StableDiffusionPipeline

    from promptseg.models.zoo import BUNDLED

    pipe = StableDiffusionPipeline.from_pretrained(str(BUNDLED["shapes"].folder), safety_checker=None)
    add_hook_to_module(pipe.unet, ModelHook())  # what enable_model_cpu_offload leaves on each component
    with pytest.raises(ValueError, match=r"\['unet'\] run under offload hooks.*Pipeline\(MODEL, offload='model'\)"):
        Pipeline.from_pipe(pipe)
