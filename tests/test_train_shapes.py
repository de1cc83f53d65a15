"""The shapes training script: a killed run resumes to exactly the weights of an uninterrupted one."""

import pytest
import torch
from safetensors.torch import load_file

from promptseg.training import shapes as train_shapes

ARGS = ["--n-train", "24", "--batch", "4", "--vae-steps", "4", "--steps", "6", "--save-every", "2", "--threads", "1"]


class Killed(Exception):
    pass


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    train_shapes.main(["--work", str(tmp_path / "a"), "--out", str(tmp_path / "a_out"), *ARGS])
    real_report = train_shapes.report

    def kill_at_unet_step_3(state, phase, total, running, t0):
        if phase == "unet" and state["step"] == 3:
            raise Killed()
        return real_report(state, phase, total, running, t0)

    monkeypatch.setattr(train_shapes, "report", kill_at_unet_step_3)
    with pytest.raises(Killed):
        train_shapes.main(["--work", str(tmp_path / "b"), "--out", str(tmp_path / "b_out"), *ARGS])
    assert torch.load(tmp_path / "b" / "state.pt", weights_only=False)["state"]["step"] == 2  # last checkpoint
    monkeypatch.setattr(train_shapes, "report", real_report)
    train_shapes.main(["--work", str(tmp_path / "b"), "--out", str(tmp_path / "b_out"), *ARGS])
    for part in ("unet/diffusion_pytorch_model", "text_encoder/model", "vae/diffusion_pytorch_model"):
        a = load_file(tmp_path / "a_out" / f"{part}.safetensors")
        b = load_file(tmp_path / "b_out" / f"{part}.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    before = load_file(tmp_path / "a_out" / "unet" / "diffusion_pytorch_model.safetensors")
    fresh = train_shapes.build_components(0)[3].state_dict()
    assert any(not torch.equal(before[k], fresh[k]) for k in fresh)  # training changed the weights
