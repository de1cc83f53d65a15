"""Fitting a big model into a small card: the backbone's weights kept in CPU memory and brought to the GPU as they
are used (accelerate's hooks, as diffusers' `enable_model_cpu_offload` / `enable_sequential_cpu_offload` do).

- "model": each component (text encoders, denoiser, VAE) moves to the execution device whole when its forward is
  called, and the one used before it moves back: the GPU holds the largest component, not all of them (FLUX.1:
  the 24 GB transformer, not it and the 9.5 GB T5 besides).
- "sequential": the denoiser's and VAE's leaf modules (each linear, norm, convolution) move in for their own forward
  and out after it: the GPU holds one layer's weights at a time, at the cost of a transfer per layer and step; the
  text encoders are offloaded whole (their input embeddings are read directly by prompt inversion).

The attention capture works under both: it reads the projections' outputs through forward hooks and calls modules,
never their weights (tested on CPU with accelerate's hooks: the maps equal the plain run's).

    backbone = load_backbone("black-forest-labs/FLUX.1-dev", device="cuda", offload="model")
"""

from __future__ import annotations

import torch

OFFLOAD_MODES = ("model", "sequential")


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
    if mode not in OFFLOAD_MODES:
        raise ValueError(f"offload must be one of {OFFLOAD_MODES} (or None), got {mode!r}")
    try:
        from accelerate import cpu_offload, cpu_offload_with_hook
    except ImportError as err:
        raise ImportError("offloading needs accelerate: pip install 'promptseg[eval]' (or accelerate)") from err
    device = torch.device(device)
    parts = text_modules(backbone) + [backbone.denoiser, backbone.vae]
    for module in parts:
        module.to("cpu")
    hook = None
    for module in parts:
        if mode == "sequential" and module in (backbone.denoiser, backbone.vae):
            cpu_offload(module, execution_device=device)
        else:
            _, hook = cpu_offload_with_hook(module, execution_device=device, prev_module_hook=hook)
    backbone.device = device
    backbone.offloaded = mode
    return backbone
