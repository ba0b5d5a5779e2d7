"""A FIFO replay buffer of past final candidates, used as initialisations while training."""
from __future__ import annotations

from collections import deque

import torch
from torch import Tensor


class ReplayBuffer:
    """Stores rows of named tensors (e.g. context, candidate, target) first in, first out."""

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"replay buffer capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._rows: deque[dict[str, Tensor]] = deque(maxlen=capacity or None)

    def __len__(self) -> int:
        return len(self._rows) if self.capacity else 0

    def push(self, batch: dict[str, Tensor]) -> None:
        """Append every row of a batch (detached, on CPU); the oldest rows fall out when full."""
        if not self.capacity:
            return
        size = len(next(iter(batch.values())))
        for i in range(size):
            self._rows.append({k: v[i].detach().cpu().clone() for k, v in batch.items()})  # copies, not views

    def oldest(self) -> dict[str, Tensor]:
        """The row that will be evicted next."""
        return self._rows[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Draw n rows uniformly with replacement, stacked into a batch."""
        if len(self) == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = torch.randint(len(self._rows), (n,), generator=generator).tolist()
        rows = [self._rows[i] for i in idx]
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def mix_replay(buffer: ReplayBuffer, batch: dict[str, Tensor], fraction: float,
               generator: torch.Generator | None = None) -> tuple[dict[str, Tensor], bool]:
    """Swap the first `fraction` of a batch's rows for rows drawn from the buffer (same keys).

    Returns the mixed batch and whether anything was replayed; the batch is unchanged while the
    buffer is empty or off.
    """
    size = len(next(iter(batch.values())))
    n = int(fraction * size)
    if len(buffer) == 0 or n == 0:
        return batch, False
    old = buffer.sample(n, generator)
    return {k: torch.cat([v[n:], old[k].to(v.device, v.dtype)]) for k, v in batch.items()}, True
