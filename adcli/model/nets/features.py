"""Pretrained CNN feature maps for scoring (ImageNet normalisation inside), loaded offline.

`name` is a torchvision model (`mobilenet_v2`, `wide_resnet101_2`, `resnet50`, `efficientnet_b4`;
`layers` are node names such as `layer2` or `features.6`) or, with a `timm:` prefix, any timm model
(`layers` are its feature module names). Weights come from adcli/model/nets/weights.py.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools

import torch
from torch import nn

from adcli.core.errors import AdcliError
from adcli.model.nets.startup import import_torchvision, meta_without_init
from adcli.model.nets.weights import load_state_dict, resolve_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    name: str = "wide_resnet101_2"
    layers: tuple[str, ...] = ("layer1", "layer2", "layer3")
    weights: str | None = None  # explicit weights file; null = search (see adcli/model/nets/weights.py)


def _torchvision_body(name: str, layers: tuple[str, ...], state: dict) -> nn.Module:
    torchvision = import_torchvision()
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    with meta_without_init():  # every value comes from `state`
        model = torchvision.models.get_model(name, weights=None)
    dtypes = {k: t.dtype for k, t in model.state_dict().items()}
    state = {k: t.to(dtypes[k]) if k in dtypes else t for k, t in state.items()}  # e.g. fp16 files, as a copy would
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise AdcliError(f"weights do not fit torchvision's {name}: {str(exc).splitlines()[0]}") from None
    modules = dict(model.named_modules())
    unknown = [layer for layer in layers if layer not in modules and layer not in get_graph_node_names(model)[1]]
    if unknown:
        examples = ", ".join(n for n in modules if n and n.count(".") <= 1)
        raise AdcliError(f"{name} has no layer '{unknown[0]}' (choose from {examples})")
    return create_feature_extractor(model, return_nodes={layer: layer for layer in layers})


def _timm_body(name: str, layers: tuple[str, ...], state: dict) -> nn.Module:
    import_torchvision()  # timm imports it; this way, without torch._dynamo
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
        self._folded: tuple | None = None  # (weights key, body with BatchNorm folded into its convolutions)

    def train(self, mode: bool = True):
        return super().train(False)  # BatchNorm statistics stay ImageNet's

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        out = self._folded_body()(((images - self.mean) / self.std).contiguous(memory_format=torch.channels_last))
        return list(out.values()) if isinstance(out, dict) else list(out)

    def _folded_body(self) -> nn.Module:
        """`body` with each BatchNorm folded into the convolution before it (frozen statistics make
        them one affine map): the same features to float rounding, MobileNetV2 1.6x faster on the CPU.
        Built on first use and again whenever the weights change (loaded, moved, converted); `body`
        stays as it is, so saved weights keep torchvision's names. torchvision bodies only (fx graphs)."""
        if not isinstance(self.body, torch.fx.GraphModule):
            return self.body
        try:
            key = tuple((t.data_ptr(), t.dtype, t.device, 0 if t.is_inference() else t._version)
                        for t in itertools.chain(self.body.parameters(), self.body.buffers()))
        except RuntimeError:  # weights without storage (torch.export traces with fake tensors): the graph as it is
            return self.body
        if self._folded is None or self._folded[0] != key:
            from torch.fx.experimental.optimization import fuse

            # Normal tensors even when first called under inference_mode: training passes gradients
            # through the features to the images (perceptual losses).
            with torch.inference_mode(False), torch.no_grad():
                body = copy.deepcopy(self.body).eval()  # (a deep copy of torchvision's extractor comes back in training mode)
                # no_trace: the body already is a graph; tracing it again would be slow and would patch
                # nn.Module calls in every thread while it ran.
                _fold_sequential_batchnorm(body)  # inside modules the graph calls whole (Conv2dNormActivation)
                folded = fuse(body, inplace=True, no_trace=True).requires_grad_(False)
                folded.to(memory_format=torch.channels_last)  # as the body and its input (see __init__)
            # Two threads calling it first at once may both build one: each gets a correct body.
            self._folded = (key, folded)
        return self._folded[1]


def _fold_sequential_batchnorm(module: nn.Module) -> None:
    """In every nn.Sequential, Conv2d followed by BatchNorm2d -> the folded Conv2d and an Identity. In place."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if type(seq[i]) is nn.Conv2d and type(seq[i + 1]) is nn.BatchNorm2d and seq[i + 1].track_running_stats:
                seq[i], seq[i + 1] = fuse_conv_bn_eval(seq[i], seq[i + 1]), nn.Identity()


def random_backbone_state(config: BackboneConfig, seed: int = 0) -> dict:
    """A state dict of the right shapes, to build an extractor whose weights a bundle supplies (or to time
    one): small random weights, variances 1, counters 0. The network is built on the meta device, so
    none of its own initialisers run (they were a fifth of the time
    `adcli inspect` took to load a knn model and its router)."""
    torchvision = import_torchvision()

    with meta_without_init():
        if config.name.startswith("timm:"):
            import timm

            shapes = timm.create_model(config.name[5:], pretrained=False).state_dict()
        else:
            shapes = torchvision.models.get_model(config.name, weights=None).state_dict()
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in shapes.items():
        if not t.is_floating_point():
            state[name] = torch.zeros(t.shape, dtype=t.dtype)
        elif name.endswith("running_var"):
            state[name] = torch.ones(t.shape, dtype=t.dtype)
        else:
            state[name] = torch.empty(t.shape, dtype=t.dtype).normal_(0.0, 0.02, generator=generator)
    return state
