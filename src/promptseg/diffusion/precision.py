"""Learning a prompt on a half-precision backbone: fp32 parameters, and loss scaling where fp16 needs it.

InvSeg and Segment Anyword optimise text embeddings through a frozen denoiser that runs in bf16 or fp16 on a GPU.
Their learnt tensors are kept in float32 (a bf16 number near 1.0 moves in steps of 0.0078, about one Adam step at
lr 0.01: an update of that size would be rounded away), cast to the backbone's dtype where they enter it, so the
gradient reaches them in float32. fp16's narrow exponent underflows small gradients in the backward pass: there the
loss is scaled up before backward and the gradient scaled back before the step (`torch.amp.GradScaler`, dynamic:
a step whose gradient overflows is skipped and the scale halved). bf16 and fp32 need no scaling.
"""

from __future__ import annotations

import torch


def loss_scaler(backbone) -> torch.amp.GradScaler:
    """A `GradScaler` for optimising through `backbone`: enabled when it runs in float16, a no-op otherwise."""
    return torch.amp.GradScaler(backbone.device.type, enabled=backbone.dtype == torch.float16)
