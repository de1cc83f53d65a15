"""ConceptAttention: the concept stream beside a transformer's joint blocks, and the method on reduced SD3."""

import numpy as np
import pytest
import torch
from PIL import Image

from promptseg.diffusion.capture import run_until_captured
from promptseg.diffusion.concepts import ConceptStream, linear_normalization
from promptseg.methods.base import build_method
from promptseg.models import load_backbone
from promptseg.text import parse_labels


@pytest.fixture(scope="module")
def sd3(reduced_folder):
    return load_backbone(str(reduced_folder("sd3")), device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def inputs(sd3):
    torch.manual_seed(0)
    text = sd3.encode_text("a cat on the grass")
    concepts = sd3.context_of(sd3.encode_text("cat grass sky"))[:, 1:4]
    return torch.randn(1, 16, 32, 32), torch.tensor([300]), text, concepts


def block_outputs(sd3, run) -> dict:
    """Each block's (text, image) outputs while `run()` calls the transformer."""
    seen, hooks = {}, []
    for i, block in enumerate(sd3.transformer.transformer_blocks):
        hooks.append(block.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out), prepend=True))
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_concepts_attend_one_way_and_leave_the_image_and_prompt_untouched(sd3, inputs):
    noisy, t, text, concepts = inputs
    with torch.no_grad():
        plain = block_outputs(sd3, lambda: sd3.predict(noisy, t, text))
        stream = ConceptStream(sd3.transformer, concepts, blocks=[0, 5])
        with stream:
            traced = block_outputs(sd3, lambda: run_until_captured(sd3.predict, noisy, t, text))
    assert sorted(traced) == list(range(6))  # the forward stopped after the last read block
    for i in range(6):  # nothing attends to the concepts: every block's text and image outputs are as without them
        assert torch.equal(traced[i][0], plain[i][0]) and torch.equal(traced[i][1], plain[i][1])
    maps = stream.mean_map()
    assert maps.shape == (1, 16 * 16, 3) and sorted(stream.maps) == [0, 5]
    assert torch.allclose(maps.sum(-1), torch.ones(1, 256))  # softmaxed over the concepts


def test_a_blocks_concept_output_is_the_joint_attention_of_the_concepts_over_image_and_concepts(sd3, inputs):
    """By hand, as the reference computes it: the block's own attention called with the normed concepts as its text
    stream gives the concepts' outputs (after the output projection) that the stream computed at block 0."""
    noisy, t, text, concepts = inputs
    block = sd3.transformer.transformer_blocks[0]
    seen = {}
    hook = block.register_forward_hook(lambda m, a, k, out: seen.update(k), with_kwargs=True)
    with torch.no_grad():
        stream = ConceptStream(sd3.transformer, concepts, blocks=[0], keep_outputs=True)
        with stream:
            run_until_captured(sd3.predict, noisy, t, text)
        hook.remove()
        temb, image_states = seen["temb"], seen["hidden_states"]
        normed_image = block.norm1(image_states, emb=temb)[0]
        normed_concepts = block.norm1_context(sd3.transformer.context_embedder(concepts), emb=temb)[0]
        _, expected = block.attn(hidden_states=normed_image, encoder_hidden_states=normed_concepts)
        image_out, concept_out = stream.outputs[0]
        assert torch.allclose(block.attn.to_add_out(concept_out), expected, atol=1e-5)
        normed = linear_normalization(concept_out, dim=1)
        assert torch.allclose(stream.maps[0], (image_out @ normed.transpose(1, 2)).softmax(-1), atol=1e-6)
        # permuting the concepts permutes the maps' columns
        swapped = ConceptStream(sd3.transformer, concepts[:, [2, 0, 1]], blocks=[0])
        with swapped:
            run_until_captured(sd3.predict, noisy, t, text)
    assert torch.allclose(swapped.maps[0], stream.maps[0][..., [2, 0, 1]], atol=1e-5)


def test_linear_normalization_makes_each_channel_a_share_over_the_concepts():
    x = torch.tensor([[[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]]])  # (1, C=3, 2 channels)
    normed = linear_normalization(x, dim=1)
    assert torch.allclose(normed[0, :, 0], torch.tensor([0.0, 1 / 3, 2 / 3]))
    assert torch.equal(normed[0, :, 1], torch.zeros(3))  # a channel equal for every concept carries nothing


def test_a_labels_share_is_not_divided_among_its_tokens_and_synonyms(sd3, inputs):
    """Pooled before the softmax: a label's score is the mean of its tokens' dot products (max over synonyms), and
    the softmax runs over labels. Pooled after it (every token a concept, the label's share the mean of its tokens'
    shares), a label of three tokens gets about a third of what the same concept gets as one token."""
    from promptseg.text import label_scores

    noisy, t, text, concepts = inputs
    rows = torch.cat([concepts[:, :1], concepts[:, 1:2].expand(-1, 3, -1)], dim=1)  # cat, then grass three times

    def maps(groups, softmax=True):
        stream = ConceptStream(sd3.transformer, rows, [3], normalize="l2", softmax=softmax, groups=groups)
        with torch.no_grad(), stream:
            run_until_captured(sd3.predict, noisy, t, text)
        return stream.mean_map()

    raw = maps(None, softmax=False)  # (1, N, 4) dot products
    assert torch.allclose(raw[..., 1], raw[..., 2], atol=1e-5)  # the same concept thrice
    for groups in ([[[0]], [[1, 2, 3]]], [[[0]], [[1], [2], [3]]]):  # three tokens of one name, or three synonyms
        pooled = maps(groups)
        assert torch.allclose(pooled, label_scores(raw, groups).softmax(-1), atol=1e-5)
        assert torch.allclose(pooled, raw[..., :2].softmax(-1), atol=1e-5)  # as if given once
    after = label_scores(maps(None), [[[0]], [[1, 2, 3]]])
    assert (after[..., 1] < pooled[..., 1]).all()
    with pytest.raises(ValueError, match="normalize must be"):
        ConceptStream(sd3.transformer, rows, [3], normalize="max")


def test_conceptattention_segments_with_multi_token_names_and_a_background_concept(sd3):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    method = build_method("conceptattention", sd3, blocks=(2, 9))
    rows, positions = method.concepts(parse_labels(["tv monitor, screen", "cat"]))
    assert rows.shape == (1, 4, 128)  # every token of every synonym: tv, monitor, screen, cat
    assert positions == [[[0, 1], [2]], [[3]]]
    result = method(image, ["tv monitor, screen", "cat"])
    assert result.labels == ["background", "tv monitor", "cat"] and result.scores.shape == (3, 96, 128)
    assert result.extra["conditioning"] == "a tv monitor, a screen, a cat"
    assert np.allclose(result.scores.sum(0), 1, atol=0.35)  # label shares of one softmax (synonym max, token mean)
    named = method(image, ["background", "cat"], prompt="a cat on a mat")  # a named background is one more label
    assert named.labels == ["background", "cat"] and named.extra["conditioning"] == "a cat on a mat"
    no_background = build_method("conceptattention", sd3, blocks=(2,), background_concepts=())(image, ["cat", "dog"])
    assert no_background.labels == ["cat", "dog"]  # every pixel to a label: no threshold, no background concept


def test_conceptattention_refuses_a_unet_and_blocks_it_does_not_have(sd3, tiny):
    with pytest.raises(ValueError, match="reads a diffusion transformer's joint attention.*is a UNet"):
        build_method("conceptattention", tiny)
    with pytest.raises(ValueError, match=r"blocks \[30\] are not blocks of this transformer \(0..23\)"):
        build_method("conceptattention", sd3, blocks=(30,))
