"""The control task's module: the world-model EBT behind the task interface, and its training windows.

Training (the forecast recipe on states): System 1 proposes the future states for the logged
actions; the engine refines the proposal and a perturbed copy by descending the energy over states
(second order through the last step); the loss is the MSE of the proposal and of the refined states
to the logged ones, plus a listwise ranking loss that teaches the energy to order candidate futures
(the logged one, the proposal, perturbed and refined ones) by their error.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ebt_forecast.nn import TransformerConfig, TransformerPP
from ebt_forecast.tasks.base import OptimConfig, TaskModule
from ebt_forecast.tasks.control.config import ControlTaskConfig
from ebt_forecast.tasks.control.model import WorldContext, WorldModelEBT, WorldShape
from ebt_forecast.think import Starts, ThinkConfig, listwise_ranking_loss

WINDOW_KEYS = ("past_states", "past_actions", "past_covariates", "future_actions", "future_covariates", "future_states")


def episode_arrays(frame: pd.DataFrame, state_cols, action_cols, covariate_cols) -> list[dict[str, np.ndarray]]:
    """Per episode: states (T + 1, S), actions (T, A), covariates (T, C) from a logged-transitions frame."""
    episodes = []
    for _, ep in frame.sort_values(["episode", "t"]).groupby("episode", sort=True):
        states = ep[list(state_cols)].to_numpy(np.float32)
        last = ep[[f"next_{c}" for c in state_cols]].to_numpy(np.float32)[-1:]
        episodes.append({"states": np.concatenate([states, last]), "actions": ep[list(action_cols)].to_numpy(np.float32),
                         "covariates": ep[list(covariate_cols)].to_numpy(np.float32).reshape(len(ep), len(covariate_cols))})
    return episodes


def window(ep: dict[str, np.ndarray], t: int, context_steps: int, horizon: int) -> dict[str, np.ndarray]:
    """The window whose current step is t: K past steps (padded at the episode start with the first state
    and zero actions) and the next H actions, covariates and states (the episode must have them)."""
    k = context_steps
    idx = np.arange(t - k, t + 1)
    pad = idx < 0
    states = ep["states"][np.clip(idx, 0, None)]
    actions = ep["actions"][np.clip(idx[:-1], 0, None)] * (~pad[:-1])[:, None]
    covariates = ep["covariates"][np.clip(idx[:-1], 0, None)]
    return {"past_states": states, "past_actions": actions.astype(np.float32), "past_covariates": covariates,
            "future_actions": ep["actions"][t:t + horizon], "future_covariates": ep["covariates"][t:t + horizon],
            "future_states": ep["states"][t + 1:t + 1 + horizon]}


class WindowDataset(Dataset):
    """`length` training windows drawn (seeded) from every position of every episode with a full horizon."""

    def __init__(self, episodes: list[dict[str, np.ndarray]], context_steps: int, horizon: int, length: int, seed: int):
        self.episodes, self.k, self.h = episodes, context_steps, horizon
        positions = [(e, t) for e, ep in enumerate(episodes) for t in range(len(ep["actions"]) - horizon + 1)]
        if not positions:
            raise ValueError(f"no episode is longer than the horizon {horizon}")
        rng = np.random.default_rng(seed)
        self.order = [positions[i] for i in rng.integers(0, len(positions), size=length)]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        e, t = self.order[i]
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in window(self.episodes[e], t, self.k, self.h).items()}


class ControlModule(TaskModule):
    """Logged windows in, future states out; the energy scores (actions, states) futures."""

    def __init__(self, model_cfg: TransformerConfig, think_cfg: ThinkConfig, optim_cfg: OptimConfig,
                 task_cfg: ControlTaskConfig, shape: WorldShape, stats: dict[str, Tensor]):
        super().__init__(think_cfg, optim_cfg)
        self.task_cfg = task_cfg.validate()
        self.model = WorldModelEBT(model_cfg, shape, **stats)

    # -- the task interface --------------------------------------------------------------------
    def encode(self, batch: dict[str, Tensor]) -> WorldContext:
        """The past, encoded once."""
        return self.model.encode(batch["past_states"], batch["past_actions"], batch["past_covariates"])

    def propose(self, encoding: WorldContext, batch: dict[str, Tensor], num_candidates: int, group: int,
                generator: torch.Generator | None = None) -> Starts:
        """System 1's future states for the batch's actions (one proposal: the model is deterministic),
        G starts: the proposal and G - 1 perturbed copies; the energy over states at those actions."""
        proposal = self.model.propose(encoding, batch["future_actions"], batch["future_covariates"]).unsqueeze(1)
        noise = torch.randn((*proposal.shape[:1], group - 1, *proposal.shape[2:]), generator=generator,
                            device=proposal.device)
        starts = torch.cat([proposal, proposal + self.task_cfg.start_noise * noise], dim=1).unsqueeze(1)
        proposals = proposal.expand(-1, num_candidates, -1, -1)
        starts = starts.expand(-1, num_candidates, -1, -1, -1)
        return Starts(proposals, starts, self.state_energy_fn(encoding, batch, num_candidates * group))

    def state_energy_fn(self, encoding: WorldContext, batch: dict[str, Tensor], per_window: int):
        """energy_fn(states (N, H, S), index) at the batch's actions, `per_window` candidates per window."""
        actions, covariates = batch["future_actions"], batch["future_covariates"]

        def energy_fn(states: Tensor, index: Tensor | None) -> Tensor:
            rows = (torch.arange(len(states), device=states.device) if index is None else index) // per_window
            cache = TransformerPP.expand_cache(encoding.cache, "gather", rows)
            return self.model.energy(cache, actions[rows], covariates[rows], states)

        return energy_fn

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        b = batch["past_states"].shape[0]
        encoding = self.encode(batch)
        target = self.model.normalise_states(batch["future_states"])
        starts = self.propose(encoding, batch, 1, 2)
        proposal = starts.proposals[:, 0]
        proposal_loss = (proposal - target).pow(2).mean()
        init = starts.starts.reshape(b, 2, *proposal.shape[1:])
        result = self.think(starts.energy_fn, init)
        refine_loss = (result.candidates - target.unsqueeze(1)).pow(2).mean()
        # verification: the logged future, the starts and their refinements, ordered by their error
        futures = torch.cat([target.unsqueeze(1), init.detach(), result.candidates.detach()], dim=1)  # (B, 5, H, S)
        cache = TransformerPP.expand_cache(encoding.cache, "grouped", candidate_dims=1)
        energies = self.model.energy(cache, batch["future_actions"].unsqueeze(1), batch["future_covariates"].unsqueeze(1),
                                     futures)
        errors = (futures - target.unsqueeze(1)).pow(2).mean((-1, -2))
        verify_loss = listwise_ranking_loss(energies.unsqueeze(1), errors.unsqueeze(1), 0.1)
        loss = proposal_loss + self.task_cfg.refine_weight * refine_loss + verify_loss
        self.log_dict({"train/proposal_mse": proposal_loss, "train/refine_mse": refine_loss,
                       "train/verify_rank": verify_loss}, prog_bar=True, batch_size=b)
        self.log_think_record(result.record, "think")
        return loss
