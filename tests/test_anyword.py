"""Segment Anyword and the baseline's expression answer on the tiny model: inversion, read-out, prompts to masks."""

import numpy as np
import pytest
import torch
from PIL import Image

from promptseg.methods import build_method, method_config

pytest.importorskip("spacy")
FAST = dict(steps=2, batch=1, timesteps=(100,), sam=None, cross_weights={0.5: 1.0}, self_weights={1.0: 1.0})


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
    array[8:24, 4:20] = (250, 20, 20)
    return Image.fromarray(array)


def test_token_embeds_replace_input_rows_differentiably(tiny):
    prompt = "a red cat"
    ids = tiny.tokenizer(prompt).input_ids
    rows = tiny.text_encoder.get_input_embeddings().weight[ids[2:4]].detach().clone().requires_grad_(True)
    same = tiny.encode_text(prompt, token_embeds=([2, 3], rows))
    assert torch.allclose(same, tiny.encode_text(prompt), atol=1e-6)
    same.sum().backward()
    assert rows.grad is not None and rows.grad.abs().sum() > 0
    other = tiny.encode_text(prompt, token_embeds=([2, 3], rows.detach() + 1.0))
    assert not torch.allclose(other, tiny.encode_text(prompt))
    assert tiny.text_encoder.get_input_embeddings()._forward_hooks == {}  # the hook is removed


def test_refer_learns_only_the_concept_embeddings(tiny, image):
    before = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
    embeddings = tiny.text_encoder.get_input_embeddings().weight.clone()
    anyword = build_method("anyword", tiny, **FAST)
    result = anyword.refer(anyword.prepare(image), "a red cat")
    assert result.mask.shape == (32, 48) and result.mask.dtype == bool
    assert result.score.shape == (32, 48) and 0 <= result.score.min() <= result.score.max() <= 1
    assert result.extra["words"] == ["red", "cat"]
    assert len(result.extra["inversion_loss"]) == 2 and result.extra["inversion_change"][-1] > 0
    assert all(torch.equal(before[k], v) for k, v in tiny.unet.state_dict().items())
    assert torch.equal(embeddings, tiny.text_encoder.get_input_embeddings().weight)


def test_no_inversion_and_no_parse_ablations(tiny, image):
    plain = build_method("anyword", tiny, **{**FAST, "steps": 0, "linguistic": False})
    result = plain.refer(plain.prepare(image), "a red cat and a dog")
    assert result.extra["inversion_loss"] == []
    assert result.extra["words"] == ["red", "cat", "dog"]  # every content word, no binding
    assert result.mask.any()


def test_presence_threshold_lets_the_answer_be_empty(tiny, image):
    strict = build_method("anyword", tiny, **{**FAST, "steps": 0, "presence_threshold": 1.01})
    result = strict.refer(strict.prepare(image), "a red cat")
    assert not result.mask.any() and result.extra["regions"] == []


def test_regions_become_sam_prompts_in_image_pixels(tiny, image, monkeypatch):
    anyword = build_method("anyword", tiny, **{**FAST, "steps": 0})
    calls = {}

    class FakeSam:
        def predict(self, img, boxes=None, points=None, labels=None):
            calls["boxes"], calls["size"] = boxes, img.size
            masks = np.zeros((len(boxes), img.height, img.width), bool)
            for k, (x0, y0, x1, y1) in enumerate(boxes):
                masks[k, int(y0) : int(y1), int(x0) : int(x1)] = True
            return masks, np.ones(len(boxes))

    anyword.sam = FakeSam()
    result = anyword.refer(anyword.prepare(image), "a red cat")
    assert calls["size"] == (48, 32)
    grid = anyword._grid((32, 48))
    scale = 48 / grid[1]
    expected = [[b * scale for b in box] for box in result.extra["regions"]]
    assert np.allclose(calls["boxes"], expected)
    x0, y0, x1, y1 = (int(v) for v in expected[0])
    assert result.mask[y0:y1, x0:x1].all()


def test_sam_proposals_are_ranked_and_kept_as_drawn(tiny, image):
    anyword = build_method("anyword", tiny, **{**FAST, "steps": 0})
    red = np.zeros((32, 48), bool)
    red[8:24, 4:20] = True  # the red square of the image
    other = np.zeros((32, 48), bool)
    other[2:30, 30:46] = True

    class FakeSam:
        def propose(self, img, points_per_side, min_stability, min_area):
            self.asked = (img.size, points_per_side, min_stability)
            return np.stack([other, red]), np.ones(2, np.float32)

        def predict(self, *args, **kwargs):
            raise AssertionError("a proposal is the mask as drawn: SAM is not prompted again")

    anyword.sam = FakeSam()
    anyword.config.proposals = "sam"
    prepared = anyword.prepare(image)
    result = anyword.refer(prepared, "a red cat")
    assert anyword.sam.asked == ((48, 32), 8, anyword.config.min_stability)
    assert len(result.extra["candidates"]) == 2  # both proposals were scored, one was chosen
    assert np.array_equal(result.mask, red) or np.array_equal(result.mask, other)
    small, full = prepared.extra["proposals"]  # cached per image: grid masks and the masks as drawn
    assert full.shape == (2, 32, 48) and small.shape[1:] == anyword._grid((32, 48))


def test_baseline_answers_with_the_head_phrase(tiny, image):
    baseline = build_method("baseline", tiny, cross_weights={0.5: 1.0}, self_weights={1.0: 1.0})
    result = baseline.refer(baseline.prepare(image), "a red cat and a dog")
    assert result.extra["words"] == ["red", "cat"]
    assert result.mask.shape == (32, 48) and result.mask.any() and not result.mask.all()


def test_a_sam_that_cannot_load_names_the_setting_at_build_time(tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"(?s)sam=.facebook/sam-vit-base.*--set sam=null"):
        build_method("anyword", tiny)  # the default SAM is a hub id, not in this machine's cache
    with pytest.raises(FileNotFoundError, match="--set sam="):
        build_method("anyword", tiny, sam="/no/such/sam")
    assert build_method("anyword", tiny, sam=None).sam is None  # the no-SAM path builds


def test_settings_are_checked():
    with pytest.raises(ValueError, match="sam_prompt"):
        method_config("anyword", sam_prompt="mask")
    with pytest.raises(ValueError, match="evidence"):
        method_config("anyword", evidence="clip")
    assert method_config("anyword", sam="none").sam is None
    with pytest.raises(ValueError, match="proposals='sam' needs a SAM"):
        method_config("anyword", proposals="sam", sam=None)
    with pytest.raises(ValueError, match="proposals must be"):
        method_config("anyword", proposals="grid")
    with pytest.raises(ValueError, match="evidence_template"):
        method_config("anyword", evidence_template="a cat")


def test_semantic_segmentation_through_referring(tiny, image):
    anyword = build_method("anyword", tiny, **{**FAST, "steps": 0})
    result = anyword(image, ["cat", "dog"])
    assert result.labels == ["background", "cat", "dog"]
    assert result.label_map.shape == (32, 48) and set(np.unique(result.label_map)) <= {0, 1, 2}
    assert result.scores.shape == (3, 32, 48)
    for k in (1, 2):  # a pixel labelled k lies inside label k's mask, where its score is kept
        assert (result.scores[k][result.label_map == k] >= 0).all()
    with pytest.raises(ValueError, match="no prompt"):
        anyword(image, ["cat"], prompt="a cat")


def test_denoising_evidence_ranks_and_can_empty_the_answer(tiny, image):
    settings = {**FAST, "steps": 0, "evidence": "denoising", "evidence_timesteps": (100, 500)}
    ranked = build_method("anyword", tiny, **settings)
    prepared = ranked.prepare(image)
    result = ranked.refer(prepared, "a red cat")
    evidence = prepared.extra["evidence"]  # cached on the prepared image, one entry per phrase
    assert set(evidence.cache) == {"red cat", "object"}  # the phrase and the generic reference word
    assert evidence.cache["red cat"].shape == prepared.latents.shape[-2:]
    assert result.mask.any()
    strict = build_method("anyword", tiny, **{**settings, "evidence_threshold": 1e6})
    assert not strict.refer(strict.prepare(image), "a red cat").mask.any()


def test_evidence_template_writes_phrase_and_reference(tiny, image):
    settings = {**FAST, "steps": 0, "evidence": "denoising", "evidence_timesteps": (100,), "evidence_template": "a {}"}
    anyword = build_method("anyword", tiny, **settings)
    prepared = anyword.prepare(image)
    anyword.refer(prepared, "a red cat")
    assert set(prepared.extra["evidence"].cache) == {"a red cat", "a object"}


def test_inversion_micro_batches_accumulate_the_same_gradient(tiny):
    from promptseg.diffusion.encode import prepare_pixels
    from promptseg.methods.anyword.inversion import invert_tokens

    image = (np.random.default_rng(3).random((64, 64, 3)) * 255).astype(np.uint8)
    latents = prepare_pixels(tiny, image).latents
    runs = [invert_tokens(tiny, latents, "a red cat", [2, 3], steps=3, lr=0.05, batch=3, timesteps=(50, 500), seed=0,
                          micro_batch=m) for m in (None, 1, 2)]
    for text, log in runs[1:]:
        assert torch.allclose(text, runs[0][0], atol=1e-5)
        assert np.allclose(log["loss"], runs[0][1]["loss"], rtol=1e-5)
    assert not torch.allclose(runs[0][0], tiny.encode_text("a red cat"), atol=1e-4)  # the embeddings moved
