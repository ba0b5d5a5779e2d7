"""`ebt-forecast <command> -m ...`: a Hydra multirun of two jobs (the joblib launcher, two processes), each
writing its own folder and result file, and the same sweep run again reusing every finished cell."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from ebt_forecast.cli import main

TINY = ["runtime.threads=1", "benchmark.models=[seasonal_naive,transformer_pp]", "trainer.max_steps=3",
        "trainer.batch_size=8", "trainer.warmup_steps=1", "trainer.progress_bar=false", "model.dim=16",
        "model.depth=1", "benchmark.plot_series=0"]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def keep_logging():
    """Hydra sets up logging for its jobs; give the other tests theirs back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:], root.level = handlers, level


def sweep(capsys, output: Path, *extra: str) -> tuple[int, str, str]:
    """`ebt-forecast benchmark -m seed=0,1 ...` (tiny): exit code, stdout, stderr."""
    code = main(["benchmark", "-m", "seed=0,1", *TINY, f"runtime.output_dir={output}", *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_seed_sweep_writes_a_result_file_per_job_and_a_rerun_reuses_them(tmp_path, capsys):
    code, out, err = sweep(capsys, tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert code == 0, err[-2000:]
    folders = {seed: tmp_path / f"seed={seed}" for seed in (0, 1)}
    tables = {seed: pd.read_csv(folder / "default" / "results.csv") for seed, folder in folders.items()}
    for seed, folder in folders.items():
        assert f"(seed={seed}): exit code 0, output in {folder}" in out
        assert (folder / ".hydra" / "config.yaml").is_file()  # each job records its resolved config
        assert not tables[seed]["reused"].any()
        trained = tables[seed][tables[seed]["model"] == "transformer_pp"]
        assert len(trained) == 4 and (trained["seed"] == seed).all() and (trained["train_steps"] == 3).all()
    # the seeds trained different models: the twin's scores differ between the jobs' files
    wql = [tables[s].loc[tables[s]["model"] == "transformer_pp", "wql"].to_numpy() for s in (0, 1)]
    assert (wql[0] != wql[1]).any()
    cells = {p: p.stat().st_mtime_ns for p in tmp_path.glob("seed=*/default/cells/*.json")}
    assert len(cells) == 2 * 4 * 2

    code, out, err = sweep(capsys, tmp_path)  # the same sweep (basic launcher, in turn): every cell is reused
    assert code == 0, err[-2000:]
    for seed, folder in folders.items():
        table = pd.read_csv(folder / "default" / "results.csv")
        assert table["reused"].all() and len(table) == len(tables[seed])
        assert (table["wql"].to_numpy() == tables[seed]["wql"].to_numpy()).all()
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("seed=*/default/cells/*.json")} == cells
    assert json.loads(next(iter(cells)).read_text())["result"]  # the experiment layer keeps a cell's rows as its result


def test_a_bad_swept_value_is_a_clean_error(tmp_path, capsys):
    code = main(["benchmark", "-m", "trainer.max_steps=oops,3", *TINY[:1], f"runtime.output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "trainer.max_steps" in err
