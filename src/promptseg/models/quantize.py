"""Quantized denoisers: the UNet or transformer loaded with int8 weights (torchao, through diffusers'
`TorchAoConfig`), or from a GGUF file (llama.cpp's quantized formats, Q8_0 / Q4_0 / K-quants, through diffusers'
`GGUFQuantizationConfig`: the weights stay quantized and are dequantized layer by layer as they run), for a card
that holds the model's weights only at a byte a parameter or less.

Only the denoiser is quantized: it is most of the weights (FLUX.1: 12B of its 17B parameters with T5) and what
every method runs many times; the VAE and text encoders keep the backbone's dtype. Weight-only int8 keeps the
activations, and so the captured attention, in the backbone's dtype.

    backbone = load_backbone("black-forest-labs/FLUX.1-dev", device="cuda", quantize="int8")
    backbone = load_backbone("black-forest-labs/FLUX.1-dev", device="cuda", quantize="flux1-dev-Q4_0.gguf")
"""

from __future__ import annotations

import torch

QUANTIZE_MODES = ("int8",)


def denoiser_kwargs(quantize: str) -> dict:
    """How the family loaders load a quantized denoiser: {"quantization_config": ...} for "int8", {"gguf": path}
    for a ".gguf" file.

    Raises:
        ValueError: neither "int8" nor a ".gguf" path.
    """
    if str(quantize).endswith(".gguf"):
        from pathlib import Path

        return {"gguf": str(Path(quantize).expanduser())}
    return {"quantization_config": quantization_config(quantize)}


def quantization_config(mode: str):
    """diffusers' quantization config for `mode` ("int8": torchao's int8 weight-only).

    Raises:
        ValueError: an unknown mode.
        ImportError: torchao is missing (the `quantize` extra).
    """
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, a .gguf file of the denoiser's weights, or "
                         f"None; got {mode!r}")
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


def gguf_denoiser(cls, path: str, source: str, subfolder: str, dtype: torch.dtype, local_only: bool):
    """The denoiser class `cls` loaded from the GGUF file `path`, its config from `source`'s `subfolder` (the
    model's diffusers folder or hub id), computing in `dtype`.

    Raises:
        FileNotFoundError: no such file.
        ImportError: the gguf package is missing (the `quantize` extra).
    """
    from pathlib import Path

    if not Path(path).is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    try:
        import gguf  # noqa: F401 (diffusers reads the file with it)
    except ImportError as err:
        raise ImportError("GGUF weights need the gguf package: pip install 'promptseg[quantize]'") from err
    from diffusers import GGUFQuantizationConfig

    return cls.from_single_file(str(path), quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
                                config=source, subfolder=subfolder, torch_dtype=dtype, local_files_only=local_only)


def write_gguf(module: torch.nn.Module, path: str, kind: str = "Q8_0", arch: str = "diffusers") -> str:
    """Write `module`'s weights to a GGUF file under its own (diffusers) names: 2-D weights whose rows split into
    32-value blocks quantized as `kind` ("Q8_0", "Q4_0"), the rest float32. What a user's quantized download is,
    made here for tests and for converting a fine-tune; returns `path`."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize

    qtype = getattr(GGMLQuantizationType, kind)
    block = GGML_QUANT_SIZES[qtype][0]
    writer = GGUFWriter(str(path), arch=arch)
    for name, tensor in module.state_dict().items():
        array = tensor.detach().float().cpu().numpy()
        if array.ndim == 2 and name.endswith(".weight") and array.shape[-1] % block == 0:
            packed = quantize(array, qtype)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=qtype)
        else:
            writer.add_tensor(name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)
