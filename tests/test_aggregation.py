"""GoCA's aggregation of a transformer's blocks: weights from the activations, start-token rescaling, in the baseline."""

import numpy as np
import pytest
import torch
from PIL import Image

from promptseg.diffusion import aggregation
from promptseg.diffusion.capture.selfattn import QKRecord
from promptseg.methods.base import build_method
from promptseg.models import load_backbone
from promptseg.models.dit_configs import save_dit


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


def test_maps_are_summed_renormalised_and_rescaled_by_the_start_tokens_share():
    a = torch.tensor([[[0.5, 0.3, 0.2], [0.8, 0.1, 0.1]]])  # (1, N=2, T=3): token 0 is the start token
    b = torch.tensor([[[0.1, 0.1, 0.8], [0.2, 0.4, 0.4]]])
    merged = aggregation.aggregate([a, b], torch.tensor([0.75, 0.25]))
    assert torch.allclose(merged, 0.75 * a + 0.25 * b) and torch.allclose(merged.sum(-1), torch.ones(1, 2))
    labels = merged[..., 1:]  # two one-token labels
    rescaled = aggregation.rescale(labels, merged, [0])
    assert torch.allclose(rescaled, labels / merged[..., :1])


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    folder = save_dit("sd3", tmp_path_factory.mktemp("sd3") / "sd3-reduced", reduced=True)
    return load_backbone(str(folder), device="cpu", dtype="fp32")


def test_the_baseline_weighs_a_transformers_blocks_from_its_activations(sd3, tiny):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    goca = build_method("baseline", sd3, aggregation="goca", places=["block3", "block6", "block9"])
    result = goca(image, ["cat", "dog"])
    assert goca.reference == "transformer_blocks.6" and result.labels[-2:] == ["cat", "dog"]
    weights = goca.last_block_weights
    assert weights.shape == (3,) and weights.sum().item() == pytest.approx(1.0) and (weights >= 0).all()
    # one block and no rescaling: the block's map renormalised over the text tokens, pixel by pixel, so every
    # label's score is the fixed read-out's divided by one factor a pixel
    from promptseg.text import build_prompt, parse_labels

    alone = build_method("baseline", sd3, aggregation="goca", goca_rescale=False, places=["block9"])
    fixed = build_method("baseline", sd3, places=["block9"])
    prepared = alone.prepare(image)
    tokens = build_prompt(sd3.tokenizer, parse_labels(["cat", "dog"]), alone.config.template, alone.config.joiner)
    text = sd3.encode_text(tokens.prompt)
    ratio = (alone.read_attention(prepared, tokens, text)[0][(16, 16)]
             / fixed.read_attention(prepared, tokens, text)[0][(16, 16)])
    assert torch.allclose(ratio[..., 0], ratio[..., 1], rtol=1e-4) and not torch.allclose(ratio, torch.ones_like(ratio))
    rescaled = build_method("baseline", sd3, aggregation="goca", places=["block9"])(image, ["cat", "dog"])
    unscaled = build_method("baseline", sd3, aggregation="goca", goca_rescale=False, places=["block9"])(image, ["cat", "dog"])
    assert not np.allclose(rescaled.scores, unscaled.scores)
    with pytest.raises(ValueError, match="aggregation='goca' weighs a transformer's blocks"):
        build_method("baseline", tiny, aggregation="goca")
    with pytest.raises(ValueError, match="aggregation must be 'fixed' or 'goca'"):
        build_method("baseline", sd3, aggregation="learned")
