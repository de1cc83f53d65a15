"""Images in batches: one denoiser forward for several images, results equal to one image at a time."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptseg.data.shapes_world import render_sample
from promptseg.models import load_backbone
from promptseg.pipeline import Pipeline

SHAPES = ["circle", "square", "triangle", "grass", "sky", "sand", "water"]


@pytest.fixture(scope="module")
def shapes():
    return load_backbone("shapes", device="cpu")


@pytest.fixture(scope="module")
def images():
    return [render_sample("val", i).image for i in range(4)]


def assert_same(one, many, atol=2e-4):
    assert len(one) == len(many)
    for a, b in zip(one, many):
        assert a.labels == b.labels and a.extra["filter"]["kept"] == b.extra["filter"]["kept"]
        assert np.abs(a.scores - b.scores).max() < atol
        assert (a.label_map == b.label_map).mean() > 0.999


@pytest.mark.parametrize("method", ["baseline", "fastseg"])
def test_a_batch_equals_one_image_at_a_time_with_each_image_its_own_kept_labels(shapes, images, method, monkeypatch):
    pipe = Pipeline("shapes", method, filter="clip", refine="none", backbone=shapes).load()
    one = [pipe.segment(image, SHAPES) for image in images]
    assert len({tuple(r.extra["filter"]["kept"]) for r in one}) > 1  # the filter kept other labels per image
    forwards = []
    predict = shapes.predict
    monkeypatch.setattr(shapes, "predict", lambda x, t, text: forwards.append(x.shape[0]) or predict(x, t, text))
    many = pipe.segment_batch(images, SHAPES)
    views = 2 if method == "fastseg" else 1  # FastSeg's flipped view rides in the same forward
    assert forwards == [len(images) * views]  # one forward for the whole batch
    assert_same(one, many)
    assert not any("one image at a time" in w for r in many for w in r.warnings)


def test_the_default_pipeline_batches_to_the_same_labels(shapes, images):
    """The model's own filter and SAM refiner (run image by image) after a batched method."""
    pipe = Pipeline("shapes", "baseline", backbone=shapes).load()
    assert_same([pipe.segment(image, SHAPES) for image in images[:3]], pipe.segment_batch(images[:3], SHAPES))


@pytest.mark.parametrize("method", ["fastseg", "conceptattention", "baseline"])
def test_a_transformer_batches_too(method):
    dit = load_backbone("shapes-dit", device="cpu")
    images = [render_sample("val", i).image for i in range(3)]
    pipe = Pipeline("shapes-dit", method, filter="none", refine="none", backbone=dit).load()
    assert_same([pipe.segment(image, SHAPES[:4]) for image in images], pipe.segment_batch(images, SHAPES[:4]))


@pytest.mark.parametrize("method, settings", [
    ("invseg", {"steps": 1}), ("anyword", {}), ("dpseg", {}),
])
def test_methods_that_run_one_image_at_a_time_say_so_and_give_the_same_results(shapes, images, method, settings):
    pipe = Pipeline("shapes", method, settings=settings, filter="none", refine="none", backbone=shapes).load()
    labels = ["circle", "square", "grass"]
    one = [pipe.segment(image, labels) for image in images[:2]]
    many = pipe.segment_batch(images[:2], labels)
    for a, b in zip(one, many):
        assert np.array_equal(a.label_map, b.label_map) and np.allclose(a.scores, b.scores, atol=1e-6)
        assert any(f"{method} runs one image at a time" in w for w in b.warnings)


def test_per_image_labels_and_prompts_are_checked(shapes, images):
    pipe = Pipeline("shapes", "baseline", filter="none", refine="none", backbone=shapes)
    many = pipe.segment_batch(images[:2], [["circle", "grass"], ["square", "sky", "sand"]])
    assert many[0].labels[-2:] == ["circle", "grass"] and many[1].labels[-3:] == ["square", "sky", "sand"]
    assert many[1].labels == pipe.segment(images[1], ["square", "sky", "sand"]).labels
    with pytest.raises(ValueError, match="3 label lists for 2 images"):
        pipe.segment_batch(images[:2], [["circle"], ["square"], ["sky"]])
    with pytest.raises(ValueError, match="3 prompts for 2 images"):
        pipe.segment_batch(images[:2], ["circle"], prompts=["a", "b", "c"])
    with pytest.raises(TypeError, match="not the string 'circle'"):
        pipe.segment_batch(images[:2], "circle")
    assert pipe.segment_batch([], ["circle"]) == []


def test_segment_each_keeps_the_other_images_when_one_fails(shapes, images, monkeypatch):
    pipe = Pipeline("shapes", "baseline", filter="none", refine="none", backbone=shapes).load()
    preprocess = shapes.preprocess

    def fussy(pil):
        if pil.size == (1, 1):
            raise RuntimeError("no such image")
        return preprocess(pil)

    monkeypatch.setattr(shapes, "preprocess", fussy)  # the batch fails as a whole, then each image alone
    tiny = np.zeros((1, 1, 3), np.uint8)
    out = pipe.segment_each([images[0], tiny, images[1]], ["circle", "grass"])
    assert isinstance(out[1], RuntimeError) and "no such image" in str(out[1])
    assert np.array_equal(out[0].label_map, pipe.segment(images[0], ["circle", "grass"]).label_map)
    assert any("the batch failed (RuntimeError: no such image)" in w for w in out[0].warnings)
    assert out[2].label_map.shape == images[1].shape[:2]


def test_eval_in_batches_gives_the_numbers_of_one_at_a_time(shapes, tmp_path):
    from promptseg.eval.runner import EvalRun, evaluate

    def run(batch_size, out):
        return evaluate(EvalRun(dataset="shapes", method="fastseg", model="shapes", out=str(tmp_path / out), limit=5,
                                names="all", refine="none", batch_size=batch_size), progress=False, backbone=shapes)

    one, many = run(1, "one"), run(3, "many")  # 5 images: a batch of 3, then one of 2
    assert abs(one["miou"] - many["miou"]) < 1e-3 and many["n_images"] == 5 and many["n_failed"] == 0
    assert one["per_class_iou"].keys() == many["per_class_iou"].keys()


def test_segment_takes_folders_and_globs_in_batches(tmp_path):
    from promptseg.cli import main

    examples = Path(__file__).resolve().parents[1] / "examples"
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, path in enumerate(sorted(examples.glob("*.png"))):
        (folder / ("sub" if i else "") / path.name).write_bytes(path.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    common = ["--labels", "circle,square,triangle,grass,sky", "--model", "shapes", "--device", "cpu",
              "--refine", "none"]
    assert main(["segment", str(folder), "--out", str(tmp_path / "a"), "--batch-size", "2", *common]) == 0
    assert sorted(p.name for p in (tmp_path / "a").glob("*_masks.json")) == sorted(
        f"{p.stem}_masks.json" for p in examples.glob("*.png"))
    assert main(["segment", str(folder / "**" / "*_1.png"), "--out", str(tmp_path / "b"), *common]) == 0
    assert [p.name for p in (tmp_path / "b").glob("*_masks.json")] == ["shapes_test_1_masks.json"]
    alone = np.asarray(Image.open(tmp_path / "b" / "shapes_test_1.png"))
    assert np.array_equal(alone, np.asarray(Image.open(tmp_path / "a" / "shapes_test_1.png")))
    assert main(["segment", str(tmp_path / "nothing*.png"), "--out", str(tmp_path / "c"), *common]) == 2


def test_label_in_batches_writes_the_dataset_of_one_at_a_time(tmp_path):
    import json

    from promptseg.cli import main

    examples = Path(__file__).resolve().parents[1] / "examples"
    common = [str(examples), "--labels", "circle,square,triangle,grass,sky", "--model", "shapes", "--device", "cpu",
              "--refine", "none"]
    assert main(["label", *common, "--out", str(tmp_path / "one")]) == 0
    assert main(["label", *common, "--out", str(tmp_path / "many"), "--batch-size", "2"]) == 0
    one, many = (json.loads((tmp_path / d / "annotations.json").read_text()) for d in ("one", "many"))
    assert one["annotations"] and [a["segmentation"] for a in one["annotations"]] == [
        a["segmentation"] for a in many["annotations"]]
