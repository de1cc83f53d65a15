"""The scenes world: deterministic, disjoint splits, ground truth consistent with what was drawn, names as SD
tokenises them, captions that claim only what is there."""

import re

import numpy as np
import pytest

from promptseg.data import get_dataset
from promptseg.data.base import bundled_class_names
from promptseg.data.scenes_world import (
    CLASS_NAMES,
    IGNORE_INDEX,
    PART_NAMES,
    PARTS,
    SKY_THINGS,
    STUFF,
    SYNONYMS,
    THINGS,
    caption_parts,
    class_name_lines,
    make_caption,
    plural,
    rare_vocabulary,
    render_sample,
)


@pytest.fixture(scope="module")
def samples():
    return [render_sample("val", i) for i in range(40)]


def test_rendering_is_a_pure_function_of_split_and_index():
    a, b = render_sample("test", 7), render_sample("test", 7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.part_map, b.part_map) and a.caption == b.caption


def test_splits_are_disjoint_streams():
    images = {split: [render_sample(split, i).image.tobytes() for i in range(15)] for split in ("train", "val", "test")}
    assert len(set(sum(images.values(), []))) == 45


def test_bad_split_and_index_are_named():
    with pytest.raises(ValueError, match="'dev'"):
        render_sample("dev", 0)
    with pytest.raises(ValueError, match="-1"):
        render_sample("val", -1)


def test_the_sky_is_absent_from_some_views_and_fills_others():
    """A word is localised only if its presence varies: looking down there is no sky, nothing of the sky and no
    sky word in the caption; looking up the sky is most of the image."""
    views = {"level": [], "down": [], "up": []}
    for i in range(120):
        s = render_sample("train", i)
        views[s.view].append(s)
    assert all(len(group) >= 6 for group in views.values())
    sky = CLASS_NAMES.index("sky")
    for s in views["down"]:
        assert "sky" not in s.stuff and "mountain" not in s.stuff and (s.class_map != sky).all()
        assert not any(o.cls in SKY_THINGS for o in s.objects) and s.visible
        assert "sky" not in make_caption(s).split()
    assert all((s.class_map == sky).mean() > 0.5 for s in views["up"])
    assert all("sky" in s.stuff and (s.class_map == sky).mean() < 0.75 for s in views["level"])


def test_world_has_the_classes_the_issue_asks_for():
    assert len(STUFF) >= 6 and len(THINGS) >= 14
    assert {"house", "tree", "car", "sailboat", "person"} <= set(PARTS)


def test_every_pixel_has_a_class_and_instances_match_their_objects(samples):
    for s in samples:
        assert s.image.shape == (128, 128, 3) and (s.class_map != IGNORE_INDEX).all()
        for obj in s.objects:
            mask = s.instance_map == obj.instance
            assert mask.sum() == obj.area
            if obj.area:
                assert (s.class_map[mask] == CLASS_NAMES.index(obj.cls)).all()
                x0, y0, x1, y1 = obj.box
                assert mask[y0:y1, x0:x1].sum() == obj.area
        stuff_pixels = s.instance_map == 0
        assert all(CLASS_NAMES[c] in STUFF for c in np.unique(s.class_map[stuff_pixels]))
        assert set(s.stuff) == {CLASS_NAMES[c] for c in np.unique(s.class_map[stuff_pixels])}


def test_parts_lie_inside_their_objects_and_nowhere_else(samples):
    seen = set()
    for s in samples:
        assert (s.part_map[s.instance_map == 0] == IGNORE_INDEX).all()  # stuff has no parts
        for obj in s.visible:
            parts = np.unique(s.part_map[s.instance_map == obj.instance])
            names = {PART_NAMES[p] for p in parts if p != IGNORE_INDEX}
            if obj.cls in PARTS:
                assert names and all(n.startswith(obj.cls + " ") for n in names)
                seen |= names
            else:
                assert not names
    assert {"house roof", "car wheel", "tree trunk", "sailboat sail", "person head"} <= seen


def test_several_class_names_are_several_clip_tokens():
    from promptseg.models.tokenizers import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    multi = [name for name in CLASS_NAMES if len(tokenizer.tokenize(name)) > 1]
    assert {"sailboat", "hot air balloon", "traffic cone", "streetlight"} <= set(multi)


def test_captions_claim_only_what_is_visible(samples):
    rng = np.random.default_rng(0)
    for s in samples:
        for r in (None, rng):
            text, (things, stuff) = caption_parts(s, r)
            assert text
            assert set(stuff) <= set(s.stuff)
            for cls, colour in things:
                assert any(o.cls == cls and (colour is None or o.colour == colour) for o in s.visible)


def test_full_caption_names_every_visible_class(samples):
    for s in samples:
        _, (things, stuff) = caption_parts(s)
        assert {c for c, _ in things} == {o.cls for o in s.visible} and set(stuff) == set(s.stuff)


def test_captions_use_synonyms_and_leave_things_out():
    rng = np.random.default_rng(1)
    s = next(render_sample("train", i) for i in range(50) if any(o.cls == "car" for o in render_sample("train", i).visible))
    texts = [caption_parts(s, rng)[0] for _ in range(300)]
    assert any("automobile" in t for t in texts) and any(" car" in t for t in texts)
    assert any(len(caption_parts(s, rng)[1][0]) < len({o.cls for o in s.visible}) for _ in range(50))


def test_class_name_files_are_the_worlds():
    assert bundled_class_names("scenes") == class_name_lines()
    assert bundled_class_names("scenes_rare") == rare_vocabulary()
    assert rare_vocabulary()[CLASS_NAMES.index("car")] == "automobile"
    assert all(rare in dict(SYNONYMS[name]) for name, rare in zip(CLASS_NAMES, rare_vocabulary()))


def test_plurals():
    assert [plural(w) for w in ("person", "hot air balloon", "snowman", "bus", "car")] == [
        "people", "hot air balloons", "snowmen", "buses", "cars"]


def test_dataset_gives_label_maps_at_the_image_size():
    dataset = get_dataset("scenes", n=3, split="val")
    sample = dataset[2]
    assert sample.image.size == (128, 128) and sample.label.shape == (128, 128) and sample.id == "val_00002"
    assert dataset.class_names[CLASS_NAMES.index("water")] == "water, sea, ocean"


def test_a_bundled_list_is_read_by_name_and_a_missing_file_lists_them():
    from promptseg.data.base import read_class_names

    assert read_class_names("scenes_rare") == rare_vocabulary()
    with pytest.raises(FileNotFoundError, match="scenes_rare"):
        read_class_names("no_such_list")
    dataset = get_dataset("scenes", n=1, class_names_file="scenes_rare")
    assert dataset.class_names[CLASS_NAMES.index("car")] == "automobile"


def test_a_missing_bundled_model_says_how_to_train_it(monkeypatch, tmp_path):
    import dataclasses

    from promptseg.models import BUNDLED, load_backbone

    monkeypatch.setitem(BUNDLED, "scenes", dataclasses.replace(BUNDLED["scenes"], folder=tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="python -m promptseg.training.scenes"):
        load_backbone("scenes", device="cpu")


def test_captions_list_stuff_in_random_order():
    """Listed top to bottom, "sky" would always be the first stuff word: its place would name it as well as the
    word does, and the model could learn the place instead of the word."""
    s = next(x for x in (render_sample("train", i) for i in range(50)) if x.stuff[0] == "sky" and len(x.stuff) >= 3)
    rng = np.random.default_rng(2)
    sky_words = {w for w, _ in SYNONYMS["sky"]}
    lists = [re.split(r", | and ", t.rsplit(" with ", 1)[-1]) for t in (caption_parts(s, rng)[0] for _ in range(200))]
    with_sky = [items for items in lists if len(items) >= 2 and any(item in sky_words for item in items)]
    assert len(with_sky) > 30
    assert 0.1 < np.mean([items[0] in sky_words for items in with_sky]) < 0.9
    assert make_caption(s) == make_caption(s)  # without rng: complete and in the image's order
