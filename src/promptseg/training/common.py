"""What the training scripts share: resumable state, the learning-rate schedule, progress reports, arguments.

A killed run resumes bit-identically: the state file holds every part's state dict (models, optimisers), torch's and
numpy's random states and the script's own progress (`{"step": ..., "log": [...]}`), written atomically, so a kill
mid-save leaves the previous one. `resume`/`save`/`step_done`/`export`/`add_arguments` are the single-model
scripts' loop (CLIP, SAM); `resume_state`/`save_state`/`cosine_lr`/`report` serve the backbone scripts' phases.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch


def resume_state(ckpt: Path, parts: dict, rng: np.random.Generator, fresh: dict) -> dict:
    """Load `ckpt` into `parts` (name -> module or optimiser) and the random states if it exists; returns the
    progress dict (`fresh` otherwise)."""
    if not ckpt.exists():
        return fresh
    saved = torch.load(ckpt, weights_only=False)
    for name, part in parts.items():
        part.load_state_dict(saved[name])
    torch.set_rng_state(saved["torch_rng"])
    rng.bit_generator.state = saved["np_rng"]
    state = saved["state"]
    phase = f": phase {state['phase']}" if "phase" in state else ""
    print(f"resumed from {ckpt}{phase} at step {state['step']}", flush=True)
    return state


def save_state(ckpt: Path, parts: dict, rng: np.random.Generator, state: dict) -> None:
    """Write `parts`' state dicts, the random states and the progress to `ckpt` atomically."""
    blob = {name: part.state_dict() for name, part in parts.items()}
    blob.update(torch_rng=torch.get_rng_state(), np_rng=rng.bit_generator.state, state=state)
    torch.save(blob, ckpt.with_suffix(".tmp"))
    os.replace(ckpt.with_suffix(".tmp"), ckpt)


def resume(work: Path, model, opt, rng: np.random.Generator) -> dict:
    """Load WORK/state.pt into `model`, `opt` and the random states if it exists; returns the progress dict
    (a fresh `{"step": 0, "log": []}` otherwise)."""
    return resume_state(Path(work) / "state.pt", {"model": model, "opt": opt}, rng, {"step": 0, "log": []})


def save(work: Path, model, opt, rng: np.random.Generator, state: dict) -> None:
    """Write WORK/state.pt atomically."""
    save_state(Path(work) / "state.pt", {"model": model, "opt": opt}, rng, state)


def cosine_lr(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps to `base`, then cosine decay to 0 at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def set_warm_cosine_lr(opt, step: int, base: float, total: int, warmup: int = 200) -> None:
    """The CLIP scripts' schedule on every parameter group: cosine decay from `base` over `total` steps, scaled by a
    linear warm-up over the first `warmup` steps."""
    warm = min(1.0, (step + 1) / warmup)
    for group in opt.param_groups:
        group["lr"] = base * warm * 0.5 * (1 + np.cos(np.pi * step / total))


def report(state: dict, phase: str, total: int, running: float, t0: float) -> float:
    """Print and log progress every 50 steps; returns the new reference time."""
    if state["step"] % 50:
        return t0
    rate = (time.time() - t0) / 50
    eta = rate * (total - state["step"]) / 60
    print(f"{phase} step {state['step']}/{total} loss {running:.4f} {rate:.2f}s/step eta {eta:.0f}min", flush=True)
    state["log"].append({"phase": phase, "step": state["step"], "loss": running})
    return time.time()


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


def begin(args: argparse.Namespace, model, weight_decay: float):
    """How a single-model script starts: `args.threads` threads, the WORK folder, AdamW over the trainable
    parameters at `args.lr`, the numpy generator seeded with `args.seed`, and the progress resumed from WORK.
    Returns (work, opt, rng, state)."""
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=weight_decay)
    rng = np.random.default_rng(args.seed)
    return work, opt, rng, resume(work, model, opt, rng)


def optimiser_step(model, opt, loss) -> float:
    """Backward, clip the gradient norm of `model` (a module or its parameters) at 1 and step; returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters() if isinstance(model, torch.nn.Module) else model, 1.0)
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
