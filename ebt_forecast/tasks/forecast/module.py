"""Lightning training of the forecasting EBT and of its feed-forward twin (same backbone, System 1 only)."""
from __future__ import annotations

from dataclasses import dataclass

import scoringrules as sr
import torch
from torch import Tensor

from ebt_forecast.nn import TransformerPP
from ebt_forecast.tasks.base import EBTLightningModule, OptimConfig
from ebt_forecast.tasks.forecast.model import ForecastModelConfig, PatchForecastEBT, candidate_pinball
from ebt_forecast.think import ReplayBuffer, ThinkConfig


@dataclass
class ForecastLossConfig:
    """Weights of the three things training teaches (DESIGN.md)."""

    proposal: float = 1.0  # System 1: pinball of the proposals at random levels
    refine: float = 1.0  # System 2: pinball of the refined candidates, averaged over thinking steps
    verify: float = 1.0  # listwise ranking: within a level, lower energy = lower pinball loss
    train_candidates: int = 4  # random levels per window while training
    train_group: int = 3  # starts per level while training: proposal, seasonal naive, perturbed proposal
    verify_noise_train: float = 0.5  # perturbation std, in half-widths of the proposal set
    rank_temperature: float = 0.1  # soft ranking targets softmax(-error / (t * mean error))
    set_crps: float = 0.0  # weight of the fair CRPS (scoringrules) of each refined level set, a proper set score
    init: str = "proposal"  # start 0 of each level: proposal | seasonal_naive | noise
    detach_context: bool = False  # System 2 losses do not reach the cached context keys / values


class ForecastModule(EBTLightningModule):
    """`mode="ebt"` trains proposals, refinement and verification; `mode="feedforward"` only proposals."""

    def __init__(
        self, model_cfg: ForecastModelConfig, think_cfg: ThinkConfig, optim_cfg: OptimConfig,
        loss_cfg: ForecastLossConfig, mode: str = "ebt",
    ):
        super().__init__(think_cfg, optim_cfg)
        if mode not in ("ebt", "feedforward"):
            raise ValueError(f"mode must be 'ebt' or 'feedforward', got {mode!r}")
        self.mode, self.loss_cfg = mode, loss_cfg
        self.model = PatchForecastEBT(model_cfg)
        self.replay = ReplayBuffer(think_cfg.replay_size)

    def _with_replay(self, batch: dict[str, Tensor], starts: Tensor, levels: Tensor):
        """Swap a share of the batch (windows, starts, levels) for replayed rows that start from their past results."""
        n_replay = int(self.think_cfg.replay_fraction * len(starts))
        if not self.think_cfg.replay_size or len(self.replay) == 0 or n_replay == 0:
            return batch, starts, levels, False
        old = {k: v.to(self.device) for k, v in self.replay.sample(n_replay).items()}
        mixed = {k: torch.cat([batch[k][n_replay:], old[k]]) for k in ("context", "context_mask", "future", "future_mask")}
        return mixed, torch.cat([starts[n_replay:], old["candidates"]]), torch.cat([levels[n_replay:], old["levels"]]), True

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        cfg = self.loss_cfg
        b = batch["context"].shape[0]
        levels = torch.rand(b, cfg.train_candidates, device=self.device)
        cache = self.model.encode(batch["context"], batch["context_mask"])
        group = cfg.train_group if self.mode == "ebt" else 1
        proposals, starts = self.model.propose_starts(
            cache, batch["context"], batch["context_mask"], levels, group, cfg.verify_noise_train, init=cfg.init)
        proposal_loss = candidate_pinball(proposals, batch["future"], levels, batch["future_mask"]).mean()
        loss = cfg.proposal * proposal_loss
        self.log("train/proposal_pinball", proposal_loss, prog_bar=True, batch_size=b)
        if self.mode == "ebt":
            loss = loss + self._system2_loss(batch, cache, starts, levels)
        self.log("train/loss", loss, batch_size=b)
        return loss

    def _system2_loss(self, batch: dict[str, Tensor], cache, starts: Tensor, levels: Tensor) -> Tensor:
        """Refine every start through the thinking steps (pinball at its level), and teach the energy to
        rank each level's starts and refined candidates by their pinball loss (listwise, soft targets)."""
        cfg = self.loss_cfg
        batch, starts, levels, replayed = self._with_replay(batch, starts, levels)
        if replayed:  # replayed rows bring their own windows: re-encode the mixed batch
            cache = self.model.encode(batch["context"], batch["context_mask"])
        if cfg.detach_context:
            # System 2 losses then shape the energy path only, not the context encoding the proposals share
            cache = [(k.detach(), v.detach()) for k, v in cache]
        b, m, g, h = starts.shape
        flat_levels = levels.repeat_interleave(g, dim=1)
        init = starts.reshape(b, m * g, h)
        result = self.think(self.model.energy_fn(cache, flat_levels), init, keep_trajectory=True, final_energy=False)
        refined = result.trajectory[1:] or [result.candidates]
        future, mask = batch["future"], batch["future_mask"]
        # the refinement is taught on the proposals' own path (start 0 of each level): small corrections to good
        # candidates; the other starts only teach the energy to rank
        own = lambda x: x.view(b, m, g, h)[:, :, 0]  # noqa: E731
        refine_loss = torch.stack([candidate_pinball(own(x), future, levels, mask).mean() for x in refined]).mean()
        if cfg.set_crps > 0:
            crps = torch.stack([sr.crps_ensemble(future, own(x).transpose(1, 2), m_axis=-1, estimator="fair",
                                                 backend="torch") for x in refined])  # (T, B, H)
            refine_loss = refine_loss + cfg.set_crps * (crps * mask).sum() / (mask.sum() * len(refined)).clamp(min=1)
        # verification: within each level, the energy must order the starts and their refinements by error
        states = torch.cat([init.detach().view(b, m, g, h), result.candidates.detach().view(b, m, g, h)], dim=2)
        state_levels = levels.unsqueeze(-1).expand(-1, -1, 2 * g)
        energies = self.model.energy(states, state_levels, TransformerPP.expand_cache(cache, "grouped", candidate_dims=2))
        errors = candidate_pinball(states.view(b, m * 2 * g, h), future, state_levels.reshape(b, -1), mask).view(b, m, 2 * g)
        temperature = cfg.rank_temperature * errors.mean(-1, keepdim=True).clamp_min(1e-6)
        target = torch.softmax(-errors / temperature, dim=-1)
        verify_loss = -(target * torch.log_softmax(-energies, dim=-1)).sum(-1).mean()
        self.replay.push({"context": batch["context"], "context_mask": batch["context_mask"], "future": future,
                          "future_mask": mask, "candidates": result.candidates.detach().view(b, m, g, h), "levels": levels})
        self.log_dict({"train/refine_pinball": refine_loss, "train/verify_rank": verify_loss}, prog_bar=True, batch_size=b)
        self.log_think_record(result.record, "think")
        return cfg.refine * refine_loss + cfg.verify * verify_loss
