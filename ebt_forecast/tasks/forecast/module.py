"""The forecast task's module: the patch EBT behind the task interface (encode, propose, training loss).

`mode="ebt"` trains proposals, refinement and verification; `mode="feedforward"` (the same-size
Transformer++ twin) trains only the proposals.
"""
from __future__ import annotations

import scoringrules as sr
import torch
from torch import Tensor

from ebt_forecast.metrics import sample_levels
from ebt_forecast.nn import KVCache, TransformerPP
from ebt_forecast.tasks.base import OptimConfig, TaskModule
from ebt_forecast.tasks.forecast.config import ForecastTaskConfig
from ebt_forecast.tasks.forecast.model import (
    ForecastModelConfig,
    PatchForecastEBT,
    candidate_pinball,
)
from ebt_forecast.think import ReplayBuffer, Starts, ThinkConfig, listwise_ranking_loss, mix_replay

WINDOW_KEYS = ("context", "context_mask", "future", "future_mask")
COVARIATE_KEYS = ("past_covariates", "past_covariates_mask", "future_covariates", "static_real", "static_cat")


def window_keys(batch: dict[str, Tensor]) -> list[str]:
    """The keys that make up a batch's windows: values, masks and whichever covariates it carries."""
    return [*WINDOW_KEYS, *(k for k in COVARIATE_KEYS if k in batch)]


def inference_levels(m: int, batch: int, device=None) -> Tensor:
    """(B, M) levels of the M level paths (`metrics.sample_levels`): the 21-level quantile grid
    (0.025, 0.05, ..., 0.95, 0.975) for M = 21, else the stratified sample levels (j + 0.5) / M."""
    return torch.as_tensor(sample_levels(m), dtype=torch.float32, device=device).expand(batch, m).clone()


class ForecastModule(TaskModule):
    """Context windows in, level paths out; the energy scores a path at its level."""

    def __init__(self, model_cfg: ForecastModelConfig, think_cfg: ThinkConfig, optim_cfg: OptimConfig,
                 task_cfg: ForecastTaskConfig, mode: str = "ebt"):
        super().__init__(think_cfg, optim_cfg)
        if mode not in ("ebt", "feedforward"):
            raise ValueError(f"mode must be 'ebt' or 'feedforward', got {mode!r}")
        self.mode, self.task_cfg, self.loss_cfg = mode, task_cfg, task_cfg.loss
        self.model = PatchForecastEBT(model_cfg)
        self.replay = ReplayBuffer(think_cfg.replay_size)

    # -- the task interface --------------------------------------------------------------------
    def encode(self, batch: dict[str, Tensor]) -> KVCache:
        """Every layer's keys and values of the scaled context windows."""
        return self.model.encode(batch["context"], batch["context_mask"],
                                 **{k: batch[k] for k in COVARIATE_KEYS if k in batch})

    def propose(self, encoding: KVCache, batch: dict[str, Tensor], num_candidates: int, group: int,
                generator: torch.Generator | None = None) -> Starts:
        """M level paths (levels j / (M - 1)), G starts per level, and the energy at each start's level.

        Other forecasters' level paths in `batch["extra_starts"]` (B, M, S, H, scaled like the context)
        join each level's G own starts: the energy then verifies among G + S starts per level."""
        levels = inference_levels(num_candidates, batch["context"].shape[0], batch["context"].device)
        proposals, starts = self.model.propose_starts(
            encoding, batch["context"], batch["context_mask"], levels, group, self.task_cfg.verify_noise, generator,
            init=self.task_cfg.init)
        if "extra_starts" in batch:
            starts = torch.cat([starts, batch["extra_starts"].to(starts)], dim=2)
        g = starts.shape[2]
        return Starts(proposals, starts, self.model.energy_fn(encoding, levels.repeat_interleave(g, dim=1)))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        cfg = self.loss_cfg
        b = batch["context"].shape[0]
        levels = torch.rand(b, cfg.train_candidates, device=self.device)
        cache = self.encode(batch)
        group = cfg.train_group if self.mode == "ebt" else 1
        proposals, starts = self.model.propose_starts(
            cache, batch["context"], batch["context_mask"], levels, group, cfg.verify_noise_train, init=self.task_cfg.init)
        proposal_loss = candidate_pinball(proposals, batch["future"], levels, batch["future_mask"]).mean()
        loss = cfg.proposal * proposal_loss
        self.log("train/proposal_pinball", proposal_loss, prog_bar=True, batch_size=b)
        if self.mode == "ebt":
            loss = loss + self._system2_loss(batch, cache, starts, levels)
        self.log("train/loss", loss, batch_size=b)
        return loss

    # -- System 2 training ---------------------------------------------------------------------
    def _system2_loss(self, batch: dict[str, Tensor], cache: KVCache, starts: Tensor, levels: Tensor) -> Tensor:
        """Refine every start through the thinking steps (pinball at its level), and teach the energy to
        rank each level's starts and refined candidates by their pinball loss (listwise, soft targets)."""
        cfg = self.loss_cfg
        keys = window_keys(batch)
        rows = {**{k: batch[k] for k in keys}, "candidates": starts, "levels": levels}
        rows, replayed = mix_replay(self.replay, rows, self.think_cfg.replay_fraction)
        if replayed:  # replayed rows bring their own windows: re-encode the mixed batch
            cache = self.encode(rows)
        if cfg.detach_context:
            # System 2 losses then shape the energy path only, not the context encoding the proposals share
            cache = [(k.detach(), v.detach()) for k, v in cache]
        starts, levels, future, mask = rows["candidates"], rows["levels"], rows["future"], rows["future_mask"]
        b, m, g, h = starts.shape
        init = starts.reshape(b, m * g, h)
        result = self.think(self.model.energy_fn(cache, levels.repeat_interleave(g, dim=1)), init,
                            keep_trajectory=True, final_energy=False)
        refined = result.trajectory[1:] or [result.candidates]
        # the refinement is taught on the proposals' own path (start 0 of each level): small corrections to good
        # candidates; the other starts only teach the energy to rank. refine_from=all (the paper): every start
        own = lambda x: x.view(b, m, g, h)[:, :, 0]  # noqa: E731
        if cfg.refine_from == "all":
            every = levels.repeat_interleave(g, dim=1)
            refine_loss = torch.stack([candidate_pinball(x, future, every, mask).mean() for x in refined]).mean()
        else:
            refine_loss = torch.stack([candidate_pinball(own(x), future, levels, mask).mean() for x in refined]).mean()
        if cfg.set_crps > 0:
            crps = torch.stack([sr.crps_ensemble(future, own(x).transpose(1, 2), m_axis=-1, estimator="fair",
                                                 backend="torch") for x in refined])  # (T, B, H)
            refine_loss = refine_loss + cfg.set_crps * (crps * mask).sum() / (mask.sum() * len(refined)).clamp(min=1)
        targets = self.model.cfg.targets
        if cfg.set_energy > 0 and targets > 1:  # the refined level paths as one joint ensemble over the K targets
            hz = h // targets
            truth = future.view(b, targets, hz).transpose(1, 2)  # (B, H, K)
            observed = mask.view(b, targets, hz).amin(1)  # (B, H): steps where every target is observed
            es = torch.stack([sr.energy_score(truth, own(x).view(b, m, targets, hz).permute(0, 3, 1, 2), m_axis=-2,
                                              v_axis=-1, estimator="fair", backend="torch") for x in refined])
            refine_loss = refine_loss + cfg.set_energy * (es * observed).sum() / (observed.sum() * len(refined)).clamp(min=1)
        # verification: within each level, the energy must order the starts and their refinements by error
        states = torch.cat([init.detach().view(b, m, g, h), result.candidates.detach().view(b, m, g, h)], dim=2)
        state_levels = levels.unsqueeze(-1).expand(-1, -1, 2 * g)
        energies = self.model.energy(states, state_levels, TransformerPP.expand_cache(cache, "grouped", candidate_dims=2))
        errors = candidate_pinball(states.view(b, m * 2 * g, h), future, state_levels.reshape(b, -1), mask).view(b, m, 2 * g)
        verify_loss = listwise_ranking_loss(energies, errors, cfg.rank_temperature)
        self.replay.push({**{k: rows[k] for k in keys},
                          "candidates": result.candidates.detach().view(b, m, g, h), "levels": levels})
        self.log_dict({"train/refine_pinball": refine_loss, "train/verify_rank": verify_loss}, prog_bar=True, batch_size=b)
        self.log_think_record(result.record, "think")
        return cfg.refine * refine_loss + cfg.verify * verify_loss
