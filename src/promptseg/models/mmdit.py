"""The MMDiT family of backbones: Stable Diffusion 3 / 3.5-style diffusion transformers (an `SD3Transformer2DModel`,
a VAE with shift and scale, CLIP text encoders and an optional T5, rectified-flow noise), from a diffusers folder or
a hub id, and the bundled `shapes-dit`.

What the interface means here (`promptseg.models.base.DiffusionBackbone`):
- **timesteps**: an integer t in [0, 1000) is the noise level sigma = t / 1000, and the transformer is called with
  timestep t, as SD3 was trained (Esser et al. 2024, section 3: x_t = (1 - sigma) x_0 + sigma eps, timestep =
  1000 sigma). The sampling scheduler's resolution shift plays no part in reading one noised image;
- **prediction**: the velocity v = eps - x_0 (`prediction_type` "flow"); the noise estimate is x_t + (1 - sigma) v;
- **text**: SD3's conditioning, as `StableDiffusion3Pipeline.encode_prompt` builds it: each CLIP encoder's
  penultimate hidden states (the last for a model whose settings say `"clip_hidden_layer": "last"`, as shapes-dit),
  concatenated along channels and zero-padded to the transformer's `joint_attention_dim`, then T5's 256 token states
  (zeros when T5 is not loaded, as the pipeline does; `"max_sequence_length"` in the model's settings sets the
  count: SD3's profile reads 77 zero rows, as Seg4Diff runs it); the pooled vector (the CLIP encoders' pooled outputs,
  concatenated) goes to the adaLN conditioning. `encode_text` returns the token states with the pooled vector as one
  last row, zero-padded (B, T + 1, D): one tensor, so every method passes it on as it passes a UNet's; `predict`
  splits it. Word positions are found in the first CLIP encoder's tokens (the first 77 rows) and, when T5 is loaded,
  in T5's rows too (`promptseg.text.JointTokenizer`: a word's map is the mean over both encoders' tokens);
- **attention**: each joint block (`transformer_blocks.i.attn`) is one "cross" layer (its image queries against the
  text keys: the image-to-text block of the joint softmax, as Seg4Diff reads it; `"cross_readout": "text"` in the
  model's settings renormalises it over the text keys) and one "self" layer (image queries against image keys,
  softmax over them), both at the token grid (latent / patch size); settings
  name blocks through `places` ("block9"; when none is named, the model's `"blocks"` setting, which SD3/SD3.5-medium's
  architecture profile sets to Seg4Diff's block 9, `promptseg.models.profiles`; else every block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from promptseg.models.attention_layers import PLACES, AttentionLayer, grid_at_level
from promptseg.models.base import DiffusionBackbone, run_text_encoder
from promptseg.models.hub import choose_device, choose_dtype

T5_LENGTH = 256
"""T5 token states SD3's pipeline appends by default (`max_sequence_length` 256; zeros of that length without T5,
diffusers 0.42). The model's `"max_sequence_length"` setting changes it (Seg4Diff runs SD3 with 77)."""
PIPELINES = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline")
"""The diffusers pipelines whose folders this family loads."""


@dataclass
class DiTBackbone(DiffusionBackbone):
    """A frozen SD3-style diffusion transformer's parts on one device and dtype (the `DiffusionBackbone` interface).

    Attributes:
        name (`str`): what it was loaded from.
        transformer: the `SD3Transformer2DModel`.
        vae: the `AutoencoderKL` (with `shift_factor` for SD3's 16-channel VAE).
        text_encoders (`list`): the CLIP text encoders (SD3: CLIP-L then CLIP-G, with projection).
        tokenizers (`list`): their tokenizers.
        scheduler: the flow-matching scheduler (its `num_train_timesteps` sets the timestep range).
        t5_encoder, t5_tokenizer: SD3's third encoder and tokenizer, or None (zeros take its place).
        device, dtype, method_defaults: as the UNet family's.
        clip_hidden_layer (`str`): "penultimate" (SD3) or "last": which CLIP states condition the transformer.
    """

    name: str
    transformer: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list
    tokenizers: list
    scheduler: object
    device: torch.device
    dtype: torch.dtype
    t5_encoder: torch.nn.Module | None = None
    t5_tokenizer: object = None
    method_defaults: dict = field(default_factory=dict)
    clip_hidden_layer: str = "penultimate"
    family = "mmdit"
    text_keys_reusable = False

    def __post_init__(self):
        if self.clip_hidden_layer not in ("penultimate", "last"):
            raise ValueError(f"clip_hidden_layer must be 'penultimate' or 'last', got {self.clip_hidden_layer!r}")

    # -- sizes ------------------------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The first CLIP tokenizer: word positions are found in its tokens, and, when T5 is loaded, in T5's rows
        after CLIP's too (a `JointTokenizer`: a word is read in both encoders' rows)."""
        if self.t5_encoder is None or self.t5_tokenizer is None:
            return self.tokenizers[0]
        joint = self.__dict__.get("_joint_tokenizer")
        if joint is None:
            from promptseg.text import JointTokenizer

            clip = self.tokenizers[0]
            joint = JointTokenizer(clip, [(self.t5_tokenizer, int(clip.model_max_length), self.t5_length)])
            self.__dict__["_joint_tokenizer"] = joint
        return joint

    @property
    def text_encoder(self) -> torch.nn.Module:
        """The first CLIP text encoder (whose input embeddings `encode_text(token_embeds=...)` replaces)."""
        return self.text_encoders[0]

    @property
    def patch_size(self) -> int:
        return int(self.transformer.config.patch_size)

    @property
    def prediction_type(self) -> str:
        return "flow"

    # -- text -------------------------------------------------------------------------------------------------
    def encode_text(self, prompts: list[str] | str, token_embeds: tuple[list[int], torch.Tensor] | None = None) -> torch.Tensor:
        """(B, T + 1, D): SD3's token states for `prompts` and the pooled vector as the last row (module docstring).

        `token_embeds` = (positions, rows) replaces the first CLIP encoder's input embeddings at those positions
        (differentiably in `rows`); the other encoders read the prompt as written.

        Raises:
            ValueError: a prompt is longer than the CLIP encoders take.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        states, pooled = [], []
        for i, (encoder, tokenizer) in enumerate(zip(self.text_encoders, self.tokenizers)):
            length = int(tokenizer.model_max_length)
            ids = tokenizer(list(prompts), padding="max_length", max_length=length, truncation=False).input_ids
            too_long = [p for p, row in zip(prompts, ids) if len(row) > length]
            if too_long:
                raise ValueError(f"prompt(s) longer than the text encoder's {length} tokens: {too_long}")
            out = run_text_encoder(encoder, torch.tensor(ids, device=self.device), token_embeds if i == 0 else None)
            states.append(out.hidden_states[-2] if self.clip_hidden_layer == "penultimate" else out.last_hidden_state)
            projected = getattr(out, "text_embeds", None)
            pooled.append(out.pooler_output if projected is None else projected)
        width = int(self.transformer.config.joint_attention_dim)
        clip = torch.cat(states, dim=-1)
        clip = torch.nn.functional.pad(clip, (0, width - clip.shape[-1]))
        parts = [clip]
        if self.t5_encoder is not None:
            ids = self.t5_tokenizer(list(prompts), padding="max_length", max_length=self.t5_length, truncation=True,
                                    return_tensors="pt").input_ids.to(self.device)
            parts.append(self.t5_encoder(ids)[0].to(clip.dtype))
        elif len(self.text_encoders) > 1:  # SD3's layout without T5: the pipeline's zeros
            parts.append(clip.new_zeros(clip.shape[0], self.t5_length, width))
        pooled = torch.cat(pooled, dim=-1)
        pooled_row = torch.nn.functional.pad(pooled, (0, width - pooled.shape[-1]))[:, None].to(clip.dtype)
        return torch.cat(parts + [pooled_row], dim=1)

    @property
    def t5_length(self) -> int:
        """T5's rows in the text states (zeros without T5): the `"max_sequence_length"` setting, else 256."""
        return int(self.method_defaults.get("max_sequence_length", T5_LENGTH))

    def split_text(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token states (B, T, D), pooled (B, P)) of an `encode_text` result."""
        pooled_dim = int(self.transformer.config.pooled_projection_dim)
        return text[:, :-1], text[:, -1, :pooled_dim]

    def context_of(self, text: torch.Tensor) -> torch.Tensor:
        return self.split_text(text)[0]

    # -- noise and prediction ---------------------------------------------------------------------------------
    def call_sigma(self, t, noisy: torch.Tensor) -> torch.Tensor:
        """(B,) sigma = t / 1000 in the model's dtype, one per item of `noisy`: what a flow transformer that takes
        sigma as its timestep (FLUX.1, FLUX.2, Qwen-Image; Z-Image takes 1 - sigma) is called with."""
        t = torch.as_tensor(t, device=noisy.device).reshape(-1).expand(noisy.shape[0]).to(self.dtype)
        return t / self.num_train_timesteps

    def _sigma(self, t, like: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=like.device, dtype=torch.float32).reshape(-1)
        return (t / self.num_train_timesteps).view(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Rectified flow's forward process: (1 - sigma) latents + sigma noise, sigma = t / 1000."""
        sigma = self._sigma(t, latents)
        return ((1 - sigma) * latents.float() + sigma * noise.float()).to(latents.dtype)

    def predict(self, noisy: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """The transformer's velocity for `noisy` at `t` (B,), conditioned on an `encode_text` result."""
        states, pooled = self.split_text(text.to(self.dtype))
        timestep = torch.as_tensor(t, device=noisy.device).reshape(-1).expand(noisy.shape[0]).to(self.dtype)
        return self.transformer(hidden_states=noisy.to(self.dtype), encoder_hidden_states=states,
                                pooled_projections=pooled, timestep=timestep).sample

    def noise_from_output(self, output: torch.Tensor, noisy: torch.Tensor, timestep: int) -> torch.Tensor:
        """eps = x_t + (1 - sigma) v."""
        sigma = self._sigma(timestep, noisy)
        return (noisy.float() + (1 - sigma) * output.float()).to(output.dtype)

    def denoising_target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The velocity noise - latents."""
        return noise - latents

    @torch.no_grad()
    def generate(self, prompts: list[str], steps: int, guidance: float, generators: list) -> list:
        """Euler sampling of the flow ODE from sigma 1 to 0 (`steps` steps, sigmas shifted by the scheduler's
        `shift` as SD3's sampler shifts them), classifier-free guidance against the empty prompt; decoded to PIL."""
        from PIL import Image

        shift = float(self.scheduler.config.get("shift", 1.0))
        sigmas = torch.linspace(1.0, 0.0, steps + 1)
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        channels = int(self.transformer.config.in_channels)
        x = torch.stack([torch.randn(channels, *self.latent_size, generator=g) for g in generators])
        x = x.to(self.device, torch.float32)
        text = torch.cat([self.encode_text([""] * len(prompts)), self.encode_text(list(prompts))])
        for i in range(steps):
            t = torch.full((2 * len(prompts),), float(sigmas[i]) * self.num_train_timesteps, device=self.device)
            uncond, cond = self.predict(torch.cat([x, x]), t, text).float().chunk(2)
            x = x + (float(sigmas[i + 1]) - float(sigmas[i])) * (uncond + guidance * (cond - uncond))
        pixels = self.decode_image(x).float().add(1).mul(127.5).round().clamp(0, 255).byte()
        return [Image.fromarray(p.permute(1, 2, 0).cpu().numpy()) for p in pixels]

    # -- attention --------------------------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return self.transformer

    @property
    def grid(self) -> tuple[int, int]:
        """The token grid every block attends over (latent size / patch size)."""
        return grid_at_level(self.latent_size, int(math.log2(self.patch_size)))

    def attention_layers(self) -> list[AttentionLayer]:
        """Each joint block's cross (image-to-text) and self (image-to-image) layer."""
        level = int(math.log2(self.patch_size))
        return [AttentionLayer(name=f"transformer_blocks.{i}.attn.processor", place="joint", kind=kind, level=level,
                               block=i)
                for i in range(len(self.transformer.transformer_blocks)) for kind in ("cross", "self")]

    @property
    def joint_blocks(self) -> torch.nn.ModuleList:
        """The transformer's blocks that places name "block0".. and "joint" (SD3's and FLUX's double-stream blocks)."""
        return self.transformer.transformer_blocks

    def attention_grids(self, kind: str) -> list[tuple[int, int]]:
        return [self.grid]

    def blocks_for(self, places) -> list[int]:
        """The blocks `places` names ("block9", "joint" = every joint block; on FLUX also "single3" = the single-stream
        block 3, numbered after the double blocks, and "single" = every single block); UNet places ("down", "mid",
        "up") name none, and then the model's `"blocks"` setting (its folder's or its architecture profile's), else
        every joint block, is read.

        Raises:
            ValueError: an unknown place or a block this transformer does not have.
        """
        n = len(self.joint_blocks)
        singles = len(getattr(self.transformer, "single_transformer_blocks", None) or [])
        named = set()
        for place in places:
            if place in PLACES:
                continue
            if place == "joint":
                named.update(range(n))
            elif place == "single" and singles:
                named.update(range(n, n + singles))
            elif place.startswith("block") and place[5:].isdigit() and int(place[5:]) < n:
                named.add(int(place[5:]))
            elif place.startswith("single") and place[6:].isdigit() and int(place[6:]) < singles:
                named.add(n + int(place[6:]))
            elif singles:
                raise ValueError(f"unknown place {place!r} for this transformer: name double blocks 'block0'.."
                                 f"'block{n - 1}', single blocks 'single0'..'single{singles - 1}', 'joint' (every "
                                 "double block) or 'single' (every single block)")
            else:
                raise ValueError(f"unknown place {place!r} for this transformer: name blocks 'block0'..'block{n - 1}' "
                                 "or 'joint' (every block)")
        if not named:
            named = set(self.method_defaults.get("blocks") or range(n))
        return sorted(named)

    def select_layers(self, self_grids, cross_grids, places) -> list[AttentionLayer]:
        """The cross and self layers of the blocks `places` names (`blocks_for`) on the requested grids."""
        wanted = {"self": {tuple(g) for g in self_grids}, "cross": {tuple(g) for g in cross_grids}}
        for kind, grids in wanted.items():
            missing = grids - {self.grid}
            if missing:
                raise ValueError(f"no {kind}-attention at grid(s) {sorted(missing)}; every block of this transformer "
                                 f"attends over {self.grid}")
        blocks = set(self.blocks_for(places))
        return [layer for layer in self.attention_layers() if layer.block in blocks and wanted[layer.kind]]


def folder_parts(source: str, local_only: bool, dtype: torch.dtype, denoiser_kwargs: dict | None = None):
    """(`model_index.json` of a diffusers folder or hub id, `part(name)`: its component `name` loaded by the class the
    index names, in `dtype` (models; tokenizers and schedulers as they are), or None when the index has none)."""
    import diffusers
    import transformers
    from diffusers import DiffusionPipeline

    kwargs = {"local_files_only": local_only}
    index = DiffusionPipeline.load_config(source, **kwargs)

    def part(name: str):
        library, cls = (index.get(name) or [None, None])[:2]
        if cls is None:
            return None
        module = {"diffusers": diffusers, "transformers": transformers}[library]
        loader = getattr(module, cls)
        extra = {"torch_dtype": dtype} if "Model" in cls or cls.startswith("Autoencoder") else {}  # not tokenizers
        if name == "transformer" and (denoiser_kwargs or {}).get("gguf"):  # the denoiser from a GGUF file
            from promptseg.models.quantize import gguf_denoiser

            return gguf_denoiser(loader, denoiser_kwargs["gguf"], source, name, dtype, local_only)
        if name == "transformer":  # a quantization config
            extra.update(denoiser_kwargs or {})
        return loader.from_pretrained(source, subfolder=name, **extra, **kwargs)

    return index, part


def load_folder(source: str, local_only: bool, dtype: torch.dtype, settings: dict | None = None,
                denoiser_kwargs: dict | None = None) -> dict:
    """The components of an SD3-style diffusers folder or hub id, read from its `model_index.json`: the
    transformer, VAE, flow-matching scheduler, every CLIP text encoder present (`text_encoder`, `text_encoder_2`)
    and T5 (`text_encoder_3`) unless the model's settings say `"load_t5": false` or the folder has none."""
    index, part = folder_parts(source, local_only, dtype, denoiser_kwargs)
    settings = settings or {}
    encoders = [e for e in (part("text_encoder"), part("text_encoder_2")) if e is not None]
    tokenizers = [t for t in (part("tokenizer"), part("tokenizer_2")) if t is not None]
    load_t5 = settings.get("load_t5", True) and (index.get("text_encoder_3") or [None, None])[1] is not None
    return {
        "transformer": part("transformer"),
        "vae": part("vae"),
        "text_encoders": encoders,
        "tokenizers": tokenizers,
        "t5_encoder": part("text_encoder_3") if load_t5 else None,
        "t5_tokenizer": part("tokenizer_3") if load_t5 else None,
        "scheduler": part("scheduler"),
    }


def backbone_from_parts(name: str, parts: dict, *, device=None, dtype=None, method_defaults: dict | None = None,
                        cls: type = DiTBackbone) -> DiTBackbone:
    """A `DiTBackbone` (or subclass `cls`, FLUX's) from components in memory, moved to `device` and `dtype` and frozen
    (as the UNet family's)."""
    device = choose_device(device)
    dtype = choose_dtype(dtype, device)
    method_defaults = dict(method_defaults or {})
    backbone = cls(name=name, device=device, dtype=dtype, method_defaults=method_defaults,
                   clip_hidden_layer=method_defaults.get("clip_hidden_layer", "penultimate"), **parts)
    modules = [backbone.transformer, backbone.vae, *backbone.text_encoders]
    if backbone.t5_encoder is not None:
        modules.append(backbone.t5_encoder)
    backbone.transformer.promptseg_cross_readout = method_defaults.get("cross_readout", "joint")
    for module in modules:
        if getattr(module, "is_quantized", False):  # int8 weights: moved, never cast (diffusers refuses a cast)
            module.to(device=device)
        elif next(module.parameters()).dtype != dtype or next(module.parameters()).device != torch.device(device):
            module.to(device=device, dtype=dtype)
        module.eval()
        module.requires_grad_(False)
    return backbone
