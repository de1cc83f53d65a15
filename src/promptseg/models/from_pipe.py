"""A backbone from a diffusers pipeline the user already loaded: its components, device and dtype, nothing loaded
again (as DAAM's `trace(pipe)` and OVAM's `StableDiffusionHooker(pipe)` wrap the user's pipeline).

    pipe = StableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5").to("cuda")
    backbone = backbone_from_pipe(pipe)         # or: Pipeline.from_pipe(pipe, method="fastseg")

Families: Stable Diffusion 1.x / 2.x and SDXL (`unet`), SD3 / SD3.5 (`SD3Transformer2DModel`), FLUX.1
(`FluxTransformer2DModel`). The settings are those `load_backbone` gives the pipeline's folder or hub id
(`pipe.name_or_path`: its architecture profile and `promptseg_settings.json`), or `settings_from`'s. Shared, not
copied: the modules are frozen (`requires_grad=False`) and the VAE put in channels-last memory, as promptseg's own
loading does; the UNet family reads with a DDIM scheduler made from the pipeline's scheduler config (SD's
training schedule; the pipeline keeps its own sampler), transformers with the pipeline's flow-matching scheduler.
A model whose profile leaves T5 out (SD3-medium's Seg4Diff read-out) conditions without it; the pipeline keeps it.
"""

from __future__ import annotations

import torch

from promptseg.models.zoo import model_settings


def _family(pipe) -> str:
    if getattr(pipe, "unet", None) is not None:
        return "unet"
    kind = type(getattr(pipe, "transformer", None)).__name__
    if kind.startswith("Flux") and not kind.startswith("Flux2"):
        return "flux"
    if kind == "SD3Transformer2DModel":
        return "mmdit"
    raise ValueError(f"promptseg reads Stable Diffusion 1.x/2.x/XL, SD3/SD3.5 and FLUX.1 pipelines; "
                     f"{type(pipe).__name__} (denoiser {kind}) is none of them")


def backbone_from_pipe(pipe, settings_from: str | None = None):
    """The promptseg backbone of a loaded diffusers pipeline (see the module's docstring).

    Raises:
        ValueError: a pipeline of another family, or one missing a component the family needs (the message names it).
    """
    from promptseg.models import flux, mmdit, unet

    family = _family(pipe)
    hooked = [name for name, module in getattr(pipe, "components", {}).items()
              if isinstance(module, torch.nn.Module) and any(hasattr(m, "_hf_hook") for m in module.modules())]
    if hooked:
        raise ValueError(f"the pipeline's {hooked} run under offload hooks (enable_model_cpu_offload / "
                         "enable_sequential_cpu_offload), whose weights promptseg cannot place: pass the pipeline before "
                         "enabling them, or let promptseg load and offload the model: Pipeline(MODEL, offload='model')")
    name = str(settings_from or getattr(pipe, "name_or_path", None) or type(pipe).__name__)
    settings = model_settings(name) if (settings_from or getattr(pipe, "name_or_path", None)) else {}
    device, dtype = pipe.device, pipe.dtype

    def part(key: str, needed: bool = True):
        value = getattr(pipe, key, None)
        if value is None and needed:
            raise ValueError(f"the {type(pipe).__name__} has no {key}, which promptseg's {family} backbone needs")
        return value

    if family == "unet":
        from diffusers import DDIMScheduler

        parts = {"unet": part("unet"), "vae": part("vae"), "text_encoder": part("text_encoder"),
                 "tokenizer": part("tokenizer"), "scheduler": DDIMScheduler.from_config(part("scheduler").config)}
        if parts["unet"].config.get("addition_embed_type") == "text_time":
            parts.update(text_encoder_2=part("text_encoder_2"), tokenizer_2=part("tokenizer_2"))
        return unet.backbone_from_parts(name, parts, device=device, dtype=dtype, method_defaults=settings)
    if family == "flux":
        parts = {"transformer": part("transformer"), "vae": part("vae"), "scheduler": part("scheduler"),
                 "text_encoders": [part("text_encoder")], "tokenizers": [part("tokenizer")],
                 "t5_encoder": part("text_encoder_2"), "t5_tokenizer": part("tokenizer_2")}
        return flux.backbone_from_parts(name, parts, device=device, dtype=dtype, method_defaults=settings)
    load_t5 = settings.get("load_t5", True) and part("text_encoder_3", needed=False) is not None
    parts = {"transformer": part("transformer"), "vae": part("vae"), "scheduler": part("scheduler"),
             "text_encoders": [e for e in (part("text_encoder"), part("text_encoder_2", False)) if e is not None],
             "tokenizers": [t for t in (part("tokenizer"), part("tokenizer_2", False)) if t is not None],
             "t5_encoder": part("text_encoder_3") if load_t5 else None,
             "t5_tokenizer": part("tokenizer_3") if load_t5 else None}
    return mmdit.backbone_from_parts(name, parts, device=device, dtype=dtype, method_defaults=settings)
