"""Training signals that teach an energy to verify: rank candidates of one group by their error."""
from __future__ import annotations

import torch
from torch import Tensor


def listwise_ranking_loss(energies: Tensor, errors: Tensor, temperature: float = 0.1) -> Tensor:
    """Cross-entropy between soft targets softmax(-error / (t * mean error)) and softmax(-energy).

    energies, errors: (..., K) for groups of K candidates of the same prediction; lower energy
    should mean lower error. The temperature is relative to each group's mean error, so the loss
    is scale-free. Returns the mean over groups (a scalar); ln K when the energy is uninformative
    and the targets uniform.
    """
    scale = temperature * errors.detach().mean(-1, keepdim=True).clamp_min(1e-6)
    target = torch.softmax(-errors.detach() / scale, dim=-1)
    return -(target * torch.log_softmax(-energies, dim=-1)).sum(-1).mean()
