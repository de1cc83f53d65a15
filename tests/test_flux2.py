"""The FLUX.2 family on a reduced FLUX.2-klein-4B (exact block structure, random weights, a byte-level BPE with
Qwen3's chat template trained here): conditioning and latents equal to `Flux2KleinPipeline`'s own, words found inside
the template, the methods that run and the one that refuses, and the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from promptseg.cli import main
from promptseg.models import load_backbone
from promptseg.text import build_prompt, parse_labels


@pytest.fixture(scope="module")
def folder(reduced_folder):
    return reduced_folder("flux2-klein-4b")


@pytest.fixture(scope="module")
def klein(folder):
    return load_backbone(str(folder), device="cpu", dtype="fp32")


def test_a_klein_folder_loads_with_its_block_structure(klein):
    assert klein.family == "flux2" and klein.grid == klein.latent_size == (16, 16) and klein.image_size == (256, 256)
    assert len(klein.transformer.transformer_blocks) == 5 and len(klein.transformer.single_transformer_blocks) == 20
    places = [layer.place for layer in klein.attention_layers() if layer.kind == "cross"]
    assert places == ["joint"] * 5 + ["single"] * 20


def test_conditioning_and_latents_are_the_pipelines_own(folder, klein, image):
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline.from_pretrained(str(folder))
    prompt = "a photo of a cat and a red car"
    theirs, _ = pipe.encode_prompt(prompt, device="cpu", max_sequence_length=klein.text_length)
    assert torch.allclose(klein.encode_text(prompt), theirs, atol=1e-6)
    pixels = klein.preprocess(image)
    assert torch.allclose(klein.encode_image(pixels), pipe._encode_vae_image(pixels, None), atol=1e-6)
    assert klein.decode_image(klein.encode_image(pixels)).shape == pixels.shape


def test_words_are_found_inside_the_chat_template(klein):
    tokens = build_prompt(klein.tokenizer, parse_labels(["cat", "red car"]), "a photo of {}", " and a ")
    ids = klein.tokenizer(tokens.prompt).input_ids
    pieces = klein.tokenizer.tokenizer.convert_ids_to_tokens(ids)
    assert pieces[0] == "<|im_start|>" and "<|im_end|>" in pieces  # the template's tokens are in the sequence
    cat, car = tokens.positions[0][0], tokens.positions[1][0]
    assert klein.tokenizer.tokenizer.decode([ids[p] for p in cat]) == " cat"  # the word's own token, space inside
    assert klein.tokenizer.tokenizer.decode([ids[p] for p in car]) == " red car"


@pytest.mark.parametrize("method", ["baseline", "fastseg", "invseg"])
def test_methods_segment_a_klein_image(method, folder, image):
    from promptseg import Pipeline

    settings = {"steps": 2} if method == "invseg" else {}
    result = Pipeline(str(folder), method, settings=settings, device="cpu", filter="none", refine="none").segment(
        image, ["cat", "dog"])
    assert result.label_map.shape == (96, 128) and result.scores.shape[0] == len(result.labels)


def test_segment_anyword_refers_on_klein(folder, image):
    from promptseg import Pipeline

    pipe = Pipeline(str(folder), "anyword", task="refer", device="cpu", settings={"sam": "shapes-sam", "steps": 2})
    result = pipe.refer(image, "the cat left of the dog")
    assert result.mask.shape == (96, 128) and result.score.shape == (96, 128)


def test_conceptattention_refuses_flux2_by_name(klein):
    from promptseg.methods.base import build_method

    with pytest.raises(ValueError, match="is FLUX.2, whose blocks share one modulation across the model, not adapted"):
        build_method("conceptattention", klein)


def test_the_cli_segments_and_writes_word_maps(folder, image, tmp_path):
    path = tmp_path / "photo.png"
    image.save(path)
    common = ["--model", str(folder), "--device", "cpu"]
    assert main(["segment", str(path), "--labels", "cat,dog", "--filter", "none", "--refine", "none",
                 "--out", str(tmp_path / "seg"), *common]) == 0
    assert (tmp_path / "seg" / "photo.png").is_file()
    assert main(["maps", str(path), "--words", "cat,red dog", "--out", str(tmp_path / "maps"), *common]) == 0
    maps = np.load(next(Path(tmp_path / "maps").glob("*.npz")))
    assert maps["maps"].shape == (2, 96, 128)


def test_klein_draws_images_for_dpseg_with_guidance_against_the_empty_prompt(klein):
    images = klein.generate(["a cat", "a cat"], steps=2, guidance=2.0,
                            generators=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)])
    assert [i.size for i in images] == [(256, 256)] * 2
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))  # each its own seeded noise
