"""GoCA's aggregation of a transformer's blocks: weights from the activations, entity-token rescaling, in the baseline."""

import numpy as np
import pytest
import torch
from PIL import Image

from promptseg.diffusion import aggregation
from promptseg.diffusion.capture.selfattn import QKRecord
from promptseg.methods.base import build_method
from promptseg.models import load_backbone


def test_a_block_weighs_as_much_as_its_self_attention_agrees_with_the_reference():
    torch.manual_seed(0)
    features = torch.randn(1, 12, 8)
    reference = aggregation.affinity(features)
    assert torch.allclose(reference.sum(-1), torch.ones(1, 12))
    # a block whose queries and keys reproduce the reference affinity, and one attending uniformly
    agreeing = QKRecord(query=features, key=features, heads=1, scale=8 ** -0.5)
    uniform = QKRecord(query=torch.zeros(1, 12, 8), key=torch.zeros(1, 12, 8), heads=1, scale=1.0)
    weights = aggregation.layer_weights(reference, [agreeing, uniform])
    assert weights.sum().item() == pytest.approx(1.0) and weights[0] > weights[1]
    expected = torch.tensor([(reference * reference).sum(), (reference / 12).sum()])
    assert torch.allclose(weights, expected / expected.sum(), atol=1e-5)


def test_maps_are_summed_renormalised_and_rescaled_by_the_entity_tokens_total():
    a = torch.tensor([[[0.5, 0.3, 0.2], [0.8, 0.1, 0.1]]])  # (1, N=2, T=3): token 0 is the start token
    b = torch.tensor([[[0.1, 0.1, 0.8], [0.2, 0.4, 0.4]]])
    merged = aggregation.aggregate([a, b], torch.tensor([0.75, 0.25]))
    assert torch.allclose(merged, 0.75 * a + 0.25 * b) and torch.allclose(merged.sum(-1), torch.ones(1, 2))
    labels = merged[..., 1:]  # two one-token labels
    rescaled = aggregation.rescale(labels, merged, [1, 2])
    # GoCA's sum-1 rescaling: each pixel's label scores sum to 1 (not divided by the start token's share)
    assert torch.allclose(rescaled, labels / merged[..., 1:].sum(-1, keepdim=True))
    assert torch.allclose(rescaled.sum(-1), torch.ones(1, 2))


def rescaling_factor(method, prepared, tokens, text):
    """The baseline's goca rescaled label scores and its unscaled ones, and the entity total GoCA divides by."""
    from dataclasses import replace

    rescaled = method.read_attention(prepared, tokens, text)[0]
    method.config = replace(method.config, goca_rescale=False)
    unscaled = method.read_attention(prepared, tokens, text)[0]
    method.config = replace(method.config, goca_rescale=True)
    (rescaled,), (unscaled,) = rescaled.values(), unscaled.values()
    lengths = torch.tensor([float(len(spans[0])) for spans in tokens.positions])
    return rescaled, unscaled, (unscaled * lengths).sum(-1, keepdim=True)  # the mean times the count: the sum


def test_goca_divides_by_every_label_tokens_total_even_after_a_caption(reduced_folder):
    """On FLUX (T5: no start token) with the filter's caption appended: the factor is the summed score of every
    label token. Before, the factor was the score of the position after the label prompt's last token, which the
    caption turns into a separator."""
    from promptseg.text import build_prompt, parse_labels

    flux = load_backbone(str(reduced_folder("flux1")), device="cpu", dtype="fp32")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    method = build_method("baseline", flux, aggregation="goca", places=["block3", "block9", "single2"])
    prepared = method.prepare(image)
    tokens = build_prompt(flux.tokenizer, parse_labels(["cat", "potted plant"]), method.config.template,
                          method.config.joiner)
    text = flux.encode_text(method.completed(prepared, tokens.prompt, "a cat next to a plant on a table"))
    rescaled, unscaled, total = rescaling_factor(method, prepared, tokens, text)
    assert torch.allclose(rescaled, unscaled / total, rtol=1e-5)


@pytest.fixture(scope="module")
def sd3(reduced_folder):
    return load_backbone(str(reduced_folder("sd3")), device="cpu", dtype="fp32")


def test_the_baseline_weighs_a_transformers_blocks_from_its_activations(sd3, tiny):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    goca = build_method("baseline", sd3, aggregation="goca", refine_iterations=1, places=["block3", "block6", "block9"])
    result = goca(image, ["cat", "dog"])
    assert goca.reference == "transformer_blocks.6" and result.labels[-2:] == ["cat", "dog"]
    weights = goca.last_block_weights
    assert weights.shape == (3,) and weights.sum().item() == pytest.approx(1.0) and (weights >= 0).all()
    # one block and no rescaling: the block's map renormalised over the text tokens, pixel by pixel, so every
    # label's score is the fixed read-out's divided by one factor a pixel
    from promptseg.text import build_prompt, parse_labels

    alone = build_method("baseline", sd3, aggregation="goca", refine_iterations=1, goca_rescale=False, places=["block9"])
    fixed = build_method("baseline", sd3, places=["block9"], refine_iterations=1)
    prepared = alone.prepare(image)
    tokens = build_prompt(sd3.tokenizer, parse_labels(["cat", "dog"]), alone.config.template, alone.config.joiner)
    text = sd3.encode_text(tokens.prompt)
    ratio = (alone.read_attention(prepared, tokens, text)[0][(16, 16)]
             / fixed.read_attention(prepared, tokens, text)[0][(16, 16)])
    assert torch.allclose(ratio[..., 0], ratio[..., 1], rtol=1e-4) and not torch.allclose(ratio, torch.ones_like(ratio))
    goca = build_method("baseline", sd3, aggregation="goca", refine_iterations=1, places=["block9"])
    rescaled, unscaled, total = rescaling_factor(goca, prepared, tokens, text)
    assert torch.allclose(rescaled, unscaled / total, rtol=1e-5)  # CLIP: not the start token's share
    assert torch.allclose(rescaled.sum(-1), torch.ones_like(total[..., 0]), rtol=1e-5)  # one-token labels
    # refer() reads the expression's words with GoCA's aggregation too; one label is not rescaled (its score over
    # its own total would be 1/n at every pixel, min-maxed into float noise)
    answer = goca.refer(goca.prepare(image), "the cat on the left")
    unscaled_answer = build_method("baseline", sd3, aggregation="goca", refine_iterations=1, goca_rescale=False,
                                   places=["block9"]).refer(goca.prepare(image), "the cat on the left")
    assert answer.mask.shape == (64, 64) and answer.extra["words"]
    assert np.allclose(answer.score, unscaled_answer.score, atol=1e-5)
    rescaled = build_method("baseline", sd3, aggregation="goca", refine_iterations=1, places=["block9"])(image, ["cat", "dog"])
    unscaled = build_method("baseline", sd3, aggregation="goca", refine_iterations=1, goca_rescale=False, places=["block9"])(image, ["cat", "dog"])
    assert not np.allclose(rescaled.scores, unscaled.scores)
    with pytest.raises(ValueError, match="refine_iterations=0"):
        build_method("baseline", sd3, aggregation="goca", refine_iterations=0, places=["block9"])
    with pytest.raises(ValueError, match="runs after the last block read"):
        build_method("baseline", sd3, aggregation="goca", refine_iterations=1, goca_reference="block12", places=["block3", "block9"])
    with pytest.raises(ValueError, match="name a block"):
        build_method("baseline", sd3, aggregation="goca", refine_iterations=1, goca_reference="joint", places=["block3", "block9"])
    with pytest.raises(ValueError, match="aggregation='goca' weighs a transformer's blocks"):
        build_method("baseline", tiny, aggregation="goca")
    with pytest.raises(ValueError, match="aggregation must be 'fixed' or 'goca'"):
        build_method("baseline", sd3, aggregation="learned")
