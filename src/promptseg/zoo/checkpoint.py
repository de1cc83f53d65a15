"""Resumable training state for the zoo's single-model training scripts: a killed run resumes bit-identically.

The state file holds the model and optimiser state dicts, torch's and numpy's random states and the script's own
progress (`{"step": ..., "log": [...]}`); it is written atomically, so a kill mid-save leaves the previous one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def resume(work: Path, model, opt, rng: np.random.Generator) -> dict:
    """Load WORK/state.pt into `model`, `opt` and the random states if it exists; returns the progress dict
    (a fresh `{"step": 0, "log": []}` otherwise)."""
    ckpt = Path(work) / "state.pt"
    if not ckpt.exists():
        return {"step": 0, "log": []}
    saved = torch.load(ckpt, weights_only=False)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    torch.set_rng_state(saved["torch_rng"])
    rng.bit_generator.state = saved["np_rng"]
    print(f"resumed from {ckpt} at step {saved['state']['step']}", flush=True)
    return saved["state"]


def save(work: Path, model, opt, rng: np.random.Generator, state: dict) -> None:
    """Write WORK/state.pt atomically."""
    blob = {"model": model.state_dict(), "opt": opt.state_dict(), "torch_rng": torch.get_rng_state(),
            "np_rng": rng.bit_generator.state, "state": state}
    torch.save(blob, Path(work) / "state.tmp")
    os.replace(Path(work) / "state.tmp", Path(work) / "state.pt")
