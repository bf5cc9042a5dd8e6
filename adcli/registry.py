"""Methods registered by explicit name: `@register("diffusionad", ConfigClass)`."""

from __future__ import annotations

import dataclasses
import importlib

from adcli.errors import RecipeError


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    method_cls: type


_METHODS: dict[str, MethodSpec] = {}
# Modules imported on first lookup, so that `import adcli` stays light.
_BUILTIN_MODULES = ("adcli.methods.diffusionad", "adcli.methods.knn", "adcli.methods.timenet")


def register(name: str, config_cls: type):
    def wrap(method_cls: type) -> type:
        if name in _METHODS and _METHODS[name].method_cls is not method_cls:
            raise ValueError(f"method '{name}' registered twice")
        _METHODS[name] = MethodSpec(name, config_cls, method_cls)
        method_cls.name = name
        return method_cls

    return wrap


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def get_method(name: str, source: str = "recipe") -> MethodSpec:
    _load_builtins()
    if name not in _METHODS:
        raise RecipeError(f"{source}: unknown method '{name}' (known: {', '.join(sorted(_METHODS))})")
    return _METHODS[name]


def method_names() -> list[str]:
    _load_builtins()
    return sorted(_METHODS)
