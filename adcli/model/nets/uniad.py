"""UniAD's feature reconstructor (You et al., NeurIPS 2022), the base model of DRDC.

Read from the authors' code (zhiyuanyou/UniAD, models/reconstructions/uniad.py): tokens = the
backbone feature grid, projected to `hidden_dim`; a learned position embedding (half the channels
from a row table, half from a column table) is added to queries and keys, never to values; an
encoder of post-norm self-attention layers; a decoder whose every layer starts from its own learned
query (one per grid cell), attends first to the encoder output and then to the previous decoder
layer's output (the encoder output for the first), each post-norm, then a feed-forward block; one
LayerNorm after the decoder; a linear projection back to the feature channels. Attention is masked
to a k×k neighbourhood of each cell, in the encoder and both decoder attentions, so a cell cannot
copy itself from far context alone. Linear weights xavier-uniform, biases zero (its
`initializer: xavier_uniform`). Attention is torch's `nn.MultiheadAttention` while training; in
evaluation `attend` computes the same maths from its weights on batch-first tensors (see there).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class ReconstructorArch:
    hidden_dim: int = 256
    heads: int = 8
    encoder_layers: int = 4
    decoder_layers: int = 4
    feedforward: int = 1024
    dropout: float = 0.1
    neighbour: int = 7  # k×k attention neighbourhood on the grid; 0 = unmasked
    mask: tuple[bool, bool, bool] = (True, True, True)  # where it applies: encoder, decoder→encoder, decoder→previous

    def __post_init__(self):
        if self.hidden_dim % self.heads or self.hidden_dim % 2:
            raise ValueError("hidden_dim must be even and a multiple of heads")
        if min(self.encoder_layers, self.decoder_layers, self.feedforward, self.heads) < 1 or self.neighbour < 0:
            raise ValueError("layers, feedforward and heads must be >= 1, neighbour >= 0")
        if self.neighbour and self.neighbour % 2 == 0:
            raise ValueError("neighbour must be odd (a window centred on each cell)")


def neighbour_mask(height: int, width: int, size: int) -> torch.Tensor:
    """(H·W, H·W) bool, True where attention is NOT allowed: cell j outside the size×size window
    centred on cell i (clipped at the borders). Row-major cells."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    near = ((ys[:, None] - ys[None, :]).abs() <= size // 2) & ((xs[:, None] - xs[None, :]).abs() <= size // 2)
    return ~near


def attend(attn: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           mask: torch.Tensor | None) -> torch.Tensor:
    """`attn(query, key, value, attn_mask=mask, need_weights=False)[0]` for batch-first (B, L, E) inputs.

    Out of training mode the projections run here on the batch-first tensors: nn.MultiheadAttention
    turns them sequence-first and, when query, key and value differ (always, here), projects each view
    as a batched product per token that ran at a fraction of a plain matrix product (a seventh of UniAD's
    paper-size inference time at batch 8 on 2 cores). Same weights, same maths, equal to float rounding. Training
    keeps the module itself, and with it its attention dropout."""
    if attn.training:
        return attn(query, key, value, attn_mask=mask, need_weights=False)[0]
    b, heads, e = query.shape[0], attn.num_heads, attn.embed_dim
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)

    def split(x: torch.Tensor) -> torch.Tensor:  # (B, L, E) -> (B, heads, L, E / heads)
        return x.reshape(b, -1, heads, e // heads).transpose(1, 2)

    q, k, v = split(F.linear(query, w_q, b_q)), split(F.linear(key, w_k, b_k)), split(F.linear(value, w_v, b_v))
    # nn.MultiheadAttention's boolean mask is True where attention is barred; SDPA's where it is allowed.
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else ~mask)
    return attn.out_proj(out.transpose(1, 2).reshape(b, -1, e))


class LearnedPosition(nn.Module):
    def __init__(self, height: int, width: int, dim: int):
        super().__init__()
        self.rows = nn.Parameter(torch.rand(height, dim // 2))
        self.cols = nn.Parameter(torch.rand(width, dim // 2))

    def forward(self) -> torch.Tensor:
        """-> (H·W, dim): column half first, then row half (the authors' order)."""
        h, w = self.rows.shape[0], self.cols.shape[0]
        return torch.cat([self.cols[None].expand(h, -1, -1), self.rows[:, None].expand(-1, w, -1)], dim=-1).flatten(0, 1)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EncoderLayer(nn.Module):
    def __init__(self, arch: ReconstructorArch):
        super().__init__()
        d = arch.hidden_dim
        self.attn = nn.MultiheadAttention(d, arch.heads, dropout=arch.dropout, batch_first=True)
        self.drop = nn.Dropout(arch.dropout)
        self.ff = _FeedForward(d, arch.feedforward, arch.dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = x + pos
        x = self.norm1(x + self.drop(attend(self.attn, q, q, x, mask)))
        return self.norm2(x + self.ff(x))


class DecoderLayer(nn.Module):
    def __init__(self, arch: ReconstructorArch, cells: int):
        super().__init__()
        d = arch.hidden_dim
        self.query = nn.Parameter(torch.randn(cells, d))  # nn.Embedding's N(0, 1)
        self.attn_memory = nn.MultiheadAttention(d, arch.heads, dropout=arch.dropout, batch_first=True)
        self.attn_previous = nn.MultiheadAttention(d, arch.heads, dropout=arch.dropout, batch_first=True)
        self.drop1, self.drop2 = nn.Dropout(arch.dropout), nn.Dropout(arch.dropout)
        self.ff = _FeedForward(d, arch.feedforward, arch.dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, previous: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor,
                mask_memory: torch.Tensor | None, mask_previous: torch.Tensor | None) -> torch.Tensor:
        t = self.query.expand(memory.shape[0], -1, -1)
        a = attend(self.attn_memory, t + pos, memory + pos, memory, mask_memory)
        t = self.norm1(t + self.drop1(a))
        a = attend(self.attn_previous, t + pos, previous + pos, previous, mask_previous)
        t = self.norm2(t + self.drop2(a))
        return self.norm3(t + self.ff(t))


class FeatureReconstructor(nn.Module):
    """features (B, C, H, W) -> reconstructed features (B, C, H, W), H = W = `grid`."""

    def __init__(self, channels: int, grid: int, arch: ReconstructorArch):
        super().__init__()
        self.grid, self.arch = grid, arch
        self.input_proj = nn.Linear(channels, arch.hidden_dim)
        self.output_proj = nn.Linear(arch.hidden_dim, channels)
        self.position = LearnedPosition(grid, grid, arch.hidden_dim)
        self.encoder = nn.ModuleList(EncoderLayer(arch) for _ in range(arch.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(arch, grid * grid) for _ in range(arch.decoder_layers))
        self.decoder_norm = nn.LayerNorm(arch.hidden_dim)
        mask = neighbour_mask(grid, grid, arch.neighbour) if arch.neighbour else torch.zeros(grid * grid, grid * grid, dtype=torch.bool)
        self.register_buffer("mask", mask, persistent=False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, c, h, w = features.shape
        if (h, w) != (self.grid, self.grid):
            raise ValueError(f"feature grid {h}x{w}, the reconstructor's is {self.grid}x{self.grid}")
        masks = [self.mask if (self.arch.neighbour and use) else None for use in self.arch.mask]
        tokens = self.input_proj(features.flatten(2).transpose(1, 2))  # (B, H·W, hidden)
        pos = self.position()[None]
        memory = tokens
        for layer in self.encoder:
            memory = layer(memory, pos, masks[0])
        out = memory
        for layer in self.decoder:
            out = layer(out, memory, pos, masks[1], masks[2])
        out = self.output_proj(self.decoder_norm(out))
        return out.transpose(1, 2).reshape(b, c, h, w)


def feature_jitter(features: torch.Tensor, scale: float, prob: float, generator: torch.Generator) -> torch.Tensor:
    """UniAD's training noise: with probability `prob` (one draw per batch, as the authors'), add
    N(0, (scale · ‖f‖ / C)²) per token, ‖f‖ the token's L2 norm over its C channels. (B, C, H, W)."""
    if scale <= 0 or float(torch.rand((), generator=generator, device=features.device)) > prob:
        return features
    norms = features.norm(dim=1, keepdim=True) / features.shape[1]
    noise = torch.randn(features.shape, generator=generator, device=features.device, dtype=features.dtype)
    return features + noise * norms * scale
