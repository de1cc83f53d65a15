"""Keeping prompt inversion's memory bounded: the denoiser's activations recomputed instead of kept.

Inverting a prompt (InvSeg, Segment Anyword) backpropagates through the denoiser to the text. A transformer keeps
every block's activations for that backward pass: at FLUX.1's size, 4608 tokens of 3072 channels in ten-odd saved
tensors a block, tens of GB over its 19 double and 38 single blocks. With gradient checkpointing (diffusers' own,
per block) only each block's inputs are kept and the block runs again in the backward pass: about one more forward
a step, for the memory of one block. The attention capture knows a re-run block (`promptseg.diffusion.capture.core._recomputing`):
it computes its maps again without recording them or stopping the forward.

    with recomputed(backbone, config.recompute) as blocks_recomputed:
        loss = ...; loss.backward()
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def recomputed(backbone, enabled: bool | None = None) -> Iterator[bool]:
    """Gradient checkpointing on `backbone`'s denoiser (diffusers' `enable_gradient_checkpointing`) inside the block,
    its previous state restored after. `enabled` None: on a transformer (FLUX.1's kept activations are tens of GB),
    off on a UNet (SD's fit). Yields whether the blocks are recomputed (False when off or unsupported)."""
    denoiser = backbone.denoiser
    if enabled is None:
        enabled = backbone.family != "unet"
    if not enabled or not getattr(denoiser, "_supports_gradient_checkpointing", False):
        yield False
        return
    before = denoiser.is_gradient_checkpointing
    if not before:
        denoiser.enable_gradient_checkpointing()
    try:
        yield True
    finally:
        if not before:
            denoiser.disable_gradient_checkpointing()
