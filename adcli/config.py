"""Config sections shared by every method's recipe."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DataConfig:
    image_size: int = 256  # square side the images are resized to (bilinear), as in METHODS.md


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Anomaly synthesis (see adcli/data/synth.py)."""

    texture_dir: str | None = None  # folder of source textures (DTD); null = self-augmentation only
    object_categories: tuple[str, ...] = ()  # categories whose masks are limited to the object foreground
    max_perlin_scale_log2: int = 5
    beta_min: float = 0.2
    beta_max: float = 0.8


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """What the shared training loop needs."""

    epochs: int = 1
    batch_size: int = 16  # half normal, half synthetic anomalies
    checkpoint_minutes: float = 10.0  # an atomic checkpoint at least this often, and at each epoch's end

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("train.epochs must be >= 1 and train.batch_size >= 2")
