"""Recipes: strict YAML -> frozen dataclasses, with named profiles and `--set` overrides.

A recipe file holds the paper's settings plus `profiles:`, each a mapping of dotted keys to values
that override the paper settings (`cpu`, `demo`, `test`), and optionally `on_cpu:`, one line `adcli
train` prints first (where knn is the better choice on a CPU-only line). Loading resolves, in order: the file,
the chosen profile, then `--set key=value` overrides. Any unknown key, wrong type or missing value is
a RecipeError naming the key and the file.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from adcli.core.errors import RecipeError

_FLOAT_WITHOUT_DOT = re.compile(r"[-+]?\d+[eE][-+]?\d+")
_NOT_SETTINGS = ("profiles", "on_cpu")  # top-level keys of a recipe file that are not the method's settings


def recipes_dir() -> Path:
    """The built-in recipes: the top-level `recipes/` folder, installed as the package `adcli.recipes`."""
    try:
        return Path(str(importlib.resources.files("adcli.recipes")))
    except ModuleNotFoundError:  # a source tree on PYTHONPATH, not installed
        return Path(__file__).resolve().parent.parent / "recipes"


def recipe_names() -> list[str]:
    folder = recipes_dir()
    return sorted(q.stem for q in folder.glob("*.yaml")) if folder.is_dir() else []


def recipe_path(name_or_path: str) -> Path:
    """A recipe name (`diffusionad`) maps to the built-in `recipes/<name>.yaml`; anything else is a path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():  # a folder that happens to share the name is not a recipe
        if not p.is_file():
            raise RecipeError(f"recipe file not found: {p}")
        return p
    candidate = recipes_dir() / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise RecipeError(f"unknown recipe '{name_or_path}' (known: {', '.join(recipe_names()) or 'none'}; "
                          "or give a .yaml path)")
    return candidate


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}:{where} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys to values")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`train.epochs=5` -> ("train.epochs", 5). Values are parsed as YAML scalars/lists."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set expects key=value, got '{text}'")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def set_dotted(tree: dict, dotted: str, value: Any, source: str, recipe: str = "") -> None:
    """Set `a.b.c` in the nested `tree`; an unknown name says which names there are at that level."""
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts):
        where = ".".join(parts[:i])
        if part not in node or (i < len(parts) - 1 and not isinstance(node[part], dict)):
            kind = "section" if i < len(parts) - 1 else "key"
            place = f"section '{where}'" if where else (f"recipe {recipe}" if recipe else "the recipe")
            names = ", ".join(sorted(k for k in node if k not in _NOT_SETTINGS))
            raise RecipeError(f"{source}: {place} has no {kind} '{part}' (it has: {names})")
        if i < len(parts) - 1:
            node = node[part]
    node[parts[-1]] = value


def resolve_tree(path: Path, profile: str | None, overrides: typing.Sequence[str] = (), raw: dict | None = None) -> dict:
    """The recipe's settings after the profile and `--set` overrides, as a plain dict. raw: the file's
    contents when the caller has read them already."""
    tree = copy.deepcopy(raw if raw is not None else read_yaml(path))
    profiles = tree.pop("profiles", {}) or {}
    tree.pop("on_cpu", None)
    if profile:
        if profile not in profiles:
            raise RecipeError(f"{path}: unknown profile '{profile}' (known: {', '.join(sorted(profiles)) or 'none'})")
        for key, value in (profiles[profile] or {}).items():
            set_dotted(tree, str(key), value, f"{path} profile '{profile}'", path.stem)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(tree, key, value, f"--set {text}", path.stem)
    return tree


def build(cls: type, data: Any, source: str, prefix: str = ""):
    """Turn a nested dict into the frozen dataclass `cls`, strictly."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: '{prefix or 'recipe'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RecipeError(f"{source}: unknown key '{prefix}{unknown[0]}'")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name not in data:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            raise RecipeError(f"{source}: missing key '{key}'")
        values[name] = _coerce(hints[name], data[name], source, key)
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"{source}: {exc}") from None


def _coerce(tp: Any, value: Any, source: str, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, source, key)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, source, prefix=f"{key}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{source}: key '{key}' expects a list, got {value!r}")
        item_type = args[0] if args else Any
        return tuple(_coerce(item_type, v, source, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{source}: key '{key}' expects true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{source}: key '{key}' expects an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_WITHOUT_DOT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string; it is plainly a number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{source}: key '{key}' expects a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{source}: key '{key}' expects a string, got {value!r}")
        return value
    raise RecipeError(f"{source}: key '{key}' has unsupported type {tp}")  # a bug in a config class


def to_dict(config) -> dict:
    """A config dataclass back to plain YAML-friendly data (tuples become lists)."""

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(config))


@dataclasses.dataclass(frozen=True)
class LoadedRecipe:
    config: Any  # the method's frozen config dataclass
    path: Path
    profile: str | None
    on_cpu: str | None = None  # the recipe's advice for CPU-only lines (its `on_cpu:` line)


def load_recipe(name_or_path: str, profile: str | None = None, overrides: typing.Sequence[str] = ()) -> LoadedRecipe:
    from adcli.model.registry import get_method

    path = recipe_path(name_or_path)
    raw = read_yaml(path)
    on_cpu = raw.get("on_cpu")
    if on_cpu is not None and not isinstance(on_cpu, str):
        raise RecipeError(f"{path}: 'on_cpu' must be one line of text")
    tree = resolve_tree(path, profile, overrides, raw)
    method_name = tree.get("method")
    if not isinstance(method_name, str):
        raise RecipeError(f"{path}: missing key 'method'")
    spec = get_method(method_name, source=str(path))
    source = f"{path}" + (f" (profile '{profile}')" if profile else "")
    try:
        return LoadedRecipe(build(spec.config_cls, tree, source), path, profile, on_cpu)
    except RecipeError as exc:
        if not overrides:
            raise
        build(spec.config_cls, resolve_tree(path, profile, raw=raw), source)  # the file's or the profile's own error
        # Without the overrides it builds: blame the one whose key the message names (else all of them).
        culprit = next((t for t in overrides if f"'{parse_override(t)[0]}" in str(exc)), " --set ".join(overrides))
        raise RecipeError(str(exc).replace(source, f"--set {culprit}", 1)) from None


def config_from_dict(tree: dict, source: str):
    """Rebuild a method config from a resolved recipe dict (as stored in a bundle)."""
    from adcli.model.registry import get_method

    spec = get_method(str(tree.get("method")), source=source)
    return build(spec.config_cls, tree, source)
