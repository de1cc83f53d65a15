"""The UNet family of backbones: Stable Diffusion 1.x / 2.x-style models (a UNet, a VAE, one CLIP text encoder, a
DDPM noise schedule) and SDXL (two CLIP encoders, pooled and size conditioning), from a diffusers folder, a hub id,
a single checkpoint file, or promptseg's packed file.

SDXL's conditioning, as `StableDiffusionXLPipeline.encode_prompt` builds it: both encoders' penultimate hidden
states concatenated along channels (768 + 1280 = 2048), the second encoder's projected pooled vector and six size
ids (original size, crop corner, target size: the native size, no crop) as `added_cond_kwargs`. `encode_text`
returns the token states with the pooled vector as one last row (B, 77 + 1, 2048), so every method passes one
tensor as for SD 1.x; `predict` splits it, and `context_of` gives the rows the cross-attention keys read.

`promptseg.models.loader.load_backbone` decides where a model comes from and calls `load_folder` or
`load_single_file` here; `backbone_from_parts` builds the `Backbone` from components in memory. Sizes (latent
grid, VAE scale factor, text length, heads) and the prediction type are read from the loaded configs.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from promptseg.models.attention_layers import AttentionLayer, attention_grids, list_attention_layers, select_layers
from promptseg.models.base import DiffusionBackbone, run_text_encoder
from promptseg.models.hub import choose_device, choose_dtype, quiet_text_tower
from promptseg.models.zoo import INSTALL_HINT, bundled

_PACKED_FORMAT = "promptseg-packed-v1"
_COMPONENTS = ("unet", "vae", "text_encoder")


@dataclass
class Backbone(DiffusionBackbone):
    """A frozen UNet diffusion model's parts, on one device and dtype (the `DiffusionBackbone` interface).

    Attributes:
        name (`str`): what it was loaded from.
        unet, vae, text_encoder, tokenizer, scheduler: the diffusers / transformers components (eval mode,
            `requires_grad` off).
        device (`torch.device`), dtype (`torch.dtype`): where and how the components run.
        method_defaults (`dict`): what the model folder recommends (`promptseg_settings.json`): per-method settings
            ({method: {setting: value}}), which `build_method` starts from (your overrides win), and the class filter
            ("filter": name, "filters": {name: settings}), which `promptseg.pipeline.Pipeline` reads.
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
    text_encoder_2: torch.nn.Module | None = None
    tokenizer_2: object = None
    _sampler: object = field(default=None, repr=False)
    family = "unet"

    @property
    def prediction_type(self) -> str:
        """"epsilon", "v_prediction" or "sample", from the scheduler config."""
        return self.scheduler.config.get("prediction_type", "epsilon")

    def encode_text(self, prompts: list[str] | str, token_embeds: tuple[list[int], torch.Tensor] | None = None) -> torch.Tensor:
        """Text-encoder output for `prompts`, padded to `text_length`: (B, text_length, D); SDXL's (B, text_length
        + 1, D), its pooled vector as the last row (module docstring).

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
        if self.text_encoder_2 is None:
            return run_text_encoder(self.text_encoder, ids, token_embeds).last_hidden_state
        ids_2 = torch.tensor(self.tokenizer_2(list(prompts), padding="max_length", max_length=self.text_length,
                                              truncation=True).input_ids, device=self.device)
        first = run_text_encoder(self.text_encoder, ids, token_embeds).hidden_states[-2]
        second = run_text_encoder(self.text_encoder_2, ids_2, None)
        states = torch.cat([first, second.hidden_states[-2]], dim=-1)
        pooled = torch.nn.functional.pad(second.text_embeds, (0, states.shape[-1] - second.text_embeds.shape[-1]))
        return torch.cat([states, pooled[:, None].to(states.dtype)], dim=1)

    def context_of(self, text: torch.Tensor) -> torch.Tensor:
        """The rows of an `encode_text` result the cross-attention reads (all but SDXL's pooled row)."""
        return text if self.text_encoder_2 is None else text[:, :-1]

    def _added_conditioning(self, text: torch.Tensor) -> dict | None:
        """SDXL's `added_cond_kwargs` (pooled text vector, size ids of the native size) for an `encode_text` result."""
        if self.text_encoder_2 is None:
            return None
        pooled = text[:, -1, : self.text_encoder_2.config.projection_dim]
        h, w = self.image_size
        ids = torch.tensor([h, w, 0, 0, h, w], device=text.device, dtype=text.dtype)
        return {"text_embeds": pooled, "time_ids": ids.expand(text.shape[0], -1)}

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """DDPM's forward process: sqrt(a_t) latents + sqrt(1 - a_t) noise (the scheduler's `add_noise`)."""
        return self.scheduler.add_noise(latents, noise, t)

    def predict(self, noisy: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The UNet's output (noise, velocity or sample, as `prediction_type` says) for `noisy` at `t`."""
        text = text.to(self.dtype)
        added = self._added_conditioning(text)
        if added is not None and added["text_embeds"].shape[0] != noisy.shape[0]:
            added = {k: v.expand(noisy.shape[0], *v.shape[1:]) for k, v in added.items()}
        return self.unet(noisy, t, encoder_hidden_states=self.context_of(text), added_cond_kwargs=added).sample

    def noise_from_output(self, output: torch.Tensor, noisy: torch.Tensor, timestep: int) -> torch.Tensor:
        """The noise estimate from a UNet output, whatever the prediction type (eps, v or x0)."""
        alpha = self.scheduler.alphas_cumprod[timestep].to(noisy.device, torch.float32)
        kind = self.prediction_type
        if kind == "epsilon":
            return output
        if kind == "v_prediction":
            return (alpha.sqrt() * output.float() + (1 - alpha).sqrt() * noisy.float()).to(output.dtype)
        if kind == "sample":
            return ((noisy.float() - alpha.sqrt() * output.float()) / (1 - alpha).sqrt()).to(output.dtype)
        raise ValueError(f"unsupported prediction type {kind!r}")

    def denoising_target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the UNet is trained to predict for `latents` noised with `noise` at `t`."""
        kind = self.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, t)
        if kind == "sample":
            return latents
        raise ValueError(f"unsupported prediction type {kind!r}")

    @property
    def denoiser(self) -> torch.nn.Module:
        """The UNet: its attention processors are what capture swaps."""
        return self.unet

    def attention_layers(self) -> list[AttentionLayer]:
        """Every self- and cross-attention layer of the UNet, with its place and level."""
        return list_attention_layers(self.unet)

    def attention_grids(self, kind: str) -> list[tuple[int, int]]:
        """The distinct (h, w) grids, finest first, at which the UNet has `kind` attention at its native size."""
        return attention_grids(self.unet, self.latent_size, kind)

    @torch.no_grad()
    def generate(self, prompts: list[str], steps: int, guidance: float, generators: list) -> list:
        """Images from diffusers' `StableDiffusionPipeline` over these components (with a fresh scheduler of the same
        kind: sampling sets its timesteps)."""
        if self._sampler is None:
            from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

            scheduler = type(self.scheduler).from_config(self.scheduler.config)
            common = dict(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
                          scheduler=scheduler)
            if self.text_encoder_2 is not None:
                self._sampler = StableDiffusionXLPipeline(**common, text_encoder_2=self.text_encoder_2,
                                                          tokenizer_2=self.tokenizer_2)
            else:
                self._sampler = StableDiffusionPipeline(**common, safety_checker=None, feature_extractor=None,
                                                        requires_safety_checker=False)
            self._sampler.set_progress_bar_config(disable=True)
        h, w = self.image_size
        result = self._sampler(list(prompts), height=h, width=w, num_inference_steps=steps, guidance_scale=guidance,
                               generator=generators, output_type="pil")
        return [image.convert("RGB") for image in result.images]

    def select_layers(self, self_grids, cross_grids, places) -> list[AttentionLayer]:
        """The UNet's layers of each kind on the given grids, in `places` ("down", "mid", "up")."""
        return select_layers(self.unet, self.latent_size, self_grids=self_grids, cross_grids=cross_grids,
                             places=places)


def _freeze(*modules: torch.nn.Module) -> None:
    for module in modules:
        module.eval()
        module.requires_grad_(False)


def load_folder(source: str, local_only: bool, dtype: torch.dtype, text_from: str | None = None,
                denoiser_kwargs: dict | None = None) -> dict:
    """The components of a diffusers folder or hub id (`denoiser_kwargs` go to the UNet's `from_pretrained`: a
    quantization config). A local folder without `text_encoder/` whose settings name
    a CLIP model (`text_from`: `"text_encoder": "scenes-clip"` in `promptseg_settings.json`) takes that CLIP's text
    tower and tokenizer: SD's recipe conditions on a CLIP text tower, and the bundle stores it once."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    kwargs = {"local_files_only": local_only}
    text = {"pretrained_model_name_or_path": source, "subfolder": "text_encoder"}
    words = {"pretrained_model_name_or_path": source, "subfolder": "tokenizer"}
    whole_clip = text_from is not None and not (Path(source) / "text_encoder").is_dir()
    if whole_clip:
        clip = Path(bundled("clip").get(text_from, Path(text_from).expanduser()))
        if not (clip / "config.json").is_file():
            raise FileNotFoundError(f"{source} takes its text encoder from the CLIP model {text_from!r}, which is not "
                                    f"at {clip}; {INSTALL_HINT}, or pass that CLIP folder")
        text = words = {"pretrained_model_name_or_path": str(clip)}
    # only a whole CLIP's folder leaves weights unused by design; any other folder's report is the user's to see
    with quiet_text_tower() if whole_clip else contextlib.nullcontext():
        text_encoder = CLIPTextModel.from_pretrained(**text, torch_dtype=dtype, **kwargs)
    parts = {
        "unet": _unet(source, dtype, local_only, denoiser_kwargs or {}),
        "vae": AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **kwargs),
        "text_encoder": text_encoder,
        "tokenizer": CLIPTokenizer.from_pretrained(**words, **kwargs),
        "scheduler": DDIMScheduler.from_pretrained(source, subfolder="scheduler", **kwargs),
    }
    if parts["unet"].config.get("addition_embed_type") == "text_time":  # SDXL: the second encoder and tokenizer
        from transformers import CLIPTextModelWithProjection

        parts["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
            source, subfolder="text_encoder_2", torch_dtype=dtype, **kwargs)
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **kwargs)
    return parts


def _unet(source: str, dtype: torch.dtype, local_only: bool, denoiser_kwargs: dict):
    """The folder's UNet: from its weights, with `denoiser_kwargs` (a quantization config), or from the GGUF file
    `denoiser_kwargs["gguf"]`."""
    from diffusers import UNet2DConditionModel

    if denoiser_kwargs.get("gguf"):
        from promptseg.models.quantize import gguf_denoiser

        return gguf_denoiser(UNet2DConditionModel, denoiser_kwargs["gguf"], source, "unet", dtype, local_only)
    return UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype,
                                                local_files_only=local_only, **denoiser_kwargs)


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


def load_single_file(path: Path, config: str | None, local_only: bool, dtype: torch.dtype) -> dict:
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


def backbone_from_parts(name: str, parts: dict, *, device=None, dtype=None, method_defaults: dict | None = None) -> Backbone:
    """A `Backbone` from components already in memory (unet, vae, text_encoder, tokenizer, scheduler), moved to
    `device` and `dtype` (chosen as `load_backbone` chooses them when None) and frozen. What `load_backbone` ends
    with; also how the benchmark at SD's scale runs random-weight architectures without writing gigabytes."""
    device = choose_device(device)
    dtype = choose_dtype(dtype, device)
    backbone = Backbone(name=name, device=device, dtype=dtype, method_defaults=dict(method_defaults or {}), **parts)
    modules = [m for m in (backbone.unet, backbone.vae, backbone.text_encoder, backbone.text_encoder_2) if m is not None]
    for module in modules:
        module.to(device)
        if next(module.parameters()).dtype != dtype and not getattr(module, "is_quantized", False):
            # loaded in `dtype` already unless built in memory; int8 weights are never cast
            module.to(dtype)
    _freeze(*modules)
    # The VAE is all convolutions at the image's full size: channels-last runs them 18% faster on CPU (SD-1.5's
    # 512 px encode, 2 threads: 4.9 -> 4.0 s; the same latents to 1e-5) and is what diffusers recommends on GPU
    backbone.vae.to(memory_format=torch.channels_last)
    return backbone
