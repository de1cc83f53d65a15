"""The FLUX.1 family on a reduced FLUX.1-dev (the exact block structure at tiny widths): loading, packing, words among
T5's SentencePiece-style tokens, joint-attention capture of double- and single-stream blocks with the rotary
embedding, ConceptAttention, and every method running on it."""

import numpy as np
import pytest
import torch

from promptseg.diffusion.capture import AttentionStore, capture, run_until_captured
from promptseg.diffusion.capture.core import JointRecordingProcessor
from promptseg.diffusion.concepts import ConceptStream
from promptseg.methods.base import build_method
from promptseg.models import load_backbone
from promptseg.models.flux_configs import build_t5_tokenizer, flux_configs
from promptseg.models.loader import family_of
from promptseg.text import build_prompt, parse_labels, span_positions
from promptseg.text.labels import leading_specials


@pytest.fixture(scope="module")
def flux(reduced_folder):
    return load_backbone(str(reduced_folder("flux1")), device="cpu", dtype="fp32")


def test_a_flux_folder_loads_with_its_block_structure_and_t5_words(flux):
    from pathlib import Path

    assert family_of(Path(flux.name)) == "flux" and flux.family == "flux"
    full = flux_configs("flux1")["transformer"]
    assert len(flux.transformer.transformer_blocks) == full["num_layers"] == 19
    assert len(flux.transformer.single_transformer_blocks) == full["num_single_layers"] == 38
    assert flux.latent_size == (32, 32) and flux.grid == (16, 16) and flux.image_size == (256, 256)
    text = flux.encode_text(["a cat", "a dog"])
    assert text.shape == (2, 64 + 1, 64)  # T5's 64 token states + CLIP-L's pooled row
    states, pooled = flux.split_text(text)
    assert states.shape == (2, 64, 64) and pooled.shape == (2, 32) and not torch.equal(pooled[0], pooled[1])
    # words are found among T5's tokens: no start token, "▁" word starts
    assert leading_specials(flux.tokenizer) == 0
    tokens = build_prompt(flux.tokenizer, parse_labels(["potted plant", "cat"]), "a photograph of {}", " and ")
    pieces = flux.tokenizer.convert_ids_to_tokens(flux.tokenizer(tokens.prompt).input_ids)
    assert "".join(pieces[i] for i in tokens.positions[0][0]).replace("▁", " ").strip() == "potted plant"
    expression = "the red car left of the big tree"
    # the folder's tokenizer, and the one built in memory, which keeps a trailing space as a piece of its own
    for tokenizer in (flux.tokenizer, build_t5_tokenizer(64)):
        (span,) = span_positions(tokenizer, expression, [(4, 7)])
        pieces = tokenizer.convert_ids_to_tokens(tokenizer(expression).input_ids)
        assert "".join(pieces[i] for i in span).replace("▁", "") == "red"


def test_prompts_are_fitted_to_the_t5_length_the_backbone_runs(flux):
    """schnell runs T5 with 256 of its tokenizer's 512 tokens: prompts are split to fit what is encoded."""
    from promptseg.models.flux import FluxBackbone
    from promptseg.text import split_to_fit

    short = FluxBackbone(**{**{f: getattr(flux, f) for f in ("name", "transformer", "vae", "text_encoders", "tokenizers",
                                                             "scheduler", "device", "dtype", "t5_encoder", "t5_tokenizer")},
                            "method_defaults": {**flux.method_defaults, "max_sequence_length": 16}})
    assert flux.tokenizer.model_max_length == 64 and short.tokenizer.model_max_length == short.text_length == 16
    labels = parse_labels(["cat", "dog", "potted plant", "tv monitor", "sheep", "horse", "bird", "boat"])
    groups = split_to_fit(short.tokenizer, labels, "a photograph of {}", " and ")
    assert len(groups) > 1
    for group in groups:
        prompt = build_prompt(short.tokenizer, group, "a photograph of {}", " and ").prompt
        assert short.split_text(short.encode_text(prompt))[0].shape[1] == 16


def test_latents_are_packed_into_2x2_tokens_and_back(flux):
    latents = torch.randn(2, 16, 32, 32)
    packed = flux.pack(latents)
    assert packed.shape == (2, 256, 64) and torch.equal(flux.unpack(packed, 32, 32), latents)
    # token (row 1, column 2) holds the 2x2 cell at latent rows 2-3, columns 4-5, channel-major
    assert torch.equal(packed[0, 16 + 2].view(16, 2, 2), latents[0, :, 2:4, 4:6])
    velocity = flux.predict(latents[:1], torch.tensor([500]), flux.encode_text("a cat"))
    assert velocity.shape == (1, 16, 32, 32)
    with pytest.raises(ValueError, match="longer than T5's 64 tokens"):
        flux.encode_text(" ".join(["cat"] * 80))


@pytest.mark.parametrize("place", ["block4", "single3"])
def test_joint_capture_rotates_queries_and_keys_as_the_processor_does(flux, place, monkeypatch):
    """The capture's queries, keys and values of both streams (normed and rotated by the rotary embedding as the
    processor does) give back the block's own attention output: softmax over [text; image] keys times the values
    equals what the processor computed. The recorded "cross" map is that softmax's image-to-text part, averaged over
    the heads, and capture leaves the prediction unchanged."""
    streams, outputs = {}, {}
    real = JointRecordingProcessor._streams
    monkeypatch.setattr(JointRecordingProcessor, "_streams",
                        lambda self, *a: streams.update(real(self, *a)) or dict(streams))
    monkeypatch.setattr(flux.transformer, "promptseg_cross_readout", "output")  # records every stream's values
    layers = [layer for layer in flux.select_layers(set(), {(16, 16)}, [place])]
    assert [layer.block for layer in layers] == ([19 + 3] if place == "single3" else [4])
    attn = flux.transformer.get_submodule(layers[0].name.rsplit(".", 1)[0])
    single = place.startswith("single")
    hook = (attn.register_forward_hook(lambda m, a, out: outputs.__setitem__("o", out[:, 64:])) if single else
            attn.to_out[0].register_forward_pre_hook(lambda m, a: outputs.__setitem__("o", a[0])))
    text, noisy, t = flux.encode_text("a red cat on the grass"), torch.randn(1, 16, 32, 32), torch.tensor([300])
    with torch.no_grad(), capture(flux.denoiser, layers, AttentionStore(latent_hw=(32, 32), lazy_self_tokens=None)):
        flux.predict(noisy, t, text)
    hook.remove()
    heads = flux.transformer.config.num_attention_heads
    assert streams["q"].shape == (heads, 256, 16) and streams["text_k"].shape == (heads, 64, 16)
    keys = torch.cat([streams["text_k"], streams["k"]], dim=1)
    values = torch.cat([streams["text_v"], streams["v"]], dim=1)
    probs = (streams["q"] @ keys.transpose(1, 2) * 16 ** -0.5).softmax(-1)
    out = (probs @ values).unflatten(0, (1, -1)).transpose(1, 2).flatten(2)
    assert torch.allclose(out, outputs["o"], atol=1e-4)
    monkeypatch.setattr(flux.transformer, "promptseg_cross_readout", "joint")
    store = AttentionStore(latent_hw=(32, 32), lazy_self_tokens=None)
    with torch.no_grad():
        plain = flux.predict(noisy, t, text)
        with capture(flux.denoiser, layers, store):
            captured = flux.predict(noisy, t, text)
    assert torch.allclose(store.mean("cross", (16, 16))[0], probs[..., :64].mean(0), atol=1e-5)
    assert torch.allclose(plain, captured, atol=1e-5)


def test_blocks_are_named_double_then_single(flux):
    assert flux.blocks_for(["block9"]) == [9] and flux.blocks_for(["single0", "single37"]) == [19, 56]
    assert flux.blocks_for(["joint"]) == list(range(19)) and flux.blocks_for(["single"]) == list(range(19, 57))
    assert flux.blocks_for(["down", "up"]) == list(range(19))  # no block named: every double block
    with pytest.raises(ValueError, match="single blocks 'single0'..'single37'"):
        flux.blocks_for(["single38"])


def test_concepts_leave_flux_blocks_untouched(flux):
    text = flux.encode_text("a cat on the grass")
    noisy = torch.randn(1, 16, 32, 32)
    concepts = flux.context_of(flux.encode_text("cat grass"))[:, :2]
    seen = {}
    hooks = [block.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out), prepend=True)
             for i, block in enumerate(flux.transformer.transformer_blocks)]
    with torch.no_grad():
        flux.predict(noisy, torch.tensor([300]), text)
        plain = dict(seen)
        stream = ConceptStream(flux.transformer, concepts, blocks=[2, 7])
        with stream:
            run_until_captured(flux.predict, noisy, torch.tensor([300]), text)
    for hook in hooks:
        hook.remove()
    for i in range(8):
        assert torch.equal(seen[i][0], plain[i][0]) and torch.equal(seen[i][1], plain[i][1])
    assert stream.mean_map().shape == (1, 256, 2)


@pytest.mark.parametrize("method,settings", [
    ("baseline", {}), ("baseline", {"places": ["single5"]}), ("fastseg", {}), ("invseg", {"steps": 2}),
    ("conceptattention", {"blocks": (15, 16, 17, 18)}),
])
def test_every_semantic_method_segments_on_reduced_flux(flux, image, method, settings):
    result = build_method(method, flux, **settings)(image, ["cat", "tv monitor"])
    assert result.label_map.shape == (96, 128) and result.labels[-2:] == ["cat", "tv monitor"]


def test_conceptattention_zeroes_flux_pooled_vector_as_the_reference(flux, image, monkeypatch):
    seen = []
    real = flux.transformer.forward
    monkeypatch.setattr(flux.transformer, "forward",
                        lambda *a, **k: seen.append(k["pooled_projections"].clone()) or real(*a, **k))
    build_method("conceptattention", flux, blocks=(3,))(image, ["cat", "dog"])
    assert seen and torch.count_nonzero(seen[-1]) == 0
    build_method("conceptattention", flux, blocks=(3,), zero_pooled=False)(image, ["cat", "dog"])
    assert torch.count_nonzero(seen[-1]) > 0


def test_anyword_dpseg_and_the_filter_run_on_reduced_flux(flux, image, tmp_path):
    from promptseg.filters import build_filter

    anyword = build_method("anyword", flux, sam=None, steps=2)
    answer = anyword.refer(anyword.prepare(image), "the red cat left of the dog")
    assert answer.mask.shape == (96, 128) and "cat" in answer.extra["words"]
    dpseg = build_method("dpseg", flux, weights="shapes-dpseg", other_backbone=True, generation_steps=1,
                         prompt_images=1, cache_dir=str(tmp_path))
    assert dpseg(image, ["cat", "dog"]).labels == ["cat", "dog"]
    decision = build_filter("diffusion", flux)(image, parse_labels(["cat", "dog"]))
    assert decision.kept and set(decision.scores) == {"cat", "dog"}


def test_generation_samples_the_flow_at_the_native_size(flux):
    images = flux.generate(["a cat"], steps=2, guidance=3.5, generators=[torch.Generator().manual_seed(0)])
    assert images[0].size == (256, 256)


def test_a_real_width_flux_config_gets_the_papers_settings(tmp_path):
    import json

    from promptseg.models.zoo import model_settings

    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(flux_configs("flux1")["transformer"]))
    settings = model_settings(tmp_path)
    assert settings["conceptattention"]["blocks"] == [14, 15, 16, 17]  # the reference's VOC blocks
    assert settings["filter"] == "clip" and "blip" in settings["filters"]["clip"]["captioner"]
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(flux_configs("flux1", reduced=True)["transformer"]))
    assert model_settings(tmp_path) == {}  # a reduced copy is not FLUX's architecture


def test_pooled_capture_reads_the_coarse_grid_from_window_means(flux, monkeypatch):
    """With `pool_grid` (InvSeg's loss on a transformer), a block's image queries and keys are averaged over each
    window of the coarse grid, as a coarse layer attends: "cross" is the image-to-text part of the joint softmax of
    the pooled query over the text keys and the pooled image keys (each repeated over its 4-token window), "self"
    the softmax of pooled queries against pooled keys; heads averaged."""
    from promptseg.diffusion.capture.core import pool_tokens

    streams = {}
    real = JointRecordingProcessor._streams
    monkeypatch.setattr(JointRecordingProcessor, "_streams",
                        lambda self, *a: streams.update(real(self, *a)) or dict(streams))
    layers = flux.select_layers({(16, 16)}, {(16, 16)}, ["block4"])
    store = AttentionStore(latent_hw=(32, 32), lazy_self_tokens=None, pool_grid=(8, 8))
    with torch.no_grad(), capture(flux.denoiser, layers, store, stop_after_last=True):
        run_until_captured(flux.predict, torch.randn(1, 16, 32, 32), torch.tensor([300]), flux.encode_text("a cat"))
    q = streams["q"].unflatten(1, (8, 2, 8, 2)).mean(dim=(2, 4)).flatten(1, 2)  # (heads, 64, d) window means
    k = pool_tokens(streams["k"], (16, 16), (8, 8))
    assert torch.allclose(k, streams["k"].unflatten(1, (8, 2, 8, 2)).mean(dim=(2, 4)).flatten(1, 2))
    scale = 16 ** -0.5
    repeated = k.repeat_interleave(4, dim=1)  # every pooled key over its window of 4 image tokens
    joint = (q @ torch.cat([streams["text_k"], repeated], 1).transpose(1, 2) * scale).softmax(-1)
    assert store.grids("cross") == [(8, 8)] and store.grids("self") == [(8, 8)]
    assert torch.allclose(store.mean("cross", (8, 8))[0], joint[:, :, :64].mean(0), atol=1e-6)
    assert torch.allclose(store.mean("self", (8, 8))[0], (q @ k.transpose(1, 2) * scale).softmax(-1).mean(0), atol=1e-6)


def test_invseg_on_a_transformer_learns_on_the_papers_coarse_loss_grid(flux, image):
    invseg = build_method("invseg", flux, steps=1)
    assert flux.grid == (16, 16) and invseg.pool_grid == (8, 8) == invseg.loss_grid  # 1/4 of the 32x32 latent
    result = invseg(image, ["cat", "dog"])
    assert result.label_map.shape == (96, 128) and len(result.extra["loss"]) == 1


def test_inversion_with_recomputed_blocks_learns_what_kept_activations_learn(flux, image, monkeypatch):
    """Gradient checkpointing (the default on a transformer) re-runs each block in the backward pass; the capture
    computes its maps again there without recording them or stopping the forward, so the optimisation is the same."""
    import promptseg.diffusion.capture.core as core

    reruns = []
    real = core._recomputing
    monkeypatch.setattr(core, "_recomputing", lambda: reruns.append(real()) or reruns[-1])
    runs = {}
    for flag in (True, False):
        reruns.clear()
        runs[flag] = build_method("invseg", flux, steps=2, recompute=flag)(image, ["cat", "dog"])
        assert any(reruns) == flag  # blocks re-run in the backward pass only with recompute
    assert not flux.transformer.is_gradient_checkpointing  # restored after the inversion
    assert np.allclose(runs[True].extra["loss"], runs[False].extra["loss"], rtol=1e-5)
    assert np.allclose(runs[True].extra["grad_norm"], runs[False].extra["grad_norm"], rtol=1e-4)
    assert np.allclose(runs[True].scores, runs[False].scores, atol=1e-5)
    anyword = {flag: build_method("anyword", flux, sam=None, steps=2, recompute=flag) for flag in (True, False)}
    answers = {flag: m.refer(m.prepare(image), "the red cat") for flag, m in anyword.items()}
    assert np.allclose(answers[True].extra["inversion_loss"], answers[False].extra["inversion_loss"], rtol=1e-5)
