"""`ebt-forecast pretrain`: the run folder, resume, the twin, config errors, validation windows, and that it learns."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ebt_forecast.cli import main
from ebt_forecast.config import compose
from ebt_forecast.data.loaders import load_exchange_rate
from ebt_forecast.tasks.forecast.pretrain import load_pretrained, run_pretrain, validation_sets
from test_pretraining_data import write_long_parquet

TINY = ["runtime.threads=1", "model.dim=16", "model.depth=1", "model.heads=2", "trainer.batch_size=4",
        "trainer.warmup_steps=1", "trainer.checkpoint_every=2", "trainer.progress_bar=false",
        "pretrain.val_every=2", "pretrain.val_windows=4", "pretrain.data.kernelsynth_length=256"]


def periodic_series(rng: np.random.Generator, n: int, period: int = 24) -> np.ndarray:
    t = np.arange(n)
    level, amplitude = rng.uniform(5, 50), rng.uniform(0.5, 3)
    return level * (1 + 0.2 * amplitude * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))) \
        + rng.normal(0, 0.05 * level, n)


@pytest.fixture(scope="module")
def periodic_corpus(tmp_path_factory) -> Path:
    """A tiny corpus in the corpus format (long Parquet item_id, timestamp, target): daily-periodic hourly series."""
    root = tmp_path_factory.mktemp("periodic_corpus")
    rng = np.random.default_rng(0)
    write_long_parquet(root / "periodic" / "periodic_hourly.parquet",
                       {f"periodic/{i}": periodic_series(rng, 1000) for i in range(12)})
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, periodic_corpus) -> Path:
    """Two data sets: the periodic one and random walks."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "periodic").mkdir()
    (root / "periodic" / "periodic_hourly.parquet").write_bytes(
        (periodic_corpus / "periodic" / "periodic_hourly.parquet").read_bytes())
    rng = np.random.default_rng(1)
    write_long_parquet(root / "walk" / "walk_daily.parquet",
                       {f"walk/{i}": 100 + np.cumsum(rng.normal(size=600)) for i in range(4)})
    return root


def tiny(out: Path, corpus: Path, data_root: Path, *extra: str) -> list[str]:
    return [*TINY, f"runtime.output_dir={out}", f"pretrain.data.corpus_root={corpus}", f"data.root={data_root}", *extra]


def forward(module, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposals and energies of a fixed batch (scaled contexts, half of them short)."""
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(3, 512, generator=g)
    mask = torch.ones(3, 512)
    mask[1, :400] = 0
    levels = torch.rand(3, 5, generator=g)
    with torch.no_grad():
        cache = module.model.encode(context * mask, mask)
        paths = module.model.propose(cache, levels)
        return paths, module.model.energy(paths, levels, [(k.unsqueeze(1), v.unsqueeze(1)) for k, v in cache])


def test_pretrain_writes_the_run_folder_resumes_the_step_count_and_loads(tmp_path, corpus, shared_data, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", *tiny(out, corpus, shared_data, "trainer.max_steps=4")]) == 0
    for name in ("checkpoints/last.ckpt", "checkpoints/run_key.json", "weights.pt", "model.json", "validation.csv",
                 "train.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    weights = torch.load(out / "weights.pt", weights_only=True)
    assert weights and all(isinstance(v, torch.Tensor) for v in weights.values())
    meta = json.loads((out / "model.json").read_text())
    assert (meta["model"]["context_length"], meta["model"]["horizon"], meta["model"]["patch_len"]) == (512, 64, 16)
    assert meta["mode"] == "ebt" and meta["steps"] == 4 and meta["model"]["backbone"]["dim"] == 16
    val = pd.read_csv(out / "validation.csv")
    assert sorted(val.step.unique()) == [0, 2, 4]
    assert set(val.dataset) == {"m4_hourly", "etth1", "exchange_rate", "geomean"}
    assert np.isfinite(val.rel_wql).all() and (val.rel_wql > 0).all()
    assert (val[val.dataset != "geomean"].windows == 4).all()

    # another model size is refused, naming the key; so is a longer schedule, with the way to extend this one
    capsys.readouterr()
    assert main(["pretrain", *tiny(out, corpus, shared_data, "trainer.max_steps=4", "model.dim=32")]) == 2
    assert "model.dim=16 there, 32 here" in capsys.readouterr().err
    assert main(["pretrain", *tiny(out, corpus, shared_data, "trainer.max_steps=6")]) == 2
    assert "pass pretrain.schedule_steps=4" in capsys.readouterr().err

    # more steps on the same schedule: resumes at step 4 (not 0) and continues to 6
    run = run_pretrain(compose("pretrain", tiny(out, corpus, shared_data, "trainer.max_steps=6",
                                                "pretrain.schedule_steps=4")))
    assert (run.summary["start_step"], run.summary["end_step"]) == (4, 6)
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    history = json.loads((out / "train.json").read_text())
    assert [(h["start_step"], h["end_step"]) for h in history] == [(0, 4), (4, 6)]
    assert all(h["windows_per_s"] > 0 and h["points_per_s"] > 0 for h in history)
    val = pd.read_csv(out / "validation.csv")
    assert sorted(val.step.unique()) == [0, 2, 4, 6] and len(val) == 4 * 4  # step 4 not validated twice

    # a call on the finished run trains nothing and still reports; a run key written before a setting existed
    # resumes while the setting keeps its old behaviour, and not otherwise
    same = tiny(out, corpus, shared_data, "trainer.max_steps=6", "pretrain.schedule_steps=4")
    again = run_pretrain(compose("pretrain", same))
    assert (again.summary["start_step"], again.summary["end_step"]) == (6, 6)
    key_file = out / "checkpoints" / "run_key.json"
    key = json.loads(key_file.read_text())
    del key["pretrain.data.corpus_series_fraction"]
    key_file.write_text(json.dumps(key))
    assert main(["pretrain", *same]) == 0
    capsys.readouterr()
    assert main(["pretrain", *same, "pretrain.data.corpus_series_fraction=0.5"]) == 2
    assert "pretrain.data.corpus_series_fraction=1.0 there, 0.5 here" in capsys.readouterr().err

    loaded = load_pretrained(out)
    assert type(loaded).__name__ == "ForecastModule" and loaded.mode == "ebt" and not loaded.training
    assert loaded.model.cfg == run.module.model.cfg
    for got, want in zip(forward(loaded), forward(run.module)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_pretrain_twin_trains_only_the_proposals_on_synthetic_series(tmp_path):
    out = tmp_path / "twin"
    synthetic = ["pretrain.data.corpus_root=null", "pretrain.data.source_probs={corpus: 0, tsmixup: 0, kernelsynth: 1}"]
    assert main(["pretrain", *TINY, f"runtime.output_dir={out}", "pretrain.mode=feedforward", "pretrain.val_every=0",
                 "trainer.max_steps=2", *synthetic]) == 0
    assert json.loads((out / "model.json").read_text())["mode"] == "feedforward"
    assert not (out / "validation.csv").exists()
    twin = load_pretrained(out)
    assert twin.mode == "feedforward"
    assert torch.count_nonzero(twin.model.energy_head.proj.weight) == 0  # zero-initialised, never trained


@pytest.mark.parametrize("override, key", [
    ("pretrain.nope=1", "pretrain.nope"),
    ("pretrain.mode=bogus", "pretrain.mode"),
    ("pretrain.patch_len=0", "pretrain.patch_len"),
    ("pretrain.data.min_context=0", "pretrain.data.min_context"),
    ("pretrain.data.source_probs={bogus: 1}", "pretrain.data.source_probs"),
    ("pretrain.val_datasets=[m5]", "pretrain.val_datasets"),
    ("pretrain.val_every=-1", "pretrain.val_every"),
])
def test_pretrain_bad_setting_exits_2_naming_the_key(tmp_path, capsys, override, key):
    assert main(["pretrain", "runtime.threads=1", f"runtime.output_dir={tmp_path}", override]) == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()


def test_validation_windows_are_seeded_and_cut_from_the_training_part(shared_data):
    a = validation_sets(shared_data, ["exchange_rate"], 8, 512, 64, seed=3)[0]
    b = validation_sets(shared_data, ["exchange_rate"], 8, 512, 64, seed=3)[0]
    assert len(a.windows) == 8 and a.horizon == 30 and a.season_length == 5
    assert all(np.array_equal(x.past, y.past) and np.array_equal(x.future, y.future)
               for x, y in zip(a.windows, b.windows))
    train = {s.item_id: s.target for s in load_exchange_rate(shared_data).train}
    for w in a.windows:
        joined = np.concatenate([w.past, w.future])
        y = train[w.item_id]
        assert len(w.past) <= 512 and len(w.future) == 30
        assert any(np.array_equal(y[i:i + len(joined)], joined) for i in range(len(y) - len(joined) + 1))
    assert a.naive["wql"] > 0


def test_pretraining_on_periodic_series_lowers_the_zero_shot_validation_loss(tmp_path, periodic_corpus, shared_data):
    out = tmp_path / "learn"
    run = run_pretrain(compose("pretrain", [
        "runtime.threads=1", f"runtime.output_dir={out}", f"pretrain.data.corpus_root={periodic_corpus}",
        "pretrain.data.source_probs={corpus: 1, tsmixup: 0, kernelsynth: 0}", f"data.root={shared_data}",
        "model.dim=32", "model.depth=2", "model.heads=2", "trainer.batch_size=16", "trainer.max_steps=120",
        "trainer.warmup_steps=10", "trainer.progress_bar=false", "trainer.checkpoint_every=1000",
        "pretrain.val_every=120", "pretrain.val_windows=32", "pretrain.val_datasets=[m4_hourly]"]))
    val = pd.DataFrame(run.validation).query("dataset == 'm4_hourly'").set_index("step")
    assert list(val.index) == [0, 120]
    assert val.wql[120] < 0.5 * val.wql[0]


def test_pretrain_killed_with_sigkill_resumes_from_its_last_checkpoint(tmp_path):
    """kill -9 mid-run: the rerun starts at the last checkpoint's step (at most one interval lost), not at 0."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    args = [*TINY, f"runtime.output_dir={out}", "pretrain.val_every=0", "pretrain.schedule_steps=100000",
            "pretrain.data.corpus_root=null", "pretrain.data.source_probs={corpus: 0, tsmixup: 0, kernelsynth: 1}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ebt_forecast", "pretrain", *args, "trainer.max_steps=100000"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if ckpt.exists() and torch.load(ckpt, weights_only=True)["global_step"] >= 6:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = torch.load(ckpt, weights_only=True)["global_step"]  # whole: the checkpoint is written atomically
    assert saved >= 6 and saved % 2 == 0  # checkpoint_every=2
    run = run_pretrain(compose("pretrain", [*args, f"trainer.max_steps={saved + 2}"]))
    assert (run.summary["start_step"], run.summary["end_step"]) == (saved, saved + 2)


def test_energy_phase_on_the_twin_keeps_its_proposals_and_teaches_the_energy(tmp_path):
    """pretrain.init_from=<twin> pretrain.train=energy: the EBT starts from the twin's weights, only the energy's own
    parameters move (the proposals stay the twin's exactly), and the energy head leaves zero."""
    synthetic = ["pretrain.data.corpus_root=null", "pretrain.data.source_probs={corpus: 0, tsmixup: 0, kernelsynth: 1}",
                 "pretrain.val_every=0", "pretrain.data.scaling=standard"]
    twin_dir, ebt_dir = tmp_path / "twin", tmp_path / "ebt"
    assert main(["pretrain", *TINY, *synthetic, f"runtime.output_dir={twin_dir}", "pretrain.mode=feedforward",
                 "trainer.max_steps=3"]) == 0
    assert main(["pretrain", *TINY, *synthetic, f"runtime.output_dir={ebt_dir}", f"pretrain.init_from={twin_dir}",
                 "pretrain.train=energy", "trainer.max_steps=3"]) == 0
    twin, ebt = load_pretrained(twin_dir), load_pretrained(ebt_dir)
    assert ebt.mode == "ebt" and ebt.model.cfg.scaling == "standard"
    assert json.loads((ebt_dir / "model.json").read_text())["parameters"] >= json.loads(
        (twin_dir / "model.json").read_text())["parameters"]  # the size, frozen parts included
    torch.testing.assert_close(forward(ebt)[0], forward(twin)[0], rtol=0, atol=0)  # the same proposals
    assert torch.count_nonzero(ebt.model.energy_head.proj.weight) > 0  # the energy learned
    moved = {k for k, v in ebt.state_dict().items() if not torch.equal(v, twin.state_dict()[k])}
    assert moved and all(k.startswith(("step_size.", "model.candidate_embed.", "model.energy_level.",
                                       "model.energy_head.", "model.step_embed.")) for k in moved)
    capsys_free = main(["pretrain", *TINY, *synthetic, f"runtime.output_dir={tmp_path / 'bad'}",
                        f"pretrain.init_from={tmp_path / 'nowhere'}", "trainer.max_steps=1"])
    assert capsys_free == 2


@pytest.mark.parametrize("experiment, low, high", [("pretrain_1m", 0.9e6, 1.2e6), ("pretrain_5m", 4.5e6, 6.0e6)])
def test_the_pretraining_experiments_build_models_of_their_named_size(experiment, low, high):
    from ebt_forecast.tasks.forecast.pretrain import PretrainModule, count_parameters, model_config

    app = compose("pretrain", [f"experiment={experiment}"])
    module = PretrainModule(model_config(app), app.think, app.trainer, app.task, mode=app.pretrain.mode)
    assert low <= count_parameters(module) <= high
    assert app.pretrain.data.max_context >= 512 and app.pretrain.data.max_horizon >= 64
