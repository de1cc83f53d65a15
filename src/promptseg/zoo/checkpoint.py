"""Resumable training state for the zoo's single-model training scripts: a killed run resumes bit-identically.

The state file holds the model and optimiser state dicts, torch's and numpy's random states and the script's own
progress (`{"step": ..., "log": [...]}`); it is written atomically, so a kill mid-save leaves the previous one.
"""

from __future__ import annotations

import argparse
import json
import os
import time
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


def add_arguments(parser: argparse.ArgumentParser, *, work: str, out: str, n_train: int, batch: int, steps: int,
                  lr: float) -> None:
    """The arguments every zoo training script takes (folders, seed, data size, batch, steps, lr, checkpointing,
    threads), with this script's defaults."""
    parser.add_argument("--work", default=work, help="checkpoint folder (resumes from WORK/state.pt)")
    parser.add_argument("--out", default=out, help="export folder (transformers layout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=n_train, help="training images rendered once (train split)")
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)


def export(out: Path, model, processor, state: dict, scores: dict | None = None) -> None:
    """Write a transformers model and its processor into `out` (folder layout, safetensors) with the training log,
    and the test `scores` as eval.json when given."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    (out / "training_log.json").write_text(json.dumps({"steps": state["step"], "log": state["log"]}, indent=1))
    if scores is not None:
        (out / "eval.json").write_text(json.dumps(scores, indent=1))
    print(f"exported to {out} at step {state['step']}" + (f"; test {scores}" if scores is not None else ""), flush=True)


def optimiser_step(model, opt, loss) -> float:
    """Backward, clip the gradient norm at 1 and step; returns the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def step_done(work: Path, model, opt, rng: np.random.Generator, state: dict, args, running: float, t0: float) -> float:
    """Count a finished step: print and log the running loss every 50 steps, checkpoint every `args.save_every`
    and at the last step; returns the new reference time."""
    state["step"] += 1
    if state["step"] % 50 == 0:
        rate = (time.time() - t0) / 50
        print(f"step {state['step']}/{args.steps} loss {running:.4f} {rate:.2f}s/step "
              f"eta {rate * (args.steps - state['step']) / 60:.0f}min", flush=True)
        state["log"].append({"step": state["step"], "loss": round(running, 5)})
        t0 = time.time()
    if state["step"] % args.save_every == 0 or state["step"] == args.steps:
        save(work, model, opt, rng, state)
    return t0
