"""The thinking step size alpha: a parameter kept positive, optionally learnable."""
from __future__ import annotations

import torch
from torch import Tensor, nn

MIN_ALPHA = 1e-4


class StepSize(nn.Module):
    """alpha = max(raw, 1e-4), as in the EBT reference; `learnable=False` freezes it."""

    def __init__(self, alpha: float, learnable: bool = True):
        super().__init__()
        self.raw = nn.Parameter(torch.tensor(float(alpha)), requires_grad=learnable)

    def forward(self) -> Tensor:
        return self.raw.clamp(min=MIN_ALPHA)

    def randomised(self, shape: tuple[int, ...], scale: float, generator: torch.Generator | None = None) -> Tensor:
        """Per-candidate alpha drawn uniformly from [alpha / scale, alpha * scale]."""
        alpha = self()
        if scale <= 1.0:
            return alpha.expand(shape)
        u = torch.rand(shape, generator=generator, device=alpha.device)
        return alpha * (1.0 / scale + u * (scale - 1.0 / scale))
