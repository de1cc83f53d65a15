"""Registries by name: methods and class filters register themselves with their settings dataclass.

    METHODS = Registry("method", load_builtins)
    @METHODS.register("baseline", BaselineConfig)
    class Baseline: ...
    METHODS.config("baseline", timestep="50")     # settings, text parsed to each default's type
    METHODS.get("baseline")                        # (class, settings class)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable


class Registry:
    """Named classes of one kind ("method", "filter"), each with its settings dataclass.

    Args:
        kind (`str`): what the entries are, for messages ("unknown method 'x'").
        load_builtins (`Callable`): imports the built-in entries (they register themselves on import).
        default (`str`, *optional*): the entry used when neither the caller nor the model names one.
    """

    def __init__(self, kind: str, load_builtins: Callable[[], None], default: str | None = None):
        self.kind = kind
        self.default = default
        self._load_builtins = load_builtins
        self._entries: dict[str, tuple[type, type]] = {}

    def register(self, name: str, config_cls: type):
        """Class decorator: make the class available by `name` with its settings dataclass `config_cls`."""

        def wrap(cls):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = (cls, config_cls)
            cls.name = name
            return cls

        return wrap

    def get(self, name: str) -> tuple[type, type]:
        """(class, settings class) of `name`.

        Raises:
            ValueError: an unknown name (the message lists the known ones).
        """
        self._load_builtins()
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {sorted(self._entries)}")
        return self._entries[name]

    def summaries(self) -> dict[str, str]:
        """Registered names with the first line of their classes' docstrings."""
        self._load_builtins()
        return {name: (cls.__doc__ or "").strip().splitlines()[0] for name, (cls, _) in sorted(self._entries.items())}

    def resolve(self, model_settings: dict, name: str | None, overrides: dict, choice_key: str,
                settings_key: str) -> tuple[str, dict]:
        """(name, settings): `name`, or else what the model recommends under `choice_key`, or else the registry's
        default; the settings are the model's for it (under `settings_key`), changed by `overrides`."""
        chosen = name or model_settings.get(choice_key) or self.default
        return chosen, {**(model_settings.get(settings_key) or {}).get(chosen, {}), **overrides}

    def build(self, name: str, backbone=None, config=None, **overrides):
        """An instance of `name` on `backbone`, with `config` or the defaults changed by `overrides`."""
        if config is None:
            config = self.config(name, **overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        return self.get(name)[0](backbone, config)

    def config(self, name: str, **overrides):
        """The settings dataclass of `name` with its defaults, changed by `overrides`.

        Raises:
            ValueError: an unknown name or setting.
        """
        return make_config(self.get(name)[1], overrides, f"{self.kind} {name!r}")


def make_config(config_cls: type, overrides: dict, owner: str):
    """`config_cls` with its defaults changed by `overrides` (text parsed to each default's type); `owner` names
    whose settings they are in the error for an unknown one ("method 'baseline'")."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for {owner}; settings: {sorted(known)}")
    example = config_cls()
    return config_cls(**{k: _coerce(k, v, getattr(example, k)) for k, v in overrides.items()})


def _coerce(key: str, value, default):
    """Settings given as text (command line, JSON): parse them to the type of the default value.

    Text stays text for text settings; otherwise it is read as JSON ("null", "50", "[1, 2]", '{"0.25": 1}'). A
    setting whose default is None takes plain text too when it is not JSON (`weights=/models/dpseg`).
    Resolution-weight dicts get float keys, lists become tuples where the default is a tuple.
    """
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            if default is None:
                return value
            raise ValueError(f"setting {key}={value!r} is not valid JSON ({err}); e.g. {key}={json.dumps(default)}") from err
    if isinstance(default, dict) and isinstance(value, dict):
        value = {float(k): float(v) for k, v in value.items()}
    if isinstance(default, tuple) and isinstance(value, list):
        value = tuple(value)
    return value
