"""The pipeline: settings resolved once, every stage's decision recorded, the image encoded once for all stages."""

import json

import numpy as np
import pytest

from promptseg.data.shapes_world import render_sample
from promptseg.models import load_backbone
from promptseg.pipeline import Pipeline


@pytest.fixture(scope="module")
def shapes():
    return load_backbone("shapes", device="cpu")


@pytest.fixture(scope="module")
def image():
    return render_sample("val", 3).image


def test_settings_are_checked_and_resolved_before_anything_loads(tmp_path):
    (tmp_path / "promptseg_settings.json").write_text(json.dumps(
        {"baseline": {"timestep": 42}, "refine": "pamr", "refiners": {"pamr": {"iterations": 3}}}))
    pipe = Pipeline(str(tmp_path), "baseline", settings={"seed": 5})  # no model in the folder: nothing is loaded
    assert (pipe.method.config.timestep, pipe.method.config.seed) == (42, 5)  # the model's, then the caller's
    assert pipe.refiner.name == "pamr" and pipe.refiner.config.iterations == 3
    assert pipe.filter.name == "diffusion"  # the model names no filter: the registry's default
    assert pipe.signature == {"model": str(tmp_path), "method": "baseline", "settings": pipe.method.settings,
                              "filter": "diffusion", "filter_settings": pipe.filter.settings,
                              "refine": "pamr", "refine_settings": pipe.refiner.settings}
    with pytest.raises(ValueError, match="unknown setting"):
        Pipeline(str(tmp_path), "baseline", settings={"stepz": 3})
    with pytest.raises(ValueError, match="unknown refiner 'crf'"):
        Pipeline(str(tmp_path), "baseline", refine="crf")
    with pytest.raises(ValueError, match="does not answer referring expressions"):
        Pipeline(str(tmp_path), "fastseg", task="refer")
    with pytest.raises(ValueError, match="unknown task"):
        Pipeline(str(tmp_path), "baseline", task="caption")


def test_every_stage_is_recorded_even_when_it_does_nothing(shapes, image):
    result = Pipeline("shapes", "baseline", filter="none", refine="none", backbone=shapes).segment(image, ["circle", "grass"])
    assert result.extra["filter"]["kept"] == ["circle", "grass"] and result.extra["filter"]["dropped"] == {}
    assert result.extra["refine"]["name"] == "none" and result.extra["refine"]["erased"] == []
    assert set(result.timings) >= {"filter", "refine"}


def test_the_image_is_encoded_once_for_filter_method_and_refiner(shapes, image, monkeypatch):
    """The diffusion filter, the method and the SAM refiner's denoising evidence all read the image's latents."""
    calls = []
    encode = shapes.encode_image
    monkeypatch.setattr(shapes, "encode_image", lambda pixels: calls.append(1) or encode(pixels))
    pipe = Pipeline("shapes", "baseline", filter="diffusion", refine="sam",
                    refine_settings={"sam": "shapes-sam", "classify": "denoising", "evidence_timesteps": [300]},
                    backbone=shapes)
    result = pipe.segment(image, ["circle", "square", "grass", "sky"])
    assert len(calls) == 1
    assert result.extra["refine"]["name"] == "sam" and "filter" in result.extra
    separate = pipe.method.instance.prepare(image)  # outside a pipeline run nothing is shared
    assert len(calls) == 2 and separate.timings["encode"] > 0


def test_shared_latents_are_the_ones_a_lone_encode_gives(shapes, image):
    from promptseg.diffusion.encode import prepare_pixels, shared_encoding

    alone = prepare_pixels(shapes, image)
    with shared_encoding():
        first, second = prepare_pixels(shapes, image), prepare_pixels(shapes, image)
        other = prepare_pixels(shapes, np.ascontiguousarray(image[:, ::-1]))  # another image is encoded anew
    assert first.latents is second.latents and second.timings["encode"] == 0.0
    assert np.allclose(first.latents.numpy(), alone.latents.numpy())
    assert not np.allclose(other.latents.numpy(), first.latents.numpy())


def test_true_names_switch_the_default_filter_off_but_not_a_named_one():
    assert Pipeline("shapes", "baseline", labels_known=True).filter.name == "none"
    assert Pipeline("shapes", "baseline", labels_known=True, filter="clip").filter.name == "clip"
    assert Pipeline("shapes", "baseline").filter.name == "clip"  # what the shapes model recommends


def test_a_refer_pipeline_answers_expressions_and_only_them(shapes, image):
    pipe = Pipeline("shapes", "baseline", task="refer", backbone=shapes)
    assert pipe.filter is None and pipe.refiner is None and set(pipe.signature) == {"model", "method", "settings"}
    answer = pipe.refer(image, "the circle")
    assert answer.mask.shape == image.shape[:2] and answer.expression == "the circle"
    with pytest.raises(ValueError, match="expression is empty"):
        pipe.refer(image, "  ")
    with pytest.raises(ValueError, match="task='refer'"):
        pipe.segment(image, ["circle"])
