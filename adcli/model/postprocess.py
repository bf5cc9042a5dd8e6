"""The standardised image score, owned here for every method: what a normal image's anomaly map looks
like at each pixel, per category, fitted from training normals by the `score_scale` stage after the
model is trained, and the image score that pools the map standardised against it (recipe key
`scoring.image_score`: standardised) or as it is (map).

A method declares how its image score is made (`ImageScoring`: its pooling, its map, whether it is
standardised, what the stage depends on); adcli/model/methods/base.py's `Method` adds the stage and scores
through `image_score` below. No method fits the statistics itself."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
from torch import nn

from adcli.core.config import Section, section_settings
from adcli.data.batches import to_tensor
from adcli.model.score_maps import pixel_statistics, standardise

IMAGE_SCORES = ("map", "standardised")
IMAGE_SCORE_KEYS = ("image_score", "normal_images")  # what every score_scale stage depends on (recipes' names)
SCORE_SCALE = "score_scale"  # the stage's name: kept stage files of existing runs carry it


def check_image_score(image_score: str, normal_images: int, key: str = "scoring.normal_images") -> None:
    """The recipe checks of `scoring.image_score` and the number of normals that fit it (ValueError)."""
    if image_score not in IMAGE_SCORES:
        raise ValueError(f"scoring.image_score must be 'map' or 'standardised', not {image_score!r}")
    if image_score == "standardised" and normal_images < 2:
        raise ValueError(f"{key} must be >= 2 (a per-pixel spread needs two images)")


@dataclasses.dataclass(frozen=True)
class ImageScoreConfig:
    """A recipe's `scoring` section where it holds only these two keys."""

    # What the image score pools: "map" (the papers) or "standardised": the map per pixel against the mean
    # and spread of training normals' maps (ours).
    image_score: str = "map"
    normal_images: int = 64  # training images per category that fit it

    def __post_init__(self):
        check_image_score(self.image_score, self.normal_images)


@dataclasses.dataclass(frozen=True)
class ImageScoring:
    """How a method makes its image score from its anomaly map: what the method declares (`Method.image_scoring`)."""

    pool: Callable[[torch.Tensor], torch.Tensor]  # (B, H, W) -> (B,): the paper's pooling
    # (images (B, 3, H, W), category_ids (B,)) -> (B, H, W): the map the score pools, made as `predict` makes it
    anomaly_map: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    standardised: bool = False  # recipe `scoring.image_score: standardised`
    normal_images: int = 0  # training images per category that fit the statistics
    # The recipe sections the score_scale stage depends on: its fingerprint. A method's own spelling stays,
    # so stages kept by runs before this declaration keep their fingerprints.
    depends_on: tuple[Section, ...] = (Section("scoring", IMAGE_SCORE_KEYS),)
    # Other constants of the score fitted from training normals in the same stage, before the statistics
    # (TimeNet's normalisers, which its map uses): (training images, StageContext) -> None, and the
    # state-dict prefixes they fill.
    fit_constants: Callable | None = None
    constants: tuple[str, ...] = ()

    @property
    def fitted(self) -> bool:
        """Whether a score_scale stage fits anything."""
        return self.standardised or self.fit_constants is not None

    @property
    def keeps(self) -> tuple[str, ...]:
        return self.constants + (("map_stats.",) if self.standardised else ())

    def stage_settings(self, config) -> dict:
        return section_settings(config, self.depends_on)


def image_score(scoring: ImageScoring, stats: NormalMapStatistics | None, anomaly_map: torch.Tensor,
                category_ids: torch.Tensor) -> torch.Tensor:
    """The image score: the declared pooling of the map, standardised per pixel first where the recipe
    says so (`stats` fitted). (B, H, W), (B,) -> (B,)."""
    pooled = anomaly_map if stats is None else stats.standardise(anomaly_map, category_ids)
    return scoring.pool(pooled)


def fit_score_scale(method: nn.Module, scoring: ImageScoring, stats: NormalMapStatistics | None, data,
                    batch_size: int, ctx) -> None:
    """The score_scale stage: the method's own constants, then the normal maps' statistics."""
    if scoring.fit_constants is not None:
        scoring.fit_constants(data, ctx)
    if stats is not None:
        stats.fit(method, scoring.anomaly_map, data, method.categories, scoring.normal_images, batch_size, ctx)


def evenly_spaced(data, category: int, count: int) -> torch.Tensor:
    """Up to `count` of a category's training images, evenly spaced through them: (N, 3, H, W) in [0, 1]."""
    own = data.of_category(category)
    count = min(count, len(own))
    return to_tensor(own[np.linspace(0, len(own) - 1, count).round().astype(int)])


class NormalMapStatistics(nn.Module):
    """Per category, the per-pixel mean and spread (adcli.model.score_maps.pixel_statistics) of normal images' maps."""

    def __init__(self, num_categories: int, size: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_categories, size, size))
        self.register_buffer("spread", torch.ones(num_categories, size, size))

    def set(self, category: int, maps: torch.Tensor) -> None:
        """maps (N, H, W): N ≥ 2 normal maps of one category."""
        self.mean[category], self.spread[category] = pixel_statistics(maps.to(self.mean.dtype))

    def standardise(self, maps: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor:
        """(B, H, W) maps of images of the given categories -> (S − μ) / spread, (B, H, W)."""
        return standardise(maps, self.mean[category_ids], self.spread[category_ids])

    @torch.no_grad()
    def fit(self, model: nn.Module, maps_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], data,
            categories: list[str], count: int, batch_size: int, ctx) -> None:
        """Every category's statistics from up to `count` evenly spaced training images; maps_of(images,
        category_ids) -> (B, H, W) is the method's anomaly map. `model` is in eval mode meanwhile, so the maps
        are the ones inference makes (no dropout, batch norm's running statistics). ctx: a StageContext."""
        was_training = model.training
        model.eval()
        try:
            self._fit(maps_of, data, categories, count, batch_size, ctx)
        finally:
            model.train(was_training)

    def _fit(self, maps_of, data, categories: list[str], count: int, batch_size: int, ctx) -> None:
        counts = [min(count, int((data.category_ids == c).sum())) for c in range(len(categories))]
        with ctx.progress("normal maps per pixel", sum(counts)) as task:
            for cat in range(len(categories)):
                picked, maps = evenly_spaced(data, cat, count), []
                for i in range(0, len(picked), batch_size):
                    x = picked[i:i + batch_size].to(ctx.device)
                    maps.append(maps_of(x, torch.full((len(x),), cat, dtype=torch.long, device=ctx.device)).float())
                    task.advance(len(x))
                self.set(cat, torch.cat(maps))
        ctx.log(self.summary(categories))

    def summary(self, categories: list[str]) -> str:
        return "per-pixel spread of normal maps: " + "; ".join(
            f"{name} {float(v.min()):.4g}..{float(v.max()):.4g}" for name, v in zip(categories, self.spread))
