"""`adcli checks`: what a support call asks first, gathered in one go, without touching the network.

Versions, threads, CPU and GPU, which pretrained weights adcli would load and from where, free disk
space and write access of the output folder, the built-in recipes. `run_checks` returns plain data
(JSON-ready); only the write-access check can fail a run outright, so only it makes `ok` false.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from pathlib import Path

# Networks the built-in recipes load (backbones, LPIPS, the category router), by the name weights are searched.
NETWORKS = ("mobilenet_v2", "wide_resnet50_2", "wide_resnet101_2", "alexnet", "vgg16")
LOW_DISK_BYTES = 1 << 30


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict:
    import importlib.metadata as md

    from adcli import __version__

    out = {"adcli": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for package in ("torch", "torchvision", "timm", "numpy", "pillow", "safetensors", "lpips", "scikit-learn"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = None
    return out


def _compute() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": cuda, "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []}


def _weights() -> dict:
    from adcli.model.nets.weights import WeightsNotFound, resolve_weights

    found = {}
    for network in NETWORKS:
        try:
            found[network] = {"found": True, "path": str(resolve_weights(network))}
        except WeightsNotFound:
            found[network] = {"found": False, "path": None,
                              "how": f"on a PC with internet `adcli weights pull {network} --to DIR`, copy DIR here, "
                                     "set ADCLI_WEIGHTS_DIR=DIR"}
    return found


def _disk(folder: Path) -> dict:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # a folder inspect would create: check where it would go
    usage = shutil.disk_usage(existing)
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".adcli-check-"):
            writable, problem = True, None
    except OSError as exc:
        writable, problem = False, f"{exc.strerror or exc}"
    return {"folder": str(folder), "checked": str(existing), "free_bytes": usage.free, "low": usage.free < LOW_DISK_BYTES,
            "writable": writable, "problem": problem}


def run_checks(out: str | Path = ".") -> dict:
    from adcli.model.recipe import recipe_names

    disk = _disk(Path(out).absolute())
    return {"ok": disk["writable"], "versions": _versions(), "compute": _compute(), "weights": _weights(),
            "weights_dir": os.environ.get("ADCLI_WEIGHTS_DIR"), "disk": disk, "recipes": recipe_names()}
