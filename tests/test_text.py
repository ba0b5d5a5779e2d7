"""The text task: no leakage through the doubled sequence, tokenizers, training, thinking, the CLI."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ebt_forecast.cli import main
from ebt_forecast.nn import TransformerConfig
from ebt_forecast.tasks.base import TrainerConfig, fit_module
from ebt_forecast.tasks.text.config import TextTaskConfig, text_think
from ebt_forecast.think import ThinkConfig
from ebt_forecast.tasks.text.data import TokenWindows, pack_examples, dyck_examples, split_works
from ebt_forecast.tasks.text.model import TextEBT, TransformerPlusPlusLM
from ebt_forecast.metrics import rowwise_spearman
from ebt_forecast.tasks.text.module import TextModule, TransformerPPModule, position_cross_entropy, token_cross_entropy
from ebt_forecast.tasks.text.tokenizer import ByteBPETokenizer, GPT2Tokenizer

TINY = TransformerConfig(dim=32, depth=2, heads=2, ffn_multiplier=1.0)
GPT2 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tokenizers" / "gpt2.tiktoken"
TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 40


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_no_candidate_sees_a_later_token_or_another_candidate():
    torch.manual_seed(0)
    model = TextEBT(TINY, 50, 12).double()
    x = torch.randint(0, 50, (2, 12))
    logits = torch.randn(2, 12, 50, dtype=torch.float64, requires_grad=True)

    def energies_and_grad(tokens, z):
        e = model.token_energies(model.encode(tokens).cache, z)
        (g,) = torch.autograd.grad(e.sum(), z)
        return e.detach(), g

    e, g = energies_and_grad(x, logits)
    assert torch.allclose(e, model.doubled_energies(x, logits).detach(), atol=1e-10)  # cache == doubled sequence
    j = 7
    later = x.clone()
    later[:, j] = (later[:, j] + 1) % 50
    e2, g2 = energies_and_grad(later, logits)
    assert torch.allclose(e[:, :j], e2[:, :j]) and torch.allclose(g[:, :j], g2[:, :j])  # candidate i sees x_0..x_i
    assert not torch.allclose(e[:, j:], e2[:, j:])
    bumped = logits.detach().clone()
    bumped[:, j] += torch.randn(2, 50, dtype=torch.float64)
    e3, g3 = energies_and_grad(x, bumped.requires_grad_(True))
    others = [i for i in range(12) if i != j]
    assert torch.allclose(e[:, others], e3[:, others]) and torch.allclose(g[:, others], g3[:, others])
    twin = TransformerPlusPlusLM(TINY, 50, 12)
    with torch.no_grad():
        assert torch.allclose(twin(x)[:, :j], twin(later)[:, :j], atol=1e-6)


def test_tokenizers_round_trip_and_gpt2_gives_its_known_ids():
    text = "Hello  world\n\n  it's 123+456=579\n([{<>}])\n  éü — ok"
    bpe = ByteBPETokenizer.train([TEXT], 300)
    assert bpe.vocab_size == 300 and bpe.decode(bpe.encode(text)) == text
    assert len(bpe.encode(TEXT[:200])) < 200  # merges learned
    if not GPT2.exists():
        pytest.skip(f"{GPT2} is not shipped here")
    gpt2 = GPT2Tokenizer(GPT2)
    assert gpt2.encode("Hello world") == [15496, 995] and gpt2.eot == 50256 and gpt2.vocab_size == 50257
    assert gpt2.decode(gpt2.encode(text)) == text


def test_generated_sets_score_the_completion_only():
    bpe = ByteBPETokenizer.train([TEXT + "()[]{}<>"], 300)
    packed = pack_examples(dyck_examples(20, 0), bpe.encode, bpe.eot, 32)
    row = packed["y"][0][packed["mask"][0]].tolist()
    assert packed["mask"].any() and not packed["mask"].all()
    assert set(bpe.decode(row)) <= set(")]}>\n")
    assert len(split_works([("a", "x" * 100)])["validation"][0][1]) == 10


@pytest.fixture(scope="module")
def trained():
    """Both tiny models, their loss on held-out windows before and after 40 steps."""
    torch.set_num_threads(1)
    bpe = ByteBPETokenizer.train([TEXT], 300)
    ids = np.asarray(bpe.encode(TEXT), dtype=np.int64)
    data = TokenWindows(ids, 16, 40 * 16, seed=0)
    batch = {k: torch.stack([data[i][k] for i in range(0, 256, 8)]) for k in ("x", "y")}
    trainer = TrainerConfig(max_steps=40, batch_size=16, lr=3e-3, warmup_steps=5, progress_bar=False)
    torch.manual_seed(0)
    ebt = TextModule(TINY, text_think(), trainer, TextTaskConfig(), 300, 16)
    twin = TransformerPPModule(TINY, trainer, 300, 16)

    def losses() -> tuple[float, float]:
        thought = ebt.eval().infer(batch, num_candidates=1, group=1, steps=2, selection="refined",
                                   generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            return (float(token_cross_entropy(thought.samples[:, 0], batch["y"])),
                    float(token_cross_entropy(twin.eval().predict(batch), batch["y"])))

    before = losses()
    ebt.train(), twin.train()
    fit_module(ebt, data, trainer, seed=0)
    fit_module(twin, data, trainer, seed=0)
    return ebt, twin, batch, before, losses()


def test_a_few_steps_of_training_lower_the_loss_of_both_models(trained):
    _, _, _, (ebt_before, twin_before), (ebt_after, twin_after) = trained
    assert twin_after < twin_before - 1.0
    assert ebt_after < ebt_before - 0.3


def test_thinking_lowers_the_energy_of_a_trained_model(trained):
    ebt, _, batch, _, _ = trained
    thought = ebt.infer(batch, num_candidates=2, group=2, steps=2, selection="refined", final_energy=True,
                        generator=torch.Generator().manual_seed(1))
    energies = thought.record.energies  # (T + 1, B, M * G)
    assert energies[-1].mean() < energies[0].mean()


def test_the_ranking_loss_teaches_the_energy_to_rank_candidates_by_cross_entropy():
    torch.manual_seed(0)
    bpe = ByteBPETokenizer.train([TEXT], 300)
    data = TokenWindows(np.asarray(bpe.encode(TEXT), dtype=np.int64), 16, 16, seed=0)
    batch = {k: torch.stack([data[i][k] for i in range(16)]) for k in ("x", "y")}
    hybrid = ThinkConfig(train_steps=2, infer_steps=2, alpha=50.0, truncate=False, num_candidates=1)  # text_hybrid
    ebt = TextModule(TINY, hybrid, TrainerConfig(), TextTaskConfig(rank_weight=1.0, init="head", candidate="logits"),
                     300, 16)
    with torch.no_grad():  # four candidates per position: the head's logits and three noisy copies
        head = ebt.model.head_logits(ebt.encode(batch))
        group = head.unsqueeze(1) + torch.randn((16, 4, 16, 300), generator=torch.Generator().manual_seed(0))
    errors = position_cross_entropy(group, batch["y"].unsqueeze(1)).transpose(1, 2).flatten(0, 1).numpy()

    def spearman() -> float:
        with torch.no_grad():
            energies = ebt.position_energies(ebt.encode(batch), group).transpose(1, 2).flatten(0, 1).numpy()
        return float(np.nanmean(rowwise_spearman(energies, errors)))

    before = spearman()
    optimizer = torch.optim.AdamW(ebt.parameters(), lr=3e-3)
    for _ in range(60):
        loss = ebt.ranking_loss(ebt.encode(batch), group, batch["y"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = spearman()
    assert abs(before) < 0.3 and after > 0.6, (before, after)


def tiny_corpus(folder: Path) -> Path:
    folder.mkdir()
    for i, name in enumerate(["a.txt", "b.txt", "c.txt"]):
        (folder / name).write_text(TEXT[i * 50:] + TEXT[:i * 50])
    return folder


def test_text_cli_writes_the_tables_and_reuses_its_cells(tmp_path, capsys):
    corpus = tiny_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    args = ["text", "runtime.threads=1", f"runtime.output_dir={out}", f"text.corpus={corpus}", "text.ood=",
            "text.vocab_size=300", "text.context_length=16", "model.dim=32", "model.depth=1", "model.heads=2",
            "trainer.max_steps=4", "trainer.batch_size=4", "trainer.progress_bar=false", "text.eval_windows=3",
            "text.generated_examples=20", "text.think_steps=[1,2]", "text.candidate_counts=[1,2]"]
    assert main(args) == 0
    root = out / "corpus"
    table = pd.read_csv(root / "text.csv")
    assert set(table["set"]) == {"validation", "test", "dyck", "arithmetic"}
    assert set(table["model"]) == {"ebt", "transformer_pp"}
    assert set(table[table["kind"] == "verify"]["candidates"]) == {1, 2}
    assert set(table[table["kind"] == "average"]["candidates"]) == {1, 2}  # the energy-free control
    assert np.isfinite(table[(table["kind"] == "verify") & (table["candidates"] == 2)]["spearman"]).all()
    # passes per sequence: a thinking step is one forward and one backward per candidate; choosing the lowest of
    # N > 1 reads N final energies; the Transformer++ predicts in one forward
    passes = {(r.kind, r.steps, r.candidates): (r.forward_passes, r.backward_passes) for r in table.itertuples()}
    assert passes[("forward", 0, 1)] == (1, 0) and passes[("steps", 2, 1)] == (2, 2)
    assert passes[("verify", 2, 2)] == (6, 4) and passes[("average", 2, 2)] == (4, 4)
    assert (root / "text.md").exists() and (root / "plots" / "perplexity_vs_steps.png").exists()
    models = sorted((root / "models").glob("*/weights.pt"))
    assert len(models) == 2
    stamps = [p.stat().st_mtime_ns for p in models]
    capsys.readouterr()
    assert main(args) == 0  # every model and cell is reused
    assert "training ebt" not in capsys.readouterr().out
    assert pd.read_csv(root / "text.csv").equals(table)
    assert [p.stat().st_mtime_ns for p in models] == stamps


TINY_TEXT_RUN = ["runtime.threads=1", "text.ood=", "text.vocab_size=300", "text.context_length=16", "model.depth=1",
                 "trainer.max_steps=4", "trainer.batch_size=4", "trainer.progress_bar=false", "text.eval_windows=3",
                 "text.generated=[]", "text.think_steps=[1]", "text.candidate_counts=[1]"]


def test_the_system2_recipe_trains_with_replay_noise_and_random_steps(tmp_path, monkeypatch):
    """experiment=text_system2, watched inside its training steps: from the second step on, half of each batch
    (the last rows) are earlier rows of the replay buffer, which then holds every fresh row pushed; each call
    thinks for 2 or 3 steps (both drawn); the first energy reads the start plus Langevin noise of std 3."""
    from ebt_forecast.tasks.text import module as text_module

    calls, replays, active = [], [], []
    real_step, real_think, real_mix = (text_module.TextModule.training_step, text_module.TextModule.think,
                                       text_module.mix_replay)

    def watched_step(self, batch, batch_idx):
        training = getattr(self, "_trainer", None) is not None  # not the FLOP count made after training
        active[:] = [self] if training else []
        try:
            return real_step(self, batch, batch_idx)
        finally:
            active.clear()

    def watched_think(self, energy_fn, init, **kwargs):
        if not active:  # evaluation
            return real_think(self, energy_fn, init, **kwargs)
        seen = []
        result = real_think(self, lambda x, index: seen.append(x.detach().clone()) or energy_fn(x, index), init, **kwargs)
        calls.append({"init": init.detach().clone(), "first_energy_input": seen[0], "steps": result.record.steps_budget,
                      "module": self})
        return result

    def watched_mix(buffer, rows, fraction, generator=None):
        mixed, replayed = real_mix(buffer, rows, fraction, generator)
        if active:
            stored = [r["x"] for r in buffer._rows] if replayed else []
            replays.append({"replayed": replayed, "size": len(buffer), "x": mixed["x"].clone(), "stored": stored})
        return mixed, replayed

    monkeypatch.setattr(text_module.TextModule, "training_step", watched_step)
    monkeypatch.setattr(text_module.TextModule, "think", watched_think)
    monkeypatch.setattr(text_module, "mix_replay", watched_mix)
    corpus = tiny_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    steps, batch = 8, 4
    run = [a for a in TINY_TEXT_RUN if not a.startswith("trainer.max_steps=")] + [f"trainer.max_steps={steps}"]
    assert main(["text", "experiment=text_system2", f"runtime.output_dir={out}", f"text.corpus={corpus}",
                 "model.dim=32", "model.heads=2", "text.models=[ebt]", *run]) == 0
    assert len(calls) == len(replays) == steps
    # replay: nothing on the first step, then the last half of the batch are rows stored earlier
    fresh = batch // 2
    assert [r["replayed"] for r in replays] == [False] + [True] * (steps - 1)
    assert [r["size"] for r in replays] == [0] + [batch + fresh * i for i in range(steps - 1)]
    for r in replays[1:]:
        for row in r["x"][fresh:]:
            assert any(torch.equal(row, old) for old in r["stored"])
    trained = calls[-1]["module"]
    assert all(c["module"] is trained for c in calls)
    assert len(trained.replay) == batch + fresh * (steps - 1)  # every fresh row pushed; the 192-row cap not reached
    # random steps: every call's budget lies in [train_steps_min, train_steps] = [2, 3], and both occur
    assert {c["steps"] for c in calls} == {2, 3}
    # Langevin noise: the first energy evaluation reads softmax(start + N(0, 3^2)) (the reference's candidate): its
    # log is start + noise up to one constant per position
    for c in calls:
        p = c["first_energy_input"]
        assert torch.allclose(p.sum(-1), torch.ones(()), atol=1e-4)
        noise = p.log() - c["init"].reshape(p.shape)
        noise = noise - noise.mean(-1, keepdim=True)
        assert abs(float(noise.std()) - 3.0) < 0.1
    table = pd.read_csv(out / "corpus" / "text.csv")
    default = table[(table["kind"] == "verify") & (table["steps"] == 3)]  # the recipe's 3 inference steps
    assert len(default) == 2 and np.isfinite(default["perplexity"]).all()


def test_the_scaling_experiment_fits_a_slope_per_model(tmp_path, monkeypatch):
    """The reported log-log slope is the least-squares slope of log perplexity on log size: fed perplexities that
    follow c * parameters^-0.3 (ebt) and c * parameters^-0.5 (the twin) at three widths, the report says -0.300 and
    -0.500 against parameters, and the closed-form slope cov / var against the other size columns."""
    from ebt_forecast.tasks.text import run as text_run

    exponent = {"ebt": -0.3, "transformer_pp": -0.5}
    trained = []
    real_train = text_run.train_model
    monkeypatch.setattr(text_run, "train_model", lambda *a, **k: trained.append(real_train(*a, **k)) or trained[-1])
    monkeypatch.setattr(text_run, "headline", lambda frame, model, name, steps: pd.Series(
        {"perplexity": 40.0 * trained[-1].meta["parameters"] ** exponent[model]}))
    corpus = tiny_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    assert main(["text", "experiment=text_scaling", "text.scaling_dims=[16,32,48]", "text.head_dim=16",
                 f"runtime.output_dir={out}", f"text.corpus={corpus}", *TINY_TEXT_RUN]) == 0
    root = out / "corpus"
    table = pd.read_csv(root / "text_scaling.csv")
    assert sorted(zip(table["model"], table["dim"])) == [(m, d) for m in ("ebt", "transformer_pp") for d in (16, 32, 48)]
    assert (table.groupby("model")["parameters"].nunique() == 3).all()
    report = (root / "text_scaling.md").read_text()
    rows = {line.split("|")[1].strip(): [float(v) for v in line.split("|")[2:5]]
            for line in report.splitlines() if line.startswith("| ") and line.count("|") == 5 and "model" not in line}
    assert set(rows) == set(exponent)

    def slope(x: np.ndarray, y: np.ndarray) -> float:  # least squares by hand: cov(log x, log y) / var(log x)
        lx, ly = np.log(x), np.log(y)
        return float(((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum())

    for model, r in table.groupby("model"):
        assert rows[model][0] == pytest.approx(exponent[model], abs=5e-4)
        for k, column in enumerate(["parameters", "non_embedding_parameters", "train_flops"]):
            assert rows[model][k] == pytest.approx(slope(r[column].to_numpy(), r["perplexity"].to_numpy()), abs=5e-4)
    assert (root / "plots" / "scaling.png").exists()


@pytest.mark.parametrize("override, message", [
    ("text.context_length=0", "text.context_length=0 is invalid"),
    ("text.corpus=/no/such/folder", "/no/such/folder"),
    ("text.corpus=EMPTY", "holds no non-empty .txt file"),
    ("text.tokenizer=gpt2 text.gpt2_path=/no/gpt2.tiktoken", "/no/gpt2.tiktoken"),
    ("text.models=[gpt4]", "text.models"),
    ("text.nonsense=1", "nonsense"),
])
def test_text_cli_rejects_bad_settings(tmp_path, capsys, override, message):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    args = [a.replace("EMPTY", str(tmp_path / "empty")) for a in override.split()]
    assert main(["text", f"runtime.output_dir={out}", "runtime.threads=1", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing written


def reference_module(step_embedding: bool = True) -> TextModule:
    """A tiny EBT language model with the reference's candidate (task.candidate=probs)."""
    torch.manual_seed(0)
    think = ThinkConfig(train_steps=2, infer_steps=2, alpha=500.0, step_embedding=step_embedding, detach_steps=True,
                        truncate=False, num_candidates=1)
    return TextModule(TransformerConfig(dim=16, depth=1, heads=2), think, TrainerConfig(),
                      TextTaskConfig(init="random", candidate="probs"), vocab_size=11, context_length=6)


def test_reference_candidate_update_on_the_language_model():
    """One inference step of the probs recipe: the state becomes p - alpha dE/dp with p = softmax(state), the
    gradient taken against p through the model's own Linear(V, D) embedding of p."""
    module = reference_module().eval()
    tokens = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(1))
    encoding = module.encode({"x": tokens})
    state = torch.randn(2, 1, 6, 11, generator=torch.Generator().manual_seed(2))
    result = module.think(module.energy_fn(encoding, 1), state, training=False, steps=1, final_energy=False)
    p = state.reshape(2, 6, 11).softmax(-1).requires_grad_(True)
    (g,) = torch.autograd.grad(module.model.energy(encoding.cache, p, step=0).sum(), p)
    torch.testing.assert_close(result.candidates.reshape(2, 6, 11), p.detach() - 500.0 * g)


def test_the_step_embedding_gives_each_step_its_own_landscape():
    module = reference_module().eval()
    tokens = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(1))
    encoding = module.encode({"x": tokens})
    p = torch.rand(2, 6, 11).softmax(-1)
    with torch.no_grad():
        module.model.step_embed.weight.normal_()  # trained landscapes differ; the init is small but not equal
        first, second = (module.model.energy(encoding.cache, p, step=t) for t in (0, 1))
        beyond = module.model.energy(encoding.cache, p, step=5)  # beyond the trained steps: the last landscape
    assert not torch.allclose(first, second)
    torch.testing.assert_close(beyond, second)
    # and the cached energy equals the full doubled sequence in every landscape
    torch.testing.assert_close(module.model.token_energies(encoding.cache, p, step=1),
                               module.model.doubled_energies(tokens, p, step=1), atol=1e-5, rtol=1e-5)
    assert reference_module(step_embedding=False).model.step_embed is None


def test_the_system1_recipe_runs_and_reports_scaled_steps_and_the_oracle(tmp_path):
    corpus = tiny_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    run = [a for a in TINY_TEXT_RUN if not a.startswith(("text.think_steps", "text.candidate_counts"))]
    assert main(["text", "experiment=text_system1", f"runtime.output_dir={out}", f"text.corpus={corpus}",
                 "model.dim=32", "model.heads=2", "text.models=[ebt]", "text.think_steps=[1,2,4]",
                 "text.candidate_counts=[1,2]", *run]) == 0
    table = pd.read_csv(out / "corpus" / "text.csv")
    assert set(table["kind"]) == {"steps", "steps_scaled", "verify", "average", "oracle"}
    scaled = table[table["kind"] == "steps_scaled"]
    assert sorted(set(scaled["steps"])) == [1, 4]  # every budget but the trained 2 steps
    for name, rows in table.groupby("set"):
        verify = rows[(rows["kind"] == "verify") & (rows["candidates"] == 2)]["ce"].item()
        oracle = rows[(rows["kind"] == "oracle") & (rows["candidates"] == 2)]["ce"].item()
        assert oracle <= verify + 1e-9
    report = (out / "corpus" / "text.md").read_text()
    assert "alpha x 2 / steps" in report and "best-of-N oracle" in report


@pytest.mark.parametrize("recipe, expected", [
    ([], {"init": "random", "candidate": "probs", "alpha": 500.0, "step_embedding": True, "infer_noise": 1.0}),
    (["experiment=text_system1"], {"init": "random", "candidate": "probs", "alpha": 500.0, "step_embedding": True,
                                   "infer_noise": 1.0}),
    (["experiment=text_system2"], {"init": "random", "candidate": "probs", "alpha": 5.0, "step_embedding": False,
                                   "infer_noise": 1.0}),
    (["experiment=text_hybrid"], {"init": "head", "candidate": "logits", "alpha": 50.0, "step_embedding": False,
                                  "infer_noise": 0.0}),
])
def test_the_text_recipes_compose(recipe, expected):
    """The default is the reference's System 1; the earlier hybrid stays one experiment away."""
    from ebt_forecast.config import compose

    app = compose("text", recipe)
    got = {"init": app.task.init, "candidate": app.task.candidate, "alpha": app.think.alpha,
           "step_embedding": app.think.step_embedding, "infer_noise": app.think.infer_langevin_std}
    assert got == expected
