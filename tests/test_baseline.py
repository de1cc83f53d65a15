import numpy as np
import pytest
import torch

from promptseg import build_method, method_config
from promptseg.diffusion.attention import resolve_weights
from promptseg.methods.base import finish
from promptseg.text import parse_labels


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return (rng.random((45, 60, 3)) * 255).astype(np.uint8)


def test_outputs_have_the_documented_shapes_and_formats(tiny, image):
    result = build_method("baseline", tiny)(image, ["cat", "dog, people"])
    assert result.labels == ["background", "cat", "dog"]
    assert result.label_map.shape == (45, 60) and result.label_map.dtype == np.int32
    assert result.scores.shape == (3, 45, 60) and result.scores.dtype == np.float32
    assert set(np.unique(result.label_map)) <= {0, 1, 2}
    assert 0.0 <= result.scores.min() and result.scores.max() <= 1.0
    assert np.all(result.scores[0] == 0.5)  # the background threshold plane
    assert np.array_equal(result.label_map, result.scores.argmax(0))
    assert {"prepare", "segment"} <= set(result.timings)


def test_prepare_once_segment_many_label_sets(tiny, image):
    method = build_method("baseline", tiny)
    prepared = method.prepare(image)
    first = method.segment(prepared, ["cat", "dog"])
    other = method.segment(prepared, ["grass", "sky", "tree"])
    again = method.segment(prepared, ["cat", "dog"])
    assert other.labels == ["background", "grass", "sky", "tree"]
    assert np.array_equal(first.scores, again.scores)  # deterministic: seeded noise kept in `prepared`
    fresh = build_method("baseline", tiny)(image, ["cat", "dog"])
    assert np.allclose(fresh.scores, first.scores, atol=1e-6)


def test_prompt_conditioning_reads_label_sets_from_kept_queries(tiny, image):
    by_prompt = build_method("baseline", tiny, conditioning="prompt")
    prepared = by_prompt.prepare(image, prompt="a photograph of cat and dog")
    # conditioned on exactly the label prompt, the query path equals the paper's one-pass recipe
    same = by_prompt.segment(prepared, ["cat", "dog"])
    paper = build_method("baseline", tiny)(image, ["cat", "dog"])
    assert np.allclose(same.scores, paper.scores, atol=1e-4)
    other = by_prompt.segment(prepared, ["sky", "tree"])
    assert other.labels == ["background", "sky", "tree"]
    with pytest.raises(ValueError, match="conditioning='prompt'"):
        build_method("baseline", tiny).prepare(image, prompt="a cat")


def test_background_as_named_label_or_threshold(tiny, image):
    named = build_method("baseline", tiny)(image, ["background", "cat"])
    assert named.labels == ["background", "cat"]  # a named background is an ordinary label, no threshold plane
    assert not np.all(named.scores[0] == 0.5)
    none = build_method("baseline", tiny, background_threshold=None)(image, ["cat", "dog"])
    assert none.labels == ["cat", "dog"]
    everything = build_method("baseline", tiny, background_threshold=1.01)(image, ["cat", "dog"])
    assert np.all(everything.label_map == 0)


def test_finish_thresholds_and_upsamples():
    scores = torch.tensor([[[0.9, 0.1], [0.2, 0.3]], [[0.1, 0.8], [0.1, 0.2]]])
    result = finish(scores, parse_labels(["a", "b"]), (2, 2), 0.4, {})
    assert result.labels == ["background", "a", "b"]
    assert result.label_map.tolist() == [[1, 2], [0, 0]]
    big = finish(scores, parse_labels(["a", "b"]), (4, 6), None, {})
    assert big.label_map.shape == (4, 6) and big.labels == ["a", "b"]


def test_resolution_fractions_map_onto_the_unet(tiny):
    grids = resolve_weights({0.125: 0.3, 0.25: 0.5, 0.5: 0.1, 1.0: 0.1}, tiny, "cross")
    # the tiny UNet has 16x16 and 8x8 attention only: DiffSegmenter's 4x4 (0.125: 2x2 here) and 8x8 (0.25: 4x4)
    # weights move to the nearest grid there is, 8x8, instead of vanishing (SDXL's case: no 1/8 or 1/16 grid)
    assert {g: round(w, 6) for g, w in grids.items()} == {(8, 8): 0.9, (16, 16): 0.1}
    assert resolve_weights({0.25: 1.0, 0.125: 0.5}, tiny, "cross") == {(8, 8): 1.5}
    with pytest.raises(ValueError, match=r"fractions \[1.0, 0.5\]"):
        resolve_weights({0.25: 0.0}, tiny, "cross")


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="'timestamp'"):
        method_config("baseline", timestamp=3)
    with pytest.raises(ValueError, match="'nope'"):
        method_config("nope")
    with pytest.raises(ValueError, match="'sideways'"):
        method_config("baseline", conditioning="sideways")


def test_timestep_out_of_range(tiny, image):
    with pytest.raises(ValueError, match="timestep must be in"):
        build_method("baseline", tiny, timestep=1000).prepare(image)


def test_labels_that_do_not_fit_one_prompt_are_split_into_passes(tiny, image):
    from promptseg.text import split_to_fit

    many = ["cat", "dog", "person, people", "sky", "tree", "red", "grassland"]  # 24 tokens with the template
    groups = split_to_fit(tiny.tokenizer, parse_labels(many), "a photograph of {}", " and ")
    assert [len(g) for g in groups] == [6, 1]
    method = build_method("baseline", tiny)
    prepared = method.prepare(image)
    result = method.segment(prepared, many)
    assert result.labels == ["background", "cat", "dog", "person", "sky", "tree", "red", "grassland"]
    # the first six labels' refined maps only differ from a six-label call through the averaged self-attention
    alone = method.segment(prepared, many[:6])
    assert result.scores.shape[0] == 8
    assert np.corrcoef(result.scores[1:7].ravel(), alone.scores[1:].ravel())[0, 1] > 0.9
    with pytest.raises(ValueError, match="needs"):
        method.segment(prepared, [" ".join(["cat"] * 20)])


def test_self_attention_of_many_passes_is_merged_as_they_come(tiny, image, monkeypatch):
    """ADE-847's names fill ~45 prompts at SD's size; keeping every pass's self-attention queries and keys until
    the last pass held 2.4 GB there. What is alive stays bounded however many passes a vocabulary takes."""
    import gc
    import itertools

    from promptseg.diffusion.capture import store as store_module
    from promptseg.diffusion.capture.selfattn import QKRecord

    monkeypatch.setattr(store_module, "LAZY_SELF_TOKENS", 200)  # the tiny model's 16x16 grid kept lazily, as SD's is
    words = ["cat", "dog", "person", "grass", "sky", "tree", "red"]
    many = [" ".join(c) for c in itertools.permutations(words, 5)][:30]  # 5 tokens a name: 2 names a prompt
    method = build_method("baseline", tiny)
    prepared = method.prepare(image)
    alive, read = [], method.read_attention

    def counted(*args, **kwargs):
        out = read(*args, **kwargs)
        gc.collect()
        alive.append(sum(isinstance(o, QKRecord) for o in gc.get_objects()))
        return out

    method.read_attention = counted
    result = method.segment(prepared, many)
    per_pass = alive[0]
    assert len(alive) == 15 and per_pass > 0 and result.scores.shape[0] == 31
    assert max(alive) <= 16 + 2 * per_pass  # a fold's worth, never one set per pass


def test_without_refinement_self_attention_is_not_recorded(tiny, image):
    plain = build_method("baseline", tiny, refine_iterations=0)
    assert plain.layers and all(layer.kind == "cross" for layer in plain.layers)
    result = plain(image, ["cat", "dog"])
    refined = build_method("baseline", tiny, refine_iterations=1)(image, ["cat", "dog"])
    assert result.scores.shape == refined.scores.shape
    assert not np.allclose(result.scores, refined.scores, atol=1e-3)


def test_per_class_prompts_run_one_pass_a_label(tiny, monkeypatch):
    import promptseg.methods.baseline as baseline_module

    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    prompts = []
    real = baseline_module.attention_pass

    def spy(backbone, latents, timestep, text, layers, **kwargs):
        prompts.append(text.shape[0])
        return real(backbone, latents, timestep, text, layers, **kwargs)

    monkeypatch.setattr(baseline_module, "attention_pass", spy)
    joint = build_method("baseline", tiny, template="a {}")(image, ["cat", "dog", "sky"])
    assert len(prompts) == 1
    per_class = build_method("baseline", tiny, template="a {}", prompt_mode="per_class")(image, ["cat", "dog", "sky"])
    assert len(prompts) == 1 + 3 and per_class.labels == joint.labels
    assert not np.allclose(per_class.scores, joint.scores)  # each word attended alone reads differently
    with pytest.raises(ValueError, match="prompt_mode must be 'joint' or 'per_class'"):
        build_method("baseline", tiny, prompt_mode="each")


def test_captions_complete_each_pass_prompt_after_the_label_tokens(tiny, monkeypatch):
    """DiffSegmenter's protocol: per class, the captioner continues "a {class}" for the image and the UNet sees the
    class prompt + " ++ " + the continuation; without a captioner a given caption (a filter's) completes every
    pass's prompt. The label tokens are read where the label prompt put them."""
    from promptseg.models.captioner import continuation

    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    seen = []
    real = tiny.encode_text
    monkeypatch.setattr(tiny, "encode_text", lambda text: seen.append(text) or real(text))
    method = build_method("baseline", tiny, template="a {}", prompt_mode="per_class")
    plain = method(image, ["cat", "dog"])
    asked = []
    method.captioner = lambda pil, prefix: asked.append((pil.size, prefix)) or prefix.upper() + " on a sofa"
    seen.clear()
    captioned = method(image, ["cat", "dog"])
    assert asked == [((64, 64), "a cat"), ((64, 64), "a dog")]  # one continuation a class, of the image
    assert seen == ["a cat ++ on a sofa", "a dog ++ on a sofa"]
    assert not np.allclose(captioned.scores, plain.scores)  # the continuation changes what the label attends to
    seen.clear()
    joint = build_method("baseline", tiny, template="a {}")(image, ["cat", "dog"], prompt="a cat on a sofa")
    assert seen == ["a cat and dog ++ a cat on a sofa"] and joint.labels == ["background", "cat", "dog"]
    assert continuation("a photograph of cat sitting on a sofa", "a photograph of Cat") == "sitting on a sofa"
    assert continuation("two cats", "a photograph of cat") == "two cats"  # not a continuation: kept whole
    with pytest.raises(ValueError, match="needs prompt_mode='per_class'"):
        build_method("baseline", tiny, captioner="Salesforce/blip-image-captioning-large")


def test_a_caption_is_cut_to_fit_and_never_moves_the_label_tokens(tiny):
    from promptseg.text import append_to_fit

    tokenizer = tiny.tokenizer
    long = " ".join(["cat"] * 100)
    text = append_to_fit(tokenizer, "a dog", long, " ++ ")
    assert text.startswith("a dog ++ cat") and len(tokenizer(text).input_ids) == tokenizer.model_max_length
    assert append_to_fit(tokenizer, "a dog", "", " ++ ") == "a dog"
