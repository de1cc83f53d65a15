"""Class filters: the keep rule, caption matching, the CLIP loader, and the filters on the bundled models."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from promptseg import build_method, load_backbone, parse_labels
from promptseg.data.shapes_world import CLASS_NAMES, render_sample
from promptseg.filters import build_filter, filter_config, list_filters
from promptseg.filters.base import decide
from promptseg.filters.caption import load_captioner, mentioned
from promptseg.models.clip import load_clip
from promptseg.pipeline import Pipeline, run_stages

LABELS = parse_labels(["cat", "sofa, couch", "dog"])


def test_decide_keeps_what_passes_and_says_why_the_rest_went():
    decision = decide(LABELS, np.array([0.4, 0.1, 0.3]), 0.25, 1, "CLIP similarity")
    assert [label.name for label in decision.kept] == ["cat", "dog"]
    assert list(decision.dropped) == ["sofa"] and "0.100 < threshold 0.25" in decision.dropped["sofa"]
    assert decision.scores == {"cat": 0.4, "sofa": 0.1, "dog": 0.3} and not decision.warnings


def test_decide_never_drops_every_label_silently():
    rescued = decide(LABELS, np.array([0.1, 0.2, 0.05]), 0.5, 1, "score")
    assert [label.name for label in rescued.kept] == ["sofa"]
    assert "kept the best-scoring ['sofa']" in rescued.warnings[0]
    empty = decide(LABELS, np.array([0.1, 0.2, 0.05]), 0.5, 0, "score")
    assert empty.kept == [] and set(empty.dropped) == {"cat", "sofa", "dog"}
    assert "every label was dropped" in empty.warnings[0]


def test_caption_mentions_whole_words_plurals_and_synonyms():
    labels = parse_labels(["cat", "sofa, couch", "dog", "bus", "potted plant", "car"])
    assert mentioned("Two cats sleeping on a couch", labels) == {"cat", "sofa"}
    assert mentioned("buses near a potted plant", labels) == {"bus", "potted plant"}
    assert mentioned("a category of cartoons", labels) == set()  # no match inside other words


def test_registry_settings_and_bad_names():
    assert {"none", "clip", "diffusion"} <= set(list_filters())
    assert filter_config("clip", threshold="0.3").threshold == 0.3
    assert filter_config("clip", templates=["a {}", "the {}"]).templates == ("a {}", "the {}")
    with pytest.raises(ValueError, match="unknown filter 'nope'"):
        filter_config("nope")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['thresh'\]"):
        filter_config("clip", thresh=0.3)
    with pytest.raises(ValueError, match="templates must each contain"):
        filter_config("clip", templates=["no placeholder"])
    with pytest.raises(ValueError, match="criterion must be one of"):
        filter_config("diffusion", criterion="vibes")


def test_the_pipeline_resolves_the_filter_from_the_model_and_lets_the_user_win(tmp_path):
    recommended = {"filter": "clip", "filters": {"clip": {"model": "shapes-clip", "threshold": 0.5},
                                                 "diffusion": {"threshold": -0.1}}}
    (tmp_path / "promptseg_settings.json").write_text(json.dumps(recommended))

    def chosen(name=None, overrides=None, **kwargs):
        stage = Pipeline(str(tmp_path), "baseline", filter=name, filter_settings=overrides, **kwargs).filter
        return stage.name, stage.config

    assert chosen() == ("clip", filter_config("clip", model="shapes-clip", threshold=0.5))
    assert chosen("clip", {"threshold": 0.1}) == ("clip", filter_config("clip", model="shapes-clip", threshold=0.1))
    assert chosen("diffusion") == ("diffusion", filter_config("diffusion", threshold=-0.1))
    assert chosen("none") == ("none", filter_config("none"))
    assert chosen(labels_known=True) == ("none", filter_config("none"))  # true names: nothing to filter
    assert chosen("clip", labels_known=True)[0] == "clip"  # unless a filter is named
    assert Pipeline(str(tmp_path / "absent"), "baseline").filter.name == "diffusion"  # no settings: the default


def test_clip_loader_reads_a_local_folder_like_transformers(tiny_clip_folder):
    folder, reference = tiny_clip_folder
    clip = load_clip(str(folder), device="cpu")
    assert clip.image_size == 32 and not any(p.requires_grad for p in clip.model.parameters())
    images = [Image.fromarray(np.full((40, 20, 3), v, np.uint8)) for v in (0, 200)]
    embeds = clip.image_embeds(images)
    assert embeds.shape == (2, 8) and torch.allclose(embeds.norm(dim=-1), torch.ones(2), atol=1e-5)
    pixels = clip.pixel_values(images)
    assert pixels.shape == (2, 3, 32, 32)  # resized whole, no crop
    expected = reference.get_image_features(pixel_values=pixels)
    expected = getattr(expected, "pooler_output", expected)
    assert torch.allclose(embeds, torch.nn.functional.normalize(expected, dim=-1), atol=1e-5)
    assert clip.text_embeds(["a photo of a cat", "dog"]).shape == (2, 8)
    states = clip.vision_states(images)
    assert len(states) == 3 and states[-1].shape == (2, 1 + 16, 16)  # embeddings + 2 layers; class token + 4x4
    with pytest.raises(ValueError, match="longer than this CLIP's 12 tokens"):
        clip.text_embeds(["a photo of a cat " * 5])


def test_bad_model_ids_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="neither a folder with config.json"):
        load_clip(str(tmp_path / "missing"))
    with pytest.raises(OSError, match="(?s)could not load the CLIP model 'nobody/no-such-clip'.*HF_HUB_OFFLINE=1"):
        load_clip("nobody/no-such-clip")
    with pytest.raises(OSError, match="could not load the captioner 'nobody/no-such-blip'"):
        load_captioner("nobody/no-such-blip")
    with pytest.raises(FileNotFoundError, match="captioner"):
        load_captioner(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="needs the diffusion backbone"):
        build_filter("diffusion", None)


@pytest.fixture(scope="module")
def shapes():
    return load_backbone("shapes", device="cpu")


@pytest.fixture(scope="module")
def scenes():
    """Test-split scenes and the names present in each."""
    out = []
    for i in range(12):
        sample = render_sample("test", i)
        out.append((Image.fromarray(sample.image), {CLASS_NAMES[c] for c in np.unique(sample.class_map)}))
    return out


@pytest.mark.parametrize("name", ["clip", "diffusion"])
def test_filters_score_present_classes_above_absent_ones(shapes, scenes, name):
    """With the settings the shapes model ships, on test scenes: present classes score higher than absent ones
    (a wrong token, a flipped sign or a mixed-up label order falls to chance), and the decision is consistent."""
    label_filter = Pipeline("shapes", "baseline", filter=name, backbone=shapes).load().filter.instance
    labels = parse_labels(list(CLASS_NAMES))
    present_scores, absent_scores = [], []
    for image, present in scenes:
        decision = label_filter(image, labels)
        kept = {label.name for label in decision.kept}
        assert set(decision.scores) == set(CLASS_NAMES) and set(decision.dropped) == set(CLASS_NAMES) - kept
        assert all(decision.scores[k] >= decision.scores[d] for k in kept for d in decision.dropped)
        present_scores += [decision.scores[c] for c in present]
        absent_scores += [decision.scores[c] for c in set(CLASS_NAMES) - present]
    pairs = np.array(present_scores)[:, None] > np.array(absent_scores)[None, :]
    assert pairs.mean() > 0.8  # AUROC of presence; measured 0.996 (clip), 0.91 (diffusion) on val


def test_clip_filter_keeps_present_classes_and_drops_absent_ones(shapes, scenes):
    label_filter = Pipeline("shapes", "baseline", filter="clip", backbone=shapes).load().filter.instance
    labels = parse_labels(list(CLASS_NAMES))
    recalled = absent = absent_dropped = 0
    for image, present in scenes:
        kept = {label.name for label in label_filter(image, labels).kept}
        recalled += present <= kept
        absent += len(set(CLASS_NAMES) - present)
        absent_dropped += len((set(CLASS_NAMES) - present) - kept)
    assert recalled >= 10  # of 12 images, every present class kept
    assert absent_dropped / absent >= 0.9


def test_empty_result_is_reported_and_caption_reaches_the_method(shapes, scenes):
    method = build_method("fastseg", shapes)
    label_filter = build_filter("clip", shapes, model="shapes-clip", threshold=2.0, min_keep=0)  # cosine <= 1
    image, _ = scenes[0]
    result = run_stages(method, label_filter, image, ["circle", "grass"])
    assert result.labels == ["background"] and (result.label_map == 0).all()
    assert any("every label was dropped" in w for w in result.warnings)
    assert set(result.extra["filter"]["dropped"]) == {"circle", "grass"}

    seen = {}

    def spy(image, labels, prompt=None):
        seen["labels"], seen["prompt"] = [label.name for label in labels], prompt
        return method(image, labels, prompt=prompt)

    label_filter.captioner = lambda image: "a red circle on sand"
    result = run_stages(spy, label_filter, image, ["circle", "grass", "sand"])
    assert seen == {"labels": ["circle", "sand"], "prompt": "a red circle on sand"}  # caption nouns rescued
    assert result.extra["filter"]["caption"] == "a red circle on sand"
    assert result.extra["filter"]["kept"] == ["circle", "sand"]


def test_cli_segment_filters_by_default_and_records_the_decision(tmp_path, capsys):
    from promptseg.cli import main

    image = tmp_path / "scene.png"
    Image.fromarray(render_sample("test", 0).image).save(image)
    present = {CLASS_NAMES[c] for c in np.unique(render_sample("test", 0).class_map)}
    labels = ",".join(CLASS_NAMES)
    assert main(["segment", str(image), "--labels", labels, "--model", "shapes", "--out", str(tmp_path / "a"),
                 "--device", "cpu"]) == 0
    record = json.loads((tmp_path / "a" / "scene_masks.json").read_text())
    assert present <= set(record["filter"]["kept"]) and record["filter"]["dropped"]
    assert set(record["labels"]) - {"background"} == set(record["filter"]["kept"])
    assert main(["segment", str(image), "--labels", labels, "--model", "shapes", "--out", str(tmp_path / "b"),
                 "--device", "cpu", "--filter", "none"]) == 0
    record = json.loads((tmp_path / "b" / "scene_masks.json").read_text())
    assert record["filter"]["kept"] == list(CLASS_NAMES) and record["filter"]["dropped"] == {}
    assert main(["segment", str(image), "--labels", labels, "--model", "shapes", "--filter", "clip",
                 "--filter-set", "thresh=1"]) == 2
    assert "unknown setting(s) ['thresh'] for filter 'clip'" in capsys.readouterr().err


def test_the_diffusion_filter_does_not_score_a_vocabulary_past_its_budget(tiny):
    label_filter = build_filter("diffusion", tiny, max_labels=3)

    def unaffordable(*args):
        raise AssertionError("scored past max_labels")

    label_filter.scores = unaffordable
    labels = parse_labels(["cat", "dog", "person", "grass"])
    decision = label_filter(Image.new("RGB", (32, 32)), labels)
    assert decision.kept == labels and not decision.dropped
    assert "offered 4 labels, more than max_labels=3" in decision.warnings[0] and "15 UNet items" in decision.warnings[0]
    with pytest.raises(ValueError, match="max_labels must be"):
        filter_config("diffusion", max_labels=0)
    assert filter_config("diffusion", max_labels="null").max_labels is None
