"""A short, stable identity for a model bundle: the SHA-256 prefix of its weights file."""

from __future__ import annotations

import hashlib
from pathlib import Path


def bundle_id(model_dir: str | Path) -> str:
    digest = hashlib.sha256()
    with open(Path(model_dir) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]
