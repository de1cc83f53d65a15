"""Fitting a big model into a small card: the backbone's weights kept in CPU memory and brought to the GPU as they
are used (accelerate's hooks, as diffusers' `enable_model_cpu_offload` / `enable_sequential_cpu_offload` do).

- "model": each component (text encoders, denoiser, VAE) moves to the execution device whole when it runs (its
  forward, or the VAE's `encode` / `decode`), and every other component that is there moves back first: the GPU
  holds one component at a time (FLUX.1: the 24 GB transformer, never it and the 9.5 GB T5 together).
- "sequential": the denoiser's and VAE's leaf modules (each linear, norm, convolution) move in for their own forward
  and out after it: the GPU holds one layer's weights at a time, at the cost of a transfer per layer and step; the
  text encoders move whole, one at a time, and back out before the denoiser runs (their input embeddings are read
  directly by prompt inversion).

The attention capture works under both: it reads the projections' outputs through forward hooks and calls modules,
never their weights (tested on CPU with accelerate's hooks: the maps equal the plain run's).

    backbone = load_backbone("black-forest-labs/FLUX.1-dev", device="cuda", offload="model")
"""

from __future__ import annotations

import torch

try:
    from accelerate import cpu_offload
    from accelerate.hooks import CpuOffload, add_hook_to_module
except ImportError:  # offloading needs accelerate (the eval extra); `offload` says so
    cpu_offload = add_hook_to_module = None
    CpuOffload = object

OFFLOAD_MODES = ("model", "sequential")


def check_mode(mode: str) -> None:
    """Raise a ValueError naming `mode` unless it is one of `OFFLOAD_MODES` (before any weights load)."""
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {OFFLOAD_MODES} or None, got {mode!r}")


class ExclusiveOffload(CpuOffload):
    """accelerate's `CpuOffload` hook (the module moves to the execution device when it runs, diffusers' VAE
    `encode` / `decode` included), which first moves every other module of its `group` back to the CPU."""

    def __init__(self, execution_device, group: list):
        super().__init__(execution_device)
        self.group = group

    def pre_forward(self, module, *args, **kwargs):
        _to_cpu([other for other in self.group if other is not module])
        return super().pre_forward(module, *args, **kwargs)


def text_modules(backbone) -> list[torch.nn.Module]:
    """The backbone's text encoders, first used first."""
    modules = list(getattr(backbone, "text_encoders", None) or [])
    modules += [m for m in (getattr(backbone, "text_encoder", None), getattr(backbone, "text_encoder_2", None),
                            getattr(backbone, "t5_encoder", None)) if m is not None and m not in modules]
    return modules


def offload(backbone, mode: str, device: str | torch.device):
    """Keep `backbone`'s weights on the CPU and run them on `device` (`mode`: "model" or "sequential", module
    docstring); returns the backbone, whose `device` is now `device` (where inputs are made).

    Raises:
        ValueError: an unknown mode.
        ImportError: accelerate is missing.
    """
    check_mode(mode)
    if cpu_offload is None:
        raise ImportError("offloading needs accelerate: pip install 'promptseg[eval]' (or accelerate)")
    device = torch.device(device)
    texts = text_modules(backbone)
    whole = texts + [backbone.denoiser, backbone.vae] if mode == "model" else texts
    for module in whole:
        add_hook_to_module(module, ExclusiveOffload(device, whole))
        module.to("cpu")
    if mode == "sequential":
        for module in (backbone.denoiser, backbone.vae):
            module.to("cpu")
            cpu_offload(module, execution_device=device)
        # the last text encoder used leaves before the denoiser's layers come in
        backbone.denoiser.register_forward_pre_hook(lambda module, args: _to_cpu(texts))
    backbone.device = device
    backbone.offloaded = mode
    return backbone


def _to_cpu(modules) -> None:
    """Move the modules not on the CPU there (their weights wait in CPU memory)."""
    for module in modules:
        if next(module.parameters()).device.type != "cpu":
            module.to("cpu")
