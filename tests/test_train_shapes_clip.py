"""The shapes-clip training script: its loss, its texts, and a killed run resuming to the same weights."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from promptseg.models.clip import load_clip
from promptseg.training import shapes_clip as tsc

ARGS = ["--n-train", "16", "--batch", "8", "--steps", "4", "--save-every", "2", "--threads", "1"]


def test_multi_positive_loss_is_clip_loss_with_one_positive_and_spreads_over_several():
    logits = torch.randn(5, 5)
    eye = torch.eye(5, dtype=torch.bool)
    clip = (torch.nn.functional.cross_entropy(logits, torch.arange(5))
            + torch.nn.functional.cross_entropy(logits.T, torch.arange(5))) / 2
    assert torch.allclose(tsc.multi_positive_loss(logits, eye), clip)
    two = eye.clone()
    two[0, 1] = True  # text 1 is also true of image 0
    # with two true texts for image 0, logits that rank both high beat logits that rank only the diagonal high
    assert tsc.multi_positive_loss(torch.where(two, 10.0, -10.0), two) + 1 < tsc.multi_positive_loss(
        torch.where(eye, 10.0, -10.0), two)


def test_every_text_is_true_of_its_own_scene_and_checks_colour_and_background():
    rng = np.random.default_rng(0)
    scene = ([("circle", "red"), ("square", "blue")], "grass")
    for _ in range(200):
        text, needs = tsc.describe(*scene, rng)
        assert tsc.is_true_of(needs, scene), text
    assert not tsc.is_true_of(([("circle", "blue")], None), scene)
    assert not tsc.is_true_of(([], "sand"), scene)
    assert tsc.is_true_of(([("circle", None)], "grass"), scene)


class Killed(Exception):
    pass


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    tsc.main(["--work", str(tmp_path / "a"), "--out", str(tmp_path / "a_out"), *ARGS])
    real = tsc.multi_positive_loss
    calls = {"n": 0}

    def kill_at_step_3(logits, truth):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Killed()
        return real(logits, truth)

    monkeypatch.setattr(tsc, "multi_positive_loss", kill_at_step_3)
    with pytest.raises(Killed):
        tsc.main(["--work", str(tmp_path / "b"), "--out", str(tmp_path / "b_out"), *ARGS])
    monkeypatch.setattr(tsc, "multi_positive_loss", real)
    tsc.main(["--work", str(tmp_path / "b"), "--out", str(tmp_path / "b_out"), *ARGS])
    a, b = load_file(tmp_path / "a_out" / "model.safetensors"), load_file(tmp_path / "b_out" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    fresh = tsc.build_model(0)[1].state_dict()
    assert any(not torch.equal(a[k], fresh[k]) for k in a)  # training changed the weights
    clip = load_clip(str(tmp_path / "a_out"), device="cpu")  # the export is a CLIP folder
    assert clip.image_size == 64 and clip.text_embeds(["a photo of a circle"]).shape == (1, 128)
