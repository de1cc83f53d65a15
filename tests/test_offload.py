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
from promptseg.models.dit_configs import save_dit


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_dit("sd3", tmp_path_factory.mktemp("sd3") / "sd3-reduced", reduced=True)


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


def test_offload_reaches_the_model_from_every_command(folder, tmp_path):
    from promptseg.cli import main

    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(image)
    args = ["--model", str(folder), "--device", "cpu", "--offload", "sequential"]
    assert main(["segment", str(image), "--labels", "cat,dog", "--out", str(tmp_path / "seg"), "--filter", "none",
                 "--refine", "none", *args]) == 0
    assert main(["maps", str(image), "--words", "cat", "--out", str(tmp_path / "maps"), *args]) == 0
    assert (tmp_path / "seg" / "a.png").is_file() and (tmp_path / "maps" / "a_maps.npz").is_file()
    pipe = Pipeline(str(folder), offload="model", device="cpu")
    assert pipe.backbone.offloaded == "model"
