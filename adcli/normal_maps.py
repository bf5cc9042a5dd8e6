"""What a normal image's anomaly map looks like at each pixel, per category: the image score's view of
"unusual for this place". Fitted from training normals after a model is trained; any method whose
image score pools its anomaly map can standardise the map first (recipe key `scoring.image_score`)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
from torch import nn

from adcli.data.batches import to_tensor
from adcli.scoring import pixel_statistics, standardise

IMAGE_SCORES = ("map", "standardised")


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


def evenly_spaced(data, category: int, count: int) -> torch.Tensor:
    """Up to `count` of a category's training images, evenly spaced through them: (N, 3, H, W) in [0, 1]."""
    own = data.of_category(category)
    count = min(count, len(own))
    return to_tensor(own[np.linspace(0, len(own) - 1, count).round().astype(int)])


def for_image_score(method: nn.Module, maps: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor:
    """What a method's image score pools: its maps standardised per pixel where it holds fitted statistics
    (`map_stats`, present when `scoring.image_score` is standardised), else the maps themselves."""
    stats = getattr(method, "map_stats", None)
    return maps if stats is None else stats.standardise(maps, category_ids)


class NormalMapStatistics(nn.Module):
    """Per category, the per-pixel mean and spread (adcli.scoring.pixel_statistics) of normal images' maps."""

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
