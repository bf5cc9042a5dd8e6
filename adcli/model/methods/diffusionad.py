"""DiffusionAD: norm-guided one-step denoising + segmentation network (Zhang et al., TPAMI 2025).

Reconstruction sub-network: an ADM UNet predicting ε on the input noised to two levels
t_s ~ U{0..t_split−1}, t_b ~ U{t_split..T−1}; the norm-guided one-step reconstruction x̂_0^g
(adcli/model/diffusion/norm_guided.py) goes with the input into the segmentation sub-network, whose
output is the anomaly map. Loss = ε-MSE at both levels on normal rows only
+ focal_weight · focal + SmoothL1 on the mask; the segmentation loss flows back into the UNet.
Inference uses fixed t_s = 200, t_b = 400 and one fixed noise draw per recipe seed, so an image
always gets the same score: the mean of the map's top_k pixels (the paper), or (scoring.image_score:
standardised, ours) of the map standardised per pixel against training normals, fitted by a
`score_scale` stage after `model`. Images are in [0, 1] as in the authors' code; x̂_0 is clamped to [-1, 1].
"""

from __future__ import annotations

import dataclasses
import math

import torch

from adcli.core.config import (FITTING_INFERENCE, DataConfig, EngineConfig, InferenceLoopConfig, LoopConfig, Section, SynthConfig,
                          synth_settings)
from adcli.model.diffusion import coarse_noise
from adcli.model.diffusion.norm_guided import norm_guided_x0
from adcli.model.diffusion.schedules import ScheduleConfig
from adcli.model.losses import binary_focal_loss, smooth_l1_on_probabilities
from adcli.data.batches import TrainBatch
from adcli.model.methods.base import AnomalyOutput, GradientStage, Method
from adcli.model.nets.segnet import SegNet, SegNetConfig
from adcli.model.nets.unet import UNet, UNetConfig, check_image_size
from adcli.model.postprocess import IMAGE_SCORE_KEYS, ImageScoreConfig, ImageScoring
from adcli.model.registry import register
from adcli.model.score_maps import gaussian_blur, top_k_mean


@dataclasses.dataclass(frozen=True)
class TrainConfig(LoopConfig):
    lr_unet: float = 1e-4
    lr_seg: float = 1e-5
    # Segmentation net's lr: "cosine_cycles" = the authors' train.py, CosineAnnealingLR(T_max=10,
    # eta_min=0) stepped after every iteration, so the lr swings lr_seg -> 0 -> lr_seg every 20 steps;
    # "half_cosine" = one half-cosine over the whole run; "constant".
    seg_lr_schedule: str = "cosine_cycles"
    seg_lr_t_max: int = 10  # steps from lr_seg down to 0 (cosine_cycles)
    seg_cosine: bool | None = None  # bundles before 0.2 stored this: true = half_cosine, false = constant

    def __post_init__(self):
        super().__post_init__()
        coarse_noise.check(self.coarse_noise, self.coarse_scale)
        if self.seg_cosine is not None:  # an older bundle's recipe: keep the schedule it was trained with
            object.__setattr__(self, "seg_lr_schedule", "half_cosine" if self.seg_cosine else "constant")
    t_split: int = 300  # t_s in [0, t_split), t_b in [t_split, T)
    focal_weight: float = 5.0
    focal_alpha: float = 0.5
    focal_gamma: float = 4.0
    # Departures for small CPU budgets (ours; null/false = the paper). With t_s ~ U[0, 300) a third of
    # the rows reconstruct the input unchanged and none looks like inference (t_s = 200, t_b = 400):
    # ranges near the inference levels make the segmentation input look as it will at inference.
    t_s_range: tuple[int, int] | None = None  # [lo, hi): t_s ~ U{lo..hi−1}; null = [0, t_split)
    t_b_range: tuple[int, int] | None = None  # null = [t_split, num_timesteps)
    seg_detach_recon: bool = False  # true: the segmentation loss does not train the UNet
    # Share of the noise ε's variance that is low-frequency (blurred with σ = coarse_scale · image side;
    # adcli/model/diffusion/coarse_noise.py), in training and at inference; 0 = white (paper).
    coarse_noise: float = 0.0
    coarse_scale: float = 0.0625


SEG_LR_SCHEDULES = ("cosine_cycles", "half_cosine", "constant")


def seg_lr_factor(schedule: str, t_max: int, total_steps: int):
    """step (0-based) -> multiplier of lr_seg for that step's update.

    cosine_cycles: ½(1 + cos(π·step / t_max)), the closed form of PyTorch's CosineAnnealingLR with
    eta_min = 0 stepped once per iteration (periodic: down to 0 at t_max, back up at 2·t_max).
    half_cosine: ½(1 + cos(π·step / total_steps)). constant: 1."""
    if schedule == "cosine_cycles":
        return lambda step: 0.5 * (1 + math.cos(math.pi * step / t_max))
    if schedule == "half_cosine":
        return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    return lambda step: 1.0


@dataclasses.dataclass(frozen=True)
class InferenceConfig(InferenceLoopConfig):
    t_s: int = 200
    t_b: int = 400
    guidance_w: float = 1.0
    top_k: int = 50
    # Gaussian σ (pixels) on the map before anything reads it; 0 = the paper's metrics (the authors'
    # eval.py smooths with σ = 4 only for its pictures).
    gaussian_sigma: float = 0.0


@dataclasses.dataclass(frozen=True)
class DiffusionADConfig:
    method: str
    seed: int
    data: DataConfig
    schedule: ScheduleConfig
    unet: UNetConfig
    segnet: SegNetConfig
    synth: SynthConfig
    train: TrainConfig
    inference: InferenceConfig
    scoring: ImageScoreConfig = ImageScoreConfig()  # what the top_k mean pools
    engine: EngineConfig = EngineConfig()

    def __post_init__(self):
        t = self.schedule.num_timesteps
        if self.train.seg_lr_schedule not in SEG_LR_SCHEDULES:
            raise ValueError(f"train.seg_lr_schedule must be one of {', '.join(SEG_LR_SCHEDULES)}")
        if self.train.seg_lr_t_max < 1:
            raise ValueError("train.seg_lr_t_max must be >= 1")
        if not 0 < self.train.t_split < t:
            raise ValueError(f"train.t_split must be in (0, {t})")
        for key in ("t_s_range", "t_b_range"):
            bounds = getattr(self.train, key)
            if bounds is not None and (len(bounds) != 2 or not 0 <= bounds[0] < bounds[1] <= t):
                raise ValueError(f"train.{key} must be [lo, hi) with 0 <= lo < hi <= {t}")
        if self.inference.gaussian_sigma < 0:
            raise ValueError("inference.gaussian_sigma must be >= 0")
        if not 0 <= self.inference.t_s < self.inference.t_b < t:
            raise ValueError(f"need 0 <= inference.t_s < inference.t_b < {t}")
        check_image_size(self.unet, self.data.image_size)

    @property
    def t_s_bounds(self) -> tuple[int, int]:
        r = self.train.t_s_range
        return (0, self.train.t_split) if r is None else (int(r[0]), int(r[1]))

    @property
    def t_b_bounds(self) -> tuple[int, int]:
        r = self.train.t_b_range
        return (self.train.t_split, self.schedule.num_timesteps) if r is None else (int(r[0]), int(r[1]))


@register("diffusionad", DiffusionADConfig)
class DiffusionAD(Method):
    map_range = (0.0, 1.0)  # the map is a probability: heatmaps are drawn on an absolute scale

    def __init__(self, config: DiffusionADConfig, categories: list[str], *, load_pretrained: bool = True):
        super().__init__(config, categories, load_pretrained=load_pretrained)  # nothing pretrained: trained from scratch
        self.unet = UNet(config.unet, config.data.image_size)
        self.segnet = SegNet(config.segnet, in_channels=6)
        self.schedule = config.schedule.make()

    def image_scoring(self) -> ImageScoring:
        c = self.config
        return ImageScoring(lambda maps: top_k_mean(maps, c.inference.top_k), lambda x, ids: self.anomaly_map(x)[0],
                            c.scoring.image_score == "standardised", c.scoring.normal_images,
                            (Section("scoring", IMAGE_SCORE_KEYS), FITTING_INFERENCE))

    def method_stages(self) -> list[GradientStage]:
        c = self.config
        # Every setting the trained weights depend on: a run that changes only the scoring reuses them.
        train = coarse_noise.fingerprint_settings(
            {k: v for k, v in dataclasses.asdict(c.train).items() if k != "checkpoint_minutes"})
        settings = {"schedule": dataclasses.asdict(c.schedule), "unet": dataclasses.asdict(c.unet),
                    "segnet": dataclasses.asdict(c.segnet), "synth": synth_settings(c.synth), "train": train}
        return [GradientStage("model", c.train.epochs, c.train.batch_size, self.param_groups, self.training_losses,
                              keeps=("unet.", "segnet."), settings=settings, synth=c.synth,
                              checkpoint_minutes=c.train.checkpoint_minutes)]

    def param_groups(self, total_steps: int) -> tuple[list[dict], list]:
        """Optimizer groups and, per group, an lr multiplier function of the step."""
        tc = self.config.train
        groups = [{"params": list(self.unet.parameters()), "lr": tc.lr_unet},
                  {"params": list(self.segnet.parameters()), "lr": tc.lr_seg}]
        return groups, [lambda step: 1.0, seg_lr_factor(tc.seg_lr_schedule, tc.seg_lr_t_max, total_steps)]

    def training_losses(self, batch: TrainBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        tc = self.config.train
        x0 = batch.images
        b, dev = x0.shape[0], x0.device
        t_s = torch.randint(*self.config.t_s_bounds, (b,), generator=generator, device=dev)
        t_b = torch.randint(*self.config.t_b_bounds, (b,), generator=generator, device=dev)
        noise_s = coarse_noise.source_noise(x0.shape, generator, dev, tc.coarse_noise, tc.coarse_scale)
        noise_b = coarse_noise.source_noise(x0.shape, generator, dev, tc.coarse_noise, tc.coarse_scale)
        out = norm_guided_x0(self.unet, x0, t_s, t_b, noise_s, noise_b, self.schedule, w=1.0)
        normal = ~batch.is_anomaly
        # ε-MSE on normal rows only: the denoiser must learn normal appearance alone.
        per_row = ((out["eps_s"] - noise_s) ** 2 + (out["eps_b"] - noise_b) ** 2).mean(dim=(1, 2, 3))
        noise_loss = per_row[normal].mean() if normal.any() else per_row.sum() * 0
        recon = out["x0_g"].detach() if tc.seg_detach_recon else out["x0_g"]
        logits = self.segnet(torch.cat([x0, recon], dim=1))
        focal = binary_focal_loss(logits, batch.masks, tc.focal_alpha, tc.focal_gamma)
        smooth = smooth_l1_on_probabilities(logits, batch.masks)
        loss = noise_loss + tc.focal_weight * focal + smooth
        return {"loss": loss, "noise": noise_loss.detach(), "focal": focal.detach(), "smooth_l1": smooth.detach()}

    def _inference_noise(self, shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        tc = self.config.train  # one draw for both noise levels
        noise = coarse_noise.fixed_source_noise(self.config.seed, (2, *shape), device, tc.coarse_noise, tc.coarse_scale)
        return noise[0:1], noise[1:2]

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) in [0, 1] -> (anomaly map (B, H, W), norm-guided reconstruction x̂_0^g)."""
        ic = self.config.inference
        b, dev = images.shape[0], images.device
        noise_s, noise_b = self._inference_noise(tuple(images.shape[1:]), dev)
        t_s = torch.full((b,), ic.t_s, device=dev, dtype=torch.long)
        t_b = torch.full((b,), ic.t_b, device=dev, dtype=torch.long)
        out = norm_guided_x0(self.unet, images, t_s, t_b, noise_s.expand_as(images), noise_b.expand_as(images),
                             self.schedule, w=ic.guidance_w)
        anomaly_map = torch.sigmoid(self.segnet(torch.cat([images, out["x0_g"]], dim=1)))[:, 0]
        return gaussian_blur(anomaly_map, ic.gaussian_sigma), out["x0_g"]

    @torch.no_grad()
    def predict(self, images: torch.Tensor, category_ids: torch.Tensor) -> AnomalyOutput:
        """images (B, 3, H, W) in [0, 1] at the recipe's size, category_ids (B,) -> AnomalyOutput."""
        anomaly_map, x0_g = self.anomaly_map(images)
        return AnomalyOutput(anomaly_map, self.image_score(anomaly_map, category_ids), x0_g.clamp(0, 1))
