"""The pruners by name: one registry, filled by :func:`register_pruner` in each pruner's own file.

The Hydra group ``conf/pruner/`` holds one yaml per registered name (tests/test_registry.py keeps
the two in step); :func:`build_pruner` is the programmatic way in.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from vla_autoprune.errors import ConfigError
from vla_autoprune.pruning.pruner import Pruner

P = TypeVar("P", bound=type[Pruner])

_REGISTRY: dict[str, type[Pruner]] = {}
#: Read-only view of the registry: name -> pruner class.
PRUNERS: Mapping[str, type[Pruner]] = MappingProxyType(_REGISTRY)


class UnknownPrunerError(ConfigError):
    """No pruner is registered under the requested name."""


def register_pruner(cls: P) -> P:
    """Class decorator: make ``cls`` available under its ``name`` (which must be its own and unique)."""
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} must set its own `name` class attribute to be registered")
    if _REGISTRY.get(name, cls) is not cls:
        raise TypeError(f"pruner name {name!r} is taken by {_REGISTRY[name].__qualname__}")
    _REGISTRY[name] = cls
    return cls


def build_pruner(name: str, **kwargs: Any) -> Pruner:
    """A pruner by registry name with its hyperparameters, e.g. ``build_pruner("fastv", budget=64)``."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise UnknownPrunerError(f"unknown pruner {name!r}; known pruners: {', '.join(sorted(_REGISTRY))}")
    return cls(**kwargs)
