"""The task interface: a minimal task with a known quadratic energy plugs in through `tasks/base.py`
(train -> think -> select end to end, and a CLI command it registers), the shared System 2 pieces in
`think/`, and one source of configuration defaults."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
import torch
from torch.utils.data import Dataset

from ebt_forecast.cli import main
from ebt_forecast.tasks import base
from ebt_forecast.tasks.base import AppConfig, Command, TaskModule, TaskSpec, TrainerConfig, fit_module, register_task
from ebt_forecast.think import (
    ConfigError,
    InferenceSetting,
    ReplayBuffer,
    Starts,
    ThinkConfig,
    choose_on_validation,
    listwise_ranking_loss,
    mix_replay,
    select_candidates,
)

# ---------------------------------------------------------------- a minimal task


@dataclass
class QuadraticConfig:
    """Targets are 2 x context; the energy is 0.5 ||x - w * context||^2 with one learnable w."""

    dim: int = 3
    start_noise: float = 1.0


class QuadraticData(Dataset):
    """Seeded random contexts c ~ N(0, I) with targets 2c."""

    def __init__(self, dim: int, size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.context = torch.randn(size, dim, generator=g)

    def __len__(self) -> int:
        return len(self.context)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"context": self.context[i], "target": 2 * self.context[i]}


class QuadraticModule(TaskModule):
    """encode = the energy's minimiser w * c; starts = the zero proposal plus noisy copies."""

    def __init__(self, cfg: QuadraticConfig, think_cfg: ThinkConfig, trainer: TrainerConfig):
        super().__init__(think_cfg, trainer)
        self.cfg = cfg
        self.w = torch.nn.Parameter(torch.tensor(0.5))

    def encode(self, batch):
        return self.w * batch["context"]  # (B, D)

    def energy_fn(self, center: torch.Tensor, per_row: int):
        def fn(x, index):
            rows = center.repeat_interleave(per_row, 0) if index is None else center[torch.div(index, per_row, rounding_mode="floor")]
            return 0.5 * ((x - rows) ** 2).sum(-1)
        return fn

    def propose(self, encoding, batch, num_candidates, group, generator=None):
        b, d = encoding.shape
        proposals = torch.zeros(b, num_candidates, d)
        noise = torch.randn(b, num_candidates, group - 1, d, generator=generator) * self.cfg.start_noise
        starts = torch.cat([proposals.unsqueeze(2), proposals.unsqueeze(2) + noise], dim=2)
        return Starts(proposals, starts, self.energy_fn(encoding, num_candidates * group))

    def training_step(self, batch, batch_idx):
        center = self.encode(batch)
        init = torch.zeros(len(center), 1, self.cfg.dim)
        refined = self.think(self.energy_fn(center, 1), init).candidates[:, 0]
        return ((refined - batch["target"]) ** 2).mean()


def quadratic_module(max_steps: int = 150) -> tuple[QuadraticModule, TrainerConfig]:
    think_cfg = ThinkConfig(train_steps=1, infer_steps=1, alpha=1.0, learn_alpha=False)
    trainer = TrainerConfig(max_steps=max_steps, batch_size=16, lr=0.05, warmup_steps=1, progress_bar=False)
    return QuadraticModule(QuadraticConfig(), think_cfg, trainer), trainer


def test_a_minimal_task_trains_thinks_and_selects_through_the_interface():
    module, trainer = quadratic_module()
    report = fit_module(module, QuadraticData(3, 150 * 16), trainer, seed=0)
    assert report.steps == 150
    # one step of alpha = 1 lands exactly on w * c, so the loss is minimised at w = 2
    assert module.w.item() == pytest.approx(2.0, abs=0.02)

    batch = {"context": torch.randn(5, 3, generator=torch.Generator().manual_seed(1))}
    truth = 2 * batch["context"]
    # step 0: the proposal (zero) is far; one thinking step reaches the minimiser
    proposal = module.infer(batch, num_candidates=2, group=1, steps=0, selection="proposal")
    refined = module.infer(batch, num_candidates=2, group=1, steps=1, selection="refined")
    assert proposal.record is None and torch.all(proposal.samples == 0)
    torch.testing.assert_close(refined.samples, truth.unsqueeze(1).expand(-1, 2, -1), atol=0.05, rtol=0)
    # one step: one energy and gradient per candidate, and no final energy (refined never reads it)
    assert refined.record.forward_passes == 5 * 2 and refined.record.backward_passes == 5 * 2
    # self-verification at step 0 keeps, per proposal, the start nearest the minimiser
    verified = module.infer(batch, num_candidates=2, group=4, steps=0, selection="verified",
                            generator=torch.Generator().manual_seed(2))
    distance = ((verified.grouped - module.encode(batch)[:, None, None]) ** 2).sum(-1)
    nearest = torch.gather(verified.grouped, 2, distance.argmin(-1)[..., None, None].expand(-1, -1, 1, 3))[:, :, 0]
    torch.testing.assert_close(verified.samples, nearest)


def test_a_checkpoint_resumes_only_its_own_schedule(tmp_path):
    """More steps (or another warm-up) is another cosine schedule: the checkpoint is refused, not resumed
    under a changed schedule; the same run resumes."""
    module, trainer = quadratic_module(max_steps=4)
    trainer.checkpoint_dir, trainer.checkpoint_every = str(tmp_path), 2
    data = QuadraticData(3, 8 * 16)
    assert fit_module(module, data, trainer, seed=0, run_key="quadratic").steps == 4
    assert (tmp_path / "last.ckpt").exists()
    again, calls = quadratic_module(4)[0], []
    step = again.training_step
    again.training_step = lambda batch, batch_idx: (calls.append(batch_idx), step(batch, batch_idx))[1]
    assert fit_module(again, data, trainer, seed=0, run_key="quadratic").steps == 4 and calls == []  # resumed: done
    with pytest.raises(ConfigError, match="trainer.max_steps=4 there, 8 here"):
        fit_module(quadratic_module(8)[0], data, replace(trainer, max_steps=8), seed=0, run_key="quadratic")
    with pytest.raises(ConfigError, match="trainer.warmup_steps=1 there, 2 here"):
        fit_module(quadratic_module(4)[0], data, replace(trainer, warmup_steps=2), seed=0, run_key="quadratic")
    with pytest.raises(ConfigError, match="another configuration"):
        fit_module(quadratic_module(4)[0], data, trainer, seed=0, run_key="other")


def test_a_task_registers_a_command_the_cli_runs(capsys):
    """A new task is a registration (and a config node): the CLI finds its command, composes its config
    with type checks, and runs it, with no edit to the CLI or the root config."""

    @dataclass
    class QuadraticApp(AppConfig):
        task: QuadraticConfig = field(default_factory=QuadraticConfig)

    def run(app: QuadraticApp) -> int:
        think_cfg = ThinkConfig(train_steps=1, alpha=1.0, learn_alpha=False)
        module = QuadraticModule(app.task, think_cfg, app.trainer)
        fit_module(module, QuadraticData(app.task.dim, app.trainer.max_steps * app.trainer.batch_size), app.trainer, app.seed)
        print(f"w={module.w.item():.3f}")
        return 0

    register_task(TaskSpec("quadratic", QuadraticConfig, QuadraticApp, {"quadfit": Command("fit w", run)}))
    try:
        code = main(["quadfit", "task.dim=2", "trainer.max_steps=120", "trainer.batch_size=16", "trainer.lr=0.05",
                     "trainer.warmup_steps=1", "trainer.progress_bar=false", "runtime.threads=1"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert abs(float(out.strip().split("w=")[-1]) - 2.0) < 0.05
        assert main(["quadfit", "task.nonsense=1"]) == 2
        assert "nonsense" in capsys.readouterr().err
        assert main(["--help"]) == 0 and "quadfit" in capsys.readouterr().out
        with pytest.raises(ValueError, match="already registered"):
            register_task(TaskSpec("other", QuadraticConfig, QuadraticApp, {"quadfit": Command("x", run)}))
    finally:
        base._TASKS.pop("quadratic", None)


# ---------------------------------------------------------------- shared System 2 pieces


def test_select_candidates_on_a_hand_built_set():
    grouped = torch.tensor([[[[0.0], [10.0], [4.0]], [[1.0], [2.0], [9.0]]]])  # (B=1, M=2, G=3, 1)
    energies = torch.tensor([[[3.0, 1.0, 2.0], [0.5, 5.0, 0.2]]])
    proposals = torch.tensor([[[-1.0], [-2.0]]])
    pick = lambda sel, **kw: select_candidates(sel, proposals, grouped, energies, **kw)  # noqa: E731
    assert pick("proposal").flatten().tolist() == [-1.0, -2.0]
    assert pick("refined").flatten().tolist() == [0.0, 1.0]
    assert pick("verified").flatten().tolist() == [10.0, 9.0]
    assert pick("average").flatten().tolist() == pytest.approx([14 / 3, 4.0])
    assert pick("median").flatten().tolist() == [4.0, 2.0]
    assert pick("lowest").flatten().tolist() == [9.0]
    weights = torch.softmax(-energies[0, 0] / 2.0, 0)
    assert pick("weighted", temperature=2.0)[0, 0, 0].item() == pytest.approx(float((weights * grouped[0, 0, :, 0]).sum()))
    with pytest.raises(ValueError, match="selection='best'"):
        pick("best")


def test_listwise_ranking_loss_rewards_energies_that_order_by_error():
    errors = torch.tensor([[0.1, 0.5, 1.0, 2.0]])
    right = listwise_ranking_loss(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), errors)
    flat = listwise_ranking_loss(torch.zeros(1, 4), errors)
    wrong = listwise_ranking_loss(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), errors)
    assert right < flat < wrong
    assert flat.item() == pytest.approx(torch.log(torch.tensor(4.0)).item(), abs=1e-6)  # uniform energies: ln K
    energies = torch.zeros(1, 4, requires_grad=True)
    listwise_ranking_loss(energies, errors).backward()
    assert energies.grad[0, 0] > 0 > energies.grad[0, 3]  # descent lowers the best one's energy


def test_mix_replay_swaps_a_share_of_rows_for_stored_ones():
    buffer = ReplayBuffer(10)
    batch = {"x": torch.arange(8.0).view(8, 1), "y": torch.arange(8.0).view(8, 1) * 10}
    same, replayed = mix_replay(buffer, batch, 0.5)
    assert not replayed and same is batch
    buffer.push({"x": torch.full((3, 1), -1.0), "y": torch.full((3, 1), -10.0)})
    mixed, replayed = mix_replay(buffer, batch, 0.5, torch.Generator().manual_seed(0))
    assert replayed
    assert mixed["x"][:4, 0].tolist() == [4.0, 5.0, 6.0, 7.0] and (mixed["x"][4:] == -1).all()
    assert (mixed["y"][4:] == -10).all()  # rows stay whole


def test_choose_on_validation_keeps_the_argmin_and_the_first_of_ties():
    scores = {"0:proposal": 0.5, "1:verified": 0.3, "2:verified": 0.3, "1:refined": 0.9}
    settings = [InferenceSetting(int(k.split(":")[0]), k.split(":")[1]) for k in scores]
    best, seen = choose_on_validation(lambda s: scores[s.key], settings)
    assert best == InferenceSetting(1, "verified") and seen == scores


# ---------------------------------------------------------------- one source of defaults


def test_cli_estimator_and_python_api_resolve_to_the_same_configuration():
    from ebt_forecast.config import compose
    from ebt_forecast.tasks.forecast import EBTEstimator, ForecasterConfig

    for command in ("forecast", "benchmark"):
        assert compose(command, []).forecaster() == ForecasterConfig()
    assert EBTEstimator(prediction_length=24, freq="h").config == ForecasterConfig()
    medium = compose("benchmark", ["model=medium", "think=no_thinking"]).forecaster()
    assert (medium.model.dim, medium.model.depth, medium.think.enabled) == (128, 3, False)
