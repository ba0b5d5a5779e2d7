"""Transformer++ (Llama-style): RMSNorm, rotary positions, SwiGLU, pre-norm blocks.

One module serves the EBT and its feed-forward twin. Attention is written as plain matmuls so
that double backward (backprop through the thinking loop) works on every device, and masks are
data. A context that never attends to the candidate can be encoded once: `encode_context`
returns each layer's keys and values, and `forward_with_context` runs candidate tokens against
them, broadcasting one cached context over any number of candidates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KVCache = list[tuple[Tensor, Tensor]]  # per layer: keys, values (..., heads, length, head_dim)


@dataclass
class TransformerConfig:
    """Backbone size; FFN hidden width = ffn_multiplier * dim (the EBT paper uses 1)."""

    dim: int = 128
    depth: int = 3
    heads: int = 4
    ffn_multiplier: float = 2.0
    rope_base: float = 10000.0
    dropout: float = 0.0


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned gain."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLU(nn.Module):
    """Gated feed-forward: W2(silu(W1 x) * W3 x)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def rotary_angles(positions: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos and sin tables (length, head_dim / 2) for the given integer positions."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs of x (..., length, head_dim) by the position angles."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rotated.flatten(-2)


def masked_softmax_attention(q: Tensor, keys: list[Tensor], values: list[Tensor], masks: list[Tensor | None]) -> Tensor:
    """Softmax attention over several key blocks that broadcast against q's leading dims.

    Splitting keys into blocks lets one cached context serve many candidates without copying it.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = []
    for k, mask in zip(keys, masks):
        s = torch.matmul(q, k.transpose(-1, -2)) * scale
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        scores.append(s)
    sizes = [s.shape[-1] for s in scores]
    shape = torch.broadcast_shapes(*[s.shape[:-1] for s in scores])
    probs = torch.cat([s.expand(*shape, s.shape[-1]) for s in scores], dim=-1).softmax(dim=-1)
    out = 0
    for p, v in zip(probs.split(sizes, dim=-1), values):
        out = out + torch.matmul(p, v)
    return out


class Attention(nn.Module):
    """Multi-head self-attention with rotary positions, optionally against cached context keys."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        assert cfg.dim % cfg.heads == 0, "dim must be divisible by heads"
        self.heads, self.head_dim, self.rope_base = cfg.heads, cfg.dim // cfg.heads, cfg.rope_base
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def project(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys (both rotated) and values, shaped (..., heads, length, head_dim)."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).movedim(-3, 0).unbind(0)
        q, k, v = (t.transpose(-2, -3) for t in (q, k, v))
        cos, sin = rotary_angles(positions, self.head_dim, self.rope_base)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def merge(self, y: Tensor) -> Tensor:
        return self.dropout(self.out(y.transpose(-2, -3).flatten(-2)))

    def forward(
        self, x: Tensor, positions: Tensor, mask: Tensor | None,
        context: tuple[Tensor, Tensor] | None = None, context_mask: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        q, k, v = self.project(x, positions)
        keys, values, masks = [k], [v], [mask]
        if context is not None:
            keys.insert(0, context[0])
            values.insert(0, context[1])
            masks.insert(0, context_mask)
        return self.merge(masked_softmax_attention(q, keys, values, masks)), (k, v)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + swiglu(norm(x))."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim)
        self.ffn = SwiGLU(cfg.dim, max(1, int(cfg.ffn_multiplier * cfg.dim)), cfg.dropout)

    def forward(self, x, positions, mask, context=None, context_mask=None):
        h, kv = self.attn(self.attn_norm(x), positions, mask, context, context_mask)
        x = x + h
        return x + self.ffn(self.ffn_norm(x)), kv


class TransformerPP(nn.Module):
    """A stack of Transformer++ blocks; returns the residual stream (heads apply their own norm)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, x: Tensor, positions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Run tokens x (..., length, dim) at `positions` under `mask` (length, length)."""
        for block in self.blocks:
            x, _ = block(x, positions, mask)
        return x

    def encode_context(self, x: Tensor, positions: Tensor, mask: Tensor | None = None) -> tuple[Tensor, KVCache]:
        """Encode a context once; return its hidden states and every layer's keys and values."""
        cache: KVCache = []
        for block in self.blocks:
            x, kv = block(x, positions, mask)
            cache.append(kv)
        return x, cache

    def forward_with_context(
        self, x: Tensor, positions: Tensor, cache: KVCache,
        mask: Tensor | None = None, context_mask: Tensor | None = None,
    ) -> Tensor:
        """Run candidate tokens x against a cached context (its keys broadcast over x's leading dims).

        `mask` is candidate-to-candidate (Lq, Lq), `context_mask` candidate-to-context (Lq, Lk).
        """
        for block, kv in zip(self.blocks, cache):
            x, _ = block(x, positions, mask, kv, context_mask)
        return x

    @staticmethod
    def expand_cache(cache: KVCache, pattern: str, index: Tensor | None = None, candidate_dims: int = 1) -> KVCache:
        """Adapt a (batch, heads, L, d) cache to candidates: 'grouped' adds `candidate_dims` axes
        (batch, 1, ..., heads, L, d) for broadcasting; 'gather' picks rows by `index` for a flat subset."""
        if pattern == "grouped":
            shape = lambda t: t.view(t.shape[0], *[1] * candidate_dims, *t.shape[1:])  # noqa: E731
            return [(shape(k), shape(v)) for k, v in cache]
        if pattern == "gather":
            assert index is not None
            return [(k[index], v[index]) for k, v in cache]
        raise ValueError(f"unknown cache pattern {pattern!r}")
