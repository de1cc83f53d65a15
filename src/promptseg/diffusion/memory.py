"""Keeping prompt inversion's memory bounded: the denoiser's activations recomputed instead of kept.

Inverting a prompt (InvSeg, Segment Anyword) backpropagates through the denoiser to the text. A transformer keeps
every block's activations for that backward pass: at FLUX.1's size, 4608 tokens of 3072 channels in ten-odd saved
tensors a block, tens of GB over its 19 double and 38 single blocks. With gradient checkpointing (diffusers' own,
per block) only each block's inputs are kept and the block runs again in the backward pass: about one more forward
a step, for the memory of one block. The attention capture knows a re-run block (`promptseg.diffusion.capture.core._recomputing`):
it computes its maps again without recording them or stopping the forward. The re-run is selective (PyTorch's
selective activation checkpointing, `keep_attention`): the outputs of PyTorch's fused attention kernels (the block's
own call and the capture's) are kept from the forward, so the backward pass re-runs the projections, norms and MLPs
but not those kernels (about 1536 x 3072 values a call at FLUX.1's 512 px), with the same gradients. Attention that
runs elsewhere (diffusers' flash-attn, xformers or sage backends, PyTorch's math fallback) is recomputed as before,
and a denoiser the caller already checkpoints keeps its own function.

    with recomputed(backbone, config.recompute) as blocks_recomputed:
        loss = ...; loss.backward()

On a diffusion transformer whose native size is above 512 px (SD3, FLUX.1, FLUX.2, Qwen-Image, Z-Image: 1024 px)
the optimisation also runs on the image at 512 px (`inversion_size`): a quarter of the image tokens, so about a
ninth of the joint attention and a third of the rest, forwards and backwards, and a fraction of the kept maps. The
segmentation itself is read at the native size with the optimised embeddings. 512 px is the image size of the
papers' optimisation (InvSeg and Segment Anyword run SD-1.5 at 512 px; InvSeg's 16x16 loss grid is a quarter of
its latent side, which FLUX.1 and SD3 have at 512 px too), and the size the field adapts these transformers at
(diffusers' DreamBooth example for FLUX.1, `examples/dreambooth/README_flux.md`, trains at `--resolution=512`);
both were trained at 512 px among other sizes. A UNet keeps its native size (SDXL at 512 px is out of its
training). `inversion_side` (a method setting) names another size; the native size or more turns it off. The
methods' timesteps keep their meaning at both sizes (sigma = t / 1000 on a flow model); FLUX's sampler shifts sigma
with the token count (more noise for more tokens), so the same sigma is a little noisier to the model at 512 px than
at 1024: not compensated.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
    set_checkpoint_early_stop,
)

ATTENTION_OPS = tuple(getattr(torch.ops.aten, name).default for name in (
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable") if hasattr(torch.ops.aten, name))
"""The fused attention kernels `scaled_dot_product_attention` dispatches to (CPU, CUDA flash, memory-efficient,
cuDNN, other backends): what a recomputed block keeps from its forward. The math fallback (matmul, softmax) is
recomputed."""


def _keep_attention_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in ATTENTION_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def keep_attention(module, *args):
    """diffusers' gradient-checkpointing function with the fused attention kernels' outputs kept: the block re-runs
    in the backward pass without them (`torch.utils.checkpoint`, non-reentrant, selective). Early stop on: the
    re-run ends at the last kept tensor, so a block the capture stopped inside (`StopForward` after the last read
    layer) is not re-run past the point its forward reached."""
    with set_checkpoint_early_stop(True):
        return checkpoint(module.__call__, *args, use_reentrant=False,
                          context_fn=lambda: create_selective_checkpoint_contexts(_keep_attention_policy))


@contextmanager
def recomputed(backbone, enabled: bool | None = None) -> Iterator[bool]:
    """Gradient checkpointing on `backbone`'s denoiser (diffusers' `enable_gradient_checkpointing`, attention kept:
    `keep_attention`) inside the block, its previous state restored after (a denoiser already checkpointing keeps
    its own function). `enabled` None: on a transformer (FLUX.1's kept activations are tens of GB),
    off on a UNet (SD's fit). Yields whether the blocks are recomputed (False when off or unsupported)."""
    denoiser = backbone.denoiser
    if enabled is None:
        enabled = backbone.family != "unet"
    if not enabled or not getattr(denoiser, "_supports_gradient_checkpointing", False):
        yield False
        return
    before = denoiser.is_gradient_checkpointing
    if not before:
        denoiser.enable_gradient_checkpointing(gradient_checkpointing_func=keep_attention)
    try:
        yield True
    finally:
        if not before:
            denoiser.disable_gradient_checkpointing()


INVERSION_SIDE = 512
"""The longest image side, in pixels, of prompt inversion on a diffusion transformer whose native size is larger
(module docstring)."""


def inversion_latent(backbone, side: int | None = None) -> tuple[int, int] | None:
    """The latent grid (h, w) prompt inversion runs at on `backbone`, or None for its native size.

    `side` (pixels, the longest side): None picks `INVERSION_SIDE` on a diffusion transformer whose native image is
    larger, the native size on a UNet; a side at or above the native one is the native size. The grid keeps the
    native aspect ratio, in whole patches (the transformer's token grid).
    """
    native = backbone.native_latent_size
    longest = max(native) * backbone.vae_scale_factor
    if side is None:
        if backbone.family == "unet":
            return None
        side = INVERSION_SIDE
    check_inversion_side(side)
    if side >= longest:
        return None
    step = int(getattr(backbone, "patch_size", 1))
    return tuple(max(step, round(n * side / longest / step) * step) for n in native)


def check_inversion_side(side: int | None) -> None:
    """Raise where `side` (a method's `inversion_side`) is neither None nor a positive number of pixels."""
    if side is not None and side <= 0:
        raise ValueError(f"inversion_side must be a positive number of pixels or None, got {side}")


def working_latents(backbone, prepared):
    """The prepared image's latents at the backbone's working size: `prepared.latents` at the native size, else the
    image (`prepared.extra["image"]`, PIL) resized and VAE-encoded at it, once per image and size (cached in
    `prepared.extra`)."""
    if tuple(prepared.latents.shape[-2:]) == tuple(backbone.latent_size):
        return prepared.latents
    key = "latents@{}x{}".format(*backbone.latent_size)
    if key not in prepared.extra:
        with torch.no_grad():
            prepared.extra[key] = backbone.encode_image(backbone.preprocess(prepared.extra["image"]))
    return prepared.extra[key]


@contextmanager
def inversion_size(backbone, side: int | None = None) -> Iterator[bool]:
    """`backbone` at `inversion_latent(backbone, side)` inside the block (`DiffusionBackbone.working_size`); yields
    whether that is smaller than the native size."""
    latent = inversion_latent(backbone, side)
    with backbone.working_size(latent):
        yield latent is not None
