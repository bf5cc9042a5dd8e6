"""Perceptual losses: LPIPS with offline weights, or a documented feature-space fallback.

The `lpips` package ships only its linear heads; its AlexNet/VGG backbone needs torchvision's
ImageNet weights, found through adcli/model/nets/weights.py like every other network. When they are
missing, `perceptual_loss(..., fallback=backbone)` (only where a recipe allows it) returns
FeaturePerceptualLoss on the available backbone instead and says so; without a fallback the
WeightsNotFound error stands.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adcli.core.errors import AdcliError
from adcli.model.nets.features import BackboneConfig, FeatureExtractor
from adcli.model.nets.weights import WeightsNotFound, load_state_dict, resolve_weights

log = logging.getLogger("adcli.perceptual")
LPIPS_BACKBONES = {"alex": "alexnet", "vgg": "vgg16"}


class LPIPSLoss(nn.Module):
    """LPIPS (Zhang et al. 2018). x, y (B, 3, H, W) in [0, 1] -> (B,) distances."""

    def __init__(self, net: str = "alex", weights: str | Path | None = None):
        super().__init__()
        import lpips

        if net not in LPIPS_BACKBONES:
            raise AdcliError(f"LPIPS network must be one of {', '.join(LPIPS_BACKBONES)}, got '{net}'")
        backbone_state = load_state_dict(resolve_weights(LPIPS_BACKBONES[net], weights))
        with warnings.catch_warnings():  # lpips calls torchvision's deprecated `pretrained=` argument
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
        mapped = {}
        for slice_name, module in self.model.net.named_children():  # slice1..5 hold torchvision's features.<i>
            for index, _ in module.named_children():
                for key, value in backbone_state.items():
                    if key.startswith(f"features.{index}."):
                        mapped[f"{slice_name}.{index}.{key.split('.', 2)[2]}"] = value
        self.model.net.load_state_dict(mapped, strict=True)
        heads = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
        head_state = torch.load(heads, map_location="cpu", weights_only=True)
        head_keys = {k for k in self.model.state_dict() if k[:3] == "lin" and k[3].isdigit()}  # `lins.*` aliases them
        if set(head_state) != head_keys:
            raise AdcliError(f"LPIPS heads in {heads} do not fit the {net} network")
        self.model.load_state_dict(head_state, strict=False)
        self.requires_grad_(False)
        self.model.eval()
        self.description = f"LPIPS ({net})"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(x, y, normalize=True).reshape(-1)  # normalize: [0, 1] -> [-1, 1] inside


class FeaturePerceptualLoss(nn.Module):
    """LPIPS without learned heads: mean over layers of the squared distance between channel-normalised
    backbone features, averaged over positions. x, y (B, 3, H, W) in [0, 1] -> (B,)."""

    def __init__(self, extractor: FeatureExtractor):
        super().__init__()
        self.extractor = extractor
        self.description = f"feature-space perceptual loss on {extractor.config.name} {list(extractor.config.layers)}"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = 0.0
        fx, fy = self.extractor(x), self.extractor(y)
        for a, b in zip(fx, fy):
            total = total + (F.normalize(a, dim=1) - F.normalize(b, dim=1)).pow(2).sum(dim=1).mean(dim=(1, 2))
        return total / len(fx)


def perceptual_loss(net: str = "alex", weights: str | Path | None = None,
                    fallback: BackboneConfig | None = None) -> nn.Module:
    """LPIPS if its weights are here; else the fallback (when the recipe allows one), logged; else the error."""
    try:
        return LPIPSLoss(net, weights)
    except WeightsNotFound as exc:
        if fallback is None:
            raise
        loss = FeaturePerceptualLoss(FeatureExtractor(fallback))
        log.warning(f"LPIPS unavailable ({exc}); using {loss.description} instead")
        return loss
