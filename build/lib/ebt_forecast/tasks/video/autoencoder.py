"""A small convolutional autoencoder: one grayscale frame <-> one latent vector (the video task's token).

    frame (1, H, W) -> conv s2 (w) -> conv s2 (2w) -> conv s2 (4w) -> flatten -> Linear -> z (d)
    z (d) -> Linear -> (4w, H/8, W/8) -> up x2 conv (2w) -> up x2 conv (w) -> up x2 conv (1) -> sigmoid -> frame

Trained by the project on the training frames (mean squared error, AdamW, Lightning through `fit_module`,
where and how the shared `trainer` runs: `autoencoder_trainer`), then frozen. Latents are standardised with
the training frames' per-dimension mean and standard deviation (buffers saved with the weights), so the
sequence models see roughly N(0, 1) tokens and noise starts N(0, 1) have the latents' scale. The paper used
Stable Diffusion's VAE; none is available offline.
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ebt_forecast.tasks.base import EXECUTION_FIELDS, TrainerConfig


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(1, cout), nn.SiLU())


class FrameAutoencoder(nn.Module):
    """Frames (..., 1, H, W) in [0, 1] <-> standardised latents (..., d)."""

    def __init__(self, frame_size: int, latent_dim: int, width: int = 32):
        super().__init__()
        self.frame_size, self.latent_dim = frame_size, latent_dim
        self.grid = frame_size // 8
        w = width
        self.encoder = nn.Sequential(_conv(1, w, 2), _conv(w, 2 * w, 2), _conv(2 * w, 4 * w, 2), nn.Flatten(),
                                     nn.Linear(4 * w * self.grid ** 2, latent_dim))
        self.expand = nn.Linear(latent_dim, 4 * w * self.grid ** 2)
        self.decoder = nn.Sequential(nn.Upsample(scale_factor=2), _conv(4 * w, 2 * w, 1), nn.Upsample(scale_factor=2),
                                     _conv(2 * w, w, 1), nn.Upsample(scale_factor=2), nn.Conv2d(w, 1, 3, padding=1))
        self.register_buffer("latent_mean", torch.zeros(latent_dim))
        self.register_buffer("latent_std", torch.ones(latent_dim))

    def raw_encode(self, frames: Tensor) -> Tensor:
        lead = frames.shape[:-3]
        return self.encoder(frames.reshape(-1, *frames.shape[-3:])).view(*lead, self.latent_dim)

    def raw_decode(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        h = self.expand(z.reshape(-1, self.latent_dim)).view(-1, self.expand.out_features // self.grid ** 2,
                                                             self.grid, self.grid)
        return torch.sigmoid(self.decoder(h)).view(*lead, 1, self.frame_size, self.frame_size)

    def encode(self, frames: Tensor) -> Tensor:
        """Frames (..., 1, H, W) -> standardised latents (..., d)."""
        return (self.raw_encode(frames) - self.latent_mean) / self.latent_std

    def decode(self, z: Tensor) -> Tensor:
        """Standardised latents (..., d) -> frames (..., 1, H, W) in [0, 1]."""
        return self.raw_decode(z * self.latent_std + self.latent_mean)

    @torch.no_grad()
    def fit_standardisation(self, frames: Tensor, batch: int = 512) -> None:
        """Set the latent mean and standard deviation from (N, 1, H, W) training frames."""
        z = torch.cat([self.raw_encode(frames[i:i + batch]) for i in range(0, len(frames), batch)])
        self.latent_mean.copy_(z.mean(0))
        self.latent_std.copy_(z.std(0).clamp_min(1e-4))


class AutoencoderModule(L.LightningModule):
    """Reconstruction training of a `FrameAutoencoder` (mean squared error in pixels)."""

    def __init__(self, frame_size: int, latent_dim: int, width: int, lr: float):
        super().__init__()
        self.model = FrameAutoencoder(frame_size, latent_dim, width)
        self.lr = lr

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        frames = batch["frame"]
        loss = F.mse_loss(self.model.raw_decode(self.model.raw_encode(frames)), frames)
        self.log("train/mse", loss, prog_bar=True, batch_size=len(frames))
        return loss

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=1e-4)
        total = max(1, int(self.trainer.max_steps)) if self.trainer else 1000
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr, total_steps=total, pct_start=0.05)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def autoencoder_trainer(shared: TrainerConfig, steps: int, batch: int, lr: float,
                        checkpoint_dir: str | None = None) -> TrainerConfig:
    """The autoencoder's own budget (steps, batch, lr; the optimiser is its module's), run where and how `shared`
    runs: its accelerator, devices, nodes, strategy and precision, progress bar and checkpoint cadence."""
    kept = {f: getattr(shared, f) for f in (*EXECUTION_FIELDS, "precision", "progress_bar", "checkpoint_every")}
    return TrainerConfig(max_steps=steps, batch_size=batch, lr=lr, checkpoint_dir=checkpoint_dir, **kept)
