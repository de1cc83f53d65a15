"""The one table of models bundled with promptseg, and the settings a model folder recommends.

Every bundled model, whatever its kind, is named here once: the diffusion backbones (`shapes`, `scenes`: UNets;
`shapes-dit`: an SD3-style transformer on the shapes world), the CLIP
models their filters and DPSeg read (`shapes-clip`, `scenes-clip`), the mask model (`shapes-sam`) and DPSeg's
trained weights (`shapes-dpseg`, `scenes-dpseg`). Each lives in `promptseg_models/NAME/` (the `promptseg-models`
distribution, `zoo/` in the repository) with its weights, its model
card (`README.md`) and, for a backbone, the settings it recommends (`promptseg_settings.json`); the scripts that
trained them are in `promptseg.training`.

    bundled("clip")                  # {"shapes-clip": Path(...), "scenes-clip": Path(...)}
    BUNDLED["shapes"].folder         # the shapes backbone's diffusers folder
    model_settings("shapes")         # its promptseg_settings.json, {} for a hub id
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


def _zoo() -> Path:
    """The bundled models' folder: the `promptseg-models` distribution's, or a checkout's `zoo/` when it is not
    installed (a user of real models needs neither)."""
    try:
        import promptseg_models
    except ImportError:
        return Path(__file__).resolve().parents[3] / "zoo" / "promptseg_models"
    return promptseg_models.ZOO


ZOO = _zoo()
"""Where the bundled models live (`promptseg-models`: `pip install promptseg-models`, or `make setup`)."""
INSTALL_HINT = "the bundled models are the promptseg-models distribution: pip install ./zoo from a checkout"
SETTINGS_FILE = "promptseg_settings.json"
"""A model folder's recommended settings: {method: {setting: value}, "filter": name, "filters": {...}, ...}."""
KINDS = ("diffusion", "clip", "sam", "dpseg")


@dataclass(frozen=True)
class BundledModel:
    """One bundled model.

    Attributes:
        name (`str`): what users type (`--model shapes`, `model=shapes-clip`, `weights=scenes-dpseg`).
        kind (`str`): "diffusion" (a backbone), "clip", "sam" or "dpseg" (DPSeg's decoder weights).
        folder (`Path`): its folder inside the package.
        trained_by (`str`): the command that trains it again, for messages when the folder is missing.
    """

    name: str
    kind: str
    folder: Path
    trained_by: str


def _entry(name: str, kind: str, trained_by: str) -> BundledModel:
    return BundledModel(name, kind, ZOO / name, trained_by)


BUNDLED: dict[str, BundledModel] = {m.name: m for m in (
    _entry("shapes", "diffusion", "python -m promptseg.training.shapes"),
    _entry("scenes", "diffusion", "python -m promptseg.training.scenes"),
    _entry("shapes-dit", "diffusion", "python -m promptseg.training.shapes_dit"),
    _entry("shapes-clip", "clip", "python -m promptseg.training.shapes_clip"),
    _entry("scenes-clip", "clip", "python -m promptseg.training.scenes_clip"),
    _entry("shapes-sam", "sam", "python -m promptseg.training.shapes_sam"),
    _entry("shapes-dpseg", "dpseg", "promptseg train dpseg --dataset shapes"),
    _entry("scenes-dpseg", "dpseg", "promptseg train dpseg --dataset scenes"),
)}
"""Every bundled model by name."""


def bundled(kind: str) -> dict[str, Path]:
    """{name: folder} of the bundled models of `kind` ("diffusion", "clip", "sam", "dpseg")."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of bundled model {kind!r}; choose from {KINDS}")
    return {name: m.folder for name, m in BUNDLED.items() if m.kind == kind}


def model_settings(name: str | os.PathLike) -> dict:
    """The per-method settings a bundled model, local folder or (cached) hub id recommends ({} when none).

    The profile of its architecture (`promptseg.models.profiles`: recognised from the denoiser's config, e.g.
    SD3-medium's grounding block), overridden per method by the folder's `promptseg_settings.json` beside
    `model_index.json`: {"method": {"setting": value}}.
    """
    from promptseg.models.profiles import architecture_profile

    entry = BUNDLED.get(str(name))
    folder = entry.folder if entry is not None else Path(str(name)).expanduser()
    profile = architecture_profile(folder if entry is not None else name)
    settings = json.loads(json.dumps(profile.settings)) if profile is not None else {}
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        return settings
    try:
        own = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    for key, value in own.items():
        merge = isinstance(value, dict) and isinstance(settings.get(key), dict)
        settings[key] = {**settings[key], **value} if merge else value
    return settings
