"""The video task's modules: the next-frame EBT behind the task interface, and its Transformer++ twin.

Contract (the engine's): a batch is {"x": (B, L, d)} clips of standardised frame latents; a candidate is a
clip's next-frame latents (S, d), S = L - 1 (frame i+1 predicted from frames 0..i). `propose(encoding, batch,
M, G)` returns B x M x G starts and `energy_fn(x (N, S, d), index)` -> (N,) energies, where row n belongs to
clip (n if index is None else index[n]) // (M * G). Each clip's frames are encoded once.

Training (`VideoModule.training_step`): starts from noise (or the last frame's latent plus noise,
`task.init`), optionally mixed with replayed final predictions (`think.replay_size`), are refined by
`self.think` (second order); the loss is the smooth L1 distance of the refined latents to the true next
latents after every step, averaged (`task.loss_steps=all`: the default hybrid and System 1), or after the last
step (System 2, `last`). With `think.step_embedding` each step scores in its own landscape (the engine passes
`step=t` through `energy_fn` to `VideoEBT.energy`); with `think.detach_steps` (System 1) each step's loss trains
that step's landscape only. The twin regresses the next latent with the same loss and is System 1 only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ebt_forecast.nn import DoubledContext, TransformerConfig
from ebt_forecast.tasks.base import OptimConfig, TaskModule, TrainableModule, cached_energy_fn, grouped_energies
from ebt_forecast.tasks.video.config import VideoTaskConfig
from ebt_forecast.tasks.video.model import TransformerPlusPlusVideo, VideoEBT
from ebt_forecast.think import ReplayBuffer, Starts, ThinkConfig, mix_replay


def latent_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Smooth L1 distance between predicted and true latents (the paper's video loss)."""
    return F.smooth_l1_loss(prediction, target.expand_as(prediction))


class VideoModule(TaskModule):
    """Clips of frame latents in, refined next-frame latents out; the energy scores next frames."""

    def __init__(self, model_cfg: TransformerConfig, think_cfg: ThinkConfig, optim_cfg: OptimConfig,
                 task_cfg: VideoTaskConfig, latent_dim: int, clip_length: int):
        super().__init__(think_cfg, optim_cfg)
        self.task_cfg = task_cfg.validate()
        steps = think_cfg.train_steps if think_cfg.step_embedding else 0  # one landscape per trained step
        self.model = VideoEBT(model_cfg, latent_dim, clip_length - 1, steps)
        self.replay = ReplayBuffer(think_cfg.replay_size)

    # -- the task interface --------------------------------------------------------------------
    def encode(self, batch: dict[str, Tensor]) -> DoubledContext:
        return self.model.encode(batch["x"][:, :-1])

    def initial_latents(self, observed: Tensor, shape: tuple[int, ...],
                        generator: torch.Generator | None = None) -> Tensor:
        """Starts (B, *shape, S, d): N(0, init_std) noise, or the last observed latent plus that noise (each
        clip's first start exactly the last latent: the copy-last-frame proposal)."""
        b, s, d = observed.shape
        noise = torch.randn((b, *shape, s, d), generator=generator, device=observed.device) * self.task_cfg.init_std
        if self.task_cfg.init == "noise":
            return noise
        starts = observed.view(b, *[1] * len(shape), s, d) + noise
        starts.view(b, -1, s, d)[:, 0] = observed
        return starts

    def predict(self, batch: dict[str, Tensor], steps: int | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """Next-frame latents (B, L - 1, d): one start thought for `steps` (default think.infer_steps)."""
        steps = self.think_cfg.infer_steps if steps is None else steps
        return self.infer(batch, num_candidates=1, group=1, steps=steps, selection="refined",
                          generator=generator).samples[:, 0]

    def propose(self, encoding: DoubledContext, batch: dict[str, Tensor], num_candidates: int, group: int,
                generator: torch.Generator | None = None) -> Starts:
        """M proposals x G starts of next-frame latents per clip."""
        starts = self.initial_latents(batch["x"][:, :-1], (num_candidates, group), generator)
        return Starts(starts[:, :, 0], starts, self.energy_fn(encoding, num_candidates * group))

    def energy_fn(self, encoding: DoubledContext, per_clip: int):
        """energy_fn(latents (N, S, d), index) -> (N,) with `per_clip` candidates per clip."""
        return cached_energy_fn(encoding.cache, per_clip, self.model.energy)

    def frame_energies(self, encoding: DoubledContext, latents: Tensor, steps: int | None = None) -> Tensor:
        """Per-frame energies (B, G, S) of grouped candidate latents (B, G, S, d) after `steps` thinking steps: in the
        landscape of the last step taken (with step embeddings; 0 / None steps: the first step's, the one a start
        is scored in; past the trained steps: the last)."""
        landscape = {"step": max(0, min((steps or 1) - 1, self.think_cfg.train_steps - 1))} \
            if self.think_cfg.step_embedding else {}
        return grouped_energies(encoding.cache, latents, self.model.token_energies, **landscape)

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        x = batch["x"]
        b = x.shape[0]
        with torch.no_grad():
            init = self.initial_latents(x[:, :-1], (1,))[:, 0]
        rows, replayed = mix_replay(self.replay, {"x": x, "init": init}, self.think_cfg.replay_fraction)
        fresh = b - int(self.think_cfg.replay_fraction * b) if replayed else b  # mix_replay puts old rows last
        encoding = self.encode(rows)
        target = rows["x"][:, 1:]
        result = self.think(self.energy_fn(encoding, 1), rows["init"].unsqueeze(1), keep_trajectory=True)
        steps = [c[:, 0] for c in result.trajectory[1:]] or [result.candidates[:, 0]]
        if self.task_cfg.loss_steps == "last":
            steps = steps[-1:]
        loss = torch.stack([latent_loss(c, target) for c in steps]).mean()
        self.replay.push({"x": rows["x"][:fresh], "init": result.candidates[:fresh, 0].detach()})
        self.log("train/latent_loss", loss, prog_bar=True, batch_size=b)
        self.log_think_record(result.record, "think")
        return loss


class TransformerPPVideoModule(TrainableModule):
    """The Transformer++ twin, a predictor: regresses the next latent; it has no energy and does not think."""

    def __init__(self, model_cfg: TransformerConfig, optim_cfg: OptimConfig, latent_dim: int, clip_length: int):
        super().__init__(optim_cfg)
        self.model = TransformerPlusPlusVideo(model_cfg, latent_dim, clip_length - 1)

    def predict(self, batch: dict[str, Tensor], steps: int | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """Next-frame latents (B, L - 1, d) of clips batch["x"] (B, L, d), frame i+1 from frames 0..i (`steps` and
        `generator` are the EBT's; the twin ignores them)."""
        return self.model(batch["x"][:, :-1])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        x = batch["x"]
        loss = latent_loss(self.model(x[:, :-1]), x[:, 1:])
        self.log("train/latent_loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss
