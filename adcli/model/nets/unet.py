"""ADM-style UNet (Dhariwal & Nichol 2021; improved-diffusion) shared by the diffusion methods.

Residual blocks with GroupNorm + SiLU and an additive time embedding, self-attention at chosen
feature-map sizes, optional res-block up/down sampling, optional class embedding added to the time
embedding (TimeNet's class conditioning).

TimeNet's extensions, all off by default: `time_input=False` drops the time embedding (the TPN sees
no timestep; the class embedding alone drives the res blocks); `forward(..., emb_maps=...)` adds
spatial maps to the embedding of every block at a given feature-map size, so the embedding path can
vary per pixel; `forward(..., return_features=True)` also returns the decoder's last feature map at
each size.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from adcli.model.nets.blocks import group_norm, timestep_embedding, zero_module


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    base_channels: int = 128
    channel_mults: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # feature-map sizes (pixels) that get attention
    num_heads: int = 4
    dropout: float = 0.0
    resblock_updown: bool = True
    scale_shift_norm: bool = True  # ADM: the embedding scales and shifts the normalised features


def check_image_size(config: UNetConfig, image_size: int, name: str = "unet") -> None:
    """Each level halves the feature map: the image side must divide by 2^(levels − 1)."""
    levels = len(config.channel_mults)
    if image_size % 2 ** (levels - 1):
        raise ValueError(f"image size {image_size} is not divisible by 2^{levels - 1} for the {levels} levels of "
                         f"{name}.channel_mults; change data.image_size or {name}.channel_mults")


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, resample: str | None = None,
                 scale_shift: bool = True):
        super().__init__()
        self.resample = resample  # None | "up" | "down"
        self.scale_shift = scale_shift
        self.in_norm = group_norm(in_ch)
        self.in_conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch)
        self.out_norm = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """emb (B, D), or (B, D, h, w) for a per-pixel embedding (resized to this block's output)."""
        # Without autograd (scoring), fewer passes over the activations: SiLU and the residual sum in place,
        # the scale and shift in one addcmul. Training keeps the plain expressions (same numbers as before).
        fast = not torch.is_grad_enabled()
        h = F.silu(self.in_norm(x), inplace=fast)
        h = self.in_conv(self._resample(h))
        x = self._resample(x)
        if emb.ndim == 4:
            # The Linear as a 1×1 conv over the channels: (B, D, h, w) -> (B, C, h, w), no layout copies.
            e = F.conv2d(F.silu(emb), self.emb.weight[:, :, None, None], self.emb.bias)
            if e.shape[-2:] != h.shape[-2:]:
                e = F.adaptive_avg_pool2d(e, h.shape[-2:]) if e.shape[-1] > h.shape[-1] \
                    else F.interpolate(e, size=h.shape[-2:], mode="nearest")
        else:
            e = self.emb(F.silu(emb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, self.out_norm(h), 1 + scale) if fast else self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        h = self.out_conv(self.dropout(F.silu(h, inplace=fast)))
        return h.add_(self.skip(x)) if fast else self.skip(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, h * w))  # (B, 3C, HW)
        # (B, 3C, HW) -> 3 × (B, heads, HW, C/heads)
        q, k, v = qkv.reshape(b, 3, self.num_heads, c // self.num_heads, h * w).permute(1, 0, 2, 4, 3)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, C/heads)
        out = out.permute(0, 1, 3, 2).reshape(b, c, h * w)
        return x + self.proj(out).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x, emb=None):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, emb=None):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Sequence(nn.ModuleList):
    """Layers that take (x, emb); attention and resampling ignore emb."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb)
        return x


class UNet(nn.Module):
    """x (B, in, H, W), t (B,) [, y (B,) class ids] -> (B, out, H, W). H, W divisible by 2^(levels-1)."""

    def __init__(self, config: UNetConfig, image_size: int, in_channels: int = 3, out_channels: int = 3,
                 num_classes: int = 0, time_input: bool = True):
        super().__init__()
        self.config = config
        ch = config.base_channels
        ss = config.scale_shift_norm
        emb_dim = 4 * ch
        self.emb_dim = emb_dim
        if not time_input and num_classes <= 0:
            raise ValueError("a UNet without time input needs classes to condition on")
        self.time_embed = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)) if time_input else None
        self.class_embed = nn.Embedding(num_classes, emb_dim) if num_classes > 0 else None
        check_image_size(config, image_size)

        levels = len(config.channel_mults)

        def with_attention(layers: list, channels: int, size: int) -> Sequence:
            if size in config.attention_resolutions:
                layers.append(AttentionBlock(channels, config.num_heads))
            return Sequence(layers)

        self.input_blocks = nn.ModuleList([Sequence([_Conv(in_channels, ch)])])
        skip_channels = [ch]
        size = image_size
        cur = ch
        for level, mult in enumerate(config.channel_mults):
            for _ in range(config.num_res_blocks):
                block = [ResBlock(cur, mult * ch, emb_dim, config.dropout, scale_shift=ss)]
                cur = mult * ch
                self.input_blocks.append(with_attention(block, cur, size))
                skip_channels.append(cur)
            if level != levels - 1:
                down = ResBlock(cur, cur, emb_dim, config.dropout, "down", ss) if config.resblock_updown else Downsample(cur)
                self.input_blocks.append(Sequence([down]))
                skip_channels.append(cur)
                size //= 2
        self.middle_block = Sequence([ResBlock(cur, cur, emb_dim, config.dropout, scale_shift=ss),
                                      AttentionBlock(cur, config.num_heads),
                                      ResBlock(cur, cur, emb_dim, config.dropout, scale_shift=ss)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mults))):
            for i in range(config.num_res_blocks + 1):
                block = [ResBlock(cur + skip_channels.pop(), mult * ch, emb_dim, config.dropout, scale_shift=ss)]
                cur = mult * ch
                if size in config.attention_resolutions:
                    block.append(AttentionBlock(cur, config.num_heads))
                if level and i == config.num_res_blocks:
                    block.append(ResBlock(cur, cur, emb_dim, config.dropout, "up", ss) if config.resblock_updown else Upsample(cur))
                    size *= 2
                self.output_blocks.append(Sequence(block))
        self.out = nn.Sequential(group_norm(cur), nn.SiLU(), zero_module(nn.Conv2d(cur, out_channels, 3, padding=1)))

    def embed(self, t: torch.Tensor | None, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.class_embed is not None and y is None:
            raise ValueError("this UNet is class-conditional: pass class ids y")
        if self.time_embed is None:
            return self.class_embed(y)
        emb = self.time_embed(timestep_embedding(t, self.config.base_channels))
        if self.class_embed is not None:
            emb = emb + self.class_embed(y)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor | None, y: torch.Tensor | None = None,
                emb_maps: dict[int, torch.Tensor] | None = None, return_features: bool = False):
        """emb_maps: feature-map side -> (B, emb_dim, side, side), added to the embedding of every block
        whose input has that side. return_features: also return {side: decoder features (B, C, side, side)}."""
        emb = self.embed(t, y)

        combined: dict[int, torch.Tensor] = {}  # side -> embedding + map, built once per side

        def emb_at(h: torch.Tensor) -> torch.Tensor:
            side = h.shape[-1]
            if not emb_maps or side not in emb_maps:
                return emb
            if side not in combined:
                combined[side] = emb[:, :, None, None] + emb_maps[side]
            return combined[side]

        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb_at(h))
            skips.append(h)
        h = self.middle_block(h, emb_at(h))
        features = {}
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb_at(h))
            features[h.shape[-1]] = h  # the last block at each side wins
        out = self.out(h)
        return (out, features) if return_features else out


class _Conv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x, emb=None):
        return self.conv(x)
