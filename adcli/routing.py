"""Which trained category an image belongs to (`--category auto`), from exemplar thumbnails.

Calibration keeps up to EXEMPLARS training thumbnails per category; an image takes the category of
its nearest exemplar (products with several looks stay one category), or none (UNKNOWN_CATEGORY)
when that exemplar is farther than the category's radius: RADIUS_MARGIN × the 99th-percentile
nearest-exemplar distance of that category's held-out normal images.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

THUMBNAIL_SIZE = 16
EXEMPLARS = 64
RADIUS_MARGIN = 3.0


def thumbnail(image: Image.Image) -> np.ndarray:
    """A coarse appearance signature: the image at 16×16 RGB, uint8, flattened (768,)."""
    return np.asarray(image.convert("RGB").resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.BILINEAR), dtype=np.uint8).ravel()


def nearest_distances(queries: np.ndarray, exemplars: np.ndarray) -> np.ndarray:
    """Euclidean distance (in [0, 1] pixel units) from each query (Q, D) to its nearest exemplar (E, D) -> (Q,)."""
    q = queries.astype(np.float32)[:, None] / 255.0
    e = exemplars.astype(np.float32)[None] / 255.0
    return np.sqrt(((q - e) ** 2).sum(-1)).min(axis=1)


def exemplar_radius(exemplars: np.ndarray, held_out: np.ndarray) -> float:
    """RADIUS_MARGIN × the 99th percentile of held-out nearest-exemplar distances: the held-out images'
    thumbnails (N, D), and each exemplar against the others (leave one out)."""
    loo = [nearest_distances(exemplars[i:i + 1], np.delete(exemplars, i, axis=0))[0] for i in range(len(exemplars))] \
        if len(exemplars) > 1 else []
    distances = np.concatenate([nearest_distances(held_out, exemplars), np.asarray(loo, np.float32)])
    return RADIUS_MARGIN * float(np.quantile(distances, 0.99))


class CategoryRouter:
    """image -> category name, or None when it resembles no category. Thread-safe (read-only)."""

    def __init__(self, categories: list[str], calibration=None):
        self.categories = categories
        self.exemplars = {}
        if calibration is not None:
            self.exemplars = {c: (np.asarray(cal.exemplars, np.uint8), cal.exemplar_radius)
                              for c, cal in calibration.categories.items() if c in categories}

    def __call__(self, image: Image.Image) -> str | None:
        if not self.exemplars:
            return self.categories[0]
        feats = thumbnail(image)[None]
        dist = {c: float(nearest_distances(feats, ex)[0]) for c, (ex, _) in self.exemplars.items()}
        best = min(dist, key=dist.get)
        return best if dist[best] <= self.exemplars[best][1] else None
