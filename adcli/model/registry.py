"""Methods registered by explicit name: `@register("diffusionad", ConfigClass)`."""

from __future__ import annotations

import dataclasses
import importlib
import typing

from adcli.core.errors import RecipeError


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    method_cls: type


_METHODS: dict[str, MethodSpec] = {}
# Modules imported on first lookup, so that `import adcli` stays light.
_BUILTIN_MODULES = ("adcli.model.methods.diad", "adcli.model.methods.diffusionad", "adcli.model.methods.drdc", "adcli.model.methods.knn", "adcli.model.methods.timenet", "adcli.model.methods.uniad")


def register(name: str, config_cls: type):
    """Class decorator: the method is a Method subclass, its config a dataclass with an `inference`
    section that has the shared inference loop's keys (adcli/core/config.py: InferenceLoopConfig) and
    an `engine` section (EngineConfig: how the shared training loop runs)."""

    def wrap(method_cls: type) -> type:
        from adcli.core.config import EngineConfig, InferenceLoopConfig
        from adcli.model.methods.base import Method

        if name in _METHODS and _METHODS[name].method_cls is not method_cls:
            raise ValueError(f"method '{name}' registered twice")
        sections = typing.get_type_hints(config_cls) if dataclasses.is_dataclass(config_cls) else {}
        if not issubclass(method_cls, Method) or not isinstance(sections.get("inference"), type) or \
                not issubclass(sections["inference"], InferenceLoopConfig) or sections.get("engine") is not EngineConfig:
            raise TypeError(f"method '{name}': must subclass adcli.model.methods.base.Method, and its config must have an "
                            "`inference` section derived from adcli.core.config.InferenceLoopConfig and an `engine: "
                            "EngineConfig` section")
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


def build_method(config, categories: list[str], *, load_pretrained: bool = True, source: str = "recipe"):
    """The registered method for `config.method`, built for `categories` (their order gives the ids the
    weights use). load_pretrained=False when every weight will be loaded afterwards (a bundle)."""
    return get_method(config.method, source=source).method_cls(config, categories, load_pretrained=load_pretrained)
