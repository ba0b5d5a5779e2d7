"""The world-model EBT: one scalar energy for a candidate future (actions and states) given the past.

One window (K = context_steps, H = horizon; s = state, a = action, c = known covariate):

    context    [s_-K a_-K c_-K] ... [s_-1 a_-1 c_-1] [s_0 . .]     encoded once, keys / values cached
    candidate  [a_0 c_0 s_1] [a_1 c_1 s_2] ... [a_H-1 c_H-1 s_H]    bidirectional -> token energies -> mean

System 1 proposes the future states for given actions by rolling out a one-step MLP
(z_{h+1} = z_h + f(z_h, a_h, c_h), normalised units) from the current state: a one-shot
Transformer head over the action tokens was measured 100x worse at one step ahead on the pendulum
(normalised MSE 0.026 against 0.0003), and planning on it failed. The Transformer reads the
candidate future against the cached context and returns the energy; thinking descends it over
states (training, refinement) or over actions (planning), at a cost in proportion to the horizon.
States and covariates are normalised with the logged data's mean and standard deviation; actions
are mapped from their bounds to [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ebt_forecast.nn import TransformerConfig
from ebt_forecast.nn.heads import EnergyHead, LinearHead
from ebt_forecast.nn.transformer import KVCache, TransformerPP


@dataclass
class WorldShape:
    """Sizes of one window."""

    state_dim: int
    action_dim: int
    covariate_dim: int
    context_steps: int
    horizon: int


@dataclass
class WorldContext:
    """An encoded past: every layer's keys and values (B, heads, K + 1, d) and the current state (B, S)."""

    cache: KVCache
    current: Tensor  # normalised current state s_0


class WorldModelEBT(nn.Module):
    """System 1 dynamics head and an energy over (actions, states) futures, on one Transformer++."""

    def __init__(self, cfg: TransformerConfig, shape: WorldShape, state_mean: Tensor, state_std: Tensor,
                 covariate_mean: Tensor, covariate_std: Tensor, action_low: Tensor, action_high: Tensor,
                 dynamics_hidden: int = 128):
        super().__init__()
        s, a, c = shape.state_dim, shape.action_dim, shape.covariate_dim
        self.shape = shape
        self.context_in = nn.Linear(s + a + c + 1, cfg.dim)  # +1: flags the current-state token
        self.dynamics = nn.Sequential(nn.Linear(s + a + c, dynamics_hidden), nn.SiLU(),
                                      nn.Linear(dynamics_hidden, dynamics_hidden), nn.SiLU(),
                                      nn.Linear(dynamics_hidden, s))
        self.candidate_in = nn.Linear(a + c + s, cfg.dim)
        self.backbone = TransformerPP(cfg)
        self.state_head = LinearHead(cfg.dim, s)
        self.energy_head = EnergyHead(cfg.dim, reduction="mean")
        for name, value in [("state_mean", state_mean), ("state_std", state_std), ("covariate_mean", covariate_mean),
                            ("covariate_std", covariate_std), ("action_low", action_low), ("action_high", action_high)]:
            self.register_buffer(name, value.float().clone())
        k, h = shape.context_steps, shape.horizon
        self.register_buffer("context_positions", torch.arange(k + 1), persistent=False)
        self.register_buffer("future_positions", torch.arange(k + 1, k + 1 + h), persistent=False)

    # -- units ---------------------------------------------------------------------------------
    def normalise_states(self, states: Tensor) -> Tensor:
        return (states - self.state_mean) / self.state_std

    def denormalise_states(self, z: Tensor) -> Tensor:
        return z * self.state_std + self.state_mean

    def scale_actions(self, actions: Tensor) -> Tensor:
        """Env units -> [-1, 1]."""
        return 2 * (actions - self.action_low) / (self.action_high - self.action_low) - 1

    def normalise_covariates(self, covariates: Tensor) -> Tensor:
        return (covariates - self.covariate_mean) / self.covariate_std

    # -- the three passes ----------------------------------------------------------------------
    def encode(self, past_states: Tensor, past_actions: Tensor, past_covariates: Tensor) -> WorldContext:
        """Encode (B, K + 1, S) states, (B, K, A) actions and (B, K, C) covariates (env units) once."""
        z = self.normalise_states(past_states)
        b = z.shape[0]
        pad = lambda t, n: torch.cat([t, t.new_zeros(b, 1, n)], dim=1)  # noqa: E731  the current token has no action
        a = pad(self.scale_actions(past_actions), self.shape.action_dim)
        c = pad(self.normalise_covariates(past_covariates), self.shape.covariate_dim)
        flag = torch.zeros(b, z.shape[1], 1, device=z.device)
        flag[:, -1] = 1.0
        tokens = self.context_in(torch.cat([z, a, c, flag], dim=-1))
        _, cache = self.backbone.encode_context(tokens, self.context_positions)
        return WorldContext(cache, z[:, -1])

    def propose(self, context: WorldContext, actions: Tensor, covariates: Tensor) -> Tensor:
        """System 1: normalised future states (B, *N, H, S) for future actions (B, *N, H, A) in env units
        and covariates broadcastable to (B, *N, H, C), by rolling the one-step MLP out from s_0."""
        a = self.scale_actions(actions)
        c = self.normalise_covariates(covariates).expand(*a.shape[:-1], self.shape.covariate_dim)
        z = context.current.view(context.current.shape[0], *[1] * (a.dim() - 3), -1).expand(*a.shape[:-2], -1)
        states = []
        for h in range(a.shape[-2]):
            z = z + self.dynamics(torch.cat([z, a[..., h, :], c[..., h, :]], dim=-1))
            states.append(z)
        return torch.stack(states, dim=-2)

    def energy(self, cache: KVCache, actions: Tensor, covariates: Tensor, states: Tensor) -> Tensor:
        """Energies (...) of futures: actions (..., H, A) env units, covariates broadcastable, normalised
        states (..., H, S); `cache` already broadcasts against the leading dims (see `expand_cache`)."""
        lead = states.shape[:-1]
        a = self.scale_actions(actions).expand(*lead, self.shape.action_dim)
        c = self.normalise_covariates(covariates).expand(*lead, self.shape.covariate_dim)
        tokens = self.candidate_in(torch.cat([a, c, states], dim=-1))
        h = self.backbone.forward_with_context(tokens, self.future_positions, cache)
        return self.energy_head(h)
