"""`knn`: a PatchCore-style nearest-neighbour baseline (Roth et al., CVPR 2022). No training loop.

Per category, a memory bank of locally averaged (patch_size × patch_size) backbone features from
train/good, with the deeper layers upsampled to the first layer's grid and concatenated, reduced by
greedy coreset selection. Anomaly map = distance of each test patch to its nearest bank patch,
upsampled to the image size and smoothed with a Gaussian; image score = the largest patch distance
(before upsampling and smoothing, as PatchCore).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from adcli.core.config import DataConfig, EngineConfig, InferenceLoopConfig
from adcli.model.coreset import greedy_coreset
from adcli.data.batches import TrainImages, to_tensor
from adcli.model.methods.base import AnomalyOutput, FitStage, Method, StageContext
from adcli.model.nets.features import BackboneConfig, FeatureExtractor, random_backbone_state
from adcli.model.registry import register
from adcli.model.score_maps import gaussian_blur


@dataclasses.dataclass(frozen=True)
class KnnSettings:
    patch_size: int = 3
    coreset_ratio: float = 0.1
    projection_dim: int = 128
    gaussian_sigma: float = 4.0
    batch_size: int = 16  # images per backbone call while building the banks
    # Shifted views of the training images among the coreset's candidates (ours; PatchCore: none). A
    # pattern whose period is the feature grid's stride shows every cell of an image the same phase, so a
    # few dozen images leave most phases out of the bank. bank_shifts: offsets per axis, multiples of
    # stride / bank_shifts (1 = none); bank_views: image views a category's candidates may hold, so a
    # category with many images (whose phases vary anyway) gets few or no shifted views and memory stays
    # bounded (about bank_views × cells × features × 4 bytes).
    bank_shifts: int = 1
    bank_views: int = 1024

    def __post_init__(self):
        if not 0 < self.coreset_ratio <= 1:
            raise ValueError("knn.coreset_ratio must be in (0, 1]")
        if not 1 <= self.bank_shifts <= 8:
            raise ValueError(f"knn.bank_shifts must be an integer from 1 to 8, got {self.bank_shifts!r}")
        if self.bank_views < 1:
            raise ValueError(f"knn.bank_views must be at least 1, got {self.bank_views!r}")


@dataclasses.dataclass(frozen=True)
class KnnConfig:
    method: str
    seed: int
    data: DataConfig
    backbone: BackboneConfig
    knn: KnnSettings
    inference: InferenceLoopConfig = InferenceLoopConfig()
    engine: EngineConfig = EngineConfig()  # every recipe has one (the registry checks); knn has no gradient stage


@register("knn", KnnConfig)
class Knn(Method):
    map_range = None  # distances have no fixed scale: heatmaps are scaled per image until calibrated
    export_batches_by_category = True  # the graph searches the largest bank among a batch's categories

    def __init__(self, config: KnnConfig, categories: list[str], *, load_pretrained: bool = True):
        super().__init__(config, categories, load_pretrained=load_pretrained)
        # Without pretrained weights the extractor is built empty; a bundle then supplies its weights.
        state = None if load_pretrained else random_backbone_state(config.backbone)
        self.backbone = FeatureExtractor(config.backbone, state=state)
        self.banks = nn.ParameterDict()  # category -> (M, D) bank, filled by fit() or a bundle

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> locally averaged patch features (B, D, h, w) on the first layer's grid."""
        p = self.config.knn.patch_size
        maps = self.backbone(images)
        size = maps[0].shape[-2:]
        # Zero padding counts in the border averages, as in PatchCore's reference implementations (anomalib's
        # patchcore/torch_model.py: AvgPool2d(3, 1, 1)). Averaging borders over fewer cells instead made
        # them noisier than the interior: on magnetic_tile the image AUROC fell from 93.7 to 84.3.
        pooled = [F.avg_pool2d(m, p, stride=1, padding=p // 2) for m in maps]
        return torch.cat([F.interpolate(m, size=size, mode="bilinear", align_corners=False) if m.shape[-2:] != size else m
                          for m in pooled], dim=1)

    def method_stages(self) -> list[FitStage]:
        return [FitStage("banks", self.fit)]

    @torch.no_grad()
    def fit(self, data: TrainImages, ctx: StageContext) -> None:
        """Build each category's bank from its training images."""
        kc = self.config.knn
        ctx.log(f"building {self.name} banks on {len(data)} images of {len(self.categories)} categories, device {ctx.device}")
        with ctx.progress("fit", len(data)) as task:
            for index, cat in enumerate(self.categories):
                feats, cells = [], 0
                imgs = to_tensor(data.of_category(index))  # (N, 3, H, W) in [0, 1]
                offsets = shift_offsets(kc.bank_shifts)[:max(1, kc.bank_views // max(1, len(imgs)))]
                for i in range(0, len(imgs), kc.batch_size):
                    rows = self._bank_rows(imgs[i:i + kc.batch_size].to(ctx.device), offsets)
                    cells += len(rows[0])
                    feats.extend(rows)
                    task.advance(len(imgs[i:i + kc.batch_size]))
                bank = torch.cat(feats)
                # The ratio is of the unshifted images' cells: shifted views add candidates, not search time.
                count = max(1, int(round(kc.coreset_ratio * cells)))
                if count < len(bank):
                    g = torch.Generator().manual_seed(self.config.seed)
                    bank = bank[greedy_coreset(bank.to(ctx.device), count, kc.projection_dim, g).cpu()]
                self.banks[cat] = nn.Parameter(bank.to(ctx.device), requires_grad=False)

    def _bank_rows(self, images: torch.Tensor, offsets: list[tuple[int, int]]) -> list[torch.Tensor]:
        """images (B, 3, H, W) -> bank candidates, one (rows, D) tensor per offset (first (0, 0): every cell
        of the images as they are). Offset (oy, ox) moves the content down/right by that many
        stride / bank_shifts steps, the uncovered strip filled from the edge, and leaves out the first two
        rows/columns of cells, which see that strip."""
        def as_rows(f: torch.Tensor) -> torch.Tensor:  # (B, D, h, w) -> (B*h*w, D) on the CPU
            return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).cpu()

        f = self.patch_features(images)
        rows = [as_rows(f)]
        stride, shifts = images.shape[-1] // f.shape[-1], self.config.knn.bank_shifts
        for oy, ox in offsets[1:]:
            dy, dx = oy * stride // shifts, ox * stride // shifts
            moved = F.pad(images, (dx, 0, dy, 0), mode="replicate")[..., :images.shape[-2], :images.shape[-1]]
            rows.append(as_rows(self.patch_features(moved)[..., 2 if dy else 0:, 2 if dx else 0:]))
        return rows

    def fill_untrained(self, train_images: int) -> None:
        size = self.config.data.image_size
        with torch.no_grad():
            f = self.patch_features(torch.zeros(1, 3, size, size))
        rows = max(1, int(round(self.config.knn.coreset_ratio * train_images * f.shape[2] * f.shape[3])))
        for cat in self.categories:
            self.banks[cat] = nn.Parameter(torch.randn(rows, f.shape[1]), requires_grad=False)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        for key, value in state.items():  # bank sizes are known only from the saved weights
            if key.startswith("banks."):
                self.banks[key[len("banks."):]] = nn.Parameter(torch.empty_like(value), requires_grad=False)
        return super().load_state_dict(state, strict=strict, assign=assign)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, category_ids: torch.Tensor) -> AnomalyOutput:
        feats = self.patch_features(images)  # (B, D, h, w)
        b, d, h, w = feats.shape
        query = feats.flatten(2).transpose(1, 2)  # (B, h*w, D)
        maps = []
        for i in range(b):
            bank = self.banks[self.categories[int(category_ids[i])]]
            maps.append(nearest_distances(query[i], bank, bank.square().sum(dim=1)).reshape(h, w))
        return self.output(torch.stack(maps), images.shape[-2:])

    def output(self, patch_map: torch.Tensor, size) -> AnomalyOutput:
        """Nearest-bank distances (B, h, w) -> the image-size map and the image score."""
        full = F.interpolate(patch_map[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        anomaly_map = gaussian_blur(full, self.config.knn.gaussian_sigma)
        # PatchCore scores an image by its most anomalous patch; the Gaussian is for the map only (it
        # spreads a one-patch defect over σ² pixels and lowers its peak below normal texture's).
        return AnomalyOutput(anomaly_map, patch_map.flatten(1).amax(dim=1))

    def scoring_graph(self) -> nn.Module:
        return KnnGraph(self)


def shift_offsets(shifts: int) -> list[tuple[int, int]]:
    """The shifts × shifts grid of view offsets, coarsest first ((0, 0), then the half-stride ones, then the
    quarter-stride ones, ...), so that the first few views already spread over the phases."""
    def halvings(k: int) -> int:  # k / shifts of the stride lies on the grid of stride / 2^n for this n
        n = 0
        while (k * 2 ** n) % shifts and 2 ** n < shifts:
            n += 1
        return n

    grid = [(y, x) for y in range(shifts) for x in range(shifts)]
    return sorted(grid, key=lambda o: max(halvings(o[0]), halvings(o[1])))  # stable: row-major within a level


def nearest_distances(query: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of each query row to its nearest bank row: (Q, D), (M, D), |b|² (M,) -> (Q,).

    min |q − b|² = |q|² + min(|b|² − 2 q·b): one fused matrix product and the minimum over it, with
    |q|² added to the Q minima instead of to all Q × M entries (1.2× faster than torch.cdist here).
    """
    cross = torch.addmm(bank_sq[None, :], query, bank.T, alpha=-2)
    return (cross.amin(dim=1) + query.square().sum(dim=1)).clamp_min(0).sqrt()


class KnnGraph(nn.Module):
    """knn's scoring with no per-image Python, for export: every category's bank in one tensor chosen
    by index, cut to the longest bank among the batch's categories (a batch of one category searches
    exactly its bank). Each bank row b is stored as [−2b, |b|²] against the query [q, 1], so one matrix
    product gives |b|² − 2 q·b with no pass over its (patches × bank rows) result to scale or shift it
    (those two passes took a quarter of the search time in OpenVINO); rows past a shorter bank's end
    hold |b|² = 1e30, never nearest."""

    PAST_THE_END = 1e30  # finite: an infinity in a matrix product can turn into NaN in vectorised kernels

    def __init__(self, knn: Knn):
        super().__init__()
        self.knn = knn
        banks = [knn.banks[c].detach().float().cpu() for c in knn.categories]
        rows, dim = max(len(b) for b in banks), banks[0].shape[1]
        stacked = torch.zeros(len(banks), dim + 1, rows)  # (C, D + 1, M): transposed for the product
        stacked[:, dim, :] = self.PAST_THE_END
        for i, bank in enumerate(banks):
            stacked[i, :dim, :len(bank)] = -2 * bank.T
            stacked[i, dim, :len(bank)] = bank.square().sum(dim=1)
        self.register_buffer("banks", stacked)
        self.register_buffer("bank_rows", torch.tensor([len(b) for b in banks]))

    def forward(self, images: torch.Tensor, category_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.knn.patch_features(images)  # (B, D, h, w)
        b, d, h, w = feats.shape
        rows = self.bank_rows[category_ids].max().item()  # a size the exported graph reads from its inputs
        torch._check(rows >= 1)
        torch._check(rows <= self.banks.shape[2])
        query = feats.flatten(2).transpose(1, 2)  # (B, h*w, D)
        augmented = torch.cat([query, torch.ones_like(query[..., :1])], dim=2)  # [q, 1]
        cross = augmented @ self.banks[:, :, :rows][category_ids]  # (B, h*w, rows): |b|² − 2 q·b
        patch_map = (cross.amin(dim=2) + query.square().sum(dim=2)).clamp_min(0).sqrt().reshape(b, h, w)
        out = self.knn.output(patch_map, images.shape[-2:])
        return out.anomaly_map.float(), out.score.float()
