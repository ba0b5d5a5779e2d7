"""The image task's modules: the denoising EBT behind the task interface, and its DiT twin.

Contract (the engine's): a candidate is a clean image (C, H, W); `propose(encoding, batch, M, G)` returns
B x M x G starts, all equal to the noisy image (the identity: step 0 is the noisy input), and
`energy_fn(x (N, C, H, W), index)` -> (N,) energies, where row n belongs to image
(n if index is None else index[n]) // (M * G). Each noisy image is encoded once.

Training (`ImageEBTModule.training_step`): the candidate starts at the noisy image and is refined by
`self.think` (second order through the steps); the loss is the smooth L1 distance (beta `task.huber_beta`)
of the refined image to the clean one after every step, averaged (`task.loss_steps=all`), or after the
last (`last`). `task.conditioning=unconditional`: the energy scores x alone against a learned constant
condition (model.py), so the noisy image is only the start.
The DiT trains on the DDPM noise-prediction loss at uniform times t in [0, 1] (cosine schedule; or in
[0, t(max_sigma)], `image.dit_max_sigma`), on the same
crops (the noisy image unused; t and the noise come from the seeded dataset).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from ebt_forecast.errors import ConfigError
from ebt_forecast.nn import TransformerConfig
from ebt_forecast.tasks.base import OptimConfig, TaskModule, TrainableModule, cached_energy_fn
from ebt_forecast.tasks.image.config import ImageTaskConfig
from ebt_forecast.tasks.image.model import (
    DiT,
    ImageContext,
    ImageEBT,
    ImageShape,
    alpha_bar,
    ddim_denoise,
    time_of_sigma,
)
from ebt_forecast.think import InferencePolicy, Starts, ThinkConfig, Thought, think_and_select


class ImageEBTModule(TaskModule):
    """Noisy images in, refined clean images out; the energy scores a clean image given the noisy one."""

    def __init__(self, model_cfg: TransformerConfig, think_cfg: ThinkConfig, optim_cfg: OptimConfig,
                 task_cfg: ImageTaskConfig, shape: ImageShape):
        if think_cfg.step_embedding:
            raise ConfigError("think.step_embedding=True is invalid for the image task: its energy has one landscape "
                              "(the reference image recipes think 1 step, or 2-3 on one landscape); set it to false")
        super().__init__(think_cfg, optim_cfg)
        self.task_cfg = task_cfg.validate()
        self.model = ImageEBT(model_cfg, shape, conditional=task_cfg.conditioning == "conditional")

    # -- the task interface --------------------------------------------------------------------
    def encode(self, batch: dict[str, Tensor]) -> ImageContext:
        return self.model.encode(batch["noisy"])

    def propose(self, encoding: ImageContext, batch: dict[str, Tensor], num_candidates: int, group: int,
                generator: torch.Generator | None = None) -> Starts:
        """Every start is the noisy image itself."""
        noisy = batch["noisy"]
        proposals = noisy.unsqueeze(1).expand(-1, num_candidates, *noisy.shape[1:])
        starts = proposals.unsqueeze(2).expand(-1, -1, group, *noisy.shape[1:])
        return Starts(proposals, starts, self.energy_fn(encoding, num_candidates * group))

    def energy_fn(self, encoding: ImageContext, per_image: int):
        """energy_fn(images (N, C, H, W), index) -> (N,) with `per_image` candidates per noisy image."""
        return cached_energy_fn(encoding.cache, per_image, self.model.energy)

    def denoise(self, noisy: Tensor, steps: int, *, starts: int = 1, generator: torch.Generator | None = None,
                policy: InferencePolicy | None = None, noise_std: float | None = None,
                final_energy: bool = False) -> Thought:
        """Think `steps` steps from the noisy images (B, C, H, W): `path[:, t, 0]` is the image after t steps,
        `samples[:, 0]` the last, `record` the passes the engine spent (None when it spent none). `starts` > 1:
        that many starts per image, all at the noisy image (they differ only by the inference Langevin noise,
        drawn from `generator`), every one's final image in `grouped[:, 0]` (B, starts, C, H, W) and, with
        `final_energy`, its energy in `energies[:, 0]`. `policy`: the inference policy (default: the one the think
        config names); `noise_std`: the inference Langevin std (default: think.infer_langevin_std)."""
        cfg = self.think_cfg if noise_std is None else dataclasses.replace(self.think_cfg, infer_langevin_std=noise_std)
        batch = {"noisy": noisy}
        with torch.no_grad():
            proposed = self.propose(self.encode(batch), batch, 1, starts, generator)
        return think_and_select(proposed, cfg, self.step_size, steps=steps, selection="refined", generator=generator,
                                policy=policy, final_energy=final_energy)

    @torch.no_grad()
    def energy(self, noisy: Tensor, images: Tensor) -> Tensor:
        """Energies (B,) of candidate clean images (B, C, H, W) given the noisy ones: a diagnostic outside any
        thinking record (one encoding and one forward)."""
        return self.model.energy(self.model.encode(noisy).cache, images)

    # -- training ------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        clean, noisy = batch["clean"], batch["noisy"]
        encoding = self.encode(batch)
        result = self.think(self.energy_fn(encoding, 1), noisy.unsqueeze(1), keep_trajectory=True)
        steps = [x[:, 0] for x in result.trajectory[1:]] or [result.candidates[:, 0]]
        if self.task_cfg.loss_steps == "last":
            steps = steps[-1:]
        loss = torch.stack([F.smooth_l1_loss(x, clean, beta=self.task_cfg.huber_beta) for x in steps]).mean()
        with torch.no_grad():
            mse = F.mse_loss(steps[-1], clean)
        self.log_dict({"train/loss": loss, "train/mse": mse}, prog_bar=True, batch_size=clean.shape[0])
        self.log_think_record(result.record, "think")
        return loss


class DiTModule(TrainableModule):
    """The DiT twin, a predictor: DDPM noise prediction; denoises by DDIM from the matching time (no energy,
    no thinking)."""

    def __init__(self, model_cfg: TransformerConfig, optim_cfg: OptimConfig, shape: ImageShape,
                 max_sigma: float | None = None):
        super().__init__(optim_cfg)
        self.model = DiT(model_cfg, shape)
        self.max_time = 1.0 if max_sigma is None else time_of_sigma(max_sigma)  # training times t ~ U[0, max_time]

    def denoise(self, noisy: Tensor, sigma: float, steps: int) -> Tensor:
        """DDIM with `steps` network passes from the time matching noise level sigma."""
        return ddim_denoise(self.model, noisy, sigma, steps)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        clean = batch["clean"]
        b, t, eps = clean.shape[0], batch["t"] * self.max_time, batch["eps"]  # drawn by the seeded dataset
        ab = alpha_bar(t).view(b, 1, 1, 1)
        x_t = ab.sqrt() * clean + (1 - ab).sqrt() * eps
        loss = F.mse_loss(self.model(x_t, t), eps)
        self.log("train/eps_mse", loss, prog_bar=True, batch_size=b)
        return loss
