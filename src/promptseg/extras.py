"""Optional extras: import one where it is used, or say which extra installs it."""

from __future__ import annotations

import importlib


def require(module: str, extra: str, purpose: str):
    """`module`, imported; missing, an ImportError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{purpose} needs {module.split('.')[0]}: pip install 'promptseg[{extra}]'") from err
