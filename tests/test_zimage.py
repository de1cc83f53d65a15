"""The Z-Image family on a reduced Z-Image-Turbo (exact layer structure, random weights, a byte-level BPE with
Qwen3's chat template trained here): conditioning and velocity as `ZImagePipeline` computes them, prompts of
different lengths in one batch, the methods that run and the one that refuses, and the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from promptseg.cli import main
from promptseg.models import load_backbone


@pytest.fixture(scope="module")
def folder(reduced_folder):
    return reduced_folder("zimage-turbo")


@pytest.fixture(scope="module")
def turbo(folder):
    return load_backbone(str(folder), device="cpu", dtype="fp32")


def test_conditioning_and_velocity_are_the_pipelines(folder, turbo, image):
    from diffusers import ZImagePipeline

    assert turbo.family == "zimage" and len(turbo.transformer.layers) == 30 and turbo.grid == (16, 16)
    assert len(turbo.transformer.noise_refiner) == len(turbo.transformer.context_refiner) == 2
    pipe = ZImagePipeline.from_pretrained(str(folder))
    prompts = ["a photo of a cat and a red car", "a dog"]  # two lengths in one batch
    text = turbo.encode_text(prompts)
    theirs = pipe._encode_prompt(list(prompts), device="cpu", max_sequence_length=turbo.text_length)
    assert turbo.caption_lengths(text) == [len(t) for t in theirs]
    assert all(torch.allclose(text[i, :len(t)], t, atol=1e-6) for i, t in enumerate(theirs))
    latents = turbo.encode_image(turbo.preprocess(image)).expand(2, -1, -1, -1)
    velocity = turbo.predict(latents, torch.tensor([600.0, 600.0]), text)
    with torch.no_grad():  # the pipeline's call: time from the noise, each prompt its own rows, output negated
        out = pipe.transformer([x[:, None] for x in latents], torch.tensor([0.4, 0.4]), theirs).sample
    assert torch.allclose(velocity, -torch.stack([o[:, 0] for o in out]), atol=1e-4)


@pytest.mark.parametrize("method", ["baseline", "fastseg", "invseg"])
def test_methods_segment_a_z_image(method, folder, image):
    from promptseg import Pipeline

    settings = {"steps": 2} if method == "invseg" else {}
    result = Pipeline(str(folder), method, settings=settings, device="cpu", filter="none", refine="none").segment(
        image, ["cat", "dog"])
    assert result.label_map.shape == (96, 128) and result.scores.shape[0] == len(result.labels)


def test_conceptattention_refuses_z_image_by_name(turbo):
    from promptseg.methods.base import build_method

    with pytest.raises(ValueError, match="is Z-Image, whose single stream has no text weights"):
        build_method("conceptattention", turbo)


def test_the_cli_refers_and_writes_word_maps(folder, image, tmp_path):
    path = tmp_path / "photo.png"
    image.save(path)
    common = ["--model", str(folder), "--device", "cpu"]
    assert main(["refer", str(path), "the cat left of the dog", "--set", "sam=shapes-sam", "--set", "steps=2",
                 "--out", str(tmp_path / "refer"), *common]) == 0
    assert (tmp_path / "refer" / "photo_mask.png").is_file()
    assert main(["maps", str(path), "--words", "cat,red dog", "--out", str(tmp_path / "maps"), *common]) == 0
    assert np.load(next(Path(tmp_path / "maps").glob("*.npz")))["maps"].shape == (2, 96, 128)
