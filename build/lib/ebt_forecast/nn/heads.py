"""Output heads on the Transformer++ residual stream."""
from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from ebt_forecast.nn.transformer import RMSNorm


class EnergyHead(nn.Module):
    """Final RMSNorm, a linear map to one scalar per token, and a reduction to one energy per candidate."""

    def __init__(self, dim: int, reduction: Literal["sum", "mean"] = "mean"):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.proj = nn.Linear(dim, 1)
        self.reduction = reduction

    def token_energies(self, h: Tensor) -> Tensor:
        """Per-token energies (..., length)."""
        return self.proj(self.norm(h)).squeeze(-1)

    def forward(self, h: Tensor) -> Tensor:
        """One energy per candidate: tokens (..., length, dim) -> (...)."""
        e = self.token_energies(h)
        return e.sum(-1) if self.reduction == "sum" else e.mean(-1)


class LinearHead(nn.Module):
    """Final RMSNorm and a linear map: the feed-forward (System 1) output head."""

    def __init__(self, dim: int, out_features: int):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.proj = nn.Linear(dim, out_features)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(self.norm(h))
