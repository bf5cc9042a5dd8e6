"""Model outputs on a prepared split, cached next to the report.

The cache key is the bundle's weights hash plus every image's path, size and modification time,
so a second report of the same bundle on the same files reuses the outputs.
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

from adcli.data.batches import load_model_input
from adcli.data.manifest import Sample
from adcli.io import load_tensors, read_mask, save_tensors
from adcli.weights_id import bundle_id

CACHE_NAME = "outputs.safetensors"


@dataclasses.dataclass
class SplitOutputs:
    samples: list[Sample]
    scores: np.ndarray  # (N,)
    maps: np.ndarray  # (N, S, S) float32 at the model's resolution
    ms_per_image: float
    device: str


def _cache_key(model_dir: Path, samples: list[Sample]) -> str:
    h = hashlib.sha256(bundle_id(model_dir).encode())
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


def predict_samples(model, categories: list[str], samples: list[Sample], size: int, device: torch.device,
                    model_dir: Path, cache_dir: Path, progress: Callable[[], None] | None = None) -> SplitOutputs:
    key = _cache_key(model_dir, samples)
    cache = cache_dir / CACHE_NAME
    if cache.is_file():
        from safetensors import safe_open

        with safe_open(str(cache), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("key") == key:
            t = load_tensors(cache)
            return SplitOutputs(samples, t["scores"].numpy(), t["maps"].float().numpy(), float(meta["ms_per_image"]),
                                meta["device"] + " (cached)")
    scores = np.zeros(len(samples), np.float32)
    maps = np.zeros((len(samples), size, size), np.float32)
    start = time.perf_counter()
    for i, s in enumerate(samples):
        _, x = load_model_input(s.path, size)
        out = model.predict(x.to(device), torch.tensor([categories.index(s.category)], device=device))
        scores[i] = float(out.score[0])
        maps[i] = out.anomaly_map[0].float().cpu().numpy()
        if progress:
            progress()
    ms = (time.perf_counter() - start) * 1e3 / max(len(samples), 1)
    save_tensors(cache, {"scores": torch.from_numpy(scores), "maps": torch.from_numpy(maps)},
                 metadata={"key": key, "ms_per_image": f"{ms:.3f}", "device": str(device),
                           "paths": json.dumps([s.path for s in samples])[:100_000]})
    return SplitOutputs(samples, scores, maps, ms, str(device))
