"""The image task's configuration: its node in Hydra's `task` group and the `image` command's fields.

`ebt-forecast image` reads `task` (the denoising EBT's conditioning and loss), `image` (photos, crops, noise,
evaluation grid, the DiT's budget and sampling steps) and the shared `model`, `think` and `trainer`
nodes, whose image defaults are below. Both models get the same backbone (`model`) and the same
training budget (`trainer`: steps, batch, optimiser).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ebt_forecast.nn import TransformerConfig
from ebt_forecast.tasks.base import AppConfig, TrainerConfig
from ebt_forecast.think import ThinkConfig, check_settings

LOSS_STEPS = ("all", "last")
CONDITIONING = ("conditional", "unconditional")
NOISE_KINDS = ("gaussian", "q_sample")
MODELS = ("ebt", "dit")
MAX_SIGMA = 2.0  # pixels live in [-1, 1]: a larger standard deviation leaves no image to recover
MAX_Q_LEVEL = 1.0  # q_sample reads step 99 of int(100 / level) steps: a level above 1 has fewer than 100


def image_backbone() -> TransformerConfig:
    """0.55M-parameter backbone (dim 96, depth 4, 4 heads, FFN 2x) over 64 patches of 4 x 4 on 32 x 32 crops:
    sized so that both models train in the default run's ~25 minutes on one busy CPU thread."""
    return TransformerConfig(dim=96, depth=4, heads=4, ffn_multiplier=2.0)


def image_think() -> ThinkConfig:
    """Training thinks 1 to 3 steps (drawn per batch, 2 on average) from the noisy image with second order
    through all of them (no truncation), learnable alpha on its own learning rate; inference reads steps
    0..image.ebt_steps. In a 150-step probe, alpha 10 became 11.4 and one step lifted PSNR at sigma 0.2
    from 20.3 to 24.6 dB; steps past the trained 2 then smoothed too much (24.3, 23.8, ...), hence 1 to 3."""
    return ThinkConfig(train_steps=3, train_steps_min=1, infer_steps=3, alpha=10.0, learn_alpha=True,
                       alpha_lr_multiplier=30.0, truncate=False, num_candidates=1)


def image_trainer() -> TrainerConfig:
    """The shared budget of both models: 600 AdamW steps of 32 crops (19,200 crops), warm-up then cosine. The EBT
    step costs ~1 s on one free CPU thread (~2 s on a busy one), the DiT's ~0.13 s."""
    return TrainerConfig(max_steps=600, batch_size=32, lr=1e-3, warmup_steps=50, checkpoint_every=100)


@dataclass
class ImageTaskConfig:
    """The denoising EBT: what its energy is conditioned on and which steps the loss reads."""

    conditioning: str = "conditional"  # "conditional": E(y, x), the candidate x attends to the encoded noisy image y;
    #                                    "unconditional": E(x), a learned constant condition takes y's place (the
    #                                    reference's `learned_adaln_condition`): the energy never reads y, which
    #                                    only enters as the start of thinking
    loss_steps: str = "all"  # "all": smooth L1 to the clean image averaged over the thinking steps; "last": last step
    huber_beta: float = 0.05  # smooth L1: quadratic below beta (pixel units, [-1, 1] scale; the reference: 1.0)

    def validate(self) -> "ImageTaskConfig":
        check_settings(self, "task", [
            ("conditioning", self.conditioning in CONDITIONING, f"one of {', '.join(CONDITIONING)}"),
            ("loss_steps", self.loss_steps in LOSS_STEPS, f"one of {', '.join(LOSS_STEPS)}"),
            ("huber_beta", self.huber_beta > 0, "> 0")])
        return self


@dataclass
class ImageRunConfig:
    """Photos, crops, noise and evaluation of `ebt-forecast image`."""

    photos: Optional[str] = None  # a folder of images (png / jpg / tif / bmp); None = the photos bundled with
    #                               scikit-image and scikit-learn (data_cards/image_photos.md)
    crop: int = 32  # crop side in pixels (a multiple of patch)
    patch: int = 4
    downscale: int = 2  # each photo is box-averaged by this factor first (more content per crop); 1 = off
    split_every: int = 6  # photo i (sorted by name) -> test if i % 6 == 0, validation if i % 6 == 1, else training
    noise: str = "gaussian"  # "gaussian": y = x + sigma * eps, a level is the pixel std sigma; "q_sample": the
    #                          reference's diffusion corruption, y = sqrt(abar) x + sqrt(1 - abar) eps at step 99 of
    #                          a linear schedule of int(100 / level) steps (data.py::q_sample_coefficients; level 0.1:
    #                          signal x 0.947, noise std 0.321), a level in (0, 1]
    train_sigmas: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3])  # noise levels (gaussian: pixel std
    #                                                                             on the [-1, 1] scale)
    test_sigmas: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3, 0.5])  # unseen ones = OOD
    eval_crops: int = 96  # crops per held-out split, fixed by the seed
    eval_batch: int = 48
    ebt_steps: int = 6  # the EBT is read after 0..ebt_steps thinking steps (past think.train_steps also with alpha
    #                     scaled by train_steps / steps)
    candidate_counts: list[int] = field(default_factory=lambda: [1, 2, 4])  # self-verification: N starts at the
    #                                                                         noisy image, think.infer_steps each
    verify_noise: Optional[float] = None  # the inference Langevin std that makes the N starts differ; None =
    #                                       think.infer_langevin_std (0: the N candidates are identical)
    dit_steps: list[int] = field(default_factory=lambda: [1, 10, 25, 100])  # DDIM steps (= DiT forward passes)
    dit_max_steps: Optional[int] = None  # the DiT's training steps; None = trainer.max_steps (the EBT's crops)
    dit_max_sigma: Optional[float] = None  # None: DDPM times t ~ U[0, 1] (every noise level, the standard DiT); a
    #                                        value: t ~ U[0, t(sigma)], so larger levels are unseen by the DiT too
    #                                        (sigma of the form x + sigma eps: q_sample level 0.1 is 0.339)
    splits: list[str] = field(default_factory=lambda: ["test", "val"])
    models: list[str] = field(default_factory=lambda: list(MODELS))
    grid_examples: int = 4  # test crops shown in the example grid (at the largest training and unseen sigma)

    def validate(self) -> "ImageRunConfig":
        top = MAX_Q_LEVEL if self.noise == "q_sample" else MAX_SIGMA
        sigmas_ok = lambda s: bool(s) and all(0 < v <= top for v in s)  # noqa: E731
        checks = [("patch", self.patch >= 1, ">= 1"),
                  ("crop", self.crop >= self.patch and self.crop % self.patch == 0,
                   f"a multiple of image.patch={self.patch}"),
                  ("downscale", self.downscale >= 1, ">= 1"), ("split_every", self.split_every >= 3, ">= 3"),
                  ("noise", self.noise in NOISE_KINDS, f"one of {', '.join(NOISE_KINDS)}"),
                  ("train_sigmas", sigmas_ok(self.train_sigmas),
                   f"a non-empty list of levels in (0, {top:g}] (image.noise={self.noise})"),
                  ("test_sigmas", sigmas_ok(self.test_sigmas),
                   f"a non-empty list of levels in (0, {top:g}] (image.noise={self.noise})"),
                  ("eval_crops", self.eval_crops >= 1, ">= 1"), ("eval_batch", self.eval_batch >= 1, ">= 1"),
                  ("ebt_steps", self.ebt_steps >= 0, ">= 0"),
                  ("candidate_counts", bool(self.candidate_counts) and min(self.candidate_counts) >= 1,
                   "a non-empty list of ints >= 1"),
                  ("verify_noise", self.verify_noise is None or self.verify_noise >= 0, "None or >= 0"),
                  ("dit_max_steps", self.dit_max_steps is None or self.dit_max_steps >= 1, "None or >= 1"),
                  ("dit_max_sigma", self.dit_max_sigma is None or self.dit_max_sigma > 0, "None or > 0"),
                  ("dit_steps", bool(self.dit_steps) and min(self.dit_steps) >= 1, "a non-empty list of ints >= 1"),
                  ("splits", bool(self.splits) and all(s in ("test", "val") for s in self.splits),
                   "a non-empty list of test, val"),
                  ("models", bool(self.models) and all(m in MODELS for m in self.models),
                   f"a non-empty list of {', '.join(MODELS)}"),
                  ("grid_examples", self.grid_examples >= 0, ">= 0")]
        check_settings(self, "image", checks)
        return self


@dataclass
class ImageAppConfig(AppConfig):
    """Root schema of the `image` command."""

    model: TransformerConfig = field(default_factory=image_backbone)
    think: ThinkConfig = field(default_factory=image_think)
    trainer: TrainerConfig = field(default_factory=image_trainer)
    task: ImageTaskConfig = field(default_factory=ImageTaskConfig)
    image: ImageRunConfig = field(default_factory=ImageRunConfig)
