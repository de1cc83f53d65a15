"""Word heat maps (`promptseg maps`, `Pipeline.attention_maps`) on the bundled shapes model and reduced transformers."""

import numpy as np
import pytest
from PIL import Image

from promptseg import Pipeline
from promptseg.cli import main
from promptseg.data.shapes import ShapesDataset


@pytest.fixture(scope="module")
def shapes_image(tmp_path_factory):
    """A shapes test image with a circle, its path and the circle's mask."""
    data = ShapesDataset(split="test", n=30)
    circle = data.class_names.index("circle")
    sample = next(s for s in data if (s.label == circle).any())
    path = tmp_path_factory.mktemp("img") / "scene.png"
    sample.image.save(path)
    return path, sample.label == circle


def test_maps_command_writes_each_words_map_and_a_shape_word_points_into_its_shape(shapes_image, tmp_path):
    path, circle = shapes_image
    assert main(["maps", str(path), "--words", "circle,blue square,sky", "--model", "shapes", "--out",
                 str(tmp_path), "--per-layer"]) == 0
    saved = np.load(tmp_path / "scene_maps.npz")
    assert list(saved["words"]) == ["circle", "blue square", "sky"]
    assert saved["maps"].shape == (3, *circle.shape) and saved["maps"].dtype == np.float32
    peak = np.unravel_index(saved["maps"][0].argmax(), circle.shape)
    assert circle[peak]  # the circle's word is attended most inside the circle
    layers = [k for k in saved.files if k.startswith("layer:")]
    assert layers and all(saved[k].shape == saved["maps"].shape for k in layers)
    for name in ("circle", "blue-square", "sky"):
        assert Image.open(tmp_path / f"scene_{name}.png").size == circle.shape[::-1]


def test_the_aggregate_is_the_read_outs_weighted_mean_of_its_layers(shapes_image):
    path, _ = shapes_image
    pipe = Pipeline("shapes")
    maps = pipe.attention_maps(Image.open(path), ["circle", "red triangle"], per_layer=True, timestep=300)
    # the shapes model reads its 8x8 cross-attention alone (cross_weights {0.5: 1}): the mean of those layers
    assert maps.timestep == 300 and maps.prompt == "circle, red triangle"
    assert np.allclose(maps.maps, np.mean(list(maps.layers.values()), axis=0), atol=1e-6)
    with pytest.raises(ValueError, match="each word once"):
        pipe.attention_maps(Image.open(path), ["circle", "circle"])


@pytest.mark.parametrize("family", ["sd3", "flux1"])
def test_maps_run_on_reduced_transformers(family, tmp_path):
    from promptseg.models.dit_configs import save_dit
    from promptseg.models.flux_configs import save_flux

    save = save_dit if family == "sd3" else save_flux
    folder = save(family, tmp_path / family, reduced=True)
    image = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image)
    places = "block3,block9" if family == "sd3" else "block3,single5"
    assert main(["maps", str(image), "--words", "cat,red car", "--model", str(folder), "--places", places,
                 "--per-layer", "--out", str(tmp_path / "out")]) == 0
    saved = np.load(tmp_path / "out" / "noise_maps.npz")
    assert saved["maps"].shape == (2, 40, 56) and np.isfinite(saved["maps"]).all()
    assert len([k for k in saved.files if k.startswith("layer:")]) == 2


def test_maps_run_on_the_bundled_transformer(tmp_path):
    image = tmp_path / "scene.png"
    ShapesDataset(split="test", n=1)[0].image.save(image)
    assert main(["maps", str(image), "--words", "circle,sky", "--model", "shapes-dit", "--out", str(tmp_path)]) == 0
    saved = np.load(tmp_path / "scene_maps.npz")
    assert saved["maps"].shape == (2, 64, 64) and (saved["maps"] >= 0).all()


def test_several_grids_are_mixed_with_the_read_outs_weights(tiny):
    from promptseg.diffusion.wordmaps import word_maps
    from promptseg.models.attention_layers import grid_at_level

    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    maps = word_maps(tiny, image, ["cat", "dog"], cross_weights={1.0: 1.0, 0.5: 3.0}, places=("down", "mid", "up"),
                     timestep=100, per_layer=True)
    grids = {layer.name.removesuffix(".processor"): grid_at_level(tiny.latent_size, layer.level)
             for layer in tiny.attention_layers() if layer.kind == "cross"}
    by_grid = {}
    for name, value in maps.layers.items():
        by_grid.setdefault(grids[name], []).append(value)
    assert sorted(by_grid) == [(8, 8), (16, 16)]
    expected = (np.mean(by_grid[(16, 16)], axis=0) + 3 * np.mean(by_grid[(8, 8)], axis=0)) / 4
    assert np.allclose(maps.maps, expected, atol=1e-6)
    # a place without one of the grids: that weight is left out, the rest renormalised
    up_only = word_maps(tiny, image, ["cat", "dog"], cross_weights={1.0: 1.0, 0.5: 3.0}, places=("up",),
                        timestep=100)
    assert up_only.maps.shape == (2, 32, 32)
