"""The PETS-style baseline world model: an ensemble of MLPs, each fit on its own bootstrap of the transitions.

Each member maps a normalised (state, action, covariate) to the normalised next-state change
(deterministic, MSE). Members run as one batched matmul stack: weights (E, in, out). A rollout of
N plans assigns plan n to member n mod E (trajectory sampling with one particle per plan, as in
PETS's TS-inf), so one plan rollout is one model evaluation.
"""
from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ebt_forecast.tasks.base import OptimConfig


class TransitionDataset(Dataset):
    """`length` batches' worth of rows: each member draws its own bootstrap indices (seeded)."""

    def __init__(self, inputs: np.ndarray, deltas: np.ndarray, members: int, length: int, seed: int):
        rng = np.random.default_rng(seed)
        self.inputs, self.deltas = torch.from_numpy(inputs).float(), torch.from_numpy(deltas).float()
        boot = rng.integers(0, len(inputs), size=(members, len(inputs)))  # each member's bootstrap resample
        self.rows = boot[:, rng.integers(0, len(inputs), size=length)].T  # (length, E) rows per member
        self.rows = torch.from_numpy(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        r = self.rows[i]
        return {"inputs": self.inputs[r], "deltas": self.deltas[r]}  # (E, in), (E, S)


class EnsembleDynamics(L.LightningModule):
    """E MLPs (two SiLU hidden layers) predicting next-state changes."""

    def __init__(self, state_dim: int, action_dim: int, covariate_dim: int, members: int, hidden: int,
                 optim_cfg: OptimConfig, stats: dict[str, Tensor]):
        super().__init__()
        self.members, self.optim_cfg = members, optim_cfg
        sizes = [state_dim + action_dim + covariate_dim, hidden, hidden, state_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            self.weights.append(nn.Parameter(torch.randn(members, fan_in, fan_out) / math.sqrt(fan_in)))
            self.biases.append(nn.Parameter(torch.zeros(members, 1, fan_out)))
        for name, value in stats.items():  # input_mean, input_std, delta_mean, delta_std
            self.register_buffer(name, value.float().clone())

    def forward_normalised(self, x: Tensor) -> Tensor:
        """(E, N, in) normalised inputs -> (E, N, S) normalised changes."""
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < len(self.weights) - 1:
                x = nn.functional.silu(x)
        return x

    def step(self, states: Tensor, actions: Tensor, covariates: Tensor) -> Tensor:
        """Next states for (E, N, S) states, (E, N, A) actions, (E, N, C) covariates (env units): member e for row e."""
        x = (torch.cat([states, actions, covariates], dim=-1) - self.input_mean) / self.input_std
        return states + self.forward_normalised(x) * self.delta_std + self.delta_mean

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        x = (batch["inputs"].transpose(0, 1) - self.input_mean) / self.input_std  # (E, B, in)
        target = (batch["deltas"].transpose(0, 1) - self.delta_mean) / self.delta_std
        loss = (self.forward_normalised(x) - target).pow(2).mean()
        self.log("train/ensemble_mse", loss, prog_bar=True, batch_size=x.shape[1])
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.optim_cfg.lr, weight_decay=self.optim_cfg.weight_decay)


def ensemble_data(frame, state_cols, action_cols, covariate_cols) -> tuple[np.ndarray, np.ndarray, dict[str, Tensor]]:
    """Inputs (state, action, covariate), next-state changes and their normalisation statistics."""
    inputs = frame[[*state_cols, *action_cols, *covariate_cols]].to_numpy(np.float32)
    deltas = frame[[f"next_{c}" for c in state_cols]].to_numpy(np.float32) - frame[list(state_cols)].to_numpy(np.float32)
    std = lambda a: torch.from_numpy(a.std(0)).clamp_min(1e-6)  # noqa: E731
    stats = {"input_mean": torch.from_numpy(inputs.mean(0)), "input_std": std(inputs),
             "delta_mean": torch.from_numpy(deltas.mean(0)), "delta_std": std(deltas)}
    return inputs, deltas, stats
