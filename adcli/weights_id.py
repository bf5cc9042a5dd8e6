"""A short, stable identity for a model bundle: the SHA-256 prefix of its weights and its recipe.

The recipe counts because inference and scoring settings (TimeNet's `inference.t`, `scoring.*`)
change the scores of the same weights; inspect's "already inspected" check and report's output
cache must not mistake one for the other.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def bundle_id(model_dir: str | Path) -> str:
    digest = hashlib.sha256()
    for name in ("model.safetensors", "recipe.yaml"):
        with open(Path(model_dir) / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]
