"""The bundled scenes model (work in progress, below its bar): loads with scenes-clip's frozen text tower, and its
class words' final maps rank their own pixels above chance on fixed val images, where a wiring bug falls to chance.

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
0.471. Weak, and known to be (the sky's map is inverted: `benchmarks/results/scenes_gap.md`)."""


@pytest.fixture(scope="module")
def scenes():
    return load_backbone("scenes", device="cpu")


def test_scenes_model_reads_its_text_tower_from_scenes_clip(scenes):
    from promptseg.clip import load_clip

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
