"""What a model's weights take on a card: exact parameter counts from its configs (the modules built on the meta
device, no weights read), bytes at bf16 and with an int8 denoiser, and the smallest loading option whose resident
weights fit each card.

Weights only: a method adds its activations (on a UNet at 512 px about a forward's worth; the scale tables give
each method's peak as a multiple of one bare forward's process, `benchmarks/scale/results/scale*.md`).

    params = folder_parameters("/models/flux1-dev")     # {"transformer": 11_901_408_320, "text_encoder_2": ...}
    fits(params, denoiser="transformer")                 # {12: "offload sequential", 24: "offload model", ...}
"""

from __future__ import annotations

import json
from pathlib import Path

CARDS_GB = (12, 24, 48, 80)
"""The cards the table speaks of (GB)."""
DENOISERS = ("unet", "transformer")
OPTIONS = ("bf16", "int8", "offload model", "offload model + int8", "offload sequential")
"""Loading options, from the fastest to the one holding the least: everything resident; the denoiser in int8
(`quantize="int8"`); one component resident at a time (`offload="model"`); both; one layer of the denoiser at a
time, the largest text encoder whole (`offload="sequential"`)."""


def module_parameters(cls, config: dict) -> int:
    """Parameters of `cls` built from `config` on the meta device (a diffusers model class with `from_config`, or a
    transformers model class with its config class)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        if hasattr(cls, "config_class"):  # transformers
            module = cls(cls.config_class(**config))
        else:  # diffusers
            module = cls.from_config(config)
    return sum(p.numel() for p in module.parameters())


def folder_parameters(folder: str | Path) -> dict[str, int]:
    """{component: parameters} of a diffusers folder's models (`model_index.json`; tokenizers and schedulers have
    none), read from each component's `config.json`.

    Raises:
        FileNotFoundError: no `model_index.json` in `folder`.
    """
    import diffusers
    import transformers

    folder = Path(folder)
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise FileNotFoundError(f"{folder} has no model_index.json: not a diffusers folder")
    out = {}
    for name, entry in json.loads(index_path.read_text()).items():
        if not isinstance(entry, list) or entry[0] not in ("diffusers", "transformers") or entry[1] is None:
            continue
        config_path = folder / name / "config.json"
        cls = getattr({"diffusers": diffusers, "transformers": transformers}[entry[0]], entry[1], None)
        if cls is None or not config_path.is_file() or not ("Model" in entry[1] or entry[1].startswith("Autoencoder")):
            continue
        config = {k: v for k, v in json.loads(config_path.read_text()).items() if not k.startswith("_")}
        out[name] = module_parameters(cls, config)
    return out


def weights_gb(params: dict[str, int], denoiser: str | None = None, int8: bool = False,
               only: list[str] | None = None) -> float:
    """GB of the weights of `only` (every component by default) at 2 bytes a parameter (bf16), the denoiser at one
    when `int8`."""
    total = 0.0
    for name, count in params.items():
        if only is not None and name not in only:
            continue
        total += count * (1 if int8 and name == denoiser else 2)
    return total / 1e9


def resident_gb(params: dict[str, int], denoiser: str, option: str) -> float:
    """GB of weights on the card at once under a loading option (`OPTIONS`)."""
    if option in ("bf16", "int8"):
        return weights_gb(params, denoiser, int8=option == "int8")
    if option.startswith("offload model"):
        int8 = option.endswith("int8")
        return max(weights_gb(params, denoiser, int8, only=[name]) for name in params)
    if option == "offload sequential":
        texts = [name for name in params if name.startswith("text_encoder")]
        return max([weights_gb(params, only=[name]) for name in texts] or [0.0])
    raise ValueError(f"unknown option {option!r}; choose from {OPTIONS}")


def fits(params: dict[str, int], denoiser: str) -> dict[int, str | None]:
    """{card GB: the first of `OPTIONS` whose resident weights take at most 90% of it (None: none does)}."""
    return {card: next((o for o in OPTIONS if resident_gb(params, denoiser, o) <= 0.9 * card), None)
            for card in CARDS_GB}


def denoiser_of(params: dict[str, int]) -> str | None:
    """The denoiser's component name ("unet" or "transformer") among `params`."""
    return next((name for name in DENOISERS if name in params), None)


def method_activations(profile: str) -> dict[str, dict]:
    """{method: {"extra_gb", "ratio", "source"}} measured for architecture `profile` ("sd15", "sdxl", "sd3-medium",
    "flux1"; {} for others): each method's peak memory over the weights-and-one-forward reference at the native
    size, fp32 on a CPU (`benchmarks/scale/fits.py` writes it from the committed scale tables; `extra_gb` None where the
    table's model was reduced in width, FLUX.1's)."""
    path = Path(__file__).parent / "activations.json"
    table = json.loads(path.read_text()) if path.is_file() else {}
    return table.get("flux1" if profile == "flux1-schnell" else profile, {})
