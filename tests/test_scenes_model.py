"""The bundled scenes model (work in progress, below its bar): loads with scenes-clip's frozen text tower, and its
class words' final maps rank their own pixels above chance on fixed val images, where a wiring bug falls to chance;
the DPSeg weights it recommends (scenes-dpseg) segment the seen classes above chance.

The floor sits under the measured value on these images (FLOOR's comment) and above what wrongly assigned maps give.
"""

import numpy as np
import pytest

from promptseg import build_method, load_backbone
from promptseg.data.scenes_world import CLASS_NAMES, render_sample
from promptseg.eval.metrics import auroc

N_IMAGES = 6
SETTINGS = {"timestep": 300, "cross_weights": {0.5: 1.0}, "self_weights": {1.0: 1.0}, "template": "a {}",
            "joiner": " and a ", "background_threshold": None}
FLOOR = 0.55
"""Median over (image, present class) of the AUROC of the class's final baseline map over its pixels; measured on
these images (47 pairs) with the step-4,000 model: 0.603. Maps given to the wrong classes (the control below):
0.471. Weak, and known to be (the sky's map is inverted: `benchmarks/scenes/results/scenes_gap.md`)."""


@pytest.fixture(scope="module")
def scenes():
    return load_backbone("scenes", device="cpu")


def test_scenes_model_reads_its_text_tower_from_scenes_clip(scenes):
    from promptseg.models.clip import load_clip

    clip = load_clip("scenes-clip", device="cpu")
    assert scenes.tokenizer("a hot air balloon").input_ids == clip.processor.tokenizer("a hot air balloon").input_ids
    assert len(scenes.tokenizer("a hot air balloon").input_ids) > 4  # the real BPE vocabulary: several tokens
    assert tuple(scenes.latent_size) == (16, 16)


def test_class_maps_rank_their_own_pixels(scenes):
    method = build_method("baseline", scenes, **SETTINGS)
    own, swapped = [], []
    for i in range(N_IMAGES):
        sample = render_sample("val", i)
        present = [int(c) for c in np.unique(sample.class_map)]
        maps = method(sample.image, [CLASS_NAMES[c] for c in present]).scores
        for j, c in enumerate(present):
            truth = (sample.class_map == c).ravel()
            if 0 < truth.sum() < truth.size:
                own.append(auroc(maps[j].ravel(), truth))
                swapped.append(auroc(maps[(j + 1) % len(present)].ravel(), truth))
    assert np.median(own) >= FLOOR and np.median(own) >= np.median(swapped) + 0.08



DPSEG_IMAGES = 12
DPSEG_FLOORS = {6.0: (0.09, 0.035), 0.0: (0.12, 0.0)}
"""(seen, unseen) mIoU floors on these 12 val images with one cheap visual prompt per template and synonym (1 image,
10 sampler steps; the benchmark's 4 images at 25 steps give far more), at the calibration the scenes model
recommends (6, chosen on val) and without (0). Measured: 0.133 / 0.052 and 0.172 / 0.028; 22 classes guessed at
random give about 0.01."""


def test_bundled_scenes_dpseg_finds_seen_classes_and_calibration_moves_pixels_to_unseen_ones(scenes, tmp_path):
    """scenes-dpseg with all 22 class lines offered to each val image (no filter), round I: above a floor on the 18
    seen classes, and the calibration the model recommends raises the 4 held-out classes (sailboat, kite, snowman,
    sand), where wrongly wired prompts, weights or seen/unseen marks fall to chance or change nothing. The whole image
    only (tiles 1): the recommended 2x2 tiles cost five times as much and are not what this proves."""
    from promptseg.data.shapes import ScenesDataset
    from promptseg.eval.metrics import confusion, scores
    from promptseg.models.dpseg.network import read_net_config

    config = read_net_config("scenes-dpseg")
    assert config.clip == "scenes-clip" and config.held_out == ["sailboat", "kite", "snowman", "sand"]
    data = ScenesDataset(split="val", n=DPSEG_IMAGES)
    k = len(data.class_names)
    seen = [CLASS_NAMES.index(c) for c in config.trained_classes]
    unseen = [CLASS_NAMES.index(c) for c in config.held_out]
    measured = {}
    for calibration in DPSEG_FLOORS:
        segmenter = build_method("dpseg", scenes, rounds=1, tiles=1, prompt_images=1, generation_steps=10,
                                 cache_dir=str(tmp_path), calibration=calibration)
        total = np.zeros((k, k + 1), np.int64)
        for sample in data:
            total += confusion(segmenter(sample.image, data.class_names).label_map, sample.label, k)
        iou = scores(total).iou
        measured[calibration] = (float(np.nanmean(iou[seen])), float(np.nanmean(iou[unseen])))
    assert scenes.method_defaults["dpseg"]["calibration"] == 6.0
    for calibration, (seen_floor, unseen_floor) in DPSEG_FLOORS.items():
        assert measured[calibration][0] >= seen_floor and measured[calibration][1] >= unseen_floor, measured
    assert measured[6.0][1] >= measured[0.0][1] + 0.01, measured
