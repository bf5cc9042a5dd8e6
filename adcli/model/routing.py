"""Which trained product an image shows (`--category auto`), from pretrained patch features.

An image's signature is a grid of patch features: MobileNetV2 (ImageNet) block 13 at 224² px, one
96-channel vector per 16×16-pixel patch (14×14 patches). Each category keeps a bank of patches
sampled from its good images; each patch of an image has a cosine distance to its nearest bank patch.

Which product an image shows is decided by its best-matching patches: it goes to the category where
the ROUTE_QUANTILE (10th percentile) of those distances is smallest. Whether it shows a trained
product at all needs most of it to match: its distance to that category is the PATCH_QUANTILE (35th
percentile), and it is UNKNOWN_CATEGORY when that exceeds the category's radius. Another product, an
empty fixture, a covered lens or another camera changes every patch; a defect leaves part of the
image looking like the product. The two quantiles differ because the block-13 patches see most of the
frame: a blob over half of a part disturbs nearly every patch, so at the 35th percentile such an image
is often nearer another product, while its best tenth still resembles its own (six real and three
generated products: the nearest category is its own for 95-97 % of such images at the 10th
percentile, 55-58 % at the 35th; defects and good images 100 % at both; docs/routing.md). Earlier
thumbnails (16×16 px of the whole image) moved with every defect.

The radius is RADIUS_FRACTION of the way from the 99th percentile of the category's held-out normals'
distances to the nearest reference that is certainly not that product (another trained category's
images, uniform grey frames, noise frames). It therefore scales with how far "not this product" is,
not with how tight the normals are (synthetic or very uniform products have normals an order of
magnitude tighter than their defects). Images with a blob over half of the part are mostly beyond it
(as far from their product as an empty frame is): UNKNOWN_CATEGORY, with their own product nearest.

The router (embedder weights, banks, radii inputs) is saved with the calibration as
RUN/routing-HASH.safetensors (adcli/bundle/calibration_files.py), so inspecting needs no pretrained weights on the line PC.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adcli.core.errors import BundleError
from adcli.model.nets.features import BackboneConfig, FeatureExtractor, random_backbone_state

EMBED_SIZE = 224  # px: the resolution MobileNetV2 was trained at
EMBED_CONFIG = BackboneConfig(name="mobilenet_v2", layers=("features.13",))
BANK_IMAGES = 256  # good images per category whose patches feed its bank
BANK_PATCHES = 4096  # patches kept per category
REFERENCE_IMAGES = 8  # per category: its images that test the other categories' radii
PATCH_QUANTILE = 0.35  # is it a trained product: the radius is checked at this quantile of patch distances
ROUTE_QUANTILE = 0.1  # which product: the nearest category at this quantile
RADIUS_FRACTION = 0.75
FORMAT_VERSION = 1


class PatchEmbedder(torch.nn.Module):
    """PIL images -> (N, P, C) unit-length patch features (P = 14×14 patches, C = 96). Frozen; thread-safe."""

    def __init__(self, state: dict | None = None):
        super().__init__()
        # Without a state: the ImageNet weights from the usual search (adcli/model/nets/weights.py).
        self.extractor = FeatureExtractor(EMBED_CONFIG, state)

    @staticmethod
    def view(image: Image.Image) -> np.ndarray:
        """What the embedder sees of an image: uint8 (EMBED_SIZE, EMBED_SIZE, 3). Cheap; any thread."""
        return np.asarray(image.convert("RGB").resize((EMBED_SIZE, EMBED_SIZE), Image.BILINEAR))

    def forward(self, images: list[Image.Image]) -> torch.Tensor:  # 16 at a time: memory stays small
        chunks = [self.embed_views(np.stack([self.view(im) for im in images[i:i + 16]])) for i in range(0, len(images), 16)]
        return torch.cat(chunks) if chunks else torch.zeros(0, 0, 0)

    @torch.inference_mode()
    def embed_views(self, views: np.ndarray) -> torch.Tensor:
        """uint8 (N, S, S, 3) views -> (N, P, C) unit-length patch features."""
        x = torch.from_numpy(np.ascontiguousarray(views)).permute(0, 3, 1, 2).float() / 255  # (N, 3, S, S)
        (features,) = self.extractor(x)  # (N, C, h, w)
        patches = features.flatten(2).transpose(1, 2)  # (N, C, h, w) -> (N, h*w, C)
        return torch.nn.functional.normalize(patches, dim=-1)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> PatchEmbedder:
        embedder = cls(random_backbone_state(EMBED_CONFIG))
        embedder.extractor.body.load_state_dict(tensors, strict=True)
        return embedder


def patch_distances(patches: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """patches (N, P, C) and a bank (M, C), unit length -> (N, P): each patch's nearest-bank cosine distance."""
    return torch.stack([1 - (p @ bank.T).amax(-1) for p in patches.float()]) if len(patches) else torch.zeros(0, 1)


def category_distance(patches: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """patches (N, P, C) and a bank (M, C), unit length -> (N,): the PATCH_QUANTILE of each image's
    nearest-bank cosine distances."""
    return torch.quantile(patch_distances(patches, bank), PATCH_QUANTILE, dim=1)  # (N, P) -> (N,)


def generic_frames() -> list[Image.Image]:
    """Frames that are certainly no product: uniform greys (empty fixture, covered lens) and noise."""
    rng = np.random.default_rng(0)
    greys = [Image.new("RGB", (EMBED_SIZE, EMBED_SIZE), (g, g, g)) for g in (0, 64, 128, 192, 255)]
    noise = [Image.fromarray(rng.integers(0, 256, (EMBED_SIZE, EMBED_SIZE, 3), dtype=np.uint8)) for _ in range(5)]
    return greys + noise


@dataclasses.dataclass
class CategoryProfile:
    bank: torch.Tensor  # (M, C) float16, unit-length patches of good images
    references: torch.Tensor  # (R, P, C) float16: a few of its good images, to bound the other categories
    normal_q99: float  # 99th percentile of held-out normals' distance to the bank


def build_profile(embedder: PatchEmbedder, bank_images: list[Image.Image], held_out: list[Image.Image],
                  seed: int = 0) -> CategoryProfile:
    """bank_images: good images for the bank (up to BANK_IMAGES are used); held_out: other good images."""
    if not bank_images or not held_out:
        raise ValueError("a routing profile needs bank images and held-out images")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(bank_images), min(BANK_IMAGES, len(bank_images)), replace=False))
    patches = embedder([bank_images[i] for i in chosen])
    flat = patches.reshape(-1, patches.shape[-1])  # (N, P, C) -> (N*P, C)
    bank = flat[torch.from_numpy(np.sort(rng.choice(len(flat), min(BANK_PATCHES, len(flat)), replace=False)))]
    distances = category_distance(embedder(held_out), bank)
    refs = patches[:REFERENCE_IMAGES]
    return CategoryProfile(bank.half(), refs.half(), float(np.quantile(distances.numpy(), 0.99)))


@dataclasses.dataclass(frozen=True)
class Route:
    """Where the router puts one image: its nearest category (at ROUTE_QUANTILE), its distance to it
    (at PATCH_QUANTILE), and whether that is within the category's radius (known) or the image resembles
    none of the trained products (UNKNOWN_CATEGORY: still scored there)."""

    category: str
    distance: float
    known: bool


class CategoryRouter:
    """image -> category name, or None when it resembles no trained category."""

    def __init__(self, embedder: PatchEmbedder, profiles: dict[str, CategoryProfile]):
        self.embedder, self.profiles = embedder, profiles
        self.categories = list(profiles)
        self.banks = [p.bank.float() for p in profiles.values()]
        generic = embedder(generic_frames())
        self.radius = {}
        for c, profile in profiles.items():
            others = [p.references.float() for o, p in profiles.items() if o != c]
            bank = profile.bank.float()
            nearest_other = min(float(category_distance(refs, bank).min()) for refs in [generic, *others])
            q99 = profile.normal_q99
            self.radius[c] = q99 + RADIUS_FRACTION * max(nearest_other - q99, 0.0)

    def distances(self, images: list[Image.Image]) -> np.ndarray:
        """(N, K): each image's distance to each category."""
        return self._distances(self.embedder(images))

    def _distances(self, patches: torch.Tensor) -> np.ndarray:
        return torch.stack([category_distance(patches, bank) for bank in self.banks], 1).numpy()

    def route(self, images: list[Image.Image]) -> list[str | None]:
        """Each image's category, None where it resembles none (`nearest` says which is nearest then)."""
        return [r.category if r.known else None for r in self.nearest(images)]

    def nearest(self, images: list[Image.Image]) -> list[Route]:
        return self.nearest_views(np.stack([PatchEmbedder.view(im) for im in images]))

    def nearest_views(self, views: np.ndarray) -> list[Route]:
        """uint8 (N, S, S, 3) from `PatchEmbedder.view` -> each image's nearest category and whether it
        lies within that category's radius. One network call for the whole batch (inspect routes a
        batch at a time, beside the model)."""
        patches = torch.cat([self.embedder.embed_views(views[i:i + 16]) for i in range(0, len(views), 16)])
        near = torch.stack([patch_distances(patches, bank) for bank in self.banks], 1)  # (N, K, P)
        choice = torch.quantile(near, ROUTE_QUANTILE, dim=-1).argmin(1).tolist()  # which product: best patches
        distance = torch.quantile(near, PATCH_QUANTILE, dim=-1).numpy()  # (N, K): within its radius?
        routes = []
        for row, k in zip(distance, choice):
            best = self.categories[k]
            routes.append(Route(best, float(row[k]), bool(row[k] <= self.radius[best])))
        return routes

    # ---- RUN/routing.safetensors ---------------------------------------------------------------
    def save(self, path: Path) -> None:
        from adcli.core.io import save_tensors

        tensors = {f"embedder.{k}": v for k, v in self.embedder.extractor.body.state_dict().items()}
        for i, p in enumerate(self.profiles.values()):
            tensors[f"bank.{i}"], tensors[f"references.{i}"] = p.bank, p.references
        meta = {"format_version": str(FORMAT_VERSION), "categories": json.dumps(self.categories),
                "normal_q99": json.dumps([p.normal_q99 for p in self.profiles.values()])}
        save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: Path) -> CategoryRouter:
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if int(meta.get("format_version", 0)) != FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format_version')} (expected {FORMAT_VERSION})")
            categories, q99 = json.loads(meta["categories"]), json.loads(meta["normal_q99"])
            profiles = {c: CategoryProfile(tensors[f"bank.{i}"], tensors[f"references.{i}"], float(q99[i]))
                        for i, c in enumerate(categories)}
            embedder = PatchEmbedder.from_tensors({k[9:]: v for k, v in tensors.items() if k.startswith("embedder.")})
        except Exception as exc:  # damaged or foreign file: one line, and what to do
            raise BundleError(f"{path}: unreadable routing data ({str(exc).splitlines()[0]}); "
                              "run `adcli calibrate` again") from None
        return cls(embedder, profiles)
