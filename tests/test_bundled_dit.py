"""The bundled shapes-dit: an SD3-style transformer folder that loads offline as the MMDiT family, with the settings
chosen on val, and segments fixed test images above the trivial all-background answer."""

import numpy as np
import pytest

from promptseg import build_method, load_backbone
from promptseg.data.shapes import ShapesDataset
from promptseg.eval.metrics import confusion, scores

N_IMAGES = 16


@pytest.fixture(scope="module")
def dit():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield load_backbone("shapes-dit", device="cpu")
    mp.undo()


def test_it_loads_as_the_mmdit_family_with_the_shapes_encoders(dit):
    shapes = load_backbone("shapes", device="cpu")
    assert dit.family == "mmdit" and dit.latent_size == (16, 16) and dit.grid == (16, 16)
    assert dit.clip_hidden_layer == "last" and dit.blocks_for(("down", "mid", "up")) == [0, 2, 4, 5]
    # the frozen shapes text encoder: the transformer reads the same token states the UNet reads
    text = dit.encode_text("a red circle on grass")
    assert np.allclose(text[0, :-1].numpy(), shapes.encode_text("a red circle on grass")[0].numpy(), atol=1e-6)


def test_the_baseline_beats_the_all_background_answer(dit):
    data = ShapesDataset(n=N_IMAGES)
    k = len(data.class_names)
    ours, trivial = np.zeros((k, k + 1), np.int64), np.zeros((k, k + 1), np.int64)
    segmenter = build_method("baseline", dit)
    for sample in data:
        present = data.present_classes(sample.label)
        result = segmenter(sample.image, [data.class_names[c] for c in present])
        lut = np.array([data.class_names.index(name) for name in result.labels])
        ours += confusion(lut[result.label_map], sample.label, k)
        trivial += confusion(np.full_like(sample.label, min(present)), sample.label, k)
    assert scores(ours).miou > scores(trivial).miou + 0.05, (scores(ours).miou, scores(trivial).miou)


def test_conceptattention_runs_behind_the_models_filter_with_its_settings(dit):
    from promptseg.pipeline import Pipeline

    pipe = Pipeline("shapes-dit", "conceptattention", refine="none", backbone=dit).load()
    method = pipe.method.instance
    assert method.blocks == [3] and method.config.timestep == 100  # the folder's settings, chosen on val
    sample = ShapesDataset(n=1)[0]
    result = pipe.segment(sample.image, list(ShapesDataset(n=1).class_names))
    kept = result.extra["filter"]["kept"]
    assert set(result.labels) == set(kept) and len(kept) < 7  # the clip filter ran first; no background concept
    assert result.label_map.shape == sample.label.shape


def test_invseg_loss_places_choose_the_blocks_its_loss_reads():
    """The optimisation's forward ends after the last block the loss reads; the read-out keeps its own blocks."""
    from promptseg.methods import build_method
    from promptseg.models import load_backbone

    dit = load_backbone("shapes-dit", device="cpu")
    default = build_method("invseg", dit)
    assert {layer.block for layer in default.loss_layers} == set(dit.method_defaults["blocks"])
    early = build_method("invseg", dit, loss_places=["block0", "block2"])
    assert {layer.block for layer in early.loss_layers} == {0, 2}
    assert {layer.block for layer in early.readout.layers} == set(dit.method_defaults["blocks"])
