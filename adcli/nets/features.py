"""Pretrained CNN feature maps for scoring (ImageNet normalisation inside), loaded offline.

`name` is a torchvision model (`mobilenet_v2`, `wide_resnet101_2`, `resnet50`, `efficientnet_b4`;
`layers` are node names such as `layer2` or `features.6`) or, with a `timm:` prefix, any timm model
(`layers` are its feature module names). Weights come from adcli/nets/weights.py.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from adcli.errors import AdcliError
from adcli.nets.weights import load_state_dict, resolve_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    name: str = "wide_resnet101_2"
    layers: tuple[str, ...] = ("layer1", "layer2", "layer3")
    weights: str | None = None  # explicit weights file; null = search (see adcli/nets/weights.py)


def _torchvision_body(name: str, layers: tuple[str, ...], state: dict) -> nn.Module:
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = torchvision.models.get_model(name, weights=None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise AdcliError(f"weights do not fit torchvision's {name}: {str(exc).splitlines()[0]}") from None
    modules = dict(model.named_modules())
    unknown = [layer for layer in layers if layer not in modules and layer not in get_graph_node_names(model)[1]]
    if unknown:
        examples = ", ".join(n for n in modules if n and n.count(".") <= 1)
        raise AdcliError(f"{name} has no layer '{unknown[0]}' (choose from {examples})")
    return create_feature_extractor(model, return_nodes={layer: layer for layer in layers})


def _timm_body(name: str, layers: tuple[str, ...], state: dict) -> nn.Module:
    import timm

    model = timm.create_model(name, pretrained=False, features_only=True)
    modules = [info["module"] for info in model.feature_info.get_dicts()]
    unknown = [layer for layer in layers if layer not in modules]
    if unknown:
        raise AdcliError(f"timm:{name} has no feature layer '{unknown[0]}' (choose from {', '.join(modules)})")
    model = timm.create_model(name, pretrained=False, features_only=True,
                              out_indices=tuple(modules.index(layer) for layer in layers))
    missing, _ = model.load_state_dict(state, strict=False)
    if missing:
        raise AdcliError(f"weights do not fit timm:{name}: missing {missing[0]} (and {len(missing) - 1} more)")
    return model


class FeatureExtractor(nn.Module):
    """images (B, 3, H, W) in [0, 1] -> list of feature maps, one per layer, (B, C_l, H_l, W_l). Frozen."""

    def __init__(self, config: BackboneConfig, state: dict | None = None):
        super().__init__()
        self.config = config
        is_timm = config.name.startswith("timm:")
        name = config.name.split(":", 1)[1] if is_timm else config.name
        if state is None:
            state = load_state_dict(resolve_weights(name, config.weights))
        self.body = (_timm_body if is_timm else _torchvision_body)(name, config.layers, state)
        # Channels-last: oneDNN's CPU convolutions run 1.4-1.6x faster so here (MobileNetV2 at 256 px;
        # `adcli bench`), and the features come out the same up to float rounding.
        self.body.to(memory_format=torch.channels_last)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # BatchNorm statistics stay ImageNet's

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        out = self.body(((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last))
        return list(out.values()) if isinstance(out, dict) else list(out)


def random_backbone_state(config: BackboneConfig) -> dict:
    """A state dict of the right shapes (random values), to build an extractor whose weights a bundle supplies."""
    import torchvision

    if config.name.startswith("timm:"):
        import timm

        return timm.create_model(config.name[5:], pretrained=False).state_dict()
    return torchvision.models.get_model(config.name, weights=None).state_dict()
