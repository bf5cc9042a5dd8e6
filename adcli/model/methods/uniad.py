"""`uniad`: UniAD (You et al., NeurIPS 2022), the feature-reconstruction base model of DRDC, as its
own recipe.

Features of a frozen pretrained backbone at several stages are resized to one grid (bilinear,
corners aligned, as the authors' MFCN neck) and concatenated; a transformer with neighbour-masked
attention (adcli/model/nets/uniad.py) reconstructs them from jittered copies (feature jitter, training
only); loss = feature MSE. Anomaly map = L2 distance over channels of reconstructed vs input
features, upsampled (bilinear) to the image; image score = max of its k×k average pooling
(stride 1), as the authors' evaluator ("max", avgpool 16 at 224 px).

The backbone is frozen and there is no augmentation, so every training image's features are
computed once, when the stage starts, and the stage trains the transformer alone.
`UniADBase` holds the backbone and transformer; DRDC embeds it (state-dict prefix `base.`), so a
DRDC run can reuse a `uniad` run's stage with `--stages-from`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adcli.core.config import DataConfig, EngineConfig, InferenceLoopConfig
from adcli.data.batches import to_tensor
from adcli.model.methods.base import AnomalyOutput, GradientStage, Method, StageContext
from adcli.model.postprocess import ImageScoring, check_image_score
from adcli.model.nets.features import BackboneConfig, FeatureExtractor, random_backbone_state
from adcli.model.nets.uniad import FeatureReconstructor, ReconstructorArch, feature_jitter
from adcli.model.registry import register
from adcli.model.score_maps import pooled_max


@dataclasses.dataclass(frozen=True)
class ReconstructionConfig(ReconstructorArch):
    grid: int = 14  # the feature grid every backbone stage is resized to (224 px / 16)
    jitter_scale: float = 20.0  # feature jitter N(0, (scale·‖f‖/C)²); 0 = none
    jitter_prob: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.grid < 1 or not 0 <= self.jitter_prob <= 1 or self.jitter_scale < 0:
            raise ValueError("reconstruction.grid must be >= 1, jitter_prob in [0, 1], jitter_scale >= 0")


@dataclasses.dataclass(frozen=True)
class BaseTrainConfig:
    epochs: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4  # AdamW
    lr_drop_epoch: int | None = 800  # lr × lr_drop_factor from this epoch on (StepLR); null = never
    lr_drop_factor: float = 0.1
    clip_grad_norm: float | None = 0.1
    checkpoint_minutes: float = 10.0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0:
            raise ValueError("train.epochs must be >= 1, train.batch_size >= 2, train.lr > 0")


@dataclasses.dataclass(frozen=True)
class UniADScoringConfig:
    pool_kernel: int = 16  # image score: max of the k×k average-pooled map (stride 1)
    # What that max pools: "map" (authors) or "standardised": the map per pixel against training normals'
    # mean and spread (adcli/model/postprocess.py; ours, a `score_scale` stage after `base`).
    image_score: str = "map"
    normal_images: int = 64  # training images per category that fit it

    def __post_init__(self):
        if self.pool_kernel < 1:
            raise ValueError("scoring.pool_kernel must be >= 1")
        check_image_score(self.image_score, self.normal_images)


@dataclasses.dataclass(frozen=True)
class UniADConfig:
    method: str
    seed: int
    data: DataConfig
    backbone: BackboneConfig
    reconstruction: ReconstructionConfig
    train: BaseTrainConfig
    scoring: UniADScoringConfig = UniADScoringConfig()
    inference: InferenceLoopConfig = InferenceLoopConfig()
    engine: EngineConfig = EngineConfig()


@dataclasses.dataclass
class FeatureBatch:
    features: torch.Tensor  # (B, C, g, g) aligned backbone features
    category_ids: torch.Tensor  # (B,)


class TrainingFeatures:
    """Every training image's aligned features, computed once (the backbone is frozen)."""

    def __init__(self, features: torch.Tensor, category_ids: np.ndarray, categories: list[str]):
        self.features, self.category_ids, self.categories = features, category_ids, categories

    def __len__(self) -> int:
        return len(self.features)

    def batch(self, indices: np.ndarray, rng, synthesizer) -> FeatureBatch:
        idx = np.asarray(indices)
        return FeatureBatch(self.features[torch.from_numpy(idx)], torch.from_numpy(self.category_ids[idx]))


class UniADBase(nn.Module):
    """Backbone + feature reconstructor; images in [0, 1]."""

    def __init__(self, backbone: BackboneConfig, reconstruction: ReconstructionConfig, image_size: int,
                 *, load_pretrained: bool = True):
        super().__init__()
        state = None if load_pretrained else random_backbone_state(backbone)
        self.backbone = FeatureExtractor(backbone, state=state)
        self.config, self.grid = reconstruction, reconstruction.grid
        with torch.no_grad():
            channels = sum(f.shape[1] for f in self.backbone(torch.zeros(1, 3, image_size, image_size)))
        self.reconstructor = FeatureReconstructor(channels, reconstruction.grid, reconstruction)

    @torch.no_grad()
    def align(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, g, g): every backbone stage resized to the grid and concatenated."""
        size = (self.grid, self.grid)
        return torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=True) for f in self.backbone(images)], 1)

    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H, W): ‖f − f̂‖₂ over channels, upsampled to the image."""
        features = self.align(images)
        distance = (self.reconstructor(features) - features).pow(2).sum(1, keepdim=True).sqrt()
        return F.interpolate(distance, size=images.shape[-2:], mode="bilinear", align_corners=True)[:, 0]

    def losses(self, batch: FeatureBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        c = self.config
        noisy = feature_jitter(batch.features, c.jitter_scale, c.jitter_prob, generator)
        return {"loss": (self.reconstructor(noisy) - batch.features).pow(2).mean()}

    @torch.no_grad()
    def training_features(self, data, ctx: StageContext, batch_size: int) -> TrainingFeatures:
        out = []
        with ctx.progress("backbone features of the training images", len(data)) as task:
            for i in range(0, len(data), batch_size):
                out.append(self.align(to_tensor(data.images[i:i + batch_size]).to(ctx.device)).cpu())
                task.advance(len(out[-1]))
        return TrainingFeatures(torch.cat(out), np.asarray(data.category_ids), list(data.categories))

    def stage(self, train: BaseTrainConfig, batch_size: int, keeps: tuple[str, ...]) -> GradientStage:
        """The stage that trains the reconstructor, named `base` in `uniad` and DRDC alike (one run's
        output serves the other's --stages-from). batch_size: images per backbone call."""
        settings = {"backbone": dataclasses.asdict(self.backbone.config), "reconstruction": dataclasses.asdict(self.config),
                    "train": {k: v for k, v in dataclasses.asdict(train).items() if k != "checkpoint_minutes"}}

        def groups(total_steps: int):
            per_epoch = max(1, total_steps // train.epochs)
            drop = None if train.lr_drop_epoch is None else train.lr_drop_epoch * per_epoch
            factor = (lambda step: 1.0) if drop is None else (lambda step: train.lr_drop_factor if step >= drop else 1.0)
            return [{"params": list(self.reconstructor.parameters()), "lr": train.lr, "weight_decay": train.weight_decay}], [factor]

        return GradientStage("base", train.epochs, train.batch_size, groups, self.losses, keeps=keeps, settings=settings,
                             make_data=lambda data, ctx: self.training_features(data, ctx, batch_size),
                             optimizer="adamw", clip_grad_norm=train.clip_grad_norm,
                             checkpoint_minutes=train.checkpoint_minutes)


@register("uniad", UniADConfig)
class UniAD(Method):
    map_range = None  # feature distances have no fixed scale: heatmaps are scaled per image until calibrated

    def __init__(self, config: UniADConfig, categories: list[str], *, load_pretrained: bool = True):
        super().__init__(config, categories, load_pretrained=load_pretrained)
        self.base = UniADBase(config.backbone, config.reconstruction, config.data.image_size, load_pretrained=load_pretrained)

    def image_scoring(self) -> ImageScoring:
        sc = self.config.scoring
        return ImageScoring(lambda maps: pooled_max(maps, sc.pool_kernel, 1), lambda x, ids: self.base.anomaly_map(x),
                            sc.image_score == "standardised", sc.normal_images)

    def method_stages(self) -> list[GradientStage]:
        c = self.config
        return [self.base.stage(c.train, c.inference.batch_size, keeps=("base.",))]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, category_ids: torch.Tensor) -> AnomalyOutput:
        anomaly_map = self.base.anomaly_map(images)
        return AnomalyOutput(anomaly_map, self.image_score(anomaly_map, category_ids))
