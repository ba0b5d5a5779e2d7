"""The Lightning base module every EBT task plugs into: alpha's optimizer group, schedule, logging."""
from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor

from ebt_forecast.think import StepSize, ThinkConfig, ThinkRecord, ThinkResult, think


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine decay (the EBT recipe)."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1


class EBTLightningModule(L.LightningModule):
    """Holds the step size and the thinking settings; a task adds its model and `training_step`.

    Tasks call `self.think(energy_fn, init)` inside `training_step`: the engine runs with
    `create_graph`, randomised steps and alpha, and its record is logged.
    """

    def __init__(self, think_cfg: ThinkConfig, optim_cfg: OptimConfig):
        super().__init__()
        self.think_cfg = think_cfg.validate()
        self.optim_cfg = optim_cfg
        self.step_size = StepSize(think_cfg.alpha, learnable=think_cfg.learn_alpha)

    def think(self, energy_fn, init: Tensor, *, training: bool | None = None, **kwargs) -> ThinkResult:
        """Run the engine with this module's settings (training mode follows the module's)."""
        training = self.training if training is None else training
        return think(energy_fn, init, self.think_cfg, self.step_size, training=training, **kwargs)

    def log_think_record(self, record: ThinkRecord, prefix: str) -> None:
        """Log the energies, steps, passes and non-finite count of one thinking call."""
        e = record.energies
        evaluated = [row for row in e if not torch.isnan(row).all()]
        first, last = evaluated[0].nanmean(), evaluated[-1].nanmean()
        self.log_dict(
            {
                f"{prefix}/energy_start": first, f"{prefix}/energy_end": last,
                f"{prefix}/steps": record.steps_taken.float().mean(),
                f"{prefix}/forward_passes": float(record.forward_passes),
                f"{prefix}/backward_passes": float(record.backward_passes),
                f"{prefix}/nonfinite": record.nonfinite.float().sum(),
                f"{prefix}/alpha": self.step_size().detach(),
            },
            on_step=True, on_epoch=False, batch_size=e.shape[1],
        )

    def configure_optimizers(self):
        """AdamW groups: matrices with weight decay, gains and biases without, alpha on its own lr."""
        cfg = self.optim_cfg
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad or name.startswith("step_size."):
                continue
            (decay if p.dim() >= 2 else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if self.step_size.raw.requires_grad:
            groups.append({"params": [self.step_size.raw], "weight_decay": 0.0,
                           "lr": cfg.lr * self.think_cfg.alpha_lr_multiplier})
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        total = max(1, int(self.trainer.max_steps if self.trainer and self.trainer.max_steps > 0 else 1000))

        def schedule(step: int) -> float:
            if step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
