"""DiAD (He et al., AAAI 2024): latent diffusion guided by the input image through a semantic-guided
(SG) network with an SFF block; anomalies scored by comparing pretrained features of the input and
its reconstruction.

Training, in stages (adcli/commands/train/ runs them; each is resumable and kept in RUN/stages/):
  autoencoder  the KL autoencoder on train/good: L1 + perceptual + KL (weight 1e-6, relative to the
               per-image sums as in LDM's loss), and from `disc_start` on a patch discriminator's
               adversarial term (adcli/model/nets/discriminator.py). With `autoencoder.pretrained` (SD 1.5's
               vae/) it starts from those weights (`finetune`, the paper) or is skipped.
  denoiser     the latent denoiser (a Stable-Diffusion-style UNet) on the training latents, ε-MSE,
               t ~ U{0..T−1}: the plain LDM. Skipped with `unet.pretrained` (SD 1.5's unet/), which
               is how the paper starts: its SD denoiser comes pretrained.
  sg           (sg.enabled) the SG network, a fresh copy of the denoiser's encoder + middle block with
               the image as its hint, its outputs added to the denoiser's middle block and skip
               connections (SFF on the lowest scale), trained with the same ε-MSE. `sg.train`:
               "sg_decoder" trains the SG network and the denoiser's decoder half (the authors' code),
               "all" also the denoiser's encoder.
Latents are scaled by `autoencoder.scale_factor` (SD: 0.18215) or, when null, by 1/std of the
training latents (LDM's scale_by_std), fitted where the latents are first made.

Inference: encode (posterior mean), noise to `inference.start_t` with one fixed noise draw per recipe
seed, DDIM η = 0 over `inference.steps` steps with the SG network seeing the input, decode. Score:
cosine distance of backbone features of input and reconstruction per layer, upsampled and summed,
Gaussian-smoothed; image score = max after rounds of k×k average pooling, of that map (the paper) or
(scoring.image_score: standardised, ours) of the map standardised per pixel against training normals,
fitted by a `score_scale` stage after the last trained one. The whole batch goes through
every DDIM step together; no classifier-free guidance pass.
The text prompt is empty in DiAD; we have no text encoder, so the denoiser's cross-attention context
is one learned token (zeros at first), trained with the denoiser.
Images are [0, 1] outside this module, [−1, 1] into the autoencoder, [0, 1] as the SG hint.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from adcli.core.config import DataConfig, EngineConfig, InferenceLoopConfig, Section
from adcli.data.batches import TrainBatch, to_tensor
from adcli.model.diffusion.ddim import ddim_sample, ddim_timesteps
from adcli.model.diffusion.schedules import ScheduleConfig
from adcli.model.methods.base import AnomalyOutput, FitStage, FrozenPretrained, GradientStage, Method, StageContext
from adcli.model.nets import ldm
from adcli.model.nets.discriminator import PatchDiscriminator, adaptive_weight, hinge_discriminator_loss
from adcli.model.nets.features import BackboneConfig, FeatureExtractor, random_backbone_state
from adcli.model.nets.perceptual import perceptual_loss
from adcli.model.postprocess import ImageScoring, check_image_score
from adcli.model.registry import register
from adcli.core.device import fixed_noise, seeded
from adcli.model.score_maps import cosine_distance, gaussian_blur, pooled_max, upsample_sum


# Streams of DiAD._seeded: the discriminator's initial weights, the SG network's fresh hint encoder.
_DISCRIMINATOR_STREAM, _SG_STREAM = 1, 2


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig(ldm.AutoencoderArch):
    pretrained: str | None = None  # a local diffusers AutoencoderKL folder (or an SD checkout with vae/); null = train
    finetune: bool = False  # with `pretrained`: the autoencoder stage starts from it (the paper) instead of being skipped
    scale_factor: float | None = 0.18215  # SD's; null = 1/std of the training latents
    epochs: int = 10
    batch_size: int = 8
    lr: float = 4.5e-6
    kl_weight: float = 1e-6
    perceptual: str = "alex"  # LPIPS network
    perceptual_weights: str | None = None  # its ImageNet weights file; null = search (adcli weights list)
    perceptual_fallback: bool = True  # no LPIPS weights: feature-space loss on the scoring backbone, logged
    perceptual_weight: float = 1.0
    disc_start: int | None = None  # step of the autoencoder stage where the patch discriminator starts; null = none
    disc_weight: float = 0.5  # the adversarial term's gradient = this × the reconstruction term's, at the last layer
    disc_layers: int = 3
    disc_channels: int = 64

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("autoencoder.epochs and autoencoder.batch_size must be >= 1")
        if self.disc_start is not None and (self.disc_start < 0 or self.disc_weight < 0 or self.disc_layers < 1 or self.disc_channels < 1):
            raise ValueError("autoencoder.disc_start and disc_weight must be >= 0, disc_layers and disc_channels >= 1")
        if self.finetune and self.pretrained is None:
            raise ValueError("autoencoder.finetune needs autoencoder.pretrained (the weights to start from)")
        if self.scale_factor is not None and self.scale_factor <= 0:
            raise ValueError("autoencoder.scale_factor must be > 0 (or null: fitted)")


@dataclasses.dataclass(frozen=True)
class UNetConfig(ldm.DenoiserArch):
    pretrained: str | None = None  # a local diffusers UNet2DConditionModel folder (or an SD checkout with unet/)

    def __post_init__(self):
        if len(self.cross_attention) != len(self.block_out_channels):
            raise ValueError("unet.cross_attention needs one entry per unet.block_out_channels level")


@dataclasses.dataclass(frozen=True)
class DenoiserTrainConfig:
    epochs: int = 100
    batch_size: int = 12
    lr: float = 1e-4

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("denoiser.epochs must be >= 1 and denoiser.batch_size >= 2")


@dataclasses.dataclass(frozen=True)
class SGConfig:
    enabled: bool = True  # false = plain LDM (the paper's Table 7 "SD" row)
    hint_channels: tuple[int, ...] = (16, 32, 96, 256)  # conv-SiLU hint encoder; one stride-2 conv between entries
    sff: bool = True
    train: str = "sg_decoder"  # "sg_decoder" (authors' code) or "all"
    epochs: int = 1000
    batch_size: int = 12
    lr: float = 1e-5

    def __post_init__(self):
        if self.train not in ("sg_decoder", "all"):
            raise ValueError("sg.train must be sg_decoder or all")
        if self.epochs < 1 or self.batch_size < 2 or len(self.hint_channels) < 1:
            raise ValueError("sg.epochs must be >= 1, sg.batch_size >= 2, sg.hint_channels not empty")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    checkpoint_minutes: float = 10.0  # every stage checkpoints this often and at each epoch's end


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
    gaussian_sigma: float = 5.0
    pool_kernel: int = 8
    pool_rounds: int = 8
    # What the pooling sees: "map" (the paper) or "standardised": the map per pixel against the mean and
    # spread of training normals' maps (adcli/model/postprocess.py; ours).
    image_score: str = "map"
    normal_images: int = 64  # training images per category that fit it

    def __post_init__(self):
        check_image_score(self.image_score, self.normal_images)


@dataclasses.dataclass(frozen=True)
class InferenceConfig(InferenceLoopConfig):
    start_t: int = 999  # the input is noised to this timestep
    steps: int = 10  # DDIM steps from start_t to the data


@dataclasses.dataclass(frozen=True)
class DiADConfig:
    method: str
    seed: int
    data: DataConfig
    autoencoder: AutoencoderConfig
    unet: UNetConfig
    schedule: ScheduleConfig
    denoiser: DenoiserTrainConfig
    sg: SGConfig
    train: TrainConfig
    backbone: BackboneConfig
    scoring: ScoringConfig
    inference: InferenceConfig
    engine: EngineConfig = EngineConfig()

    def __post_init__(self):
        ae, size = self.autoencoder, self.data.image_size
        if size % ae.downsampling:
            raise ValueError(f"data.image_size {size} must be a multiple of the autoencoder's downsampling {ae.downsampling}")
        levels = len(self.unet.block_out_channels)
        if (size // ae.downsampling) % 2 ** (levels - 1):
            raise ValueError(f"the latent side {size // ae.downsampling} must be divisible by 2^{levels - 1} "
                             f"(unet.block_out_channels has {levels} levels)")
        if self.sg.enabled and 2 ** (len(self.sg.hint_channels) - 1) != ae.downsampling:
            raise ValueError(f"sg.hint_channels must downsample by the autoencoder's {ae.downsampling} "
                             f"({ae.downsampling.bit_length() - 1} stride-2 convs = that many + 1 entries)")
        if self.sg.enabled and self.sg.sff and levels < 2:
            raise ValueError("sg.sff needs a denoiser with at least two levels")
        if not 0 <= self.inference.start_t < self.schedule.num_timesteps:
            raise ValueError(f"inference.start_t must be in [0, {self.schedule.num_timesteps})")
        if not 1 <= self.inference.steps <= self.inference.start_t + 1:
            raise ValueError("inference.steps must be in [1, inference.start_t + 1]")


@dataclasses.dataclass
class LatentBatch:
    images: torch.Tensor  # (B, 3, H, W) in [0, 1]
    mean: torch.Tensor  # (B, C, h, w) posterior mean, unscaled
    std: torch.Tensor  # (B, C, h, w) posterior std
    category_ids: torch.Tensor  # (B,)


class TrainingLatents:
    """The training images with their (frozen) autoencoder posteriors, served in batches."""

    def __init__(self, data, mean: torch.Tensor, std: torch.Tensor):
        self.data, self.mean, self.std = data, mean, std
        self.categories = data.categories

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, indices: np.ndarray, rng, synthesizer) -> LatentBatch:
        idx = torch.from_numpy(np.asarray(indices))
        return LatentBatch(to_tensor(self.data.images[indices]), self.mean[idx], self.std[idx],
                           torch.from_numpy(self.data.category_ids[indices]))


@register("diad", DiADConfig)
class DiAD(Method):
    map_range = None  # summed cosine distances have no fixed scale: heatmaps are scaled per image until calibrated

    def __init__(self, config: DiADConfig, categories: list[str], *, load_pretrained: bool = True):
        super().__init__(config, categories, load_pretrained=load_pretrained)
        ae, size = config.autoencoder, config.data.image_size
        latent = size // ae.downsampling
        # A bundle supplies every weight: pretrained folders are read only when training starts from them.
        self.autoencoder = ldm.build_autoencoder(ae, size, ae.pretrained if load_pretrained else None)
        self.unet = ldm.build_denoiser(config.unet, ae.latent_channels, latent, config.unet.pretrained if load_pretrained else None)
        self.context = nn.Parameter(torch.zeros(1, 1, config.unet.context_dim))
        self.sg = self.sff = None
        if config.sg.enabled:
            self.sg = ldm.build_semantic_guided(self.unet, config.sg.hint_channels)
            if config.sg.sff:
                self.sff = ldm.SpatialFeatureFusion(ldm.sg_output_channels(config.unet), config.unet.layers_per_block)
        self.register_buffer("latent_scale", torch.tensor(ae.scale_factor or 1.0))
        self.schedule = config.schedule.make()
        state = None if load_pretrained else random_backbone_state(config.backbone)
        self.backbone = FeatureExtractor(config.backbone, state=state)
        self.discriminator: PatchDiscriminator | None = None  # made by stages() when the autoencoder stage is adversarial
        self._perceptual: list[nn.Module] = []  # training only; a list keeps it out of the state dict
        self._training_latents: TrainingLatents | None = None  # made once, shared by the denoiser and sg stages

    def image_scoring(self) -> ImageScoring:
        sc = self.config.scoring
        # The statistics depend on the whole scoring and inference sections and the backbone (cpu_dtype
        # included: so spelled when the stage was first written, and kept so its stage files stay valid).
        return ImageScoring(lambda maps: pooled_max(maps, sc.pool_kernel, sc.pool_rounds),
                            lambda x, ids: self.anomaly_maps(x, self.reconstruct(x)),
                            sc.image_score == "standardised", sc.normal_images,
                            (Section("backbone"), Section("scoring"), Section("inference")))

    # ---- training -------------------------------------------------------------------------------
    def method_stages(self) -> list[GradientStage]:
        c = self.config
        stages: list[GradientStage | FitStage] = []
        if self._trains_autoencoder:
            self._perceptual = [self._make_perceptual()]  # here, before the images load: missing weights fail fast
            if c.autoencoder.disc_start is not None and self.discriminator is None:
                with self._seeded(_DISCRIMINATOR_STREAM):
                    disc = PatchDiscriminator(3, c.autoencoder.disc_channels, c.autoencoder.disc_layers)
                self.discriminator = disc.to(self.latent_scale.device)
            stages.append(GradientStage("autoencoder", c.autoencoder.epochs, c.autoencoder.batch_size,
                                        self._autoencoder_groups, self._autoencoder_losses,
                                        keeps=("autoencoder.",), settings={"autoencoder": dataclasses.asdict(c.autoencoder),
                                                                           "perceptual": self._perceptual[0].description},
                                        unused_parameters=bool(c.autoencoder.disc_start),
                                        checkpoint_minutes=c.train.checkpoint_minutes))
        latent_settings = {"autoencoder": dataclasses.asdict(c.autoencoder), "schedule": dataclasses.asdict(c.schedule)}
        if c.unet.pretrained is None:
            stages.append(GradientStage("denoiser", c.denoiser.epochs, c.denoiser.batch_size,
                                        self._groups([self.unet, self.context], c.denoiser.lr), self._denoiser_losses,
                                        keeps=("unet.", "context", "latent_scale"), make_data=self._latents,
                                        settings={**latent_settings, "unet": dataclasses.asdict(c.unet),
                                                  "denoiser": dataclasses.asdict(c.denoiser)},
                                        checkpoint_minutes=c.train.checkpoint_minutes))
        if self.sg is not None:
            stages.append(GradientStage("sg", c.sg.epochs, c.sg.batch_size, self._groups(self._sg_trained(), c.sg.lr),
                                        self._denoiser_losses, keeps=("sg.", "sff.", "unet.", "context", "latent_scale"),
                                        make_data=self._start_sg, settings={**latent_settings, "sg": dataclasses.asdict(c.sg)},
                                        checkpoint_minutes=c.train.checkpoint_minutes))
        return stages

    @property
    def _trains_autoencoder(self) -> bool:
        return self.config.autoencoder.pretrained is None or self.config.autoencoder.finetune

    def training_only(self) -> tuple[str, ...]:
        return ("discriminator.",)

    def _autoencoder_groups(self, total_steps: int):
        """The autoencoder, and the discriminator when there is one; Adam β = (0.5, 0.9) as LDM's
        autoencoder training when adversarial (the default (0.9, 0.999) without)."""
        lr = self.config.autoencoder.lr
        if self.discriminator is None:
            return [{"params": list(self.autoencoder.parameters()), "lr": lr}], [lambda step: 1.0]
        return ([{"params": list(self.autoencoder.parameters()), "lr": lr, "betas": (0.5, 0.9)},
                 {"params": list(self.discriminator.parameters()), "lr": lr, "betas": (0.5, 0.9)}],
                [lambda step: 1.0, lambda step: 1.0])

    @staticmethod
    def _groups(modules: list, lr: float):
        def groups(total_steps):
            params = [p for m in modules for p in ([m] if isinstance(m, nn.Parameter) else m.parameters())]
            return [{"params": params, "lr": lr}], [lambda step: 1.0]
        return groups

    def _sg_trained(self) -> list:
        """The SG stage's parameters: the SG network (+ SFF) and the denoiser's decoder half (authors'
        code: output blocks and output layer), or everything (`sg.train: all`)."""
        if self.config.sg.train == "all":
            return [self.sg, *([self.sff] if self.sff is not None else []), self.unet, self.context]
        u = self.unet
        return [self.sg, *([self.sff] if self.sff is not None else []), u.up_blocks, u.conv_norm_out, u.conv_out]

    # ---- pretrained parts: referenced by a bundle, not stored ------------------------------------
    _SUBFOLDERS = {"autoencoder": "vae", "unet": "unet"}

    def frozen_pretrained(self) -> list[FrozenPretrained]:
        """The pretrained autoencoder (never trained) and the pretrained denoiser's parts no stage trains
        (with `sg.train: sg_decoder`, everything but its decoder half)."""
        c, parts = self.config, []
        sources = {"autoencoder": None if c.autoencoder.finetune else c.autoencoder.pretrained, "unet": c.unet.pretrained}
        trained = set()
        if self.sg is not None:
            trained = {id(p) for m in self._sg_trained() for p in ([m] if isinstance(m, nn.Parameter) else m.parameters())}
        for part, source in sources.items():
            if source is None:
                continue
            module = getattr(self, part)
            keys = tuple(f"{part}.{k}" for k, p in module.named_parameters() if id(p) not in trained)
            keys += tuple(f"{part}.{k}" for k, _ in module.named_buffers())
            if keys:
                parts.append(FrozenPretrained(part, source, self.find_pretrained(part, source), keys, (ldm.WEIGHTS_FILE, "config.json")))
        return parts

    @classmethod
    def find_pretrained(cls, part: str, source: str):
        return ldm.model_folder(source, cls._SUBFOLDERS[part])

    def pretrained_state(self, part: str, folder) -> dict[str, torch.Tensor]:
        c = self.config
        if part == "autoencoder":
            module = ldm.build_autoencoder(c.autoencoder, c.data.image_size, str(folder))
        elif part == "unet":
            module = ldm.build_denoiser(c.unet, c.autoencoder.latent_channels, c.data.image_size // c.autoencoder.downsampling, str(folder))
        else:
            return super().pretrained_state(part, folder)
        return {f"{part}.{k}": v for k, v in module.state_dict().items()}

    def _seeded(self, stream: int):
        """A seeded block for what training draws outside the model's seeded construction: torch's global
        generator starts from a different seed in every process. A stream of its own per use, from the
        recipe seed (as the training loop keys its steps), so no two such draws repeat each other."""
        return seeded(int(np.random.default_rng([self.config.seed, stream]).integers(2**62)))

    def _make_perceptual(self) -> nn.Module:
        ac = self.config.autoencoder
        # Seeded: a fallback backbone without weights (the test profile's) is initialised at random, and
        # this runs when training starts, outside the seeded construction of the model.
        with seeded(self.config.seed):
            loss = perceptual_loss(ac.perceptual, ac.perceptual_weights, fallback=self.config.backbone if ac.perceptual_fallback else None)
        return loss.to(self.latent_scale.device)

    def _autoencoder_losses(self, batch: TrainBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        ac = self.config.autoencoder
        x = batch.originals * 2 - 1
        posterior = self.autoencoder.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator, device=x.device)
        recon = self.autoencoder.decode(z).sample
        l1 = (recon - x).abs().mean()
        perceptual = self._perceptual[0](((recon + 1) / 2).clamp(0, 1), batch.originals).mean()
        # LDM sums the reconstruction terms over pixels and the KL over latents; per pixel here, so the KL
        # is divided by the pixel count to keep the paper's weight 1e-6 meaning the same.
        kl = posterior.kl().mean() / x[0].numel()
        reconstruction = l1 + ac.perceptual_weight * perceptual
        losses = {"loss": reconstruction + ac.kl_weight * kl,
                  "l1": l1.detach(), "perceptual": perceptual.detach(), "kl": (kl * x[0].numel()).detach()}
        if self.discriminator is not None:
            losses = self._adversarial(losses, reconstruction, x, recon)
        return losses

    def _adversarial(self, losses: dict, reconstruction: torch.Tensor, x: torch.Tensor, recon: torch.Tensor) -> dict:
        """LDM's adversarial terms from `disc_start` on: the autoencoder gets −mean D(x̂) (adaptively
        weighted; no gradient into D), the discriminator the hinge loss on x and detached x̂. One
        optimiser step updates both (LDM alternates two optimisers on the same batch)."""
        ac, disc = self.config.autoencoder, self.discriminator
        step = int(disc.steps)
        disc.steps += 1
        if step < ac.disc_start:
            return {**losses, "adversarial": torch.zeros(()), "disc": torch.zeros(())}
        disc.requires_grad_(False)
        generator = -disc(recon).mean()
        disc.requires_grad_(True)
        weight = adaptive_weight(reconstruction, generator, self.autoencoder.decoder.conv_out.weight, ac.disc_weight)
        disc_loss = hinge_discriminator_loss(disc(x.detach()), disc(recon.detach()))
        return {**losses, "loss": losses["loss"] + weight * generator + disc_loss,
                "adversarial": generator.detach(), "disc": disc_loss.detach()}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) in [0, 1] -> posterior (mean, std), unscaled, (B, C, h, w) each."""
        posterior = self.autoencoder.encode(images * 2 - 1).latent_dist
        return posterior.mean, posterior.std

    @torch.no_grad()
    def _latents(self, data, ctx: StageContext) -> TrainingLatents:
        """Every training image's posterior, once (the autoencoder is frozen from here on); with
        `autoencoder.scale_factor: null`, latent_scale = 1/std of the sampled training latents."""
        if self._training_latents is not None and self._training_latents.data is data:
            return self._training_latents
        batch = self.config.inference.batch_size
        was_training = self.autoencoder.training
        self.autoencoder.eval()
        means, stds = [], []
        with ctx.progress("encode training images", len(data)) as task:
            for i in range(0, len(data), batch):
                m, s = self.encode(to_tensor(data.images[i:i + batch]).to(ctx.device))
                means.append(m.cpu())
                stds.append(s.cpu())
                task.advance(len(m))
        self.autoencoder.train(was_training)
        mean, std = torch.cat(means), torch.cat(stds)
        if self.config.autoencoder.scale_factor is None:
            g = torch.Generator().manual_seed(self.config.seed)
            sample = mean + std * torch.randn(mean.shape, generator=g)
            self.latent_scale.fill_(1.0 / float(sample.std()))
            ctx.log(f"latent scale 1/std of {len(mean)} training latents: {float(self.latent_scale):.5g}")
        self._training_latents = TrainingLatents(data, mean, std)
        return self._training_latents

    def _start_sg(self, data, ctx: StageContext) -> TrainingLatents:
        """The SG stage starts from a copy of the trained denoiser's encoder (a resumed stage then loads
        its checkpoint over it), with zero convolutions, so its first step is the plain LDM's."""
        with self._seeded(_SG_STREAM):  # the hint encoder's convolutions are drawn afresh
            ldm.copy_encoder_into(self.sg, self.unet)
        if self.sff is not None:
            self.sff.zero_()
        return self._latents(data, ctx)

    def _denoiser_losses(self, batch: LatentBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        z0 = (batch.mean + batch.std * torch.randn(batch.mean.shape, generator=generator, device=batch.mean.device)) * self.latent_scale
        t = torch.randint(0, self.schedule.num_timesteps, (z0.shape[0],), generator=generator, device=z0.device)
        noise = torch.randn(z0.shape, generator=generator, device=z0.device)
        eps = self.eps(self.schedule.q_sample(z0, t, noise), t, batch.images)
        return {"loss": (eps - noise).pow(2).mean()}

    # ---- the denoiser -----------------------------------------------------------------------------
    def eps(self, z_t: torch.Tensor, t: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """ε̂(z_t, t) for latents (B, C, h, w) at integer timesteps t (B,), guided by images (B, 3, H, W)
        in [0, 1] through the SG network when there is one."""
        context = self.context.expand(z_t.shape[0], -1, -1)
        extra = {}
        if self.sg is not None:
            down, mid = self.sg(z_t, t, encoder_hidden_states=context, controlnet_cond=images, return_dict=False)
            if self.sff is not None:
                down = self.sff(down)
            extra = {"down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}
        return self.unet(z_t, t, encoder_hidden_states=context, **extra).sample

    # ---- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> reconstructions in [0, 1]: encode, noise to start_t with the
        recipe's fixed noise draw, DDIM η = 0, decode."""
        ic = self.config.inference
        z0 = self.encode(images)[0] * self.latent_scale
        noise = fixed_noise(self.config.seed, (1, *z0.shape[1:]), images.device).expand_as(z0)
        start = torch.full((z0.shape[0],), ic.start_t, device=images.device, dtype=torch.long)
        z_t = self.schedule.q_sample(z0, start, noise)
        steps = ddim_timesteps(self.schedule.num_timesteps, ic.steps, ic.start_t)
        z = ddim_sample(lambda x, t: self.eps(x, t, images), z_t, steps, self.schedule)
        return ((self.autoencoder.decode(z / self.latent_scale).sample + 1) / 2).clamp(0, 1)

    def anomaly_maps(self, images: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Σ_layers upsampled (1 − cos) of backbone features, smoothed. (B, 3, H, W) × 2 -> (B, H, W)."""
        maps = [cosine_distance(a, b) for a, b in zip(self.backbone(images), self.backbone(reconstruction))]
        return gaussian_blur(upsample_sum(maps, images.shape[-2:]), self.config.scoring.gaussian_sigma)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, category_ids: torch.Tensor) -> AnomalyOutput:
        reconstruction = self.reconstruct(images)
        anomaly_map = self.anomaly_maps(images, reconstruction)
        return AnomalyOutput(anomaly_map, self.image_score(anomaly_map, category_ids), reconstruction)
