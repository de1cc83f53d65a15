"""The bundled shapes model: loads offline both ways, and segments fixed test images above a quality floor.

The floor sits well under the measured numbers (benchmarks/shapes/results/shapes.md) and far above what a wiring bug
gives: a wrong token index, a transposed map or a mixed-up batch item all fall to the chance level.
"""

import numpy as np
import pytest

from promptseg import build_method, load_backbone
from promptseg.data.shapes import ShapesDataset
from promptseg.eval.metrics import confusion, scores
from promptseg.models import BUNDLED

N_IMAGES = 24
# (mIoU, mean shape IoU) floors; measured on these 24 images: baseline 0.755 / 0.535, fastseg 0.851 / 0.687,
# invseg 0.746 / 0.519. The all-background reference scores 0.47 / 0.0.
FLOORS = {"baseline": (0.65, 0.40), "fastseg": (0.72, 0.52), "invseg": (0.64, 0.40)}
# dpseg (all seven names offered, round I, one visual prompt per template): (seen mIoU, unseen mIoU) floors;
# measured on these 24 images: 0.823 / 0.613 (sky 0.922, triangle 0.304).
DPSEG_FLOORS = (0.70, 0.40)


@pytest.fixture(scope="module")
def shapes(monkeypatch_module):
    return load_backbone("shapes", device="cpu")


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield mp
    mp.undo()


def test_bundled_model_is_small_and_loads_with_stock_diffusers(monkeypatch_module):
    from diffusers import StableDiffusionPipeline

    folder = BUNDLED["shapes"].folder
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 30 * 2**20
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    out = pipe("a red circle on grass", num_inference_steps=3, output_type="np", guidance_scale=3.0)
    assert out.images.shape == (1, 64, 64, 3)


def test_sizes_and_vocabulary(shapes):
    assert shapes.latent_size == (16, 16) and shapes.image_size == (64, 64) and shapes.vae_scale_factor == 4
    for word in ("circle", "square", "triangle", "grass", "sand", "water", "sky", "red"):
        assert len(shapes.tokenizer(word, add_special_tokens=False).input_ids) == 1
    assert set(shapes.method_defaults) >= {"baseline", "fastseg", "invseg"}


@pytest.mark.parametrize("method", sorted(FLOORS))
def test_quality_floor_on_fixed_test_images(shapes, method):
    data = ShapesDataset(n=N_IMAGES)
    segmenter = build_method(method, shapes)
    k = len(data.class_names)
    total = np.zeros((k, k + 1), np.int64)
    for sample in data:
        present = data.present_classes(sample.label)
        result = segmenter(sample.image, [data.class_names[c] for c in present])
        lut = np.array([data.class_names.index(name) for name in result.labels])
        total += confusion(lut[result.label_map], sample.label, k)
    s = scores(total)
    shape_iou = float(np.nanmean(s.iou[4:]))
    miou_floor, shape_floor = FLOORS[method]
    assert s.miou >= miou_floor and shape_iou >= shape_floor, (s.miou, shape_iou)


def test_bundled_dpseg_segments_every_class_offered(shapes, tmp_path):
    """shapes-dpseg with all seven names offered to each image (no filter), round I, one cheap visual prompt per
    template: above a floor on the seen classes and on the unseen ones (sky, triangle)."""
    from promptseg.methods.dpseg import DPSeg, DPSegConfig
    from promptseg.models.dpseg.network import read_net_config

    config = read_net_config("shapes-dpseg")
    assert set(config.held_out) == {"sky", "triangle"} and config.clip == "shapes-clip"
    data = ShapesDataset(n=N_IMAGES)
    segmenter = build_method("dpseg", shapes, rounds=1, prompt_images=1, generation_steps=10, cache_dir=str(tmp_path))
    assert isinstance(segmenter, DPSeg) and isinstance(segmenter.config, DPSegConfig)
    k = len(data.class_names)
    total = np.zeros((k, k + 1), np.int64)
    for sample in data:
        result = segmenter(sample.image, data.class_names)
        total += confusion(result.label_map, sample.label, k)  # labels come back in the offered order
    s = scores(total)
    seen = [data.class_names.index(c) for c in config.trained_classes]
    unseen = [c for c in range(k) if c not in seen]
    seen_iou, unseen_iou = float(np.nanmean(s.iou[seen])), float(np.nanmean(s.iou[unseen]))
    assert seen_iou >= DPSEG_FLOORS[0] and unseen_iou >= DPSEG_FLOORS[1], (seen_iou, unseen_iou)
