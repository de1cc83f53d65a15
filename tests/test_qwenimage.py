"""The Qwen-Image family on a reduced Qwen-Image (exact block structure, random weights, a byte-level BPE trained
here): conditioning as `QwenImagePipeline` encodes it, the captured maps against the block's own processor (which
attention-map-diffusers does not support), the methods and the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from promptseg.cli import main
from promptseg.diffusion.capture import AttentionStore, capture, run_until_captured
from promptseg.models import load_backbone


@pytest.fixture(scope="module")
def folder(reduced_folder):
    return reduced_folder("qwen-image")


@pytest.fixture(scope="module")
def qwen(folder):
    return load_backbone(str(folder), device="cpu", dtype="fp32")


def test_conditioning_is_the_pipelines_and_words_are_found_after_the_dropped_prefix(folder, qwen):
    from diffusers import QwenImagePipeline

    from promptseg.text import build_prompt, parse_labels

    assert qwen.family == "qwenimage" and len(qwen.transformer.transformer_blocks) == 60 and qwen.grid == (16, 16)
    pipe = QwenImagePipeline.from_pretrained(str(folder))
    pipe.prompt_template_encode_start_idx = qwen.tokenizer.drop  # 34 with Qwen's own tokenizer
    prompts = ["a photo of a cat", "a red dog on the grass"]
    theirs, mask = pipe.encode_prompt(prompts, device="cpu", max_sequence_length=qwen.text_length)
    ours = qwen.encode_text(prompts)
    assert torch.allclose(ours[:, :theirs.shape[1]], theirs, atol=1e-6) and not ours[:, theirs.shape[1]:].any()
    assert qwen.caption_lengths(ours) == mask.sum(dim=1).tolist()
    tokens = build_prompt(qwen.tokenizer, parse_labels(["cat", "red car"]), "a photo of {}", " and a ")
    ids = qwen.tokenizer(tokens.prompt).input_ids
    assert [qwen.tokenizers[0].decode([ids[p] for p in label[0]]) for label in tokens.positions] == [" cat", " red car"]


def test_captured_maps_are_the_processors_own_softmax(qwen):
    """The block's own processor reveals its probabilities when its values are one-hot on the text keys (zero on the
    image's) and its output projections are identities: each image query's output is then its softmax share of
    every text key, under the processor's own rotary embedding, scale and text mask."""
    torch.manual_seed(0)
    latents = torch.randn(2, 16, 8, 8)
    text = qwen.encode_text(["a cat", "a red dog"])  # two lengths: the shorter one's padding is masked
    assert len(set(qwen.caption_lengths(text))) == 2
    layer = [x for x in qwen.attention_layers() if x.block == 3 and x.kind == "cross"]
    store = AttentionStore(latent_hw=(8, 8), lazy_self_tokens=None)
    with torch.no_grad(), capture(qwen.denoiser, layer, store, stop_after_last=True):
        run_until_captured(qwen.predict, latents, torch.tensor([600, 600]), text)
    ours = store.mean("cross", store.grids("cross")[0])  # (B, image tokens, longest text)

    attn = qwen.transformer.transformer_blocks[3].attn
    seen = {}
    handle = attn.register_forward_pre_hook(lambda m, a, k: seen.update(k), with_kwargs=True)
    with torch.no_grad():
        qwen.predict(latents, torch.tensor([600, 600]), text)
    handle.remove()
    heads = attn.heads
    width = attn.inner_dim // heads
    longest = seen["encoder_hidden_states"].shape[1]
    assert longest <= width, "the test reveals one text key per value channel"
    onehot = torch.eye(width)[:longest].repeat(1, heads)  # (text, heads * width): token j -> channel j of every head

    class Values(torch.nn.Module):  # a projection replaced by fixed values
        def __init__(self, make):
            super().__init__()
            self.make = make

        def forward(self, x):
            return self.make(x)

    originals = (attn.to_v, attn.add_v_proj, attn.to_out[0], attn.to_add_out)
    attn.to_v = Values(lambda x: torch.zeros(*x.shape[:-1], heads * width))
    attn.add_v_proj = Values(lambda x: onehot.expand(x.shape[0], -1, -1))
    attn.to_out[0], attn.to_add_out = torch.nn.Identity(), torch.nn.Identity()
    try:
        with torch.no_grad():
            image_out, _ = attn.processor(attn, seen["hidden_states"], seen["encoder_hidden_states"],
                                          seen.get("encoder_hidden_states_mask"), None, seen.get("image_rotary_emb"))
    finally:
        attn.to_v, attn.add_v_proj, attn.to_out[0], attn.to_add_out = originals
    revealed = image_out.unflatten(-1, (heads, width))[..., :longest].mean(dim=2)  # (B, image tokens, text)
    assert ours.shape == revealed.shape
    assert (ours - revealed).abs().max() < 2e-5
    assert revealed[0, :, qwen.caption_lengths(text)[0]:].abs().max() < 1e-7  # masked keys: no share


def test_conceptattention_refuses_qwen_image_by_name(qwen):
    from promptseg.methods.base import build_method

    with pytest.raises(ValueError, match="is Qwen-Image, whose blocks"):
        build_method("conceptattention", qwen)


@pytest.mark.parametrize("method", ["baseline", "fastseg", "invseg"])
def test_methods_segment_a_qwen_image(method, folder, image):
    from promptseg import Pipeline

    settings = {"steps": 2} if method == "invseg" else {}
    result = Pipeline(str(folder), method, settings=settings, device="cpu", filter="none", refine="none").segment(
        image, ["cat", "dog"])
    assert result.label_map.shape == (96, 128) and result.scores.shape[0] == len(result.labels)


def test_the_cli_refers_and_writes_word_maps(folder, image, tmp_path):
    path = tmp_path / "photo.png"
    image.save(path)
    common = ["--model", str(folder), "--device", "cpu"]
    assert main(["refer", str(path), "the cat left of the dog", "--set", "sam=shapes-sam", "--set", "steps=2",
                 "--out", str(tmp_path / "refer"), *common]) == 0
    assert main(["maps", str(path), "--words", "cat,red dog", "--out", str(tmp_path / "maps"), *common]) == 0
    assert np.load(next(Path(tmp_path / "maps").glob("*.npz")))["maps"].shape == (2, 96, 128)
