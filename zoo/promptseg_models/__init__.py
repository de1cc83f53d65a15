"""The small models promptseg bundles, as their own distribution (`promptseg-models`): the library's wheel holds the
code only, and a user on real Stable Diffusion installs it alone.

Every folder here is one model (weights, model card `README.md`, and for a backbone its `promptseg_settings.json`);
`promptseg.models.zoo` names them (`shapes`, `shapes-dit`, `scenes`, their CLIP, SAM and DPSeg weights) and finds
this package by import.
"""

from pathlib import Path

ZOO = Path(__file__).resolve().parent
"""The folder holding the bundled models."""
