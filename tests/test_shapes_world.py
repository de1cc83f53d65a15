import numpy as np
import pytest

from promptseg.data.shapes import ShapesDataset
from promptseg.data.shapes_world import CLASS_NAMES, SHAPES, VOCABULARY, make_caption, render_sample
from promptseg.models.tokenizers import build_word_tokenizer


def test_samples_are_deterministic_and_splits_differ():
    a, b = render_sample("test", 3), render_sample("test", 3)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption
    train = render_sample("train", 3)
    assert not np.array_equal(train.image, a.image)
    with pytest.raises(ValueError, match="'dev'"):
        render_sample("dev", 0)


def test_maps_agree_with_objects_and_caption():
    for i in range(30):
        s = render_sample("val", i)
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        background = CLASS_NAMES.index(s.background)
        # every pixel is the background word or the shape of the instance drawn there
        for k, obj in enumerate(s.objects):
            visible = s.instance_map == k + 1
            assert np.all(s.class_map[visible] == CLASS_NAMES.index(obj.shape))
        assert np.all(s.class_map[s.instance_map == 0] == background)
        assert s.caption.endswith(f"on {s.background}")
        for obj, v in zip(s.objects, [(s.instance_map == k + 1).any() for k in range(len(s.objects))]):
            if v:
                assert f"{obj.colour} {obj.shape}" in s.caption
        for expression, ids in s.referring:
            assert all(1 <= j <= len(s.objects) for j in ids)
            assert any(SHAPES[k] in expression for k in range(3)) or expression.endswith(" shapes")
        no_target = [e for e, ids in s.referring if not ids]
        assert len(no_target) == 1  # one per sample: a colour and shape that is not there
        colour, shape = no_target[0].removeprefix("the ").split()
        visible = [o for k, o in enumerate(s.objects) if (s.instance_map == k + 1).any()]
        assert not any(o.colour == colour and o.shape == shape for o in visible)


def test_referring_expressions_pick_the_right_instance():
    found = 0
    for i in range(200):
        s = render_sample("test", i)
        for expression, ids in s.referring:
            if " left of the " in expression:
                subject, other = expression.removeprefix("the ").split(" left of the ")
                j = next(k for k, o in enumerate(s.objects) if o.shape == other)
                assert all(s.objects[i - 1].shape == subject for i in ids)
                assert all(s.objects[i - 1].center[0] < s.objects[j].center[0] for i in ids)
                found += 1
    assert found > 10


def test_multi_target_expressions_name_every_instance_of_the_kind():
    kinds = {"shape": 0, "colour": 0}
    for i in range(200):
        s = render_sample("test", i)
        visible = {k + 1 for k in range(len(s.objects)) if (s.instance_map == k + 1).any()}
        for expression, ids in s.referring:
            words = expression.removeprefix("the ").split()
            if words[-1] == "shapes":
                expected = {j for j in visible if s.objects[j - 1].colour == words[0]}
                kinds["colour"] += 1
            elif words[-1].endswith("s") and words[-1][:-1] in SHAPES:
                expected = {j for j in visible if s.objects[j - 1].shape == words[-1][:-1]}
                kinds["shape"] += 1
            else:
                continue
            assert set(ids) == expected and len(ids) > 1, expression
    assert kinds["shape"] > 5 and kinds["colour"] > 5


def test_caption_dropout_only_with_an_rng():
    s = render_sample("train", 5)
    full = make_caption(s.objects, s.background)
    rng = np.random.default_rng(0)
    variants = {make_caption(s.objects, s.background, rng) for _ in range(50)}
    assert full in variants and len(variants) > 1


def test_every_vocabulary_word_is_one_token():
    tok = build_word_tokenizer(VOCABULARY, model_max_length=24)
    for word in VOCABULARY:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    assert len(tok("hexagon", add_special_tokens=False).input_ids) > 1  # unknown words are spelled out
    with pytest.raises(ValueError, match="Circle"):
        build_word_tokenizer(["Circle"], model_max_length=8)


def test_dataset_gives_exact_labels():
    data = ShapesDataset(n=4)
    sample = data[2]
    assert sample.id == "test_00002" and sample.image.size == (64, 64)
    assert np.array_equal(sample.label, render_sample("test", 2).class_map)
    assert data.class_names == list(CLASS_NAMES)
    with pytest.raises(IndexError):
        data[4]


def test_tokenizer_is_deterministic():
    a = build_word_tokenizer(VOCABULARY, model_max_length=24)
    b = build_word_tokenizer(list(reversed(VOCABULARY)), model_max_length=24)
    assert a.get_vocab() == b.get_vocab()
    assert a("a red circle on grassland").input_ids == b("a red circle on grassland").input_ids
