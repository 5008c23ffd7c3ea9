"""The one way a recipe is named and changed, whatever its task (torch-free: the command line builds recipes)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import ConfigError


def changed(recipe: Any, settings: dict[str, object]) -> Any:
    """``recipe`` with ``settings`` changed (None leaves a setting as it is; lists, from JSON, become tuples)."""
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(recipe)})
    if unknown:
        raise ConfigError(f"unknown recipe setting(s) {unknown}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if v is not None}
    return dataclasses.replace(recipe, **values)


def single_preset(cls: type, name: str | None = None, **settings: object) -> Any:
    """``preset`` for a task with one recipe: its defaults, with ``settings`` changed."""
    if name is not None:
        raise ConfigError(f"{cls.__name__} has no presets (got {name!r}); change its settings instead")
    return changed(cls(), settings)
