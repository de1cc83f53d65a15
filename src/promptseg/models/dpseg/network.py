"""The trained part of DPSeg: the CLIP image encoder (fine-tuned) and the decoder, saved and loaded together.

A weights folder holds `dpseg_config.json` (`NetConfig`: which CLIP it starts from, the templates, the layers the
decoder reads, the decoder's sizes, the classes it was trained on) and `model.safetensors` (the image encoder and
the decoder). The text encoder and the visual-prompt encoder are the *frozen* CLIP named in the config, loaded
with `promptseg.models.clip.load_clip`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from promptseg.models.dpseg.cost import cost_volume
from promptseg.models.dpseg.decoder import CostVolumeDecoder, DecoderConfig
from promptseg.models.zoo import bundled

CONFIG_NAME = "dpseg_config.json"
WEIGHTS_NAME = "model.safetensors"
@dataclass
class NetConfig:
    """What a set of DPSeg weights was built and trained with (stored as `dpseg_config.json`)."""

    clip: str
    """The CLIP the image encoder starts from and whose frozen towers encode the prompts."""
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    """Prompt templates; one cost-volume channel each."""
    visual_layers: list[int] = field(default_factory=list)
    """Vision-tower layers read by decoder stages 1-3 (deepest first); empty: 3/4, 1/2, 1/4 of the depth."""
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    trained_classes: list[str] = field(default_factory=list)
    """Class names whose masks the decoder saw in training (the others are unseen)."""
    held_out: list[str] = field(default_factory=list)
    """Class names of the training dataset deliberately kept out of training."""
    training: dict = field(default_factory=dict)
    """How it was trained (dataset, steps, batch, lr, diffusion model of the visual prompts, seed)."""

    @classmethod
    def from_dict(cls, data: dict) -> NetConfig:
        data = dict(data)
        decoder = {k: tuple(v) if isinstance(v, list) else v for k, v in data.pop("decoder", {}).items()}
        return cls(decoder=DecoderConfig(**decoder), **data)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass
class Encoded:
    """One batch of images through the image encoder.

    Attributes:
        dense (`torch.Tensor`): (B, D, h, w) projected patch embeddings.
        layers (`list[torch.Tensor]`): three (B, W, h, w) layer-normalised intermediate patch tokens, deepest first.
        pixels (`torch.Tensor`): (B, 3, S, S) the normalised input.
    """

    dense: torch.Tensor
    layers: list[torch.Tensor]
    pixels: torch.Tensor


@dataclass
class PromptFeatures:
    """Per-class prompts for the decoder.

    Attributes:
        embeds (`torch.Tensor`): (K, P, D) the class embeddings R of the initial cost volume.
        layers (`list[torch.Tensor]`): three (K, P, W) visual-prompt features of the decoder's layers, deepest first.
    """

    embeds: torch.Tensor
    layers: list[torch.Tensor]


def default_layers(depth: int) -> list[int]:
    """Hidden-state indices at 3/4, 1/2 and 1/4 of a `depth`-layer tower (index 0 is the embeddings)."""
    return [max(1, round(depth * f)) for f in (0.75, 0.5, 0.25)]


def _grid(tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, C) patch tokens of a square grid -> (B, C, h, w)."""
    b, n, c = tokens.shape
    side = int(round(n ** 0.5))
    if side * side != n:
        raise ValueError(f"{n} patch tokens do not form a square grid")
    return tokens.transpose(1, 2).reshape(b, c, side, side)


def _norm(tokens: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(tokens.float(), tokens.shape[-1:])


class DPSegNet(nn.Module):
    """The image encoder (a copy of CLIP's vision tower and projection, trainable) and the CVGD decoder."""

    def __init__(self, clip_model: nn.Module, config: NetConfig):
        super().__init__()
        if not config.visual_layers:
            config.visual_layers = default_layers(clip_model.config.vision_config.num_hidden_layers)
        self.config = config
        self.vision = copy.deepcopy(clip_model.vision_model)
        self.projection = copy.deepcopy(clip_model.visual_projection)
        self.vision.requires_grad_(True)
        self.projection.requires_grad_(True)
        self.decoder = CostVolumeDecoder(config.decoder)

    def forward(self, pixels: torch.Tensor, prompts: PromptFeatures) -> torch.Tensor:
        """(B, 3, S, S) normalised pixels -> (B, K, H, W) logits (encode, then decode; what training calls)."""
        return self.decode(self.encode(pixels), prompts)

    def encode(self, pixels: torch.Tensor) -> Encoded:
        """(B, 3, S, S) normalised pixels -> dense embeddings and the decoder's intermediate features."""
        out = self.vision(pixel_values=pixels, output_hidden_states=True)
        patches = out.last_hidden_state[:, 1:]
        dense = _grid(self.projection(self.vision.post_layernorm(patches)))
        layers = [_grid(_norm(out.hidden_states[i][:, 1:])) for i in self.config.visual_layers]
        return Encoded(dense=dense, layers=layers, pixels=pixels)

    def decode(self, encoded: Encoded, prompts: PromptFeatures, visual_cost: bool | None = None) -> torch.Tensor:
        """(B, K, H, W) logits for K classes. `visual_cost=False` zeroes the multi-scale visual cost volumes (only
        meaningful for weights trained that way: the ablation trains its own)."""
        cost = cost_volume(encoded.dense, prompts.embeds)
        visual = None
        if self.config.decoder.visual_cost:
            if visual_cost is False:  # every visual cost volume has the initial one's shape
                visual = [torch.zeros_like(cost)] * len(encoded.layers)
            else:
                visual = [cost_volume(f, p) for f, p in zip(encoded.layers, prompts.layers)]
        return self.decoder(cost, encoded.dense, encoded.layers, visual, encoded.pixels)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `dpseg_config.json` and `model.safetensors` into `folder`."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME))
        (folder / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=1))
        return folder


@torch.no_grad()
def prompt_image_features(clip, images, layers: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Encode visual-prompt images with the frozen CLIP: ((N, D) unit image embeddings, three (N, W) features: the
    layer-normalised patch tokens of each decoder layer, averaged over the image)."""
    pixels = clip.pixel_values(images)
    out = clip.model.vision_model(pixel_values=pixels, output_hidden_states=True)
    embeds = clip.model.visual_projection(out.pooler_output)
    feats = [_norm(out.hidden_states[i][:, 1:]).mean(1) for i in layers]
    return F.normalize(embeds.float(), dim=-1), feats


def resolve_weights(name: str | os.PathLike) -> Path:
    """The folder of DPSeg weights `name`: a bundled name ("shapes-dpseg", "scenes-dpseg") or a folder with
    `dpseg_config.json`.

    Raises:
        FileNotFoundError: neither (the message says how to get weights).
    """
    key = str(name)
    folder = bundled("dpseg").get(key, Path(key).expanduser())
    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"DPSeg weights {key!r} are neither bundled ({', '.join(bundled('dpseg'))}) nor a folder with {CONFIG_NAME} "
            f"and {WEIGHTS_NAME}; train them with `promptseg train dpseg --dataset coco_stuff --root DATA --out FOLDER`"
        )
    return folder


def read_net_config(name: str | os.PathLike) -> NetConfig:
    """The `NetConfig` of weights `name`, without loading them."""
    return NetConfig.from_dict(json.loads((resolve_weights(name) / CONFIG_NAME).read_text()))


def load_dpseg(name: str | os.PathLike, *, device=None, dtype=None):
    """(net, clip): trained DPSeg weights and the frozen CLIP they were built on, on `device` in `dtype`.

    Raises:
        FileNotFoundError: no such weights.
        ValueError: the weights do not fit the CLIP their config names.
    """
    from safetensors.torch import load_file

    from promptseg.models.clip import load_clip

    folder = resolve_weights(name)
    config = read_net_config(folder)
    clip = load_clip(config.clip, device=device, dtype=dtype)
    net = DPSegNet(clip.model, config)
    missing, unexpected = net.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=False)
    if missing or unexpected:
        raise ValueError(f"DPSeg weights {str(name)!r} do not fit CLIP {config.clip!r}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    net.to(clip.device, clip.dtype).eval().requires_grad_(False)
    return net, clip
