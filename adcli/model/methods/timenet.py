"""TimeNet: class-conditional rectified flow, reflow, and a timestep-perceptive network; one step.

Training, in stages (adcli/commands/train/ runs them; each is resumable and kept in RUN/stages/):
  flow       v_0: a class-conditional UNet trained with the rectified-flow loss on normal images,
             X_t = t·X_1 + (1 − t)·X_0, target X_1 − X_0, t ~ U[t_min, 1]  (eq. 4)
  reflow<k>  k = 1..reflow.rounds: (X_0, X_1 = ODE[v_{k−1}](X_0 | c)) pairs per category, solved with
             RK45, then v_k fine-tuned from v_{k−1} on them  (algorithm 1)
  tpn        the denoiser frozen; the TPN (adcli/model/nets/tpn.py) trained on synthetic anomalies with
             MSE + LPIPS between X̂ = X_t + (1 − T) ⊙ v(X_t, t, c) and the normal image  (algorithm 2)
Where the TPN's features enter the denoiser is our choice, explained in adcli/model/nets/tpn.py: added to
the time + class embedding of every residual block at the matching feature-map size.
`tpn.enabled: false` drops the TPN (plain one-step rectified flow, the paper's Table 3 ablation).

Inference: X_t = t·X + (1 − t)·ε from one fixed noise draw per recipe seed (t = 0.83), one denoiser
and one TPN call, X̂ as above. Scores (DDAD-style, eq. 5): per backbone layer F(d1 = Euclidean,
d2 = cosine, w) upsampled and summed = S_f; S_p = ‖X − X̂‖² over channels; S = F(S_p, S_f, λ),
Gaussian-smoothed; image score = max after rounds of k×k average pooling. F's maxima are each image's
own, or (scoring.normaliser: normals) fixed per category from training normals by a `score_scale` stage,
which also fits (scoring.image_score: standardised) the per-pixel mean and spread the image score uses.
Images are [0, 1] outside this module and [−1, 1] inside the flow (X_0 ~ N(0, I)).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from adcli.core.config import FITTING_INFERENCE, DataConfig, EngineConfig, InferenceLoopConfig, LoopConfig, Section, SynthConfig, synth_settings
from adcli.data.batches import TrainBatch
from adcli.model.diffusion import coarse_noise
from adcli.model.diffusion import rectified_flow as rf
from adcli.core.io import load_tensors, save_tensors
from adcli.model.methods.base import AnomalyOutput, GradientStage, Method, StageContext
from adcli.model.nets.features import BackboneConfig, FeatureExtractor, random_backbone_state
from adcli.model.nets.perceptual import perceptual_loss
from adcli.model.nets.tpn import TimestepPerceptiveNet
from adcli.model.nets.unet import UNet, UNetConfig, check_image_size
from adcli.model.registry import register
from adcli.model.postprocess import ImageScoring, check_image_score, evenly_spaced
from adcli.model.score_maps import combine_ddad, cosine_distance, euclidean_distance, gaussian_blur, map_maxima, pooled_max, upsample_sum


@dataclasses.dataclass(frozen=True)
class FlowTrainConfig(LoopConfig):
    """Stage 1 (and the checkpoint interval of every stage)."""

    lr: float = 1e-4
    t_min: float = 1e-3  # t ~ U[t_min, 1]
    # Ours: share of the source noise X_0's variance that is low-frequency (blurred with σ = coarse_scale ·
    # image side; adcli/model/diffusion/coarse_noise.py), in every stage and at inference. 0 = white (paper).
    coarse_noise: float = 0.0
    coarse_scale: float = 0.0625

    def __post_init__(self):
        coarse_noise.check(self.coarse_noise, self.coarse_scale)


@dataclasses.dataclass(frozen=True)
class ReflowConfig:
    rounds: int = 1
    pairs_per_category: int = 200
    solve_batch: int = 16  # noises solved together as one ODE state
    rtol: float = 1e-5
    atol: float = 1e-5
    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-5

    def __post_init__(self):
        if self.rounds < 0 or self.pairs_per_category < 1 or self.solve_batch < 1 or self.epochs < 1 or self.batch_size < 2:
            raise ValueError("reflow: rounds >= 0, pairs_per_category >= 1, solve_batch >= 1, epochs >= 1, batch_size >= 2")


@dataclasses.dataclass(frozen=True)
class TPNConfig:
    enabled: bool = True
    unet: UNetConfig = UNetConfig(base_channels=64, channel_mults=(1, 1, 2, 2, 4, 4), attention_resolutions=(16, 8))
    epochs: int = 300
    batch_size: int = 16  # half normal, half synthetic anomalies
    lr: float = 1e-4
    train_t: tuple[float, ...] = (0.80, 0.85)  # t ~ U[a, b] while training; the T map starts at the middle
    perceptual: str = "alex"  # LPIPS network
    perceptual_weights: str | None = None  # its ImageNet weights file; null = search (adcli weights list)
    perceptual_fallback: bool = True  # no LPIPS weights: feature-space loss on the scoring backbone, logged
    perceptual_weight: float = 1.0

    def __post_init__(self):
        if len(self.train_t) != 2 or not 0 < self.train_t[0] <= self.train_t[1] < 1:
            raise ValueError("tpn.train_t must be [a, b] with 0 < a <= b < 1")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("tpn.epochs must be >= 1 and tpn.batch_size >= 2")


@dataclasses.dataclass(frozen=True)
class ScoringConfig:
    feature_weight: float = 7.0  # w in F(d1, d2, w) for every backbone layer
    pixel_weight: float = 7.0  # λ in S = F(S_p, S_f, λ)
    gaussian_sigma: float = 4.0
    pool_kernel: int = 8
    pool_rounds: int = 8
    # How F(d1, d2, w) scales d1 to d2: "image" = each image's own maxima (DDAD normalises by the maxima
    # of a test batch; one image is our batch, so a score never depends on its neighbours); "normals" =
    # per category, the mean of those maxima over `normaliser_images` training normals (stage
    # `score_scale`), so an image with larger errors than normal keeps a larger pixel term.
    normaliser: str = "image"
    normaliser_images: int = 64
    # What the image score pools: "map" = S itself (paper); "standardised" = S standardised per pixel by
    # the same training normals, (S − μ) / (σ + σ̄) per category (stage `score_scale`), so places where
    # normal images always reconstruct worse (an object's edges) do not decide the score. The anomaly
    # map stays S. Ours: measured in docs/benchmarks.md (TimeNet).
    image_score: str = "map"
    # Side (px) the images and their reconstructions are resized to (bilinear) before the backbone of the
    # feature term; None = as they are. Ours: at 256 px the backbone's maps are the paper's 64², 32², 16²,
    # so a model that reconstructs at 128 px can be scored on features of that resolution. On ../shared/data
    # the `cpu` model scored worse so (docs/benchmarks.md), and no profile sets it.
    feature_size: int | None = None

    def __post_init__(self):
        if self.feature_size is not None and self.feature_size < 32:
            raise ValueError(f"scoring.feature_size must be null or at least 32 px, not {self.feature_size}")
        if self.normaliser not in ("image", "normals"):
            raise ValueError(f"scoring.normaliser must be 'image' or 'normals', not {self.normaliser!r}")
        if self.normaliser_images < 1:
            raise ValueError("scoring.normaliser_images must be >= 1")
        check_image_score(self.image_score, self.normaliser_images, "scoring.normaliser_images")


@dataclasses.dataclass(frozen=True)
class InferenceConfig(InferenceLoopConfig):
    t: float = 0.83
    steps: int = 1  # Euler steps from t to 1; more than 1 only without the TPN (Table 3's rows)


@dataclasses.dataclass(frozen=True)
class TimeNetConfig:
    method: str
    seed: int
    data: DataConfig
    unet: UNetConfig
    train: FlowTrainConfig
    reflow: ReflowConfig
    tpn: TPNConfig
    synth: SynthConfig
    backbone: BackboneConfig
    scoring: ScoringConfig
    inference: InferenceConfig
    engine: EngineConfig = EngineConfig()

    def __post_init__(self):
        if not 0 < self.inference.t < 1:
            raise ValueError("inference.t must be in (0, 1)")
        if self.inference.steps < 1 or (self.tpn.enabled and self.inference.steps != 1):
            raise ValueError("inference.steps must be 1 with the TPN (>= 1 with tpn.enabled: false)")
        if not 0 < self.train.t_min < 1:
            raise ValueError("train.t_min must be in (0, 1)")
        check_image_size(self.unet, self.data.image_size, "unet")
        check_image_size(self.tpn.unet, self.data.image_size, "tpn.unet")


@dataclasses.dataclass
class PairBatch:
    x0: torch.Tensor  # (B, 3, H, W) noise
    x1: torch.Tensor  # (B, 3, H, W) the image the previous flow carries it to, in [−1, 1] (roughly)
    category_ids: torch.Tensor  # (B,)


class ReflowPairs:
    """(noise, generated image, class) triples, served in batches like the training images."""

    def __init__(self, x0: torch.Tensor, x1: torch.Tensor, category_ids: torch.Tensor, categories: list[str]):
        self.x0, self.x1, self.category_ids, self.categories = x0, x1, category_ids, categories

    def __len__(self) -> int:
        return len(self.x0)

    def batch(self, indices: np.ndarray, rng, synthesizer) -> PairBatch:
        idx = torch.from_numpy(np.asarray(indices))
        return PairBatch(self.x0[idx], self.x1[idx], self.category_ids[idx])


@register("timenet", TimeNetConfig)
class TimeNet(Method):
    map_range = None  # S has no fixed scale: heatmaps are scaled per image until calibrated

    def __init__(self, config: TimeNetConfig, categories: list[str], *, load_pretrained: bool = True):
        super().__init__(config, categories, load_pretrained=load_pretrained)
        size = config.data.image_size
        self.denoiser = UNet(config.unet, size, num_classes=len(categories))
        self.tpn = None
        if config.tpn.enabled:
            self.tpn = TimestepPerceptiveNet(config.tpn.unet, size, len(categories), self.denoiser.emb_dim,
                                             len(config.unet.channel_mults), initial_t=sum(config.tpn.train_t) / 2)
        state = None if load_pretrained else random_backbone_state(config.backbone)
        self.backbone = FeatureExtractor(config.backbone, state=state)
        if config.scoring.normaliser == "normals":  # (category, site, (max d1, max d2)); sites: layers, then pixel vs feature
            self.register_buffer("score_maxima", torch.ones(len(categories), len(config.backbone.layers) + 1, 2))
        self._perceptual: list[nn.Module] = []  # training only; a list keeps it out of the state dict

    def image_scoring(self) -> ImageScoring:
        """S pooled; the score_scale stage fits the normalisers (normaliser: normals) before the statistics
        of S, which is made with them."""
        sc = self.config.scoring
        names = ("normaliser", "normaliser_images", "feature_weight", "pixel_weight")
        if sc.image_score == "standardised":  # only then named: existing score_scale stages stay valid
            names += ("image_score", "gaussian_sigma")
        if sc.feature_size is not None:  # likewise: named only when set
            names += ("feature_size",)
        fixed = sc.normaliser == "normals"
        return ImageScoring(lambda maps: pooled_max(maps, sc.pool_kernel, sc.pool_rounds), self._score_map,
                            sc.image_score == "standardised", sc.normaliser_images,
                            (Section("scoring", names), FITTING_INFERENCE, Section("backbone")),
                            fit_constants=self._fit_normalisers if fixed else None,
                            constants=("score_maxima",) if fixed else ())

    # ---- training -------------------------------------------------------------------------------
    def method_stages(self) -> list[GradientStage]:
        c = self.config
        flow = coarse_noise.fingerprint_settings(
            {k: v for k, v in dataclasses.asdict(c.train).items() if k != "checkpoint_minutes"})
        stages = [GradientStage("flow", c.train.epochs, c.train.batch_size, self._groups(self.denoiser, c.train.lr),
                        self._flow_losses, keeps=("denoiser.",), settings={"unet": dataclasses.asdict(c.unet), "train": flow},
                        checkpoint_minutes=c.train.checkpoint_minutes)]
        reflow = {k: v for k, v in dataclasses.asdict(c.reflow).items() if k != "rounds"}
        for k in range(1, c.reflow.rounds + 1):
            stages.append(GradientStage(f"reflow{k}", c.reflow.epochs, c.reflow.batch_size,
                                        self._groups(self.denoiser, c.reflow.lr), self._pair_losses, keeps=("denoiser.",),
                                        # "pairs": how pairs are made; a new way must not reuse old stages
                                        settings={"reflow": reflow, "pairs": "torch-dopri5, mixed-category chunks"},
                                        make_data=lambda data, ctx, k=k: self._reflow_pairs(k, ctx),
                                        checkpoint_minutes=c.train.checkpoint_minutes))
        if self.tpn is not None:
            self._perceptual = [self._make_perceptual()]  # here, before the images load: missing weights fail fast
            stages.append(GradientStage("tpn", c.tpn.epochs, c.tpn.batch_size, self._groups(self.tpn, c.tpn.lr),
                                        self._tpn_losses, keeps=("tpn.",), synth=c.synth,
                                        settings={"tpn": dataclasses.asdict(c.tpn), "synth": synth_settings(c.synth),
                                          "perceptual": self._perceptual[0].description},
                                        checkpoint_minutes=c.train.checkpoint_minutes))
        return stages

    @staticmethod
    def _groups(module: nn.Module, lr: float):
        return lambda total_steps: ([{"params": list(module.parameters()), "lr": lr}], [lambda step: 1.0])

    def _make_perceptual(self) -> nn.Module:
        tc = self.config.tpn
        loss = perceptual_loss(tc.perceptual, tc.perceptual_weights, fallback=self.config.backbone if tc.perceptual_fallback else None)
        return loss.to(next(self.denoiser.parameters()).device)

    def _flow_t(self, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """t ~ U[t_min, 1], one per row of `like`."""
        t_min = self.config.train.t_min
        return t_min + (1 - t_min) * torch.rand(like.shape[0], generator=generator, device=like.device)

    def _source_noise(self, shape: tuple[int, ...], generator: torch.Generator, device) -> torch.Tensor:
        """X_0 for training, reflow pairs and the TPN: white, or with train.coarse_noise its low-frequency share."""
        tc = self.config.train
        return coarse_noise.source_noise(shape, generator, device, tc.coarse_noise, tc.coarse_scale)

    def _flow_losses(self, batch: TrainBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        x1 = batch.originals * 2 - 1
        x0 = self._source_noise(x1.shape, generator, x1.device)
        return {"loss": rf.flow_loss(self.denoiser, x1, x0, self._flow_t(x1, generator), y=batch.category_ids)}

    def _pair_losses(self, batch: PairBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"loss": rf.flow_loss(self.denoiser, batch.x1, batch.x0, self._flow_t(batch.x0, generator), y=batch.category_ids)}

    def _tpn_losses(self, batch: TrainBatch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        a, b = self.config.tpn.train_t
        x1 = batch.images * 2 - 1  # the (possibly anomalous) input
        x0 = self._source_noise(x1.shape, generator, x1.device)
        t = a + (b - a) * torch.rand(x1.shape[0], generator=generator, device=x1.device)
        x_hat = self.reconstruct(rf.interpolate(x0, x1, t), t, batch.category_ids)
        target = batch.originals * 2 - 1  # the normal image
        mse = (x_hat - target).pow(2).mean()
        perceptual = self._perceptual[0](((x_hat + 1) / 2).clamp(0, 1), batch.originals).mean()
        return {"loss": mse + self.config.tpn.perceptual_weight * perceptual, "mse": mse.detach(), "perceptual": perceptual.detach()}

    @torch.no_grad()
    def _reflow_pairs(self, round_k: int, ctx: StageContext) -> ReflowPairs:
        """Pairs (X_0, ODE[v_{k−1}](X_0 | c)), `reflow.pairs_per_category` per category, RK45 in the
        model's dtype, in chunks of `reflow.solve_batch` rows that may mix categories (each row carries
        its own class), so few pairs per category still fill a batch. Each chunk is saved to its own
        file in the scratch folder, so an interrupted generation resumes where it stopped; each chunk's
        noise comes from (seed, round, chunk number). Several processes share the chunks (every
        world-th each) and then send each other the results, so every rank trains on all pairs."""
        rc = self.config.reflow
        size = self.config.data.image_size
        ranks = ctx.ranks
        chunk_dir = ctx.scratch / f"reflow{round_k}_pairs_mixed"
        labels = torch.arange(len(self.categories)).repeat_interleave(rc.pairs_per_category)
        chunks = list(labels.split(rc.solve_batch))
        paths = [chunk_dir / f"{number:05d}.safetensors" for number in range(len(chunks))]

        def noise(number: int, rows: int) -> torch.Tensor:
            g = torch.Generator().manual_seed(int(np.random.default_rng([self.config.seed, round_k, number]).integers(2**62)))
            return self._source_noise((rows, 3, size, size), g, "cpu")

        # Rank 0's disk decides which chunks are done, so every rank agrees even on separate disks.
        on_disk = ranks.broadcast(torch.tensor([p.is_file() for p in paths], dtype=torch.uint8, device=ctx.device), 0)
        on_disk = on_disk.bool().tolist()
        solved: dict[int, torch.Tensor] = {}
        self.denoiser.eval()
        # Rank 0 reads the chunks already on disk; each missing chunk is solved by its owner.
        mine = [n for n in range(len(chunks)) if (ranks.is_main if on_disk[n] else ranks.owner(n) == ranks.rank)]
        with ctx.progress(f"reflow {round_k}: RK45 pairs", sum(len(chunks[n]) for n in mine)) as task:
            for number in mine:
                y = chunks[number]
                if on_disk[number]:
                    solved[number] = load_tensors(paths[number])["x1"].to(ctx.device)
                    task.advance(len(y))
                    continue
                x0 = noise(number, len(y))
                solved[number], nfe = rf.rk45(self.denoiser, x0.to(ctx.device), rtol=rc.rtol, atol=rc.atol, y=y.to(ctx.device))
                if ranks.is_main:  # an interrupted generation resumes from here
                    chunk_dir.mkdir(parents=True, exist_ok=True)
                    save_tensors(paths[number], {"x0": x0, "x1": solved[number].cpu(), "y": y.clone()})
                task.advance(len(y), evaluations=nfe)
        parts = []
        for number, y in enumerate(chunks):
            x0 = noise(number, len(y))
            source = 0 if on_disk[number] else ranks.owner(number)
            x1 = solved.get(number)
            if x1 is None:
                x1 = torch.empty(x0.shape, dtype=x0.dtype, device=ctx.device)
            x1 = ranks.broadcast(x1.contiguous(), source)
            if ranks.is_main and not paths[number].is_file():
                chunk_dir.mkdir(parents=True, exist_ok=True)
                save_tensors(paths[number], {"x0": x0, "x1": x1.cpu(), "y": y.clone()})
            parts.append({"x0": x0, "x1": x1.cpu(), "y": y.clone()})
        self.denoiser.train()
        return ReflowPairs(*(torch.cat([part[k] for part in parts]) for k in ("x0", "x1", "y")), self.categories)

    # ---- inference ------------------------------------------------------------------------------
    def reconstruct(self, x_t: torch.Tensor, t: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor:
        """One step from X_t (B, 3, H, W) at t (B,) to X̂_1, through the TPN when there is one."""
        t_scaled = t * rf.TIME_SCALE
        if self.tpn is None:
            if self.config.inference.steps > 1:  # Euler needs one t for the batch: predict() gives one
                return rf.euler(self.denoiser, x_t, float(t[0]), self.config.inference.steps, y=category_ids)
            return x_t + (1 - t).reshape(-1, 1, 1, 1) * self.denoiser(x_t, t_scaled, category_ids)
        t_map, emb_maps = self.tpn(x_t, category_ids)
        return x_t + (1 - t_map) * self.denoiser(x_t, t_scaled, category_ids, emb_maps=emb_maps)

    def anomaly_maps(self, images: torch.Tensor, reconstruction: torch.Tensor, norms: torch.Tensor | None = None,
                     record: list | None = None) -> torch.Tensor:
        """S = F(S_p, S_f, λ), smoothed. images, reconstruction (B, 3, H, W) in [0, 1] -> (B, H, W).

        norms: (B, L + 1, 2) fixed maxima of (d1, d2) for the L backbone layers, then for (S_p, S_f);
        None = each image's own. record: receives each site's per-image maxima (B, 2), in that order.
        """
        sc = self.config.scoring
        size = images.shape[-2:]
        pixel = (images - reconstruction).pow(2).sum(dim=1)
        layer_maps = []
        features = [self.backbone(self._backbone_view(x)) for x in (images, reconstruction)]
        for i, (a, b) in enumerate(zip(*features)):
            d1, d2 = euclidean_distance(a, b), cosine_distance(a, b)
            if record is not None:
                record.append(map_maxima(d1, d2))
            fixed = (None, None) if norms is None else (norms[:, i, 0], norms[:, i, 1])
            layer_maps.append(combine_ddad(d1, d2, sc.feature_weight, *fixed))
        feature = upsample_sum(layer_maps, size)
        if record is not None:
            record.append(map_maxima(pixel, feature))
        fixed = (None, None) if norms is None else (norms[:, -1, 0], norms[:, -1, 1])
        return gaussian_blur(combine_ddad(pixel, feature, sc.pixel_weight, *fixed), sc.gaussian_sigma)

    def _backbone_view(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) as the feature term's backbone sees them: resized to scoring.feature_size."""
        side = self.config.scoring.feature_size
        if side is None or tuple(images.shape[-2:]) == (side, side):
            return images
        return F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False)

    def _noised(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) in [0, 1] -> (X_t, t (B,)) at the recipe's t, from its fixed noise draw."""
        t = torch.full((images.shape[0],), self.config.inference.t, device=images.device)
        tc = self.config.train
        noise = coarse_noise.fixed_source_noise(self.config.seed, (1, *images.shape[1:]), images.device,
                                                tc.coarse_noise, tc.coarse_scale).expand_as(images)
        return rf.interpolate(noise, images * 2 - 1, t), t

    def _reconstruct_images(self, images: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> X̂ in [0, 1], from the recipe's t and its fixed noise draw."""
        x_t, t = self._noised(images)
        return ((self.reconstruct(x_t, t, category_ids) + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def timestep_map(self, images: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor | None:
        """The TPN's per-pixel timestep T (B, H, W) for these images as `predict` computes it (lower T =
        more of the image regenerated); None without a TPN. For probes (examples/probe_defects.py)."""
        if self.tpn is None:
            return None
        return self.tpn(self._noised(images)[0], category_ids)[0][:, 0]

    @torch.no_grad()
    def _fit_normalisers(self, data, ctx: StageContext) -> None:
        """normaliser "normals": per category, the mean per-image maxima of every site (the layers' first,
        since S_f is made with them) over up to `normaliser_images` evenly spaced training images."""
        sc, batch = self.config.scoring, self.config.inference.batch_size
        was_training = self.training
        self.eval()
        counts = [min(sc.normaliser_images, int((data.category_ids == c).sum())) for c in range(len(self.categories))]
        with ctx.progress("score normalisers", sum(counts)) as task:
            for cat, count in enumerate(counts):
                picked = evenly_spaced(data, cat, count)
                pairs, layer_records = [], []
                for i in range(0, count, batch):
                    x = picked[i:i + batch].to(ctx.device)
                    r = self._reconstruct_images(x, torch.full((len(x),), cat, dtype=torch.long, device=ctx.device))
                    record: list = []
                    self.anomaly_maps(x, r, record=record)
                    layer_records.append(torch.stack(record[:-1], dim=1))  # (B, L, 2)
                    pairs.append((x, r))
                    task.advance(len(x))
                maxima = torch.ones_like(self.score_maxima[cat])
                maxima[:-1] = torch.cat(layer_records).mean(dim=0)
                finals = []
                for x, r in pairs:  # S_f with the layers' fixed maxima, for the last site's maxima
                    record = []
                    self.anomaly_maps(x, r, norms=maxima.expand(len(x), -1, -1), record=record)
                    finals.append(record[-1])
                maxima[-1] = torch.cat(finals).mean(dim=0)
                self.score_maxima[cat] = maxima
        ctx.log("score normalisers: " + "; ".join(
            f"{name} pixel {float(m[-1, 0]):.4g} feature {float(m[-1, 1]):.4g}" for name, m in zip(self.categories, self.score_maxima)))
        self.train(was_training)

    def _score_map(self, images: torch.Tensor, category_ids: torch.Tensor) -> torch.Tensor:
        """S of `predict`: (B, 3, H, W) in [0, 1], (B,) -> (B, H, W)."""
        return self._anomaly_map(images, category_ids)[0]

    def _anomaly_map(self, images: torch.Tensor, category_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (S (B, H, W), the reconstruction X̂ (B, 3, H, W) it compares the images with)."""
        reconstruction = self._reconstruct_images(images, category_ids)
        norms = self.score_maxima[category_ids] if self.config.scoring.normaliser == "normals" else None
        return self.anomaly_maps(images, reconstruction, norms), reconstruction

    @torch.no_grad()
    def predict(self, images: torch.Tensor, category_ids: torch.Tensor) -> AnomalyOutput:
        """images (B, 3, H, W) in [0, 1] at the recipe's size, category_ids (B,) -> AnomalyOutput."""
        anomaly_map, reconstruction = self._anomaly_map(images, category_ids)
        return AnomalyOutput(anomaly_map, self.image_score(anomaly_map, category_ids), reconstruction)
