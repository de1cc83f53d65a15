"""Which attention layers to record: names, places, kinds and grid sizes.

A layer is named by its diffusers processor path, e.g. ``down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor``.
In a UNet its *place* is ``down``, ``mid`` or ``up``; its *kind* is ``self`` (``attn1``) or ``cross`` (``attn2``); its
*level* is how many times the latent was halved before it (0 = the latent grid). Grid sizes are read from the latent
size given at run time, never assumed (SD 1.5's 64x64 latent has levels 64/32/16/8; the bundled model's 16x16 has
16/8/4).

A diffusion transformer's joint-attention block is one module that is both: its image-to-text slice is the
"cross" layer and its image-to-image slice the "self" layer, two `AttentionLayer`s with one name, place
``joint`` (SD3's blocks, FLUX's double-stream) or ``single`` (FLUX's single-stream), and `block` its index.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

PLACES = ("down", "mid", "up")
KINDS = ("self", "cross")


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer of a denoiser.

    Attributes:
        name (`str`): the processor path, a key of `unet.attn_processors`.
        place (`str`): "down", "mid" or "up" in a UNet; "joint" or "single" in a transformer.
        kind (`str`): "self" or "cross".
        level (`int`): number of halvings of the latent grid before this layer.
    """

    name: str
    place: str
    kind: str
    level: int
    block: int | None = None
    """A transformer block's index (None in a UNet)."""


def grid_at_level(latent_hw: tuple[int, int], level: int) -> tuple[int, int]:
    """The (h, w) grid after `level` stride-2 downsamplings of a latent of size `latent_hw` (diffusers rounds up)."""
    h, w = latent_hw
    for _ in range(level):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return h, w


def list_attention_layers(unet) -> list[AttentionLayer]:
    """Every attention layer of a diffusers `UNet2DConditionModel`, with its place, kind and level.

    Levels follow the UNet's own structure: each down block but the last halves the grid, the mid block sits at
    the lowest level and up block `i` at level `n - 1 - i`.
    """
    n_levels = len(unet.config.block_out_channels)
    layers = []
    for name in unet.attn_processors:
        parts = name.split(".")
        if parts[0] == "mid_block":
            place, level = "mid", n_levels - 1
        elif parts[0] in ("down_blocks", "up_blocks"):
            index = int(parts[1])
            place = parts[0][: -len("_blocks")]
            level = index if place == "down" else n_levels - 1 - index
        else:
            continue
        leaf = parts[-2]
        kind = {"attn1": "self", "attn2": "cross"}.get(leaf)
        if kind is None:
            continue
        layers.append(AttentionLayer(name=name, place=place, kind=kind, level=level))
    return layers


def attention_grids(unet, latent_hw: tuple[int, int], kind: str) -> list[tuple[int, int]]:
    """The distinct (h, w) grids, finest first, at which the UNet has attention layers of `kind`."""
    levels = sorted({layer.level for layer in list_attention_layers(unet) if layer.kind == kind})
    return [grid_at_level(latent_hw, level) for level in levels]


def select_layers(
    unet,
    latent_hw: tuple[int, int],
    *,
    self_grids: Iterable[tuple[int, int]] = (),
    cross_grids: Iterable[tuple[int, int]] = (),
    places: Iterable[str] = PLACES,
) -> list[AttentionLayer]:
    """The layers to record: self-attention layers on `self_grids`, cross-attention layers on `cross_grids`,
    in the given `places`.

    Raises:
        ValueError: a place is unknown, or a requested grid has no layer of that kind.
    """
    places = tuple(places)
    bad = [p for p in places if p not in PLACES]
    if bad:
        raise ValueError(f"unknown places {bad}; choose from {PLACES}")
    wanted = {"self": {tuple(g) for g in self_grids}, "cross": {tuple(g) for g in cross_grids}}
    chosen = []
    found: dict[str, set] = {"self": set(), "cross": set()}
    for layer in list_attention_layers(unet):
        grid = grid_at_level(latent_hw, layer.level)
        if layer.place in places and grid in wanted[layer.kind]:
            chosen.append(layer)
            found[layer.kind].add(grid)
    for kind in KINDS:
        missing = wanted[kind] - found[kind]
        if missing:
            available = attention_grids(unet, latent_hw, kind)
            raise ValueError(
                f"no {kind}-attention layer at grid(s) {sorted(missing)} in places {places}; "
                f"this UNet has {kind}-attention at {available} for a {latent_hw} latent"
            )
    return chosen
