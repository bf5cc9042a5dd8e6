"""Training images in memory and the batches built from them (half normal, half synthetic)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from adcli.config import SynthConfig
from adcli.data.manifest import Sample
from adcli.data.synth import synthesize
from adcli.io import read_image
from adcli.methods.base import TrainBatch


def resized(image: Image.Image, size: int) -> np.ndarray:
    """The model's view of an image: resized (bilinear) to size×size, uint8 (size, size, 3)."""
    return np.asarray(image.resize((size, size), Image.BILINEAR))


def to_tensor(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(images_u8, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 255.0


def model_input(image: Image.Image, size: int) -> torch.Tensor:
    """(1, 3, size, size) in [0, 1]."""
    return to_tensor(resized(image, size)[None])


def load_model_input(path: str, size: int) -> tuple[Image.Image, torch.Tensor]:
    """Decode an image (checked) and make the model's input."""
    image = read_image(path)
    return image, model_input(image, size)


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

    def batch(self, indices: np.ndarray, rng: np.random.Generator, textures: list[np.ndarray],
              synth: SynthConfig | None) -> TrainBatch:
        """Rows [0, B/2) stay normal; rows [B/2, B) get a synthetic anomaly (when `synth` is given)."""
        images = self.images[indices].astype(np.float32) / 255.0  # (B, H, W, 3)
        originals = torch.from_numpy(images.copy()).permute(0, 3, 1, 2).contiguous()
        b, h, w, _ = images.shape
        masks = np.zeros((b, h, w), np.float32)
        is_anomaly = np.zeros(b, bool)
        if synth is not None:
            for row in range(b // 2, b):
                cat = self.categories[self.category_ids[indices[row]]]
                images[row], masks[row] = synthesize(images[row], rng, textures, cat in synth.object_categories,
                                                     synth.max_perlin_scale_log2, (synth.beta_min, synth.beta_max))
                is_anomaly[row] = True
        return TrainBatch(
            images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),  # (B, H, W, 3) -> (B, 3, H, W)
            masks=torch.from_numpy(masks)[:, None],
            category_ids=torch.from_numpy(self.category_ids[indices]),
            is_anomaly=torch.from_numpy(is_anomaly),
            originals=originals,
        )
