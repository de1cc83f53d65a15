"""Quantized denoisers: the UNet or transformer loaded with int8 weights (torchao, through diffusers'
`TorchAoConfig`), for a card that holds the model's weights only at a byte a parameter.

Only the denoiser is quantized: it is most of the weights (FLUX.1: 12B of its 17B parameters with T5) and what
every method runs many times; the VAE and text encoders keep the backbone's dtype. Weight-only int8 keeps the
activations, and so the captured attention, in the backbone's dtype.

    backbone = load_backbone("black-forest-labs/FLUX.1-dev", device="cuda", quantize="int8")
"""

from __future__ import annotations

import torch

QUANTIZE_MODES = ("int8",)


def quantization_config(mode: str):
    """diffusers' quantization config for `mode` ("int8": torchao's int8 weight-only).

    Raises:
        ValueError: an unknown mode.
        ImportError: torchao is missing (the `quantize` extra).
    """
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES} or None, got {mode!r}")
    try:
        from torchao.quantization import Int8WeightOnlyConfig
    except ImportError as err:
        raise ImportError("int8 weights need torchao: pip install 'promptseg[quantize]'") from err
    from diffusers import TorchAoConfig

    return TorchAoConfig(Int8WeightOnlyConfig())


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes the module's parameters and buffers occupy, quantized tensors counted by what they store (int8 data
    and scales), not by the dtype they report."""
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        inner = getattr(tensor, "__tensor_flatten__", None)
        if inner is not None:
            total += sum(getattr(tensor, name).numel() * getattr(tensor, name).element_size() for name in inner()[0])
        else:
            total += tensor.numel() * tensor.element_size()
    return total
