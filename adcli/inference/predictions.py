"""A detector's outputs on a prepared split, cached next to the report (or in the run, for calibrate).

The cache key is the model id plus every image's path, size and modification time, so a second
report of the same model on the same files reuses the outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from adcli.data.manifest import Sample
from adcli.inference.detector import Detector, ToScore
from adcli.core.errors import BundleError
from adcli.core.io import load_tensors, read_image, read_mask, save_tensors
from adcli.bundle.model_bundle import file_metadata

CACHE_NAME = "outputs.safetensors"


@dataclasses.dataclass
class SplitOutputs:
    samples: list[Sample]
    scores: np.ndarray  # (N,)
    maps: np.ndarray  # (N, S, S) float32 at the model's resolution
    ms_per_image: float
    device: str


def _cache_key(model_id: str, samples: list[Sample]) -> str:
    h = hashlib.sha256(model_id.encode())
    for s in samples:
        st = os.stat(s.path)
        h.update(f"{s.path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def ground_truth(sample: Sample, size: int) -> np.ndarray:
    """The sample's mask at size×size: resized bilinearly, binarised at > 0.5 (METHODS.md). Zeros if good."""
    if sample.label == 0 or sample.mask is None:
        return np.zeros((size, size), bool)
    mask = Image.fromarray(read_mask(sample.mask).astype(np.float32), mode="F").resize((size, size), Image.BILINEAR)
    return np.asarray(mask) > 0.5


def _cached(cache: Path, key: str, samples: list[Sample]) -> SplitOutputs | None:
    """The cached outputs if the cache is for these images and this model; a damaged cache is a miss."""
    if not cache.is_file():
        return None
    try:
        meta = file_metadata(cache)
        if meta.get("key") != key:
            return None
        t = load_tensors(cache)
        scores, maps = t["scores"].numpy(), t["maps"].float().numpy()
        ms = float(meta["ms_per_image"])
    except (BundleError, KeyError, ValueError):
        return None
    if scores.shape != (len(samples),) or maps.shape[0] != len(samples):
        return None
    return SplitOutputs(samples, scores, maps, ms, meta.get("device", "?") + " (cached)")


def predict_samples(detector: Detector, samples: list[Sample], cache_dir: Path,
                    progress: Callable[[], None] | None = None) -> SplitOutputs:
    key = _cache_key(detector.model_id if detector.backend == "torch" else f"{detector.model_id} {detector.backend}", samples)
    cached = _cached(cache_dir / CACHE_NAME, key, samples)
    if cached is not None:
        return cached
    size = detector.image_size
    scores = np.zeros(len(samples), np.float32)
    maps = np.zeros((len(samples), size, size), np.float32)
    start = time.perf_counter()

    def load(i: int) -> ToScore[int]:
        return ToScore(read_image(samples[i].path), i, samples[i].category)

    for r in detector.stream(range(len(samples)), load):
        scores[r.item], maps[r.item] = r.judged.score, r.judged.anomaly_map
        if progress:
            progress()
    ms = (time.perf_counter() - start) * 1e3 / max(len(samples), 1)
    save_tensors(cache_dir / CACHE_NAME, {"scores": torch.from_numpy(scores), "maps": torch.from_numpy(maps)},
                 metadata={"key": key, "ms_per_image": f"{ms:.3f}", "device": _where(detector),
                           "paths": json.dumps([s.path for s in samples])[:100_000]})
    return SplitOutputs(samples, scores, maps, ms, _where(detector))


def _where(detector: Detector) -> str:
    return str(detector.device) if detector.backend == "torch" else f"{detector.device} ({detector.backend})"
