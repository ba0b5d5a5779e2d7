"""The video task's configuration: its node in Hydra's `task` group and the `video` command's fields.

`ebt-forecast video` reads `task` (how the EBT's candidates start and which steps its loss reads), `video`
(data, frame size, autoencoder, clips, evaluation grid, rollout horizons) and the shared `model`, `think` and
`trainer` nodes (the autoencoder too trains where and how `trainer` says), whose video defaults are below.
Recipes (REFERENCE "EBT mechanics"):
- the defaults, a hybrid tuned to the standardised latents: 2 steps on one landscape, second order through both
  (no detach), alpha 1 learnable, loss averaged over the steps, no noise, no replay, 2 steps at inference;
- `experiment=video_system1`, the reference's System 1: 2 steps, each its own landscape (a learned step
  embedding) on a state detached between steps, alpha 30000 learnable (lr x 90000), no training noise, loss
  averaged over the steps;
- `experiment=video_system2`, the reference's System 2: one landscape, 2-3 randomised steps, alpha 3000 fixed and
  randomised x/÷2 per clip and frame, Langevin noise 1.0, a replay buffer of 192 clips, truncation, loss on the
  last step.
Both reference recipes infer with Langevin noise 1.0, 4 steps at alpha x train_steps / 4, and self-verification
from independent N(0, 1) starts (the reference: 4 samples, lowest final energy per frame). They keep the
reference's values although our latents are standardised (unit scale), not SD-VAE latents: see the yaml files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from ebt_forecast.nn import TransformerConfig
from ebt_forecast.tasks.base import AppConfig, TrainerConfig
from ebt_forecast.think import ThinkConfig, check_settings

INITS = ("noise", "last")
LOSS_STEPS = ("all", "last")
MODELS = ("ebt", "transformer_pp")
SOURCES = ("digits", "clips")


def video_backbone() -> TransformerConfig:
    """dim 128, 4 layers, 4 heads, FFN 2x (0.66M parameters): one frame latent is one token."""
    return TransformerConfig(dim=128, depth=4, heads=4, ffn_multiplier=2.0)


def video_think() -> ThinkConfig:
    """The default (a hybrid, not a reference recipe): 2 steps on one landscape, learnable alpha 1 (lr x 10), second
    order through every step (no truncation, no detach; the loss reads every step), no noise; 2 steps at inference."""
    return ThinkConfig(train_steps=2, infer_steps=2, alpha=1.0, learn_alpha=True, alpha_lr_multiplier=10.0,
                       truncate=False, num_candidates=1)


def video_trainer() -> TrainerConfig:
    """The shared budget of both sequence models: 800 AdamW steps of 32 clips (25,600 clips), warm-up then cosine.
    Sized so that the default run (autoencoder, both models, evaluation) fits 30 minutes on a busy 2-core CPU:
    the EBT's step (2 second-order thinking steps) costs about 5x the Transformer++'s."""
    return TrainerConfig(max_steps=800, batch_size=32, lr=1e-3, warmup_steps=50, checkpoint_every=250)


@dataclass
class VideoTaskConfig:
    """The video EBT: how next-frame candidates start and which thinking steps the loss reads."""

    init: str = "noise"  # "noise": latents ~ N(0, init_std) (the paper); "last": the last observed latent + noise
    init_std: float = 1.0  # latents are standardised, so N(0, 1) is the latent prior's scale
    loss_steps: str = "all"  # "all": smooth L1 averaged over the steps (System 1); "last": the last step (System 2)

    def validate(self) -> "VideoTaskConfig":
        check_settings(self, "task", [("init", self.init in INITS, f"one of {', '.join(INITS)}"),
                                      ("init_std", self.init_std >= 0, ">= 0"),
                                      ("loss_steps", self.loss_steps in LOSS_STEPS, f"one of {', '.join(LOSS_STEPS)}")])
        return self


@dataclass
class VideoRunConfig:
    """Data, autoencoder and evaluation of `ebt-forecast video`."""

    sources: list[str] = field(default_factory=lambda: list(SOURCES))  # digits and / or real clips
    clips: str = "../shared/data/video"  # a folder of videos (any PyAV-readable .mp4 / .avi / .mov / ...)
    heldout: list[str] = field(default_factory=lambda: ["bigbuckbunny.mp4"])  # test-only videos (OOD)
    train_fraction: float = 0.7  # of each training video's frames, in time; the rest: validation, then test
    clip_weight: float = 0.25  # share of training clips drawn from the real videos when both sources are used
    frame_size: int = 32  # frames are grayscale squares frame_size x frame_size
    clip_length: int = 8  # frames per clip: predict frames 1..L-1 from frames 0..L-2
    latent_dim: int = 32  # one frame -> one latent vector = one token
    ae_width: int = 16  # channels of the autoencoder's first convolution (x2 per stride-2 stage)
    ae_steps: int = 800
    ae_batch: int = 64
    ae_lr: float = 2e-3
    digit_size: int = 12
    digits: int = 2  # digits per clip (training and in distribution)
    speed: list[float] = field(default_factory=lambda: [1.0, 2.0])  # pixels per frame
    ood_digits: int = 3  # OOD set "digits_more"
    ood_speed: list[float] = field(default_factory=lambda: [3.0, 4.5])  # OOD set "digits_fast"
    train_clips: int = 4000  # generated digit clips for training
    eval_clips: int = 128  # clips per evaluation set (at most)
    eval_batch: int = 32
    think_steps: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8])
    candidate_counts: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # self-verification N
    rollout_steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # autoregressive horizons k; [] = none
    models: list[str] = field(default_factory=lambda: list(MODELS))
    strip_clips: int = 2  # clips shown in the PNG strip of true vs predicted frames

    def validate(self) -> "VideoRunConfig":
        checks = [("sources", bool(self.sources) and all(s in SOURCES for s in self.sources),
                   f"a non-empty list of {', '.join(SOURCES)}"),
                  ("train_fraction", 0 < self.train_fraction < 1, "in (0, 1)"),
                  ("clip_weight", 0 < self.clip_weight < 1, "in (0, 1)"),
                  ("frame_size", self.frame_size >= 16 and self.frame_size % 8 == 0, "a multiple of 8, >= 16"),
                  ("clip_length", self.clip_length >= 2, ">= 2"),
                  ("latent_dim", self.latent_dim >= 1, ">= 1"), ("ae_width", self.ae_width >= 1, ">= 1"),
                  ("ae_steps", self.ae_steps >= 1, ">= 1"), ("ae_batch", self.ae_batch >= 1, ">= 1"),
                  ("ae_lr", self.ae_lr > 0, "> 0"),
                  ("digit_size", 4 <= self.digit_size < self.frame_size, f"in [4, frame_size={self.frame_size})"),
                  ("digits", self.digits >= 1, ">= 1"), ("ood_digits", self.ood_digits >= 1, ">= 1"),
                  ("speed", len(self.speed) == 2 and 0 <= self.speed[0] <= self.speed[1], "[low, high], 0 <= low <= high"),
                  ("ood_speed", len(self.ood_speed) == 2 and 0 <= self.ood_speed[0] <= self.ood_speed[1],
                   "[low, high], 0 <= low <= high"),
                  ("train_clips", self.train_clips >= 1, ">= 1"), ("eval_clips", self.eval_clips >= 1, ">= 1"),
                  ("eval_batch", self.eval_batch >= 1, ">= 1"),
                  ("think_steps", bool(self.think_steps) and min(self.think_steps) >= 0, "a non-empty list of ints >= 0"),
                  ("candidate_counts", bool(self.candidate_counts) and min(self.candidate_counts) >= 1,
                   "a non-empty list of ints >= 1"),
                  ("rollout_steps", all(k >= 1 for k in self.rollout_steps), "a list of ints >= 1"),
                  ("models", bool(self.models) and all(m in MODELS for m in self.models),
                   f"a non-empty list of {', '.join(MODELS)}"),
                  ("strip_clips", self.strip_clips >= 0, ">= 0")]
        check_settings(self, "video", checks)
        return self


@dataclass
class VideoAppConfig(AppConfig):
    """Root schema of the `video` command."""

    model: TransformerConfig = field(default_factory=video_backbone)
    think: ThinkConfig = field(default_factory=video_think)
    trainer: TrainerConfig = field(default_factory=video_trainer)
    task: VideoTaskConfig = field(default_factory=VideoTaskConfig)
    video: VideoRunConfig = field(default_factory=VideoRunConfig)
