import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from promptseg import build_method
from promptseg.diffusion.readout import hierarchical_refine, minmax, tokens_to_maps
from promptseg.models.unet import Backbone
from promptseg.text import parse_labels

LABELS = ["cat", "dog, person"]


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(1).random((32, 32, 3)) * 255).astype(np.uint8)


def test_outputs_and_exactly_two_unet_passes_with_inversion(tiny, image):
    method = build_method("fastseg", tiny, invert=True)
    calls = []
    handle = tiny.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        result = method(image, LABELS, prompt="a red cat on grass")
    finally:
        handle.remove()
    assert calls == [2, 2]  # one inversion step + one recording pass, image and flip in one batch
    assert result.labels == ["background", "cat", "dog"]
    assert result.scores.shape == (3, 32, 32) and result.label_map.shape == (32, 32)
    no_flip = build_method("fastseg", tiny, flip=False, invert=True)
    calls.clear()
    handle = tiny.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        no_flip(image, LABELS)
    finally:
        handle.remove()
    assert calls == [1, 1]


def test_without_inversion_one_pass_records_the_clean_latents(tiny, image):
    method = build_method("fastseg", tiny)  # the default
    calls = []
    handle = tiny.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0]))
    try:
        method(image, LABELS)
        prepared = method.prepare(image)
    finally:
        handle.remove()
    assert len(calls) == 1  # the recording pass alone, image and flip in one batch
    assert torch.equal(calls[0], prepared.latents)  # it reads the clean latents themselves
    inverted = build_method("fastseg", tiny, invert=True)(image, LABELS)
    assert not np.allclose(inverted.scores, method(image, LABELS).scores, atol=1e-4)


def test_flip_path_equals_the_flipped_image_alone_flipped_back(tiny, image):
    labels = parse_labels(LABELS)
    both = build_method("fastseg", tiny, flip=True)
    prompt = both.conditioning_prompt(labels, None)
    batched = both.record(both.prepare(image), prompt)
    single = build_method("fastseg", tiny, flip=False)
    lone = single.record(single.prepare(np.ascontiguousarray(image[:, ::-1])), prompt)
    grid = (8, 8)
    # the batch's second view records what the flipped image alone records (float noise only)
    assert torch.allclose(batched.mean("cross", grid)[1], lone.mean("cross", grid)[0], atol=1e-5)
    views = both.view_scores(batched, labels)  # (2, K, H, W)
    alone = single.view_scores(lone, labels)
    original = single.view_scores(single.record(single.prepare(image), prompt), labels)
    # the random tiny model's maps are nearly flat, so min-max normalisation inflates that float noise to ~1e-2
    assert (views[1] - alone[0].flip(-1)).abs().max() < 0.06
    assert (views[0] - original[0]).abs().max() < 0.06
    assert (views[1] - alone[0]).abs().max() > 0.2  # without flipping back, the maps disagree


def test_dual_prompt_maps_equal_queries_against_class_name_keys(tiny, image):
    method = build_method("fastseg", tiny, flip=False)
    labels = parse_labels(LABELS)
    prompt = method.conditioning_prompt(labels, "a red cat on grass")
    assert prompt == "a red cat on grass; cat, dog, person"
    grid = (8, 8)
    modules = dict(tiny.unet.named_modules())
    names = [layer.name.rsplit(".processor", 1)[0] for layer in method.layers if layer.kind == "cross" and layer.level == 1]
    inputs = []
    handles = [modules[n].register_forward_pre_hook(lambda m, a, k: inputs.append((m, a[0] if a else k["hidden_states"])),
                                                    with_kwargs=True) for n in names]
    try:
        store = method.record(method.prepare(image), prompt)
    finally:
        for h in handles:
            h.remove()
    assert len(inputs) == len(names)  # one UNet pass, the recording one: no inversion step by default
    class_text = tiny.encode_text("cat, dog, person")
    expected = 0
    for module, hidden in inputs:
        q = module.to_q(hidden).view(1, hidden.shape[1], module.heads, -1).transpose(1, 2)
        k = module.to_k(class_text).view(1, class_text.shape[1], module.heads, -1).transpose(1, 2)
        expected = expected + (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1).mean(1)
    expected = expected / len(inputs)
    got = store.cross_attention_for(class_text, grid)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, store.mean("cross", grid), atol=1e-3)  # not the conditioning prompt's maps


def test_hard_by_hand():
    attn = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.2, 0.6, 0.1, 0.1], [0.1, 0.1, 0.4, 0.4], [0.0, 0.0, 0.5, 0.5]])
    cross = torch.tensor([[1.0], [0.5], [0.0], [0.2]])
    expected_fine = minmax((torch.linalg.matrix_power(attn, 2) @ cross).T.reshape(1, 1, 2, 2))
    out = hierarchical_refine(
        {(2, 2): attn[None], (1, 1): torch.ones(1, 1, 1)}, cross[None], {(2, 2): 0.75, (1, 1): 0.25}, (2, 2), power=2
    )
    # the 1x1 grid's attention is uniform after resizing: its propagated map is flat and normalises to 0
    assert torch.allclose(out, 0.75 * expected_fine, atol=1e-6)
    single = hierarchical_refine({(2, 2): attn[None]}, cross[None], {(2, 2): 1.0}, (2, 2), power=3)
    assert torch.allclose(single, minmax(tokens_to_maps(torch.linalg.matrix_power(attn, 3)[None] @ cross[None], (2, 2))))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_predicted_noise_for_every_prediction_type(kind):
    alphas = torch.linspace(0.99, 0.1, 10)
    backbone = SimpleNamespace(scheduler=SimpleNamespace(alphas_cumprod=alphas), prediction_type=kind)
    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    a = alphas[4]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    output = {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0, "sample": x0}[kind]
    assert torch.allclose(Backbone.noise_from_output(backbone, output, xt, 4), eps, atol=1e-5)


def test_many_labels_need_no_extra_pass(tiny, image):
    many = ["cat", "dog", "person", "sky", "tree", "red", "grass", "photograph", "people"]
    result = build_method("fastseg", tiny)(image, many)
    assert result.labels == ["background"] + many
