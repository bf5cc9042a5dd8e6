"""Training images in memory and the batches built from them (half normal, half synthetic)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from adcli.core.config import SynthConfig
from adcli.data.manifest import Sample
from adcli.data.synth import is_object_category, load_textures, synthesize
from adcli.data.textures import procedural_textures
from adcli.core.io import read_image


@dataclasses.dataclass
class TrainBatch:
    """One training batch. The first `num_normal` rows are normal; the rest carry synthetic anomalies."""

    images: torch.Tensor  # (B, 3, H, W) in [0, 1]: the network input (normal or synthetic anomaly)
    masks: torch.Tensor  # (B, 1, H, W) in {0, 1}: synthetic anomaly masks (zeros for normal rows)
    category_ids: torch.Tensor  # (B,) int64
    is_anomaly: torch.Tensor  # (B,) bool
    originals: torch.Tensor  # (B, 3, H, W) in [0, 1]: the images before synthesis (= images for normal rows)


def resized(image: Image.Image, size: int) -> np.ndarray:
    """The model's view of an image: resized (bilinear) to size×size, uint8 (size, size, 3)."""
    return np.asarray(image.resize((size, size), Image.BILINEAR))


def to_tensor(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(images_u8, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255.0


class TrainImages:
    """All training images decoded once and kept as uint8 (N, H, W, 3)."""

    def __init__(self, samples: Sequence[Sample], categories: Sequence[str], size: int,
                 progress: Callable[[], None] | None = None):
        arrays = []
        for s in samples:
            arrays.append(resized(read_image(s.path), size))
            if progress:
                progress()
        self.images = np.stack(arrays)
        self.category_ids = np.array([list(categories).index(s.category) for s in samples], dtype=np.int64)
        self.categories = list(categories)

    def __len__(self) -> int:
        return len(self.images)

    def of_category(self, index: int) -> np.ndarray:
        """uint8 (N_c, H, W, 3): the images of category `index`."""
        return self.images[self.category_ids == index]

    def batch(self, indices: np.ndarray, rng: np.random.Generator, synthesizer: Synthesizer | None) -> TrainBatch:
        """Rows [0, B/2) stay normal; rows [B/2, B) get a synthetic anomaly (when a synthesizer is given)."""
        images = self.images[indices].astype(np.float32) / 255.0  # (B, H, W, 3)
        originals = torch.from_numpy(images.copy()).permute(0, 3, 1, 2).contiguous()
        b, h, w, _ = images.shape
        masks = np.zeros((b, h, w), np.float32)
        is_anomaly = np.zeros(b, bool)
        if synthesizer is not None:
            for row in range(b // 2, b):
                images[row], masks[row] = synthesizer(images[row], int(self.category_ids[indices[row]]), rng)
                is_anomaly[row] = bool(masks[row].any())  # a mask that missed the object leaves a normal row
        return TrainBatch(
            images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),  # (B, H, W, 3) -> (B, 3, H, W)
            masks=torch.from_numpy(masks)[:, None],
            category_ids=torch.from_numpy(self.category_ids[indices]),
            is_anomaly=torch.from_numpy(is_anomaly),
            originals=originals,
        )


class Synthesizer:
    """Synthetic anomalies for one run: the texture sources and which categories are objects."""

    def __init__(self, synth: SynthConfig, textures: list[np.ndarray], object_ids: set[int]):
        self.synth, self.textures, self.object_ids = synth, textures, object_ids

    @staticmethod
    def textures_for(synth: SynthConfig, size: int, seed: int) -> list[np.ndarray]:
        """The anomaly sources: the texture folder's images, else textures made in code from the seed."""
        if synth.texture_dir is not None:
            return load_textures(synth.texture_dir, size)
        return procedural_textures(synth.procedural_textures, size, seed)

    @staticmethod
    def object_categories(synth: SynthConfig, data: TrainImages) -> set[str]:
        """The recipe's list, or (null) the categories whose training images look like objects."""
        if synth.object_categories is not None:
            return set(synth.object_categories)
        return {cat for i, cat in enumerate(data.categories) if is_object_category(data.of_category(i))}

    def __call__(self, image: np.ndarray, category_id: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s = self.synth
        return synthesize(image, rng, self.textures, category_id in self.object_ids, s.max_perlin_scale_log2,
                          (s.beta_min, s.beta_max), s.empty_mask_retries, s.self_aug, s.intensity_fraction)
