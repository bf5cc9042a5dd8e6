"""Latent-diffusion networks for DiAD: the KL autoencoder, the Stable-Diffusion-style denoiser, the
semantic-guided (SG) network and the SFF block.

The autoencoder, the denoiser and the SG network's ControlNet-style encoder copy are diffusers'
standard implementations (`AutoencoderKL`, `UNet2DConditionModel`, `ControlNetModel`), so Stable
Diffusion 1.5 weights in diffusers' folder layout load into them unchanged. diffusers is imported
here only, when a DiAD model is built: `import adcli` and the other methods do not pay for it.

SFF (DiAD §3.3, eq. 8): each SG output at the lowest scale gets, through a zero-initialised
conv3×3 (stride 2) → InstanceNorm → SiLU, every SG output of the next-higher scale, and the sum goes
through a SiLU. Which outputs those are follows the encoder's layout: the last `layers_per_block + 1`
outputs (the last downsampler's and the lowest level's blocks) and the `layers_per_block + 1` before
them. The outer SiLU and the zero-initialised convolutions are the authors' (lewandofskee/DiAD,
sgn/sgn.py); at initialisation the block returns SiLU(0) = 0 for zero inputs, so an untrained SG
network changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import nn

from adcli.core.errors import AdcliError


@dataclasses.dataclass(frozen=True)
class AutoencoderArch:
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # one level each; downsampling 2^(levels − 1)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_groups: int = 32
    mid_attention: bool = True  # self-attention in the middle blocks (SD: yes; costly at small sizes on a CPU)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclasses.dataclass(frozen=True)
class DenoiserArch:
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    cross_attention: tuple[bool, ...] = (True, True, True, False)  # per level (SD: all but the lowest)
    heads: int = 8  # diffusers' `attention_head_dim` of SD 1.5 (= heads)
    context_dim: int = 768
    norm_groups: int = 32


def _diffusers():
    try:
        import diffusers
    except ImportError as exc:  # a broken install; diffusers is a dependency of adcli
        raise AdcliError(f"DiAD needs the diffusers package ({exc}); reinstall adcli") from None
    return diffusers


def autoencoder_config(arch: AutoencoderArch, image_size: int) -> dict:
    n = len(arch.block_out_channels)
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(arch.block_out_channels),
                layers_per_block=arch.layers_per_block, latent_channels=arch.latent_channels,
                norm_num_groups=arch.norm_groups, mid_block_add_attention=arch.mid_attention, sample_size=image_size)


def denoiser_config(arch: DenoiserArch, latent_channels: int, latent_size: int) -> dict:
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in arch.cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(arch.cross_attention))
    return dict(sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
                down_block_types=down, up_block_types=up, block_out_channels=tuple(arch.block_out_channels),
                layers_per_block=arch.layers_per_block, cross_attention_dim=arch.context_dim,
                attention_head_dim=arch.heads, norm_num_groups=arch.norm_groups)


WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"  # diffusers' weights file name in a model folder


def _hf_snapshots(source: str) -> list[Path]:
    """Snapshots of a Hugging Face cache repo named `source` ("org/name", or "name" for any org)."""
    from adcli.model.nets.weights import hf_cache_dir

    hf = hf_cache_dir()
    if not hf.is_dir() or source.startswith((".", "/", "~")):
        return []
    pattern = f"models--{source.replace('/', '--')}" if source.count("/") == 1 else f"models--*--{source}"
    return sorted(hf.glob(f"{pattern}/snapshots/*"))


def model_folder(source: str | Path, subfolder: str) -> Path:
    """A local diffusers model folder for a recipe's `pretrained` value: the folder itself or its
    `subfolder` (an SD 1.5 checkout's vae/, unet/); a relative name that is not a folder here is looked
    for in $ADCLI_WEIGHTS_DIR, then in the Hugging Face cache (as `org/name` or `name`). Never downloads."""
    given = Path(source).expanduser()
    roots = [given]
    if not given.is_absolute() and os.environ.get("ADCLI_WEIGHTS_DIR"):
        roots.append(Path(os.environ["ADCLI_WEIGHTS_DIR"]).expanduser() / given)
    roots += _hf_snapshots(str(source))
    for root in roots:
        for candidate in (root, root / subfolder):
            if (candidate / "config.json").is_file():
                if not (candidate / WEIGHTS_FILE).is_file():
                    raise AdcliError(f"{candidate} has config.json but no {WEIGHTS_FILE} (adcli reads safetensors "
                                     "only, never pickled .bin files); convert or fetch the safetensors file")
                return candidate
    where = " or ".join(str(r) for r in roots[:2]) + (" or the Hugging Face cache" if len(roots) <= 2 else "")
    raise AdcliError(f"no diffusers model '{source}' at {where} (ADCLI_WEIGHTS_DIR {os.environ.get('ADCLI_WEIGHTS_DIR', 'unset')}): "
                     f"need {subfolder}/config.json and {subfolder}/{WEIGHTS_FILE}, as in Stable "
                     "Diffusion 1.5's diffusers layout; or train from scratch with --profile cpu")


def _check_matches(folder: Path, wanted: dict, what: str) -> None:
    """The recipe's architecture is the bundle's: a pretrained folder must be that architecture."""
    found = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    differ = [f"{k}: recipe {list(v) if isinstance(v, tuple) else v}, folder {found.get(k)}" for k, v in wanted.items()
              if k != "sample_size" and (list(v) if isinstance(v, tuple) else v) != found.get(k)]
    if differ:
        raise AdcliError(f"{what} in {folder} is not the recipe's architecture ({'; '.join(differ[:3])}); "
                         "set the recipe's architecture keys to the folder's")


def build_autoencoder(arch: AutoencoderArch, image_size: int, pretrained: str | None = None) -> nn.Module:
    """diffusers AutoencoderKL; `pretrained`: a local diffusers folder (never downloads)."""
    d = _diffusers()
    config = autoencoder_config(arch, image_size)
    if pretrained is None:
        return d.AutoencoderKL(**config)
    folder = model_folder(pretrained, "vae")
    _check_matches(folder, config, "the autoencoder")
    return d.AutoencoderKL.from_pretrained(folder, local_files_only=True, use_safetensors=True)


def build_denoiser(arch: DenoiserArch, latent_channels: int, latent_size: int, pretrained: str | None = None) -> nn.Module:
    """diffusers UNet2DConditionModel; `pretrained`: a local diffusers folder (never downloads)."""
    d = _diffusers()
    config = denoiser_config(arch, latent_channels, latent_size)
    if pretrained is None:
        return d.UNet2DConditionModel(**config)
    folder = model_folder(pretrained, "unet")
    _check_matches(folder, config, "the denoiser")
    return d.UNet2DConditionModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)


def build_semantic_guided(denoiser: nn.Module, hint_channels: tuple[int, ...]) -> nn.Module:
    """The SG network: a ControlNet-style copy of the denoiser's encoder and middle block (weights
    copied), the image entering through a conv-SiLU hint encoder whose last conv is zero-initialised,
    every output through a zero-initialised 1×1 conv."""
    return _diffusers().ControlNetModel.from_unet(denoiser, conditioning_embedding_out_channels=tuple(hint_channels))


def copy_encoder_into(sg: nn.Module, denoiser: nn.Module) -> None:
    """Re-initialise `sg` as a fresh copy of `denoiser`'s encoder (zero convolutions zeroed again)."""
    fresh = _diffusers().ControlNetModel.from_unet(
        denoiser, conditioning_embedding_out_channels=tuple(sg.config.conditioning_embedding_out_channels))
    sg.load_state_dict(fresh.state_dict())


def sg_output_channels(denoiser_arch: DenoiserArch) -> list[int]:
    """Channels of the SG network's down outputs, in order (conv_in, then each level's blocks and downsampler)."""
    chans = [denoiser_arch.block_out_channels[0]]
    last = len(denoiser_arch.block_out_channels) - 1
    for level, ch in enumerate(denoiser_arch.block_out_channels):
        chans += [ch] * denoiser_arch.layers_per_block
        if level != last:
            chans.append(ch)
    return chans


class SpatialFeatureFusion(nn.Module):
    """DiAD's SFF block over the SG network's down outputs (list in, list out; see the module docstring)."""

    def __init__(self, output_channels: list[int], layers_per_block: int):
        super().__init__()
        group = layers_per_block + 1
        if len(output_channels) < 2 * group:
            raise ValueError("SFF needs at least two encoder levels")
        self.low = list(range(len(output_channels) - group, len(output_channels)))
        self.high = list(range(len(output_channels) - 2 * group, len(output_channels) - group))
        self.fuse = nn.ModuleList()
        for i in self.low:
            row = nn.ModuleList()
            for j in self.high:
                conv = nn.Conv2d(output_channels[j], output_channels[i], 3, stride=2, padding=1, bias=False)
                row.append(nn.Sequential(conv, nn.InstanceNorm2d(output_channels[i]), nn.SiLU()))
            self.fuse.append(row)
        self.act = nn.SiLU()
        self.zero_()

    @torch.no_grad()
    def zero_(self) -> None:
        """Zero every fusion convolution: the block then adds nothing (its state at the SG stage's start)."""
        for row in self.fuse:
            for block in row:
                block[0].weight.zero_()

    def forward(self, outputs: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        out = list(outputs)
        for row, i in zip(self.fuse, self.low):
            fused = outputs[i]
            for block, j in zip(row, self.high):
                fused = fused + block(outputs[j])
            out[i] = self.act(fused)
        return out
