"""The text task's modules: the EBT language model behind the task interface, and its Transformer++ twin.

Contract (the engine's): a candidate is a window's next-token logits (S, V); `propose(encoding, batch, M, G)`
returns B x M x G starts and `energy_fn(x (N, S, V), index)` -> (N,) energies, where row n belongs to
window (n if index is None else index[n]) // (M * G). Each window's context is encoded once.

Candidates (`task.candidate`): "logits", descended through the softmax the energy applies, or "probs" (the
reference): the engine's transform replaces the state by p = softmax(state + noise) at every step, the energy
embeds p by its own Linear(V, D), and the new state p - alpha dE/dp is read as logits by the next step and the loss.

Training (`TextModule.training_step`): starts from random logits (or the head, `task.init`), optionally
mixed with replayed final predictions (`think.replay_size`), are refined by `self.think` (second order);
the loss is the cross-entropy of the refined logits after every step, averaged (System 1,
`task.loss_steps=all`), or after the last step (System 2, `last`). With `task.rank_weight > 0` the energy is also
taught to verify (`think.listwise_ranking_loss`): per position, the refined head start and `task.rank_starts`
noisy starts (head + N(0, init_std)), refined beside it with the same loss, are ranked by their cross-entropy:
the candidates self-verification compares. The twin trains on plain next-token
cross-entropy and is System 1 only (`think.enabled=False`: it has no energy).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ebt_forecast.nn import TransformerConfig
from ebt_forecast.tasks.base import OptimConfig, TaskModule, TrainableModule, cached_energy_fn, grouped_energies
from ebt_forecast.tasks.text.config import TextTaskConfig
from ebt_forecast.tasks.text.model import TextContext, TextEBT, TransformerPlusPlusLM
from ebt_forecast.think import ReplayBuffer, Starts, ThinkConfig, listwise_ranking_loss, mix_replay


def position_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy per position (...) of logits (..., V) against targets broadcastable to (...)."""
    targets = targets.expand(logits.shape[:-1])
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape)


def token_cross_entropy(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of logits (..., S, V) against targets broadcastable to (..., S) over scored tokens."""
    ce = position_cross_entropy(logits, targets)
    if mask is None:
        return ce.mean()
    mask = mask.expand(ce.shape)
    return (ce * mask).sum() / mask.sum().clamp_min(1)


class TextModule(TaskModule):
    """Windows of tokens in, refined next-token logits out; the energy scores next-token distributions."""

    def __init__(self, model_cfg: TransformerConfig, think_cfg: ThinkConfig, optim_cfg: OptimConfig,
                 task_cfg: TextTaskConfig, vocab_size: int, context_length: int):
        super().__init__(think_cfg, optim_cfg)
        self.task_cfg = task_cfg.validate()
        steps = think_cfg.train_steps if think_cfg.step_embedding else 0
        self.model = TextEBT(model_cfg, vocab_size, context_length, task_cfg.candidate, steps)
        self.replay = ReplayBuffer(think_cfg.replay_size)

    def candidate_transform(self):
        """`task.candidate=probs` (the reference): the energy reads softmax(state), the state becomes p - alpha dE/dp."""
        return (lambda logits: logits.softmax(-1)) if self.task_cfg.candidate == "probs" else None

    # -- the task interface --------------------------------------------------------------------
    def encode(self, batch: dict[str, Tensor]) -> TextContext:
        return self.model.encode(batch["x"])

    def initial_logits(self, encoding: TextContext, shape: tuple[int, ...],
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Proposals (B, S, V) and starts (B, *shape, S, V): random N(0, init_std) logits, or the head's logits
        (start 0) plus N(0, init_std) noise (the other starts)."""
        b, s = encoding.hidden.shape[:2]
        v = self.model.vocab_size
        noise = torch.randn((b, *shape, s, v), generator=generator, device=encoding.hidden.device) * self.task_cfg.init_std
        if self.task_cfg.init == "random":
            return noise[(slice(None), *[0] * len(shape))], noise
        head = self.model.head_logits(encoding)
        starts = head.view(b, *[1] * len(shape), s, v) + noise
        starts.view(b, -1, s, v)[:, 0] = head
        return head, starts

    def propose(self, encoding: TextContext, batch: dict[str, Tensor], num_candidates: int, group: int,
                generator: torch.Generator | None = None) -> Starts:
        """M proposals x G starts of logits per window (random starts: every start is its own draw)."""
        proposal, starts = self.initial_logits(encoding, (num_candidates, group), generator)
        proposals = starts[:, :, 0] if self.task_cfg.init == "random" else proposal.unsqueeze(1).expand(
            -1, num_candidates, -1, -1)
        return Starts(proposals, starts, self.energy_fn(encoding, num_candidates * group), self.candidate_transform())

    def energy_fn(self, encoding: TextContext, per_window: int):
        """energy_fn(logits (N, S, V), index) -> (N,) with `per_window` candidates per window."""
        return cached_energy_fn(encoding.cache, per_window, self.model.energy)

    def position_energies(self, encoding: TextContext, logits: Tensor, steps: int | None = None) -> Tensor:
        """Per-position energies (B, G, S) of grouped thinking states (B, G, S, V) after `steps` steps (the landscape
        of the last step taken; through the candidate transform)."""
        transform = self.candidate_transform()
        candidates = transform(logits) if transform is not None else logits
        landscape = {"step": max(0, min((steps or 1) - 1, self.think_cfg.train_steps - 1))} \
            if self.think_cfg.step_embedding else {}
        return grouped_energies(encoding.cache, candidates, self.model.token_energies, **landscape)

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        b = batch["x"].shape[0]
        with torch.no_grad():
            init = torch.randn((b, *batch["x"].shape[1:], self.model.vocab_size), device=batch["x"].device)
        rows = {"x": batch["x"], "y": batch["y"], "init": init * self.task_cfg.init_std}
        rows, replayed = mix_replay(self.replay, rows, self.think_cfg.replay_fraction)
        fresh = b - int(self.think_cfg.replay_fraction * b) if replayed else b  # mix_replay puts old rows last
        encoding = self.encode(rows)
        init = rows["init"]
        losses = {}
        if self.task_cfg.init == "head":
            head = self.model.head_logits(encoding)
            losses["head"] = self.task_cfg.head_weight * token_cross_entropy(head, rows["y"])
            init = torch.cat([head.detach()[:fresh], init[fresh:]])
        k = self.task_cfg.rank_starts if self.task_cfg.rank_weight > 0 else 0
        group = init.unsqueeze(1)
        if k:  # the head start and K noisy ones: the candidates self-verification compares
            with torch.no_grad():
                noise = torch.randn((b, k, *init.shape[1:]), device=init.device) * self.task_cfg.init_std
            group = torch.cat([group, group + noise], dim=1)
        result = self.think(self.energy_fn(encoding, 1 + k), group, keep_trajectory=True)
        steps = result.trajectory[1:] or [result.candidates]
        if self.task_cfg.loss_steps == "last":
            steps = steps[-1:]
        losses["ce"] = torch.stack([token_cross_entropy(x, rows["y"].unsqueeze(1)) for x in steps]).mean()
        if k:
            losses["rank"] = self.task_cfg.rank_weight * self.ranking_loss(encoding, result.candidates, rows["y"])
        self.replay.push({"x": rows["x"][:fresh], "y": rows["y"][:fresh], "init": result.candidates[:fresh, 0]})
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=b)
        self.log_think_record(result.record, "think")
        return sum(losses.values())

    def ranking_loss(self, encoding: TextContext, refined: Tensor, targets: Tensor) -> Tensor:
        """Listwise ranking, per position, of refined candidates (B, G, S, V) by their cross-entropy."""
        group = refined.detach()
        energies = self.position_energies(encoding, group, self.think_cfg.train_steps).transpose(1, 2)  # (B, S, G)
        errors = position_cross_entropy(group, targets.unsqueeze(1)).transpose(1, 2)
        # regret, not raw cross-entropy: the loss's temperature is relative to the group's mean error, and
        # cross-entropies of ~5 nats that differ by tenths would make near-uniform targets
        return listwise_ranking_loss(energies, errors - errors.min(-1, keepdim=True).values)


class TransformerPPModule(TrainableModule):
    """The Transformer++ twin, a predictor: next-token cross-entropy; it has no energy and does not think."""

    def __init__(self, model_cfg: TransformerConfig, optim_cfg: OptimConfig, vocab_size: int, context_length: int):
        super().__init__(optim_cfg)
        self.model = TransformerPlusPlusLM(model_cfg, vocab_size, context_length)

    def predict(self, batch: dict[str, Tensor]) -> Tensor:
        """Next-token logits (B, S, V) of the tokens batch["x"] (B, S)."""
        return self.model(batch["x"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = token_cross_entropy(self.model(batch["x"]), batch["y"])
        self.log("train/ce", loss, prog_bar=True, batch_size=batch["x"].shape[0])
        return loss
