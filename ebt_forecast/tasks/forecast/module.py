"""Lightning training of the forecasting EBT and of its feed-forward twin (same backbone, System 1 only)."""
from __future__ import annotations

from dataclasses import dataclass

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
    verify: float = 1.0  # the energy regresses each candidate's own pinball loss, so it ranks candidates
    train_candidates: int = 8  # random levels per window while training
    verify_noise_train: float = 0.3  # perturbed proposals (std up to this, scaled units) the energy learns to score


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

    def _with_replay(self, batch: dict[str, Tensor], proposals: Tensor, levels: Tensor):
        """Swap a share of the batch's initial candidates for replayed ones (their own windows too)."""
        cfg = self.think_cfg
        n_replay = int(cfg.replay_fraction * len(proposals))
        if not cfg.replay_size or len(self.replay) == 0 or n_replay == 0:
            return batch, proposals, levels, None
        old = {k: v.to(self.device) for k, v in self.replay.sample(n_replay).items()}
        batch = {k: torch.cat([batch[k][n_replay:], old[k]]) for k in ("context", "context_mask", "future", "future_mask")}
        return batch, old["candidates"], old["levels"], n_replay

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        cfg = self.loss_cfg
        b = batch["context"].shape[0]
        levels = torch.rand(b, cfg.train_candidates, device=self.device)
        cache = self.model.encode(batch["context"], batch["context_mask"])
        proposals = self.model.propose(cache, levels)
        proposal_loss = candidate_pinball(proposals, batch["future"], levels, batch["future_mask"]).mean()
        loss = cfg.proposal * proposal_loss
        self.log("train/proposal_pinball", proposal_loss, prog_bar=True, batch_size=b)
        if self.mode == "ebt":
            loss = loss + self._system2_loss(batch, cache, proposals, levels)
        self.log("train/loss", loss, batch_size=b)
        return loss

    def _system2_loss(self, batch: dict[str, Tensor], cache, proposals: Tensor, levels: Tensor) -> Tensor:
        cfg = self.loss_cfg
        b = proposals.shape[0]
        init, think_levels = proposals, levels
        replay_batch, replay_init, replay_levels, n_replay = self._with_replay(batch, proposals, levels)
        if n_replay:
            # replayed rows bring their own windows: re-encode the mixed batch
            batch = replay_batch
            cache = self.model.encode(batch["context"], batch["context_mask"])
            init = torch.cat([proposals[n_replay:], replay_init])
            think_levels = torch.cat([levels[n_replay:], replay_levels])
        result = self.think(self.model.energy_fn(cache, think_levels), init, keep_trajectory=True)
        refined = result.trajectory[1:] or [result.candidates]
        refine_loss = torch.stack(
            [candidate_pinball(x, batch["future"], think_levels, batch["future_mask"]).mean() for x in refined]
        ).mean()
        # verification: the energy regresses the pinball loss of the proposal, the refined candidate and
        # a perturbed proposal (the kind of alternative start it must rank at inference)
        sigma = torch.rand(init.shape[:2], device=init.device).unsqueeze(-1) * cfg.verify_noise_train
        perturbed = init.detach() + sigma * torch.randn_like(init)
        states = torch.stack([init.detach(), result.candidates.detach(), perturbed], dim=1)  # (B, 3, M, H)
        state_levels = think_levels.unsqueeze(1).expand(-1, states.shape[1], -1)
        grouped = TransformerPP.expand_cache(cache, "grouped", candidate_dims=2)
        energies = self.model.energy(states, state_levels, grouped)
        targets = torch.stack(
            [candidate_pinball(s, batch["future"], think_levels, batch["future_mask"]) for s in states.unbind(1)], dim=1
        )
        verify_loss = torch.nn.functional.smooth_l1_loss(energies, targets.detach(), beta=0.1)
        self.replay.push({
            "context": batch["context"], "context_mask": batch["context_mask"], "future": batch["future"],
            "future_mask": batch["future_mask"], "candidates": result.candidates.detach(), "levels": think_levels,
        })
        self.log_dict({"train/refine_pinball": refine_loss, "train/verify": verify_loss}, prog_bar=True, batch_size=b)
        self.log_think_record(result.record, "think")
        return cfg.refine * refine_loss + cfg.verify * verify_loss
