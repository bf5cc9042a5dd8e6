"""Model bundles: a run folder holding everything needed to use a trained model, no pickle.

    RUN/model.safetensors   weights
    RUN/recipe.yaml         the fully resolved recipe
    RUN/meta.json           format version, adcli version, method, categories, image size, seed,
                            training time, data summary (written last: its presence marks a finished bundle)
    RUN/results.csv         per-epoch training table
    RUN/checkpoint/last.safetensors   resumable training state (weights + optimizer + position)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from adcli import __version__
from adcli.errors import BundleError
from adcli.io import atomic_write_json, atomic_write_text, load_tensors, save_tensors
from adcli.recipe import config_from_dict, to_dict
from adcli.registry import get_method

FORMAT = "adcli-bundle"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
RECIPE = "recipe.yaml"
META = "meta.json"


def write_recipe(run: Path, config) -> None:
    atomic_write_text(run / RECIPE, yaml.safe_dump(to_dict(config), sort_keys=False))


def read_recipe(run: Path):
    path = run / RECIPE
    if not path.is_file():
        raise BundleError(f"{run} is not an adcli run folder (no {RECIPE})")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise BundleError(f"{path}: invalid YAML ({exc})") from None
    return config_from_dict(tree, str(path))


def write_bundle(run: Path, model: torch.nn.Module, config, meta: dict) -> None:
    save_tensors(run / WEIGHTS, model.state_dict())
    write_recipe(run, config)
    full_meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "adcli_version": __version__,
                 "method": config.method, "image_size": config.data.image_size, "seed": config.seed, **meta}
    atomic_write_json(run / META, full_meta)


def read_meta(run: str | Path) -> dict:
    run = Path(run)
    path = run / META
    if not run.is_dir():
        raise BundleError(f"model folder not found: {run}")
    if not path.is_file():
        hint = " (training not finished: `adcli train --resume`)" if (run / "checkpoint").is_dir() else ""
        raise BundleError(f"{run} is not a finished adcli model: {META} missing{hint}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: unreadable ({exc})") from None
    if meta.get("format") != FORMAT:
        raise BundleError(f"{path}: not an adcli bundle")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(f"{run}: bundle format v{version} is newer than this adcli ({__version__}) reads "
                          f"(v{FORMAT_VERSION}); upgrade adcli")
    return meta


def load_bundle(run: str | Path, device: torch.device | str = "cpu"):
    """-> (model in eval mode on `device`, meta dict). No pickle, no network."""
    run = Path(run)
    meta = read_meta(run)
    config = read_recipe(run)
    spec = get_method(config.method, source=str(run / RECIPE))
    model = spec.method_cls(config, meta["categories"], load_pretrained=False)  # the bundle holds every weight
    state = load_tensors(run / WEIGHTS)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise BundleError(f"{run / WEIGHTS} does not match its recipe: {first}") from None
    return model.to(device).eval(), meta
