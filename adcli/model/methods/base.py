"""The method contract: what every method declares, and the one output type it predicts.

A method is an `nn.Module` subclass of `Method`, registered by name (adcli/model/registry.py). It declares

- `method_stages()`: how it is trained, as a list of stages that adcli/commands/train/ runs in order:
  `GradientStage` (an optimizer loop over batches) or `FitStage` (one pass over the training images,
  e.g. a memory bank). Nothing else about training is guessed from the model; `stages()` adds the
  `score_scale` stage its image score needs;
- `image_scoring()`: how its image score pools its anomaly map, standardised against training normals
  or not (adcli/model/postprocess.py fits the statistics and makes the score for every method; None: the
  method scores images its own way, as knn's most anomalous patch);
- `predict(images, category_ids)`: a batch in, one `AnomalyOutput` out;
- `map_range`: the fixed value range of its anomaly maps (None = no fixed scale).

Stages receive a `StageContext` (device, a scratch folder that survives a resume, a progress
reporter, a log function), never a console or a run folder.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import torch
from torch import nn

from adcli.core.config import SynthConfig
from adcli.core.distributed import Ranks
from adcli.model.postprocess import SCORE_SCALE, ImageScoring, NormalMapStatistics, fit_score_scale, image_score


@dataclasses.dataclass
class AnomalyOutput:
    """The one output type of every method."""

    anomaly_map: torch.Tensor  # (B, H, W) at the model's resolution; larger = more anomalous
    score: torch.Tensor  # (B,) image-level score
    reconstruction: torch.Tensor | None = None  # (B, 3, H, W) in [0, 1], where the method has one


class ProgressTask(Protocol):
    def advance(self, n: int = 1, **fields: Any) -> None: ...


@dataclasses.dataclass
class StageContext:
    """What a stage may use besides the model and the data."""

    device: torch.device
    scratch: Path  # kept until training ends and across --resume (reflow pairs live here)
    progress: Callable[..., Any]  # progress(description, total) -> context manager yielding a ProgressTask
    log: Callable[[str], None]  # one line for the user
    ranks: Ranks = Ranks()  # the processes training together (adcli/core/distributed.py); one by default

    @classmethod
    def silent(cls, device: torch.device | str, scratch: Path) -> StageContext:
        """A context that reports nothing (tests, library use)."""
        return cls(torch.device(device), Path(scratch), _silent_progress, lambda line: None)


class _SilentTask:
    def advance(self, n: int = 1, **fields: Any) -> None:
        pass


@contextlib.contextmanager
def _silent_progress(description: str, total: int):
    yield _SilentTask()


class StageData(Protocol):
    """What a GradientStage trains on: the training images (adcli.data.batches.TrainImages) or what its
    `make_data` makes of them (backbone features, reflow pairs, latents)."""

    categories: list[str]  # names, in category-id order

    def __len__(self) -> int: ...

    def batch(self, indices, rng, synthesizer) -> Any: ...


@dataclasses.dataclass
class GradientStage:
    """A stage trained by the shared optimizer loop: epochs of batches, checkpoints, exact resume."""

    name: str
    epochs: int
    batch_size: int
    param_groups: Callable[[int], tuple[list[dict], list]]  # total steps -> (optimizer groups, lr factor per group)
    losses: Callable[[Any, torch.Generator], dict[str, torch.Tensor]]  # (batch, generator) -> {"loss": ..., ...}
    keeps: tuple[str, ...] = ()  # state-dict key prefixes kept in RUN/stages/NAME.safetensors when it ends
    settings: dict = dataclasses.field(default_factory=dict)  # recipe values it depends on (its fingerprint)
    synth: SynthConfig | None = None  # given: half of each batch of training images gets a synthetic anomaly
    # (training images, context) -> the stage's data. None = the training images themselves.
    make_data: Callable[[Any, StageContext], StageData] | None = None
    optimizer: str = "adam"  # "adam" or "adamw" (decoupled weight decay: give each group its weight_decay)
    clip_grad_norm: float | None = None  # clip the trained parameters' gradient norm before each step
    # Some trained parameters get no gradient in some steps (DiAD's discriminator before disc_start):
    # DistributedDataParallel must then look for them in every step's graph, at some cost.
    unused_parameters: bool = False
    # An atomic checkpoint at least this often (and at each epoch's end): the recipe's train.checkpoint_minutes.
    checkpoint_minutes: float = dataclasses.field(kw_only=True)

    def __post_init__(self):
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"stage {self.name}: optimizer must be adam or adamw")


@dataclasses.dataclass
class FitStage:
    """A stage without an optimizer: one call that sees every training image (memory banks)."""

    name: str
    fit: Callable[[Any, StageContext], None]  # (TrainImages, context) -> None; fills the model's buffers
    keeps: tuple[str, ...] = ()
    settings: dict = dataclasses.field(default_factory=dict)


Stage = GradientStage | FitStage


@dataclasses.dataclass(frozen=True)
class FrozenPretrained:
    """State-dict entries a method took unchanged from a pretrained weights folder and never trains
    (Stable Diffusion's autoencoder in DiAD): a bundle names the folder's weights file and its SHA-256
    instead of storing them, so it is not gigabytes (adcli/bundle/model_bundle.py; `adcli weights pack` copies them in)."""

    part: str  # what it is ("autoencoder"); also the folder name of a packed copy in RUN/pretrained/
    source: str  # the recipe's value, searched for again when the bundle loads
    folder: Path  # where it was found for training
    keys: tuple[str, ...]  # the state-dict keys it supplies
    files: tuple[str, ...]  # the folder's files a copy needs; the first is the weights file (SHA-256 checked)


class Method(nn.Module, abc.ABC):
    """Base class of every registered method. `name` is set by `@register`."""

    name: ClassVar[str] = ""
    map_range: ClassVar[tuple[float, float] | None] = None  # None: heatmaps scale per image until calibrated
    # True where the scoring graph's cost follows the largest category in a batch (knn's banks): an
    # exported model then scores each category's images in a call of their own.
    export_batches_by_category: ClassVar[bool] = False

    def __init__(self, config: Any, categories: list[str], *, load_pretrained: bool = True):
        """load_pretrained: False when a bundle will supply every weight (no pretrained file is read)."""
        super().__init__()
        self.config = config
        self.categories = list(categories)
        scoring = self.image_scoring()
        # Buffers of the standardised image score (state-dict prefix `map_stats.`), fitted by `score_scale`.
        self.map_stats = NormalMapStatistics(len(categories), config.data.image_size) \
            if scoring is not None and scoring.standardised else None

    @abc.abstractmethod
    def method_stages(self) -> list[Stage]:
        """The method's own stages, in order."""

    def stages(self) -> list[Stage]:
        """Every training stage in order: the method's own, then `score_scale` where its image score fits
        anything from training normals (adcli/model/postprocess.py)."""
        stages, scoring = self.method_stages(), self.image_scoring()
        if scoring is not None and scoring.fitted:
            stages.append(FitStage(SCORE_SCALE, lambda data, ctx: fit_score_scale(
                self, scoring, self.map_stats, data, self.config.inference.batch_size, ctx),
                keeps=scoring.keeps, settings=scoring.stage_settings(self.config)))
        return stages

    def image_scoring(self) -> ImageScoring | None:
        """How the image score pools the anomaly map (adcli/model/postprocess.py). Called by `Method.__init__`,
        so it may read only `self.config` and `self.categories`. Default None: `predict` scores itself."""
        return None

    def image_score(self, anomaly_map: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor:
        """The declared image score of (B, H, W) maps of images of these categories -> (B,)."""
        return image_score(self.image_scoring(), self.map_stats, anomaly_map, category_ids)

    @abc.abstractmethod
    def predict(self, images: torch.Tensor, category_ids: torch.Tensor) -> AnomalyOutput:
        """images (B, 3, H, W) in [0, 1] at the recipe's size, category_ids (B,) int64 -> AnomalyOutput."""

    def scoring_graph(self) -> nn.Module:
        """A module (images, category_ids) -> (anomaly_map, score) that `torch.export` can trace for
        `adcli export`: no Python decision may depend on a tensor's value. Default: `predict` itself;
        a method whose `predict` picks per-image state in Python (knn's banks) gives its own."""
        return PredictGraph(self)

    def fill_untrained(self, train_images: int) -> None:
        """Give state that training sizes from the data (knn's banks) random values of the size
        `train_images` images per category would give, so `adcli bench --recipe` can time an untrained
        model. Default: nothing (weights already exist at construction)."""

    def bundle_meta(self) -> dict:
        """Facts about the trained model for RUN/meta.json (DRDC: UNet calls per image)."""
        return {}

    def training_only(self) -> tuple[str, ...]:
        """State-dict key prefixes that training needs (checkpoints keep them) and a bundle does not
        (a discriminator); such modules are made by `stages()`, never at construction."""
        return ()

    def frozen_pretrained(self) -> list[FrozenPretrained]:
        """Parts loaded from pretrained folders that no stage trains (default: none)."""
        return []

    @classmethod
    def find_pretrained(cls, part: str, source: str) -> Path:
        """The local folder holding `part`'s pretrained files, found from the recipe's `source`."""
        raise NotImplementedError(f"{cls.name} has no pretrained part {part!r}")

    def pretrained_state(self, part: str, folder: Path) -> dict[str, torch.Tensor]:
        """The state-dict entries (full keys) that `part`'s pretrained `folder` supplies."""
        raise NotImplementedError(f"{self.name} has no pretrained part {part!r}")

    def cost_line(self) -> str | None:
        """One line on what judging an image costs that inspect prints at its start (None: nothing to say)."""
        return None

    @property
    def inference_batch_size(self) -> int:
        return self.config.inference.batch_size

    @property
    def cpu_dtype(self) -> str:
        return self.config.inference.cpu_dtype


class PredictGraph(nn.Module):
    """`Method.predict` as a module with plain tensor outputs, for export."""

    def __init__(self, method: Method):
        super().__init__()
        self.method = method

    def forward(self, images: torch.Tensor, category_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.method.predict(images, category_ids)
        return out.anomaly_map.float(), out.score.float()
