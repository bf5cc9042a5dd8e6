"""Config sections shared by every method's recipe."""

from __future__ import annotations

import dataclasses


MAX_IMAGE_SIZE = 2048  # a model input side; 2048² × batch already needs tens of GiB in a UNet


@dataclasses.dataclass(frozen=True)
class DataConfig:
    image_size: int = 256  # square side the images are resized to (bilinear), as in METHODS.md

    def __post_init__(self):
        if not 16 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"data.image_size must be between 16 and {MAX_IMAGE_SIZE}, got {self.image_size}")


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Anomaly synthesis (see adcli/data/synth.py)."""

    # Folder of source textures (DTD-style); null = `procedural_textures` textures made in code.
    texture_dir: str | None = None
    procedural_textures: int = 64  # with texture_dir null; 0 = self-augmentation (shuffled strips) only
    # Categories whose masks are limited to the object foreground; null = decided per category from
    # its training images (adcli/data/synth.py: is_object_category).
    object_categories: tuple[str, ...] | None = None
    max_perlin_scale_log2: int = 5
    beta_min: float = 0.2
    beta_max: float = 0.8
    # Perlin draws before giving up on a mask that misses the object; a row whose mask stays empty is
    # trained as a normal row (the authors' data/dataset_beta_thresh.py: up to 50 draws, then has_anomaly 0).
    empty_mask_retries: int = 50
    # Self-augmented anomalies: "authors" = 3 random colour/geometry ops, strips shuffled on both axes
    # (data/dataset_beta_thresh.py); "strips" = strips along one axis, colours unchanged (bundles before).
    self_aug: str = "strips"
    # Ours (0 in every paper setting): the share of synthetic anomalies whose source is the image itself,
    # darker or brighter (adcli/data/synth.py: intensity_changed), for defects that change how bright a
    # region is rather than its texture (discolouration, stains, uneven surfaces).
    intensity_fraction: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.intensity_fraction <= 1.0:
            raise ValueError("synth.intensity_fraction must be in [0, 1]")
        if self.self_aug not in ("authors", "strips"):
            raise ValueError("synth.self_aug must be authors or strips")
        if self.empty_mask_retries < 1:
            raise ValueError("synth.empty_mask_retries must be >= 1")
        if self.procedural_textures < 0:
            raise ValueError("synth.procedural_textures must be >= 0")
        if not 0 <= self.beta_min <= self.beta_max <= 1:
            raise ValueError("synth: need 0 <= beta_min <= beta_max <= 1")


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """How the shared training loop runs any recipe's gradient stages (the `engine:` section).

    accumulate: micro-batches per optimiser step in each process; a global batch is cut into
    processes × accumulate of them (adcli/core/distributed.py), so the step is the same whichever way it is
    shared. ema_decay: keep an exponential moving average of the trained weights (e.g. 0.9999) and
    store it at each stage's end instead of the last weights; null = none. amp: mixed precision on
    CUDA (CPU training is always fp32): auto = bf16 where the GPU supports it, else fp16 with a
    gradient scaler; bf16; fp16; off. clip_grad_norm: clip each gradient stage's gradient norm at this
    value, where the method sets none of its own (uniad's train.clip_grad_norm wins); null = no clipping.
    """

    accumulate: int = 1
    ema_decay: float | None = None
    amp: str = "auto"
    clip_grad_norm: float | None = None

    def __post_init__(self):
        if self.accumulate < 1:
            raise ValueError("engine.accumulate must be >= 1")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError("engine.ema_decay must be between 0 and 1 (or null for none)")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ValueError("engine.amp must be auto, bf16, fp16 or off")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ValueError("engine.clip_grad_norm must be > 0 (or null for none)")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """What the shared training loop needs."""

    epochs: int = 1
    batch_size: int = 16  # half normal, half synthetic anomalies
    checkpoint_minutes: float = 10.0  # an atomic checkpoint at least this often, and at each epoch's end

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("train.epochs must be >= 1 and train.batch_size >= 2")


@dataclasses.dataclass(frozen=True)
class InferenceLoopConfig:
    """What the shared inference path (adcli/inference/detector.py) needs; methods add their own keys."""

    batch_size: int = 8  # images per model call in inspect, calibrate, report and the Python API
    # Scoring on a CPU: fp32; bf16 = under bf16 autocast; auto = bf16 where the CPU has bf16 instructions
    # (AVX-512 BF16 or AMX; without them bf16 is slower), else fp32. Only for recipes where bf16 was
    # measured to keep the results (docs/benchmarks.md "Speed"). Training and fitted score stages stay fp32.
    cpu_dtype: str = "fp32"

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError("inference.batch_size must be >= 1")
        if self.cpu_dtype not in ("fp32", "bf16", "auto"):
            raise ValueError(f"inference.cpu_dtype must be fp32, bf16 or auto, not {self.cpu_dtype!r}")


def synth_settings(synth: SynthConfig) -> dict:
    """The synthesis keys a trained stage depends on (its fingerprint). intensity_fraction only when set,
    so runs trained before the key existed keep their stages."""
    settings = dataclasses.asdict(synth)
    if not synth.intensity_fraction:
        del settings["intensity_fraction"]
    return settings


def fitting_settings(inference: InferenceLoopConfig) -> dict:
    """The inference keys a trained or fitted stage depends on (its fingerprint): all but how a CPU
    scores afterwards, so switching `cpu_dtype` reuses every stage."""
    return {k: v for k, v in dataclasses.asdict(inference).items() if k != "cpu_dtype"}


@dataclasses.dataclass(frozen=True)
class Section:
    """A recipe section a stage depends on: its fingerprint holds these keys' values (a stage is
    reused only where they are unchanged)."""

    name: str  # the config's attribute: "scoring", "inference", ...
    keys: tuple[str, ...] | None = None  # None: every key of the section
    without: tuple[str, ...] = ()  # keys left out (how a CPU scores afterwards: `cpu_dtype`)

    def values(self, config) -> dict:
        values = dataclasses.asdict(getattr(config, self.name))
        names = values if self.keys is None else self.keys
        return {k: values[k] for k in names if k not in self.without}


# What fitting_settings keeps: a stage that runs the model over training images depends on how it batches them.
FITTING_INFERENCE = Section("inference", without=("cpu_dtype",))


def section_settings(config, sections: tuple[Section, ...]) -> dict:
    """A stage's fingerprint settings, {section: {key: value}}, from the sections it declares it depends on."""
    return {s.name: s.values(config) for s in sections}
