"""Every model promptseg loads: diffusion backbones behind one interface, CLIP, SAM, DPSeg's network, and the one
table of bundled models.

    base.py              `DiffusionBackbone`: the interface a backbone family implements
    loader.py            `load_backbone`: bundled name, folder, single file or hub id; picks the family
    unet.py              the UNet family (Stable Diffusion 1.x/2.x, SDXL, the bundled shapes and scenes)
    mmdit.py             the MMDiT family (SD3/SD3.5-style diffusion transformers, the bundled shapes-dit)
    flux.py              the FLUX.1 family (packed latents, rotary ids, double- and single-stream blocks, T5 words)
    attention_layers.py  attention layers: names, places, kinds, grids, a transformer's blocks
    clip.py  sam.py      CLIP (filters, DPSeg) and SAM (refiner, Segment Anyword)
    captioner.py         BLIP captions (the class filter; the baseline's per-class continuations)
    dpseg/               DPSeg's trained network (image encoder + decoder) and its cost volumes
    hub.py               device and dtype choice, the hub's offline switch, one loader for transformers parts
    zoo.py               the table of bundled models and the settings a model folder recommends
    sd_configs.py        Stable Diffusion's architectures (random weights at real size, reduced copies for tests)
    dit_configs.py       SD3-medium / SD3.5-medium, the same way
    flux_configs.py      FLUX.1-dev / schnell, the same way (with a SentencePiece-style T5 tokenizer)
    profiles.py          settings of real architectures, recognised from their configs, each with its source
    tokenizers.py        tokenizers built for the bundled models
"""

from promptseg.models.base import DEFAULT_MODEL, DiffusionBackbone
from promptseg.models.clip import ClipModel, load_clip
from promptseg.models.flux import FluxBackbone
from promptseg.models.hub import choose_device, choose_dtype, hub_offline
from promptseg.models.loader import load_backbone
from promptseg.models.mmdit import DiTBackbone
from promptseg.models.sam import SamPredictor, load_sam
from promptseg.models.unet import Backbone, backbone_from_parts
from promptseg.models.zoo import BUNDLED, SETTINGS_FILE, bundled, model_settings

__all__ = [
    "BUNDLED",
    "DEFAULT_MODEL",
    "SETTINGS_FILE",
    "Backbone",
    "ClipModel",
    "DiTBackbone",
    "FluxBackbone",
    "DiffusionBackbone",
    "SamPredictor",
    "backbone_from_parts",
    "bundled",
    "choose_device",
    "choose_dtype",
    "hub_offline",
    "load_backbone",
    "load_clip",
    "load_sam",
    "model_settings",
]
