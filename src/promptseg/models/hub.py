"""Where models come from and where they run: device and dtype choice, the hub's offline switch, and one loader
for the reusable transformers parts beside the diffusion backbone (CLIP, SAM, a captioner).

A part is named by a bundled name (a folder inside the package), a local folder with `config.json` (transformers'
`save_pretrained` layout), or a Hugging Face hub id ("owner/name"). Local sources never touch the network; hub
ids follow `HF_HUB_OFFLINE` unless `local_files_only` says otherwise, and a failure says how to fix it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def hub_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` asks never to touch the network (the default for `local_files_only`)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def choose_device(device: str | torch.device | None = None) -> torch.device:
    """`device` if given, else CUDA when available, else CPU."""
    if device is not None:
        try:
            return torch.device(device)
        except RuntimeError as err:
            raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:1', ...") from err
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`dtype` if given (a torch dtype or a name like "fp16"), else bf16/fp16 on CUDA and fp32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None:
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(_DTYPES)}")
        return _DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@contextlib.contextmanager
def quiet_text_tower():
    """Loading a `CLIPTextModel` from a whole CLIP's folder leaves its vision tower's weights unused by design;
    transformers reports each of them. Errors still show."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def load_pretrained(key: str, bundled: dict, model_cls, processor_cls, *, kind: str, device=None, dtype=None,
                    local_files_only: bool | None = None, missing_hint: str = "pip install ./zoo (the promptseg-models distribution) from a checkout"):
    """(model, processor, device, dtype) of `kind` ("CLIP model", "SAM model", "captioner") from `key`: the model
    frozen (eval mode, `requires_grad` off) on `device` in `dtype`, both chosen like the backbone's when None.

    Raises:
        FileNotFoundError: a path that is not a model folder, or a bundled name whose folder is missing
            (`missing_hint` says what to do).
        OSError: a hub id that cannot be loaded (the message says how to fix it).
    """
    device = choose_device(device)
    dtype = choose_dtype(dtype, device)
    names = ", ".join(sorted(bundled)) or "none"
    source = bundled.get(key)
    if source is not None and not (Path(source) / "config.json").is_file():
        raise FileNotFoundError(f"{kind} {key!r} is not in this install: {missing_hint}")
    path = Path(key).expanduser()
    if source is None and (path.exists() or key.startswith((".", "/", "~")) or key.count("/") != 1):
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{kind} {key!r} is neither a folder with config.json, a bundled model ({names}) nor a hub id of the "
                "form 'owner/name'"
            )
        source = path
    offline = True if source is not None else (hub_offline() if local_files_only is None else local_files_only)
    try:
        model = model_cls.from_pretrained(str(source or key), torch_dtype=dtype, local_files_only=offline)
        processor = processor_cls.from_pretrained(str(source or key), local_files_only=offline)
    except Exception as err:  # hub, cache and network errors all come here
        if source is not None:
            raise
        raise OSError(
            f"could not load the {kind} {key!r}: {err}\nTo fix: download it once where the Hugging Face Hub is "
            f"reachable (`huggingface-cli download {key}`), then set HF_HUB_OFFLINE=1 to load it from the cache; or "
            f"pass a local folder saved by `save_pretrained`; or use a bundled model ({names})."
        ) from err
    model.to(device).eval().requires_grad_(False)
    return model, processor, device, dtype
