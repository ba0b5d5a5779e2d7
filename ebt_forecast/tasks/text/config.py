"""The text task's configuration: its node in Hydra's `task` group and the `text` command's fields.

`ebt-forecast text` reads `task` (the EBT language model's start and loss), `text` (corpus, tokenizer,
windows, evaluation grid, scaling widths), and the shared `model`, `think` and `trainer` nodes, whose
text defaults are below. Recipes: the defaults are the reference's System 1 (N(0, 1) starts, the candidate
p = softmax(state + noise) with state = p - alpha dE/dp, 2 steps with step embeddings on detached states, alpha 500
learnable, loss averaged over steps); `experiment=text_system2` is the reference's System 2 (randomised steps and
alpha, Langevin noise, replay, truncation, loss on the last step); `experiment=text_hybrid` the earlier hybrid (a
tied head proposes, thinking descends the logits).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ebt_forecast.nn import TransformerConfig
from ebt_forecast.tasks.base import AppConfig, TrainerConfig
from ebt_forecast.think import ThinkConfig, check_settings

INITS = ("random", "head")
CANDIDATES = ("logits", "probs")
LOSS_STEPS = ("all", "last")
TOKENIZERS = ("bpe", "gpt2")
MODELS = ("ebt", "transformer_pp")
GENERATED = ("dyck", "arithmetic")


def text_backbone() -> TransformerConfig:
    """1.23M parameters with vocabulary 2048 (dim 160, 5 layers, 5 heads, FFN width = model width as in the
    reference's text runs; 0.9M outside the embedding): a size whose default run fits about 30 minutes on
    2 CPU cores (the EBT trains at ~700 tokens/s on one busy core, the Transformer++ at ~5,400)."""
    return TransformerConfig(dim=160, depth=5, heads=5, ffn_multiplier=1.0)


def text_think() -> ThinkConfig:
    """The reference's System 1 (REFERENCE "EBT mechanics"; `experiment=text_system1` spells it out): 2 steps, each
    its own landscape (step embedding) on a state detached between steps, alpha 500 learnable on lr x 1500, no noise
    in training, Langevin noise 1.0 at inference. At the default size and budget it reached validation perplexity
    126 +- 7 over 3 seeds where the earlier hybrid (`experiment=text_hybrid`) reached 175 (RESULTS 16)."""
    return ThinkConfig(train_steps=2, infer_steps=2, alpha=500.0, learn_alpha=True, alpha_lr_multiplier=1500.0,
                       alpha_random_dims=1, infer_langevin_std=1.0, step_embedding=True, detach_steps=True,
                       truncate=False, num_candidates=1)


def text_trainer() -> TrainerConfig:
    """The shared budget of both language models: 400 AdamW steps of 16 windows of 128 tokens (0.82M tokens),
    peak lr 1.2e-3 (the reference's xxs text runs), warm-up then cosine."""
    return TrainerConfig(max_steps=400, batch_size=16, lr=1.2e-3, warmup_steps=20, checkpoint_every=100)


@dataclass
class TextTaskConfig:
    """The EBT language model: how thinking starts and which steps the loss reads."""

    init: str = "random"  # start: "random": logits ~ N(0, init_std) (the reference); "head": a tied linear head on the
    #                       observed stream proposes, further starts add N(0, init_std) (the hybrid, RESULTS 10.1)
    init_std: float = 1.0
    candidate: str = "probs"  # "probs": the reference's update p = softmax(state + noise), state = p - alpha dE/dp,
    #                           the energy embedding p by its own Linear(V, D); "logits": descend the logits through
    #                           the softmax the energy applies (the hybrid; with init=random it barely learned, RESULTS 10)
    loss_steps: str = "all"  # "all": cross-entropy averaged over the steps (System 1); "last": last step (System 2)
    head_weight: float = 1.0  # init=head: weight of the head's own cross-entropy
    rank_weight: float = 0.0  # >0: teach the energy to verify: `rank_starts` noisy starts (head + N(0, init_std)) think
    #                           beside the head start (all under the cross-entropy loss, so (1 + K)x the thinking cost),
    #                           and a listwise loss ranks the refined candidates of each position by cross-entropy
    rank_starts: int = 3

    def validate(self) -> "TextTaskConfig":
        check_settings(self, "task", [("init", self.init in INITS, f"one of {', '.join(INITS)}"),
                                      ("init_std", self.init_std >= 0, ">= 0"),
                                      ("candidate", self.candidate in CANDIDATES, f"one of {', '.join(CANDIDATES)}"),
                                      ("loss_steps", self.loss_steps in LOSS_STEPS, f"one of {', '.join(LOSS_STEPS)}"),
                                      ("head_weight", self.head_weight >= 0, ">= 0"),
                                      ("rank_weight", self.rank_weight >= 0, ">= 0"),
                                      ("rank_starts", self.rank_starts >= 1, ">= 1")])
        return self


@dataclass
class TextRunConfig:
    """Corpus, tokenizer and evaluation of `ebt-forecast text`."""

    root: str = "../shared/data/text"  # holds shakespeare/ (the default corpus) and milton/ (the OOD set)
    corpus: Optional[str] = None  # a folder of .txt files; None = <root>/shakespeare
    ood: Optional[str] = None  # out-of-distribution folder; None = <root>/milton when it exists; "" = none
    tokenizer: str = "bpe"  # "bpe": byte-level BPE trained on the training works; "gpt2": GPT-2's 50,257 ids
    vocab_size: int = 2048  # bpe only
    gpt2_path: str = "../shared/data/tokenizers/gpt2.tiktoken"
    context_length: int = 128  # S tokens per window
    split_every: int = 7  # work i (sorted) -> validation if i % 7 == 0, test if i % 7 == 1, else training
    eval_windows: int = 48  # windows per evaluation set
    eval_batch: int = 8
    think_steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    candidate_counts: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # self-verification N
    generated: list[str] = field(default_factory=lambda: list(GENERATED))
    generated_examples: int = 400
    models: list[str] = field(default_factory=lambda: list(MODELS))
    twin_max_steps: Optional[int] = None  # the Transformer++'s training steps; None = trainer.max_steps (the EBT's
    #                                        tokens); more steps: the twin at about the EBT's training FLOPs
    scaling_dims: list[int] = field(default_factory=list)  # non-empty: the scaling experiment at these widths
    head_dim: int = 32  # scaling: heads = dim // head_dim

    def validate(self) -> "TextRunConfig":
        checks = [("tokenizer", self.tokenizer in TOKENIZERS, f"one of {', '.join(TOKENIZERS)}"),
                  ("vocab_size", self.vocab_size >= 260, ">= 260 (256 bytes and the separator)"),
                  ("context_length", self.context_length >= 2, ">= 2"),
                  ("split_every", self.split_every >= 3, ">= 3"),
                  ("eval_windows", self.eval_windows >= 1, ">= 1"), ("eval_batch", self.eval_batch >= 1, ">= 1"),
                  ("think_steps", bool(self.think_steps) and min(self.think_steps) >= 0, "a non-empty list of ints >= 0"),
                  ("candidate_counts", bool(self.candidate_counts) and min(self.candidate_counts) >= 1,
                   "a non-empty list of ints >= 1"),
                  ("generated", all(g in GENERATED for g in self.generated), f"a list of {', '.join(GENERATED)}"),
                  ("generated_examples", self.generated_examples >= 1, ">= 1"),
                  ("twin_max_steps", self.twin_max_steps is None or self.twin_max_steps >= 1, "None or >= 1"),
                  ("models", bool(self.models) and all(m in MODELS for m in self.models),
                   f"a non-empty list of {', '.join(MODELS)}"),
                  ("scaling_dims", all(d >= self.head_dim and d % self.head_dim == 0 for d in self.scaling_dims),
                   f"multiples of text.head_dim={self.head_dim}"),
                  ("head_dim", self.head_dim >= 2 and self.head_dim % 2 == 0, "an even int >= 2")]
        check_settings(self, "text", checks)
        return self


@dataclass
class TextAppConfig(AppConfig):
    """Root schema of the `text` command."""

    model: TransformerConfig = field(default_factory=text_backbone)
    think: ThinkConfig = field(default_factory=text_think)
    trainer: TrainerConfig = field(default_factory=text_trainer)
    task: TextTaskConfig = field(default_factory=TextTaskConfig)
    text: TextRunConfig = field(default_factory=TextRunConfig)
