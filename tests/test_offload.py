"""Offloading (`load_backbone(..., offload=...)`): the weights stay in CPU memory behind accelerate's hooks and run
on the execution device; the attention capture and every read-out work under the hooks. On this machine the
execution device is the CPU too, so the hooks move weights between "meta" placeholders and CPU memory, which is
exactly what they do around a GPU."""

import numpy as np
import pytest
from PIL import Image

from promptseg import Pipeline
from promptseg.methods.base import build_method
from promptseg.models import load_backbone


@pytest.fixture(scope="module")
def folder(reduced_folder):
    return reduced_folder("sd3")


@pytest.fixture(scope="module")
def image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8))


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_an_offloaded_transformer_segments_and_maps_as_the_plain_one(folder, image, mode):
    plain = load_backbone(str(folder), device="cpu", dtype="fp32")
    hooked = load_backbone(str(folder), device="cpu", dtype="fp32", offload=mode)
    assert hooked.offloaded == mode
    leaf = hooked.transformer.transformer_blocks[0].attn.to_q
    if mode == "sequential":  # leaf hooks: the weights wait on the meta device between forwards
        assert leaf.weight.device.type == "meta" and hasattr(leaf, "_hf_hook")
    else:
        assert hasattr(hooked.transformer, "_hf_hook")
    for method, settings in (("baseline", {"places": ["block3", "block9"], "refine_iterations": 1}),
                             ("fastseg", {}), ("conceptattention", {"blocks": (2, 5)})):
        ours, theirs = (build_method(method, b, **settings)(image, ["cat", "dog"]) for b in (hooked, plain))
        assert np.array_equal(ours.label_map, theirs.label_map), method
        assert np.allclose(ours.scores, theirs.scores, atol=1e-5), method
    maps = [Pipeline(str(folder), backbone=b).attention_maps(image, ["cat", "red car"]) for b in (hooked, plain)]
    assert np.allclose(maps[0].maps, maps[1].maps, atol=1e-6)


def test_an_unknown_offload_mode_is_named(folder):
    with pytest.raises(ValueError, match="offload must be one of"):
        load_backbone(str(folder), device="cpu", offload="disk")


def test_offload_reaches_the_model_from_every_command(folder, tmp_path, monkeypatch):
    import promptseg.pipeline
    from promptseg.cli import main

    asked = []
    real = promptseg.pipeline.load_backbone
    monkeypatch.setattr(promptseg.pipeline, "load_backbone", lambda *a, **k: asked.append(k) or real(*a, **k))
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image)
    args = ["--model", str(folder), "--device", "cpu", "--offload", "sequential"]
    commands = [
        ["segment", str(image), "--labels", "cat,dog", "--out", str(tmp_path / "seg"), "--filter", "none",
         "--refine", "none", *args],
        ["maps", str(image), "--words", "cat", "--out", str(tmp_path / "maps"), *args],
        ["label", str(image), "--labels", "cat,dog", "--out", str(tmp_path / "label"), "--filter", "none",
         "--refine", "none", *args],
        ["eval", "--dataset", "shapes", "--limit", "1", "--names", "all", "--filter", "none", "--refine", "none",
         "--out", str(tmp_path / "eval"), *args],
    ]
    for command in commands:
        assert main(command) == 0, command[0]
        assert asked[-1]["offload"] == "sequential" and asked[-1]["quantize"] is None, command[0]
    assert len(asked) == len(commands)
    assert (tmp_path / "seg" / "a.png").is_file() and (tmp_path / "maps" / "a_maps.npz").is_file()


def test_a_component_running_sends_the_others_back_to_the_cpu():
    """Model offload keeps one component on the device: before one runs, every other one that is not on the CPU
    moves back (on a GPU machine the others sit on "cuda"; here a meta parameter stands for "not on the CPU")."""
    import torch

    from promptseg.models.offload import ExclusiveOffload

    class Component(torch.nn.Module):
        def __init__(self, device):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1, device=device))
            self.moved = []

        def to(self, *args, **kwargs):
            self.moved.append(args)
            return self

    text, denoiser, vae = Component("cpu"), Component("meta"), Component("meta")
    group = [text, denoiser, vae]
    ExclusiveOffload(torch.device("cpu"), group).pre_forward(text)
    assert text.moved == [] and denoiser.moved == [("cpu",)] and vae.moved == [("cpu",)]
