"""DPSeg: cost volume, decoder, round-II crops, the visual-prompt cache, the method, training and its resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from promptseg.methods.dpseg.prompts import VisualPromptCache, crop_region
from promptseg.models.dpseg.cost import cost_volume, fuse_prompts
from promptseg.models.dpseg.decoder import CostVolumeDecoder, DecoderConfig


def test_cost_volume_is_the_cosine_of_every_pixel_with_every_prompt():
    torch.manual_seed(0)
    feats, prompts = torch.randn(2, 5, 3, 4), torch.randn(6, 2, 5)
    cost = cost_volume(feats, prompts)
    assert cost.shape == (2, 6, 2, 3, 4)
    b, k, p, y, x = 1, 4, 1, 2, 3
    expected = F.cosine_similarity(feats[b, :, y, x], prompts[k, p], dim=0)
    assert torch.allclose(cost[b, k, p, y, x], expected, atol=1e-6)
    assert cost.abs().max() <= 1 + 1e-6
    same = cost_volume(prompts[3, :1, :, None, None].expand(1, 5, 3, 4), prompts)  # a feature equal to a prompt
    assert torch.allclose(same[0, 3, 0], torch.ones(3, 4), atol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        cost_volume(feats, torch.randn(6, 2, 4))


def test_dual_prompt_is_the_normalised_mean_of_text_and_visual():
    t, v = torch.tensor([[[3.0, 0.0]]]), torch.tensor([[[0.0, 0.5]]])
    r = fuse_prompts(t, v, "dual")
    assert torch.allclose(r, torch.tensor([[[1.0, 1.0]]]) / 2 ** 0.5)
    assert torch.allclose(fuse_prompts(t, v, "text"), torch.tensor([[[1.0, 0.0]]]))
    assert torch.allclose(fuse_prompts(None, v, "visual"), torch.tensor([[[0.0, 1.0]]]))
    with pytest.raises(ValueError, match="needs text and visual"):
        fuse_prompts(t, None, "dual")
    with pytest.raises(ValueError, match="unknown prompt mode"):
        fuse_prompts(t, v, "both")


def _decoder_inputs(b=2, k=3, p=2, h=4, d=8, w=6):
    torch.manual_seed(1)
    return (torch.randn(b, k, p, h, h), torch.randn(b, d, h, h), [torch.randn(b, w, h, h) for _ in range(3)],
            [torch.randn(b, k, p, h, h) for _ in range(3)], torch.randn(b, 3, 8 * h, 8 * h))


def test_decoder_upsamples_x8_and_decodes_each_class_alone():
    config = DecoderConfig(prompt_channels=2, feature_dim=8, layer_dim=6, dims=(16, 8, 8, 8), guidance_dim=4, heads=2)
    decoder = CostVolumeDecoder(config).eval()
    cost, dense, layers, visual, pixels = _decoder_inputs()
    out = decoder(cost, dense, layers, visual, pixels)
    assert out.shape == (2, 3, 32, 32)
    # class-agnostic: permuting the classes permutes the logits, so no weight belongs to a class
    perm = torch.tensor([2, 0, 1])
    permuted = decoder(cost[:, perm], dense, layers, [v[:, perm] for v in visual], pixels)
    assert torch.allclose(permuted, out[:, perm], atol=1e-5)
    # the visual cost volumes matter
    changed = decoder(cost, dense, layers, [v * 0 for v in visual], pixels)
    assert not torch.allclose(changed, out)
    with pytest.raises(ValueError, match="visual cost"):
        decoder(cost, dense, layers, None, pixels)
    with pytest.raises(ValueError, match="pixels"):
        decoder(cost, dense, layers, visual, None)


def test_crop_region_cuts_the_box_and_paints_the_rest():
    pixels = np.arange(8 * 10 * 3, dtype=np.uint8).reshape(8, 10, 3)
    image = Image.fromarray(pixels)
    mask = np.zeros((8, 10), bool)
    mask[2:5, 3:7] = True
    mask[2, 3] = False  # a hole inside the box
    box = crop_region(image, mask)
    assert box.size == (4, 3) and np.array_equal(np.asarray(box), pixels[2:5, 3:7])
    painted = np.asarray(crop_region(image, mask, fill=(1, 2, 3)))
    assert painted[0, 0].tolist() == [1, 2, 3] and np.array_equal(painted[1, 1], pixels[3, 4])
    framed = np.asarray(crop_region(image, mask, fill=(1, 2, 3), keep_frame=True))
    assert framed.shape == (8, 10, 3) and framed[0, 0].tolist() == [1, 2, 3]
    assert np.array_equal(framed[mask], pixels[mask])
    with pytest.raises(ValueError, match="empty mask"):
        crop_region(image, np.zeros((8, 10), bool))
    with pytest.raises(ValueError, match="does not match"):
        crop_region(image, np.ones((4, 4), bool))


def test_visual_prompt_cache_hits_misses_and_regenerates_a_corrupt_file(tiny, tmp_path):
    cache = VisualPromptCache(tiny, tmp_path, images=2, steps=2, guidance=2.0)
    first = cache.images("a cat")
    assert len(first) == 2 and cache.stats.misses == 2 and cache.stats.hits == 0
    assert first[0].size == tuple(reversed(tiny.image_size))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))  # two seeds, two images
    again = VisualPromptCache(tiny, tmp_path, images=2, steps=2, guidance=2.0)
    second = again.images("a cat")
    assert again.stats.hits == 2 and again.stats.misses == 0
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, second))
    broken = again.path("a cat", 1)
    broken.write_bytes(b"not a png")
    third = VisualPromptCache(tiny, tmp_path, images=2, steps=2, guidance=2.0)
    redrawn = third.images("a cat")
    assert third.stats.regenerated == 1 and third.stats.hits == 1 and str(broken) in third.stats.corrupt
    assert np.array_equal(np.asarray(redrawn[1]), np.asarray(first[1]))  # same seed, same image
    with Image.open(broken) as f:
        f.verify()
    # the key names the model, prompt, seed and sampler: another seed is another file
    assert VisualPromptCache(tiny, tmp_path, seed=5).path("a cat", 0) != cache.path("a cat", 0)
    assert cache.path("a dog", 0) != cache.path("a cat", 0)


@pytest.fixture(scope="module")
def tiny_dpseg(tiny_clip_folder, tmp_path_factory):
    """Untrained DPSeg weights on the tiny CLIP, saved as a weights folder."""
    from promptseg.models.clip import load_clip
    from promptseg.models.dpseg.network import DPSegNet, NetConfig

    folder, _ = tiny_clip_folder
    clip = load_clip(str(folder), device="cpu")
    torch.manual_seed(0)
    config = NetConfig(clip=str(folder), templates=["a photo of a {}", "a {}"],
                       decoder=DecoderConfig(prompt_channels=2, feature_dim=8, layer_dim=16, dims=(16, 8, 8, 8),
                                             guidance_dim=4, heads=2),
                       trained_classes=["cat"], held_out=["dog"], training={"prompt_images": 1})
    out = DPSegNet(clip.model, config).save(tmp_path_factory.mktemp("dpseg") / "weights")
    return out


def test_dpseg_segments_in_two_rounds(tiny, tiny_dpseg, tmp_path):
    from promptseg.methods import build_method
    from promptseg.methods.dpseg import DPSeg, DPSegConfig

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    method = build_method("dpseg", tiny, DPSegConfig(weights=str(tiny_dpseg), cache_dir=str(tmp_path),
                                                     generation_steps=2, min_area=0.0))
    prepared = method.prepare(image)
    result = method.segment(prepared, ["cat", "dog"])
    assert result.label_map.shape == (40, 30) and result.scores.shape == (2, 40, 30)
    assert result.labels == ["cat", "dog"] and set(np.unique(result.label_map)) <= {0, 1}
    assert sorted(result.extra["detected"]) == sorted({["cat", "dog"][i] for i in np.unique(result.label_map)})
    one = build_method("dpseg", tiny, DPSegConfig(weights=str(tiny_dpseg), cache_dir=str(tmp_path),
                                                  generation_steps=2, rounds=1)).segment(prepared, ["cat", "dog"])
    assert one.extra["detected"] == [] and not np.allclose(one.scores, result.scores)  # round II changed the prompts
    text = build_method("dpseg", tiny, DPSegConfig(weights=str(tiny_dpseg), cache_dir=str(tmp_path / "empty"),
                                                   prompts="text"))
    text.segment(prepared, ["cat", "dog"])
    assert text.bank.cache.stats.misses == 0  # text prompts draw nothing
    assert DPSeg.seen_classes(DPSegConfig(weights=str(tiny_dpseg))) == ["cat"]
    # round II's prompt mixes the crop with the generated prompt by crop_weight; 0 leaves round I's prompts
    classes = [["cat"], ["dog"]]
    crop = method.bank.crop(image)
    generated = method.bank.features(classes)
    kept = method.bank.features(classes, replace={0: crop}, weight=0.0)
    assert torch.allclose(kept.embeds, generated.embeds) and torch.allclose(kept.layers[0], generated.layers[0])
    half = method.bank.features(classes, replace={0: crop}, weight=0.5)
    assert torch.allclose(half.embeds[1], generated.embeds[1]) and not torch.allclose(half.embeds[0], generated.embeds[0])
    with pytest.raises(ValueError, match="takes no prompt"):
        method(image, ["cat"], prompt="a cat")


def test_calibration_lowers_only_the_classes_the_weights_were_trained_on(tiny, tiny_dpseg, tmp_path):
    """Calibrated stacking: the seen class's (cat) probabilities fall, the unseen one's (dog) stay, and a large enough
    calibration hands every pixel to the unseen class."""
    from promptseg.methods import build_method
    from promptseg.methods.dpseg import DPSegConfig

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    runs = {c: build_method("dpseg", tiny, DPSegConfig(weights=str(tiny_dpseg), cache_dir=str(tmp_path), rounds=1,
                                                       generation_steps=1, calibration=c))(image, ["cat", "dog"])
            for c in (0.0, 1.0, 50.0)}
    plain, calibrated = runs[0.0].scores, runs[1.0].scores
    assert np.allclose(calibrated[1], plain[1]) and (calibrated[0] < plain[0]).all()
    assert (runs[50.0].label_map == 1).all()
    with pytest.raises(ValueError, match="calibration"):
        DPSegConfig(calibration=-1.0)


def test_tiles_lay_each_crop_on_its_place_and_average_with_the_whole_view():
    from promptseg.methods.dpseg.tiles import merge_tiles, tile_boxes

    assert tile_boxes((30, 40), 2) == [(0, 0, 15, 20), (15, 0, 30, 20), (0, 20, 15, 40), (15, 20, 30, 40)]
    tiles = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 2, 3, 3)  # tile i all i, for 2 classes
    merged = merge_tiles(torch.ones(2, 6, 6), tiles, 2)
    assert merged.shape == (2, 6, 6)
    assert torch.equal(merged[:, :3, :3], torch.full((2, 3, 3), 0.5))  # (1 + 0) / 2: top left
    assert torch.equal(merged[:, :3, 3:], torch.full((2, 3, 3), 1.0))  # top right
    assert torch.equal(merged[:, 3:, :3], torch.full((2, 3, 3), 1.5)) and torch.equal(merged[:, 3:, 3:], torch.full((2, 3, 3), 2.0))
    with pytest.raises(ValueError, match="2x2"):
        merge_tiles(torch.ones(2, 6, 6), tiles[:3], 2)


def test_tiled_dpseg_decodes_the_crops_and_changes_the_scores(tiny, tiny_dpseg, tmp_path):
    from promptseg.methods import build_method
    from promptseg.methods.dpseg import DPSegConfig

    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    runs = {}
    for n in (1, 2):
        method = build_method("dpseg", tiny, DPSegConfig(weights=str(tiny_dpseg), cache_dir=str(tmp_path), rounds=1,
                                                         generation_steps=1, tiles=n))
        prepared = method.prepare(image)
        runs[n] = method.segment(prepared, ["cat", "dog"])
        assert (prepared.extra["tiles"] is None) == (n == 1)
    assert runs[2].scores.shape == runs[1].scores.shape == (2, 40, 30)
    assert not np.allclose(runs[1].scores, runs[2].scores)
    with pytest.raises(ValueError, match="tiles"):
        DPSegConfig(tiles=0)


def test_dpseg_without_weights_says_how_to_get_them(tiny, tmp_path):
    from promptseg.methods import build_method
    from promptseg.methods.dpseg import DPSegConfig

    with pytest.raises(ValueError, match="promptseg train dpseg"):
        build_method("dpseg", tiny, DPSegConfig())
    with pytest.raises(FileNotFoundError, match="promptseg train dpseg"):
        build_method("dpseg", tiny, DPSegConfig(weights=str(tmp_path / "nothing")))
    with pytest.raises(ValueError, match="crop_fill"):
        DPSegConfig(crop_fill="blur")
    from promptseg.methods import method_config

    # a path given on the command line (--set weights=/models/dpseg) is text, not JSON; null still means None
    assert method_config("dpseg", weights="/models/dpseg").weights == "/models/dpseg"
    assert method_config("dpseg", weights="null").weights is None
    with pytest.raises(ValueError, match="not valid JSON"):
        method_config("dpseg", rounds="two")


def test_eval_report_splits_seen_and_unseen_classes(tiny, tiny_dpseg, tmp_path, monkeypatch):
    from promptseg.eval.runner import EvalRun, evaluate

    monkeypatch.setenv("PROMPTSEG_CACHE", str(tmp_path / "cache"))
    names = tmp_path / "names.txt"
    names.write_text("cat\nsand\nwater\nsky\ncircle\nsquare\ndog\n")  # the tiny CLIP knows cat and dog only
    run = EvalRun(dataset="shapes", method="dpseg", model=str(tiny.name), out=str(tmp_path / "ev"), limit=2,
                  names="all", filter="none", class_names_file=str(names),
                  settings={"weights": str(tiny_dpseg), "generation_steps": "1", "rounds": "1"})
    report = evaluate(run, progress=False, backbone=tiny)
    assert report["seen_classes"] == ["cat"] and "dog" in report["unseen_classes"]
    ious = report["per_class_iou"]
    unseen = [ious[n] for n in report["unseen_classes"] if ious[n] is not None]
    assert report["miou_seen"] == pytest.approx(ious["cat"] if ious["cat"] is not None else None)
    assert report["miou_unseen"] == pytest.approx(float(np.mean(unseen)))
    assert "unseen" in (tmp_path / "ev" / "report.md").read_text()


def test_training_loss_falls_on_a_fixed_batch(tiny_clip_folder):
    from promptseg.models.clip import load_clip
    from promptseg.models.dpseg.network import DPSegNet, NetConfig, PromptFeatures
    from promptseg.training.dpseg import bce_loss, targets_for

    folder, _ = tiny_clip_folder
    clip = load_clip(str(folder), device="cpu")
    torch.manual_seed(0)
    config = NetConfig(clip=str(folder), templates=["{}"], decoder=DecoderConfig(
        prompt_channels=1, feature_dim=8, layer_dim=16, dims=(16, 8, 8, 8), guidance_dim=4, heads=2))
    net = DPSegNet(clip.model, config)
    pixels = torch.randn(2, 3, 32, 32)
    label = np.zeros((32, 32), np.uint8)
    label[8:24, 8:24] = 1
    label[:2] = 255
    target, valid = targets_for(label, np.zeros((0, 32, 32), bool), [0, 1], [], 255)
    target, valid = torch.from_numpy(target)[None].repeat(2, 1, 1, 1), torch.from_numpy(valid)[None].repeat(2, 1, 1)
    prompts = PromptFeatures(embeds=F.normalize(torch.randn(2, 1, 8), dim=-1), layers=[torch.randn(2, 1, 16)] * 3)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(2 + 18):
        loss = bce_loss(net(pixels, prompts), target, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def test_training_targets_ignore_held_out_pixels_and_add_colour_masks():
    from promptseg.data.shapes_world import render_sample
    from promptseg.training.dpseg import ShapesWithColours, targets_for

    label = np.array([[0, 6], [4, 255]], np.uint8)  # grass, triangle (held out), circle, ignored
    extra = np.array([[[0, 1], [1, 0]]], bool)  # one colour: the triangle and the circle are red
    target, valid = targets_for(label, extra, [0, 4], [6], 255)
    assert target.shape == (3, 2, 2)
    assert target[0].tolist() == [[1, 0], [0, 0]] and target[1].tolist() == [[0, 0], [1, 0]]
    assert valid.tolist() == [[True, False], [True, False]]  # the held-out triangle counts for nothing
    data = ShapesWithColours(n=4)
    masks = data.extra(2)
    sample = render_sample("train", 2, 64)
    assert masks.shape == (4, 64, 64) and data.extra_names == ["red", "green", "blue", "yellow"]
    assert np.array_equal(masks.any(0), sample.instance_map > 0)
    first = sample.objects[0].colour
    assert masks[data.extra_names.index(first)][sample.instance_map == 1].all()


def test_train_command_writes_weights_and_resumes_to_the_same_ones(tiny_folder, tiny_clip_folder, tmp_path):
    from safetensors.torch import load_file

    from promptseg.cli import main

    clip_folder, _ = tiny_clip_folder
    common = ["train", "dpseg", "--dataset", "shapes", "--clip", str(clip_folder), "--model", str(tiny_folder),
              "--templates", '["a {}"]', "--prompt-images", "1", "--batch", "2", "--steps", "4", "--n-train", "8",
              "--cache-dir", str(tmp_path / "cache"), "--save-every", "2", "--warmup", "1"]
    assert main(common + ["--out", str(tmp_path / "straight")]) == 0
    assert main(common + ["--out", str(tmp_path / "resumed"), "--stop-after", "2"]) == 0
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    progress = json.loads((tmp_path / "resumed-work" / "progress.json").read_text())
    assert progress["step"] == 2
    assert main(common + ["--out", str(tmp_path / "resumed")]) == 0
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "straight" / "dpseg_config.json").read_text())
    assert config["held_out"] == ["sky", "triangle"]
    assert config["trained_classes"] == ["grass", "sand", "water", "circle", "square"]
    assert main(common + ["--out", str(tmp_path / "x"), "--hold-out", "tree"]) == 2  # not a shapes class


def test_train_command_fine_tunes_from_weights_built_the_same_way(tiny_folder, tiny_clip_folder, tmp_path, capsys):
    """`--init` starts from trained weights (at lr 0 they come out unchanged) and records them; weights built with
    other settings are refused by name."""
    from safetensors.torch import load_file

    from promptseg.cli import main

    clip_folder, _ = tiny_clip_folder
    common = ["train", "dpseg", "--dataset", "shapes", "--clip", str(clip_folder), "--model", str(tiny_folder),
              "--templates", '["a {}"]', "--prompt-images", "1", "--batch", "2", "--steps", "2", "--n-train", "8",
              "--cache-dir", str(tmp_path / "cache"), "--warmup", "1"]
    assert main(common + ["--out", str(tmp_path / "first")]) == 0
    assert main(common + ["--out", str(tmp_path / "tuned"), "--init", str(tmp_path / "first"), "--lr", "0",
                          "--dice", "1"]) == 0
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("first", "tuned"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    training = json.loads((tmp_path / "tuned" / "dpseg_config.json").read_text())["training"]
    assert training["dice"] == 1.0 and training["init"]["weights"] == str(tmp_path / "first")
    assert main(common + ["--out", str(tmp_path / "x"), "--init", str(tmp_path / "first"), "--no-visual-cost"]) == 2
    assert "decoder" in capsys.readouterr().err
    assert main(common + ["--out", str(tmp_path / "x"), "--zoom", "0.5"]) == 2
    assert "--zoom 0.5" in capsys.readouterr().err


def test_zoom_crops_a_random_fraction_of_the_short_side():
    from promptseg.training.dpseg import training_pair

    columns = np.tile(np.arange(64, dtype=np.int32), (48, 1))  # a 64x48 image whose label is its column
    image = Image.new("RGB", (64, 48))
    sides = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        _, (plain,) = training_pair(image, [columns], 32, 48, rng)
        _, (zoomed,) = training_pair(image, [columns], 32, 48, rng, zoom=2.0)
        assert plain.shape == zoomed.shape == (48, 48)
        assert len(np.unique(plain)) == 48  # the whole short side, every column kept
        sides.append(len(np.unique(zoomed)))  # a crop of 24-48 columns resized to 48
    assert 24 <= min(sides) and max(sides) <= 48 and max(sides) - min(sides) >= 8


def test_dice_loss_weighs_each_present_class_alike_whatever_its_size():
    from promptseg.training.dpseg import bce_loss, dice_loss

    target = torch.zeros(1, 3, 32, 32)
    target[0, 0, :, :16] = 1  # a large class, found
    target[0, 1, 0, :4] = 1  # a 4-pixel class, missed
    logits = torch.where(target > 0, 20.0, -20.0)
    logits[0, 1] = -20.0
    valid = torch.ones(1, 32, 32, dtype=torch.bool)
    missed = float(dice_loss(logits, target, valid))
    assert missed == pytest.approx((0 + (1 - 1 / 5)) / 2, abs=1e-3)  # each present class counts once
    assert float(bce_loss(logits, target, valid)) < missed / 10  # where the BCE barely sees the missed class
    logits[0, 2] = 20.0  # an absent class predicted everywhere: the BCE's business, not the Dice's
    assert float(dice_loss(logits, target, valid)) == pytest.approx(missed)
    valid[0, 0, :4] = False  # the small class's pixels not valid: it is not present
    assert float(dice_loss(logits, target, valid)) == pytest.approx(0.0, abs=1e-3)


def test_train_command_on_scenes_holds_out_three_things_and_a_stuff_class(tiny_folder, tmp_path):
    """`promptseg train dpseg --dataset scenes` trains on the scenes world's class names (their synonyms read by the
    prompts) and keeps sailboat, kite, snowman (things) and sand (stuff) out of training by default."""
    from conftest import make_tiny_clip
    from promptseg.cli import main
    from promptseg.data.base import bundled_class_names
    from promptseg.data.scenes_world import CLASS_NAMES, STUFF

    words = {w for line in bundled_class_names("scenes") for w in line.replace(",", " ").split()}
    clip_folder = tmp_path / "clip"
    make_tiny_clip(clip_folder, ("a", *sorted(words)))
    out = tmp_path / "scenes-dpseg"
    assert main(["train", "dpseg", "--dataset", "scenes", "--clip", str(clip_folder), "--model", str(tiny_folder),
                 "--templates", '["a {}"]', "--prompt-images", "1", "--batch", "2", "--steps", "2", "--n-train", "4",
                 "--cache-dir", str(tmp_path / "cache"), "--warmup", "1", "--out", str(out)]) == 0
    config = json.loads((out / "dpseg_config.json").read_text())
    held_out = config["held_out"]
    assert held_out == ["sailboat", "kite", "snowman", "sand"]
    assert sum(name in STUFF for name in held_out) == 1 and sum(name not in STUFF for name in held_out) == 3
    assert config["trained_classes"] == [n for n in CLASS_NAMES if n not in held_out]
    assert config["training"]["dataset"] == "scenes" and (out / "model.safetensors").is_file()


def test_weights_refuse_a_backbone_that_did_not_draw_their_visual_prompts(tiny, tmp_path):
    """shapes-dpseg learnt the visual prompts the shapes model draws; on another backbone it is refused by name."""
    from promptseg.methods import build_method
    from promptseg.methods.dpseg.method import same_model

    with pytest.raises(ValueError, match=r"drawn by 'shapes' \(and encoded by the CLIP 'shapes-clip'\), not by this "
                                         r"backbone '.*tiny_sd.*'.*other_backbone=true"):
        build_method("dpseg", tiny, weights="shapes-dpseg", cache_dir=str(tmp_path))
    method = build_method("dpseg", tiny, weights="shapes-dpseg", cache_dir=str(tmp_path), other_backbone=True)
    assert method.net.config.training["diffusion_model"] == "shapes"
    assert same_model(str(tmp_path), str(tmp_path / ".." / tmp_path.name)) and not same_model("shapes", "scenes")


def test_decoder_runs_in_float32_on_a_bf16_backbone(tiny_folder, tiny_dpseg, tmp_path):
    """The decoder and its CLIP were trained in float32 and stay in it on a half-precision backbone: with text prompts
    (nothing drawn by the backbone) a bf16 backbone gives the float32 backbone's scores exactly."""
    from promptseg.methods import build_method
    from promptseg.models import load_backbone

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    scores = {}
    for dtype in ("fp32", "bf16"):
        backbone = load_backbone(str(tiny_folder), device="cpu", dtype=dtype)
        method = build_method("dpseg", backbone, weights=str(tiny_dpseg), cache_dir=str(tmp_path), prompts="text")
        assert next(method.net.parameters()).dtype == torch.float32
        assert next(method.clip.model.parameters()).dtype == torch.float32
        scores[dtype] = method(image, ["cat", "dog"]).scores
    assert backbone.dtype == torch.bfloat16
    np.testing.assert_array_equal(scores["bf16"], scores["fp32"])
