"""DRDC ("Enhancing Multi-Class Anomaly Detection via Diffusion Refinement with Dual Conditioning"):
a UniAD base model (adcli/model/methods/uniad.py) refined by a diffusion model that inpaints grid cells.

Stages (each kept in RUN/stages/, reusable with --stages-from; `base` also from a `uniad` run):
  base     UniAD's feature reconstructor (AdamW, feature jitter, feature MSE).
  refine   the shared ADM UNet with 3 extra input channels, the model condition: the image with the
           cells of a random grid set filled with Gaussian noise; ε-MSE on normal images, t ~ U{0..T−1}
           (or below `refine.t_max`), one grid size and one of `sets` random sets per image.
  fusion   per category, the mean of the base map and of the refinement map over a few training
           images: the two maps are fused in those units (the paper's equations are lost; a raw
           feature distance and a pixel distance have no common scale for α to weigh).

Inference, per grid size g and set k (all of them and the batch's images in one UNet call per step):
the condition c = image with set k's cells noise-filled; start x = the image forward-noised to
`inference.start_t` (the paper: the start keeps the low frequencies, diffusion redoes the high ones); deterministic DDIM over `inference.steps` steps, RePaint at every step (known
cells = the real image noised to that step, adcli/model/diffusion/inpaint.py). At every step, each cell's
prediction x̂0 comes from the set that inpainted it; per scale s the map is the L2 distance over RGB of
image and prediction after s×s average pooling, upsampled back; spatio-temporal fusion = mean over
steps, scales and grid sizes, then a `filter_size` mean filter; final = α·fused + (1 − α)·base, each
in units of its training-normal mean for the image's category; image score = max of the k×k
average-pooled final map. Noise draws are fixed per recipe seed, so an image always gets the same score.
UNet calls per image = steps × sets × grid sizes (logged, and stored in the bundle's meta).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from adcli.core.config import DataConfig, EngineConfig, InferenceLoopConfig, fitting_settings
from adcli.data.batches import TrainBatch, to_tensor
from adcli.model.diffusion.ddim import ddim_step, ddim_timesteps
from adcli.model.diffusion.inpaint import grid_partition, masked_condition, repaint_known
from adcli.model.diffusion.schedules import ScheduleConfig
from adcli.model.methods.base import AnomalyOutput, FitStage, GradientStage, Method, StageContext
from adcli.model.methods.uniad import BaseTrainConfig, ReconstructionConfig, UniADBase
from adcli.model.nets.features import BackboneConfig
from adcli.model.nets.unet import UNet, UNetConfig, check_image_size
from adcli.model.postprocess import ImageScoreConfig, ImageScoring
from adcli.model.registry import register
from adcli.core.device import fixed_noise
from adcli.model.score_maps import pooled_max


@dataclasses.dataclass(frozen=True)
class RefineTrainConfig:
    epochs: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4  # AdamW (the paper's value is lost; UniAD's)
    t_max: int | None = None  # training timesteps ~ U{0..t_max − 1}; null = all T (inference visits only t <= start_t)

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0:
            raise ValueError("refine.epochs must be >= 1, refine.batch_size >= 2, refine.lr > 0")
        if self.t_max is not None and self.t_max < 1:
            raise ValueError("refine.t_max must be >= 1 (or null: every timestep)")


@dataclasses.dataclass(frozen=True)
class FusionConfig:
    grid_sizes: tuple[int, ...] = (8, 16)  # inpainting cells, pixels; training draws one per image
    sets: int = 2  # K disjoint sets per grid size (the paper: 2 best)
    scales: tuple[int, ...] = (1, 2, 4)  # average-pool factors at which image and prediction are compared
    filter_size: int = 7  # mean filter over the fused map
    alpha: float = 0.9  # final = α·fused refinement + (1 − α)·base
    normalise_images: int = 8  # training images per category whose mean maps set each map's unit
    pool_kernel: int = 16  # image score: max of the k×k average-pooled final map

    def __post_init__(self):
        if not self.grid_sizes or min(self.grid_sizes) < 1 or self.sets < 1 or not self.scales or min(self.scales) < 1:
            raise ValueError("fusion.grid_sizes, sets and scales must be >= 1 (and not empty)")
        if not 0 <= self.alpha <= 1 or self.filter_size < 1 or self.filter_size % 2 == 0 or self.normalise_images < 1:
            raise ValueError("fusion.alpha must be in [0, 1], filter_size odd >= 1, normalise_images >= 1")


@dataclasses.dataclass(frozen=True)
class InferenceConfig(InferenceLoopConfig):
    start_t: int = 250  # DDIM starts here (the paper: near 200-250)
    steps: int = 10  # evenly spaced DDIM steps from start_t towards 0
    # The state DDIM starts from: "image" = the image forward-noised to start_t (the paper keeps its low
    # frequencies and lets diffusion redo the high ones; also what training shows the model), or
    # "condition" = the noise-filled condition forward-noised (measured far worse: docs/benchmarks.md).
    start_from: str = "image"

    def __post_init__(self):
        super().__post_init__()
        if self.start_from not in ("image", "condition"):
            raise ValueError("inference.start_from must be image or condition")


@dataclasses.dataclass(frozen=True)
class DRDCConfig:
    method: str
    seed: int
    data: DataConfig
    backbone: BackboneConfig
    reconstruction: ReconstructionConfig
    train: BaseTrainConfig  # the base model's training, as in `uniad`; train.checkpoint_minutes serves every stage
    unet: UNetConfig
    schedule: ScheduleConfig
    refine: RefineTrainConfig
    fusion: FusionConfig
    inference: InferenceConfig
    scoring: ImageScoreConfig = ImageScoreConfig()  # what the final map's pooling sees
    engine: EngineConfig = EngineConfig()

    def __post_init__(self):
        size = self.data.image_size
        check_image_size(self.unet, size)
        for g in self.fusion.grid_sizes:
            if size % g:
                raise ValueError(f"fusion.grid_sizes: {g} does not divide data.image_size {size}")
            if self.fusion.sets > (size // g) ** 2:
                raise ValueError(f"fusion.sets {self.fusion.sets} exceeds the {(size // g) ** 2} cells of grid size {g}")
        if not 0 <= self.inference.start_t < self.schedule.num_timesteps or not 1 <= self.inference.steps <= self.inference.start_t + 1:
            raise ValueError(f"inference.start_t must be in [0, {self.schedule.num_timesteps}) and steps in [1, start_t + 1]")


@register("drdc", DRDCConfig)
class DRDC(Method):
    map_range = None  # maps are in units of training-normal means: no fixed top

    def __init__(self, config: DRDCConfig, categories: list[str], *, load_pretrained: bool = True):
        super().__init__(config, categories, load_pretrained=load_pretrained)
        size = config.data.image_size
        self.base = UniADBase(config.backbone, config.reconstruction, size, load_pretrained=load_pretrained)
        self.refine = UNet(config.unet, size, in_channels=6, out_channels=3)
        self.schedule = config.schedule.make()
        self._mask_cache: dict = {}  # (size, device) -> the known-masks of _masks
        n = len(categories)
        self.register_buffer("base_unit", torch.ones(n))
        self.register_buffer("refine_unit", torch.ones(n))

    @property
    def unet_calls_per_image(self) -> int:
        f = self.config.fusion
        return self.config.inference.steps * f.sets * len(f.grid_sizes)

    def bundle_meta(self) -> dict:
        return {"unet_calls_per_image": self.unet_calls_per_image}

    def cost_line(self) -> str:
        return f"drdc: {self.unet_calls_per_image} UNet calls per image"

    def image_scoring(self) -> ImageScoring:
        """The final map's pooling; its normal statistics are fitted after `fusion` (the map needs the units)."""
        c = self.config
        return ImageScoring(lambda maps: pooled_max(maps, c.fusion.pool_kernel, 1), self._final_map,
                            c.scoring.image_score == "standardised", c.scoring.normal_images)

    # ---- training -------------------------------------------------------------------------------
    def method_stages(self) -> list:
        c = self.config
        refine_settings = {"unet": dataclasses.asdict(c.unet), "schedule": dataclasses.asdict(c.schedule),
                           "refine": dataclasses.asdict(c.refine),
                           "grid_sizes": c.fusion.grid_sizes, "sets": c.fusion.sets}

        def groups(total_steps: int):
            return [{"params": list(self.refine.parameters()), "lr": c.refine.lr, "weight_decay": c.refine.weight_decay}], [lambda s: 1.0]

        fusion_settings = {**refine_settings, "fusion": dataclasses.asdict(c.fusion), "inference": fitting_settings(c.inference)}
        return [self.base.stage(c.train, c.inference.batch_size, keeps=("base.",)),
                GradientStage("refine", c.refine.epochs, c.refine.batch_size, groups, self._refine_losses,
                              keeps=("refine.",), settings=refine_settings, optimizer="adamw",
                              checkpoint_minutes=c.train.checkpoint_minutes),
                FitStage("fusion", self._fit_units, keeps=("base_unit", "refine_unit"), settings=fusion_settings)]

    def _refine_losses(self, batch: TrainBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        f = self.config.fusion
        x0 = batch.originals * 2 - 1
        b, _, h, w = x0.shape
        known = torch.empty(b, 1, h, w, device=x0.device)
        for i in range(b):  # one grid size and one of its sets per image
            cell = f.grid_sizes[int(torch.randint(len(f.grid_sizes), (1,), generator=generator, device=x0.device))]
            k = int(torch.randint(f.sets, (1,), generator=generator, device=x0.device))
            known[i] = grid_partition(h, w, cell, f.sets, _cpu_generator(generator))[k].to(x0.device)
        fill = torch.randn(x0.shape, generator=generator, device=x0.device)
        t_max = min(self.config.refine.t_max or self.schedule.num_timesteps, self.schedule.num_timesteps)
        t = torch.randint(0, t_max, (b,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        x_t = self.schedule.q_sample(x0, t, noise)
        eps = self.refine(torch.cat([x_t, masked_condition(x0, known, fill)], 1), t)
        return {"loss": (eps - noise).pow(2).mean()}

    @torch.no_grad()
    def _fit_units(self, data, ctx: StageContext) -> None:
        """Per category, the mean base map and mean refinement map of its first training images."""
        n = self.config.fusion.normalise_images
        ctx.log(f"DRDC inference: {self.unet_calls_per_image} UNet calls per image")
        was_training = self.training
        self.eval()
        with ctx.progress("fusion units", n * len(self.categories)) as task:
            for c in range(len(self.categories)):
                idx = np.flatnonzero(np.asarray(data.category_ids) == c)[:n]
                if len(idx) == 0:
                    continue
                images = to_tensor(data.images[idx]).to(ctx.device)
                base, refined = [], []
                for i in range(0, len(images), self.config.inference.batch_size):
                    chunk = images[i:i + self.config.inference.batch_size]
                    base.append(self.base.anomaly_map(chunk))
                    refined.append(self.refinement_map(chunk))
                    task.advance(len(chunk))
                self.base_unit[c] = torch.cat(base).mean().clamp_min(1e-8)
                self.refine_unit[c] = torch.cat(refined).mean().clamp_min(1e-8)
        self.train(was_training)

    # ---- inference --------------------------------------------------------------------------------
    def _masks(self, size: int, device) -> torch.Tensor:
        """(G·K, 1, H, W) known-masks: every grid size's K sets, partitioned once per recipe seed (and
        kept, so an exported graph holds them as constants)."""
        key = (size, str(device))
        if key not in self._mask_cache:
            f = self.config.fusion
            g = torch.Generator().manual_seed(self.config.seed)
            self._mask_cache[key] = torch.cat([grid_partition(size, size, cell, f.sets, g) for cell in f.grid_sizes]).to(device)
        return self._mask_cache[key]

    @torch.no_grad()
    def refinement_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, H, W): the spatio-temporally fused inpainting distance."""
        c, f = self.config, self.config.fusion
        b, _, h, w = images.shape
        x = images * 2 - 1
        masks = self._masks(h, images.device)  # (M, 1, H, W), M = G·K
        m, groups = masks.shape[0], len(f.grid_sizes)
        rows = x.repeat_interleave(m, 0)  # (B·M, 3, H, W): image-major
        known = masks.repeat(b, 1, 1, 1)
        noise = fixed_noise(c.seed, (1, 3, h, w), images.device).expand_as(rows)
        fill = fixed_noise(c.seed + 1, (1, 3, h, w), images.device).expand_as(rows)
        condition = masked_condition(rows, known, fill)
        steps = ddim_timesteps(self.schedule.num_timesteps, c.inference.steps, c.inference.start_t)
        start = rows if c.inference.start_from == "image" else condition
        state = self.schedule.q_sample(start, torch.full((rows.shape[0],), steps[0], device=x.device, dtype=torch.long), noise)
        fused = torch.zeros(b, h, w, device=x.device)
        for i, t in enumerate(steps):
            state = repaint_known(self.schedule, state, rows, known, t, noise)
            eps = self.refine(torch.cat([state, condition], 1), torch.full((rows.shape[0],), t, device=x.device, dtype=torch.long))
            state, x0_hat = ddim_step(self.schedule, state, t, steps[i + 1] if i + 1 < len(steps) else -1, eps, clip_x0=1.0)
            # each cell from the set that inpainted it: Σ_k (1 − mask_k)·x̂0_k per grid size
            predicted = (x0_hat * (1 - known)).reshape(b, groups, f.sets, 3, h, w).sum(2)  # (B, G, 3, H, W)
            fused += self._distance(x, predicted)
        fused /= len(steps)
        return F.avg_pool2d(fused[:, None], f.filter_size, stride=1, padding=f.filter_size // 2, count_include_pad=False)[:, 0]

    def _distance(self, x: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """Mean over grid sizes and scales of the upsampled RGB L2 distance. x (B, 3, H, W), predicted (B, G, 3, H, W)."""
        b, g, _, h, w = predicted.shape
        total = torch.zeros(b, h, w, device=x.device)
        flat = predicted.reshape(b * g, 3, h, w)
        reference = x.repeat_interleave(g, 0)
        for s in self.config.fusion.scales:
            a, p = (reference, flat) if s == 1 else (F.avg_pool2d(reference, s), F.avg_pool2d(flat, s))
            d = (a - p).pow(2).sum(1, keepdim=True).sqrt()
            if s != 1:
                d = F.interpolate(d, size=(h, w), mode="bilinear", align_corners=False)
            total += d.reshape(b, g, h, w).mean(1)
        return total / len(self.config.fusion.scales)

    @torch.no_grad()
    def _final_map(self, images: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor:
        f = self.config.fusion
        base = self.base.anomaly_map(images) / self.base_unit[category_ids][:, None, None]
        refined = self.refinement_map(images) / self.refine_unit[category_ids][:, None, None]
        return f.alpha * refined + (1 - f.alpha) * base

    @torch.no_grad()
    def predict(self, images: torch.Tensor, category_ids: torch.Tensor) -> AnomalyOutput:
        final = self._final_map(images, category_ids)
        return AnomalyOutput(final, self.image_score(final, category_ids))


def _cpu_generator(generator: torch.Generator) -> torch.Generator:
    """A CPU generator seeded from `generator` (grid partitions are drawn on the CPU)."""
    if generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator().manual_seed(seed)
