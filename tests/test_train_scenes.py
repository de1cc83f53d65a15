"""The scenes training scripts on a few steps: scenes-clip's texts and export, and the diffusion model trained on
its frozen text tower (SD's recipe), resuming after a kill to the weights of an uninterrupted run."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from promptseg.data.scenes_world import VIEWS, render_sample
from promptseg.models import load_backbone
from promptseg.models.clip import load_clip
from promptseg.training import scenes as train_scenes
from promptseg.training import scenes_clip as train_scenes_clip

CLIP_ARGS = ["--n-train", "12", "--batch", "6", "--steps", "2", "--save-every", "2", "--threads", "1"]
ARGS = ["--n-train", "12", "--batch", "4", "--vae-batch", "2", "--vae-steps", "2", "--steps", "4",
        "--save-every", "2", "--export-every", "4", "--threads", "1"]


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes_clip")
    train_scenes_clip.main(["--work", str(root / "work"), "--out", str(root / "out"), *CLIP_ARGS])
    return root / "out"


def test_clip_texts_are_true_of_their_scene_and_claims_are_checked():
    rng = np.random.default_rng(0)
    samples = [render_sample("train", i) for i in range(20)]
    for s in samples:
        for _ in range(20):
            text, claims = train_scenes_clip.describe(s, rng)
            assert train_scenes_clip.is_true_of(claims, s), text
    car_scene = next(s for s in samples if any(o.cls == "car" for o in s.visible))
    colour = next(o.colour for o in car_scene.visible if o.cls == "car")
    other = next(c for c in ("red", "blue", "yellow", "white", "black", "green")
                 if not any(o.cls == "car" and o.colour == c for o in car_scene.visible))
    assert train_scenes_clip.is_true_of(([("car", colour)], []), car_scene)
    assert not train_scenes_clip.is_true_of(([("car", other)], []), car_scene)
    assert not train_scenes_clip.is_true_of(([], ["snow" if "snow" not in car_scene.stuff else "water"]), car_scene)


def test_token_identity_loss_is_low_only_where_states_name_their_tokens():
    torch.manual_seed(0)
    embedding = torch.randn(50, 16)
    ids = torch.tensor([[0, 5, 7, 9, 1, 1], [0, 9, 12, 1, 1, 1]])  # 0 start, 1 end and padding
    mask = (torch.arange(6) < torch.tensor([[5], [4]])).long()
    special = torch.tensor([0, 1])
    own = embedding[ids]  # every state is its own token's embedding
    swapped = embedding[ids.roll(1, dims=1)]
    low = train_scenes_clip.token_identity_loss(own, ids, mask, embedding, special)
    high = train_scenes_clip.token_identity_loss(swapped, ids, mask, embedding, special)
    assert low < 0.05 < 1.0 < high
    # start, end and padding states are never scored: changing them changes nothing
    noisy = own.clone()
    noisy[:, 0] = noisy[:, -1] = torch.randn(2, 16)
    assert torch.isclose(train_scenes_clip.token_identity_loss(noisy, ids, mask, embedding, special), low)


def test_clip_export_loads_with_clips_real_tokenizer(clip_folder):
    clip = load_clip(str(clip_folder), device="cpu")
    tokens = clip.processor.tokenizer("a photo of a sailboat").input_ids
    assert len(tokens) == 8 and clip.processor.tokenizer.vocab_size == 49408  # "sail" "boat": two tokens
    assert clip.text_embeds(["a photo of a traffic cone"]).shape == (1, 128)


def test_unet_resumes_after_a_kill_and_keeps_the_text_tower_frozen(tmp_path, monkeypatch, clip_folder):
    common = [*ARGS, "--text-encoder", str(clip_folder)]
    train_scenes.main(["--work", str(tmp_path / "a"), "--out", str(tmp_path / "a_out"), *common])
    real_report = train_scenes.report

    def kill_at_unet_step_3(state, phase, total, running, t0):
        if phase == "unet" and state["step"] == 3:
            raise Killed()
        return real_report(state, phase, total, running, t0)

    monkeypatch.setattr(train_scenes, "report", kill_at_unet_step_3)
    with pytest.raises(Killed):
        train_scenes.main(["--work", str(tmp_path / "b"), "--out", str(tmp_path / "b_out"), *common])
    monkeypatch.setattr(train_scenes, "report", real_report)
    train_scenes.main(["--work", str(tmp_path / "b"), "--out", str(tmp_path / "b_out"), *common])
    for part in ("unet/diffusion_pytorch_model", "vae/diffusion_pytorch_model"):
        a = load_file(tmp_path / "a_out" / f"{part}.safetensors")
        b = load_file(tmp_path / "b_out" / f"{part}.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), part
    # the export stores no text tower: it names the CLIP, and the backbone loads that CLIP's tower, untouched
    assert not (tmp_path / "a_out" / "text_encoder").exists()
    backbone = load_backbone(str(tmp_path / "a_out"), device="cpu")
    clip = load_file(clip_folder / "model.safetensors")
    tower = {k.removeprefix("text_model."): v for k, v in backbone.text_encoder.state_dict().items()}
    clip = {k.removeprefix("text_model."): v for k, v in clip.items() if not k.startswith("vision_model.")}
    shared = [k for k in tower if k in clip]
    assert len(shared) >= len(tower) - 1  # all but a position-ids buffer, where one is kept
    assert all(torch.equal(tower[k], clip[k].float()) for k in shared)
    assert backbone.tokenizer("a sailboat").input_ids == load_clip(str(clip_folder), device="cpu").processor.tokenizer(
        "a sailboat").input_ids


def test_unet_phase_without_a_trained_clip_says_what_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="promptseg.training.scenes_clip"):
        train_scenes.main(["--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"), *ARGS,
                           "--text-encoder", str(tmp_path / "missing")])


def test_min_snr_weights_lower_only_the_low_noise_steps():
    _, _, scheduler, _ = train_scenes.build_vae_unet()
    plain = train_scenes.min_snr_weights(scheduler, None)
    weights = train_scenes.min_snr_weights(scheduler, 5.0)
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    assert torch.equal(plain, torch.ones(1000))
    assert torch.all(weights[snr <= 5] == 1) and torch.all(weights[snr > 5] < 1)
    assert weights[0] < weights[50] < weights[100] < 1  # the lower the noise, the lower the weight


def test_a_resumed_run_records_a_changed_recipe(tmp_path, clip_folder):
    common = [*ARGS, "--text-encoder", str(clip_folder), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")]
    train_scenes.main([*common, "--steps", "2", "--export-every", "2"])
    train_scenes.main([*common, "--steps", "4", "--snr-gamma", "5"])
    log = json.loads((tmp_path / "o" / "training_log.json").read_text())
    assert log["unet_steps"] == 4
    world = {"views": dict(VIEWS), "caption_stuff_order": "random"}  # what the world's captions were is recorded
    assert log["recipe"] == [{"from_step": 0, "steps": 2, "lr": 4e-4, "snr_gamma": None, **world},
                             {"from_step": 2, "steps": 4, "lr": 4e-4, "snr_gamma": 5.0, **world}]


def test_the_text_tower_loads_from_a_whole_clip_without_a_report_of_its_unused_vision_weights(clip_folder, capfd,
                                                                                              caplog):
    caplog.set_level("INFO")
    text_encoder, _ = train_scenes.load_text_encoder(clip_folder)
    out, err = capfd.readouterr()
    said = out + err + caplog.text
    assert "UNEXPECTED" not in said and "vision_model" not in said
    assert text_encoder.config.hidden_size > 0


def test_a_run_continues_from_an_export_alone(tmp_path, clip_folder):
    """What survives a machine that keeps no work folder is the export: a run in a new WORK continues from it."""
    common = [*ARGS, "--text-encoder", str(clip_folder)]
    train_scenes.main([*common, "--work", str(tmp_path / "a"), "--out", str(tmp_path / "a_out")])
    train_scenes.main([*common, "--work", str(tmp_path / "b"), "--out", str(tmp_path / "b_out"), "--steps", "6",
                       "--export-every", "6", "--init-from", str(tmp_path / "a_out")])
    log = json.loads((tmp_path / "b_out" / "training_log.json").read_text())
    assert log["unet_steps"] == 6 and log["recipe"][-1]["from_step"] == 4 and "fresh optimiser" in log["recipe"][-1][
        "restart"]
    vae = "vae/diffusion_pytorch_model.safetensors"
    a, b = load_file(tmp_path / "a_out" / vae), load_file(tmp_path / "b_out" / vae)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the VAE came across, bit for bit
    unet = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(tmp_path / "a_out" / unet), load_file(tmp_path / "b_out" / unet)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # it trained on
    marked = load_file(tmp_path / "a_out" / unet)  # an export whose weights no fresh UNet has
    marked["conv_in.weight"] += 1.0
    save_file(marked, tmp_path / "a_out" / unet)
    train_scenes.main([*common, "--work", str(tmp_path / "d"), "--out", str(tmp_path / "d_out"), "--steps", "5",
                       "--export-every", "5", "--init-from", str(tmp_path / "a_out")])
    d = load_file(tmp_path / "d_out" / unet)
    assert torch.allclose(d["conv_in.weight"].float(), marked["conv_in.weight"].float(), atol=0.01)
    with pytest.raises(FileNotFoundError, match="training_log.json"):
        train_scenes.main([*common, "--work", str(tmp_path / "c"), "--out", str(tmp_path / "c_out"),
                           "--init-from", str(tmp_path)])
