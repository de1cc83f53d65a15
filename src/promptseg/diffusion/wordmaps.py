"""Word heat maps: where each word of a prompt is attended in an image, the maps promptseg's methods start from.

The image is encoded and noised once to the read-out's timestep; the denoiser runs once conditioned on the words
joined by ", " ("cat, red car"), and every read-out layer (UNet) or block (transformer) is captured into a store
of its own. A word's map in one layer is its image-to-text attention share, the mean over its tokens (a
multi-token word is one map, as DAAM's); the aggregate is the mean over a grid's layers, mixed over grids with the
read-out's resolution weights (the baseline's `cross_weights`), upsampled bilinearly to the image's size. Nothing
is normalised or refined: the values are attention probabilities (a transformer's: shares of the joint softmax).
`Pipeline.attention_maps` reads with the model's baseline settings (timestep, `cross_weights`, `places`; a
transformer's profile blocks), so a map shows what the baseline reads; GoCA's activation-derived block weights are not applied here
(every block weighs the same).

    maps = word_maps(backbone, image, ["cat", "red car"], cross_weights={0.25: 1.0}, places=["up"], timestep=100)
    maps.maps.shape     # (2, H, W) float32
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from promptseg.diffusion.attention import resolve_weights
from promptseg.diffusion.capture import AttentionStore, capture, run_until_captured
from promptseg.diffusion.encode import prepare_pixels
from promptseg.diffusion.noise import noised_latents
from promptseg.diffusion.readout import resize_maps, tokens_to_maps, weighted_sum
from promptseg.text import Label, build_prompt, label_scores, split_to_fit


@dataclass
class WordMaps:
    """Heat maps of words over one image.

    Attributes:
        words (`list[str]`): the words, in order.
        maps (`np.ndarray`): (n_words, height, width) float32, each word's aggregated map at the image's size.
        layers (`dict[str, np.ndarray]`): per read layer or block (its processor name without ".processor"), the
            words' (n_words, height, width) maps; empty unless asked for.
        timestep (`int`): the noise level read.
        prompt (`str`): what conditioned the denoiser.
    """

    words: list[str]
    maps: np.ndarray
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    timestep: int = 0
    prompt: str = ""


def word_maps(backbone, image, words, *, cross_weights: dict, places, timestep: int, per_layer: bool = False,
              seed: int = 0) -> WordMaps:
    """Each word's attention map over `image` (PIL or HxWx3 uint8); see the module docstring.

    Args:
        backbone: a loaded `DiffusionBackbone`.
        words (`Sequence[str]`): words or phrases, one map each.
        cross_weights (`dict[float, float]`): resolution weights of the read-out ({fraction of the latent side:
            weight}; `Pipeline.attention_maps` passes the model's baseline setting).
        places (`Sequence[str]`): UNet parts ("down", "mid", "up") or transformer blocks ("block9", "single3",
            "joint").
        timestep (`int`): the noise level.
        per_layer (`bool`, defaults to `False`): also return every layer's or block's maps.
        seed (`int`, defaults to 0): seed of the noise.

    Raises:
        ValueError: no words, an empty or repeated word, or places that name no layer.
    """
    words = [str(w).strip() for w in words]
    if not words or any(not w for w in words):
        raise ValueError(f"give at least one non-empty word, got {words!r}")
    if len(set(words)) != len(words):
        raise ValueError(f"each word once, got {words!r}")
    timestep, places = int(timestep), tuple(places)
    weights = resolve_weights({float(k): float(v) for k, v in cross_weights.items()}, backbone, "cross")
    # the read-out's grids that `places` has layers on (`--places up` on SD-1.5 has no 8x8 layer: that weight is
    # left out, and the others renormalised)
    layers = []
    for grid in list(weights):
        try:
            layers += backbone.select_layers(set(), {grid}, places)
        except ValueError:
            weights.pop(grid)
    if not layers:
        raise ValueError(f"places {list(places)} name no cross-attention layer of this {backbone.family} on the "
                         f"read-out's grids")

    prepared = prepare_pixels(backbone, image)
    noisy, _ = noised_latents(backbone, prepared.latents, timestep, seed)
    labels = [Label(w, (w,)) for w in words]
    size = prepared.size
    per_layer_maps: dict[str, list[torch.Tensor]] = {}
    prompts = []
    with torch.no_grad():
        for group in split_to_fit(backbone.tokenizer, labels, "{}", ", "):
            tokens = build_prompt(backbone.tokenizer, group, "{}", ", ")
            prompts.append(tokens.prompt)
            stores = {layer.name: AttentionStore(latent_hw=tuple(noisy.shape[-2:])) for layer in layers}
            t = torch.full((noisy.shape[0],), timestep, device=noisy.device)
            with capture(backbone.denoiser, layers, stores, stop_after_last=True):
                run_until_captured(backbone.predict, noisy, t, backbone.encode_text(tokens.prompt))
            for name, store in stores.items():
                (grid,) = store.grids("cross")
                maps = tokens_to_maps(label_scores(store.mean("cross", grid), tokens.positions), grid)  # (1, K, h, w)
                per_layer_maps.setdefault(name, []).append(maps)
    layer_maps = {name: torch.cat(parts, dim=1) for name, parts in per_layer_maps.items()}  # (1, W, h, w)
    per_grid = {grid: torch.stack([m for m in layer_maps.values() if tuple(m.shape[-2:]) == tuple(grid)]).mean(0)
                for grid in weights}  # the mean over a grid's layers, (1, W, h, w)
    aggregate = weighted_sum({g: m.float() for g, m in per_grid.items()}, weights, size, normalize=False)
    out = WordMaps(words=words, maps=aggregate[0].cpu().numpy().astype(np.float32), timestep=timestep,
                   prompt=" | ".join(prompts))
    if per_layer:
        out.layers = {name.removesuffix(".processor"): resize_maps(m.float(), size)[0].cpu().numpy()
                      for name, m in layer_maps.items()}
    return out
