"""The compute-vs-accuracy study: pass accounting, selective forecasting, resuming, and the command on a real file."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ebt_forecast.cli import main
from ebt_forecast.config import compose
from ebt_forecast.metrics import aggregate, auroc, score_window, selective_wql
from ebt_forecast.tasks.forecast import study as study_module
from ebt_forecast.tasks.forecast.benchmark import trained_ebt

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# a small study: tiny model and budget, short sweeps; every part of the study still runs
TINY = ["runtime.threads=1", "trainer.max_steps=12", "trainer.batch_size=16", "trainer.progress_bar=false",
        "model.dim=32", "model.depth=1", "task.val_windows=6", "task.verifier.pool_windows=8", "task.verifier.steps=3",
        "study.steps=[0,1,3]", "study.candidate_counts=[1,4]", "study.groups=[1,2]", "study.policy_steps=3",
        "study.tolerances=[0.01]", "study.top_fractions=[0.5]"]


@pytest.fixture(scope="module")
def etth1_file(shared_data, tmp_path_factory) -> Path:
    """Four ETTh1 columns, the last 700 hourly rows, in long form."""
    wide = pd.read_csv(shared_data / "ett" / "ETTh1.csv").tail(700)
    long = wide.melt(id_vars="date", value_vars=["OT", "HUFL", "HULL", "MUFL"], var_name="item_id",
                     value_name="target").rename(columns={"date": "timestamp"})
    path = tmp_path_factory.mktemp("study") / "etth1_four.csv"
    long.to_csv(path, index=False)
    return path


def _app(path: Path, out: Path, *extra: str):
    return compose("study", [f"input={path}", "horizon=24", "freq=h", f"runtime.output_dir={out}", *TINY, *extra])


@pytest.fixture(scope="module")
def finished(etth1_file, tmp_path_factory):
    """One complete tiny study: (app, output folder)."""
    app = _app(etth1_file, tmp_path_factory.mktemp("study_out"))
    return app, study_module.run_study(app)


def test_pass_counts_in_the_table_are_the_engines(finished):
    """Each row's passes are what the engine's record says for that setting, rerun on the trained model; fixed
    steps spend (K + 1) M G forward and K M G backward passes per window; the starts alone read M G energies."""
    app, out = finished
    table = pd.read_csv(out / "study.csv")
    datasets = study_module.study_datasets(app)
    ebt = trained_ebt(datasets[0], app, out / "cache")
    test = datasets[0].test_windows
    for label in ("fixed[steps=3,verified,M=21,G=2]", "energy_change[steps=3,verified,M=21,G=2,tol=0.01]",
                  "top_energy[steps=3,verified,M=21,G=2,top=0.5]", "candidates[steps=2,verified,M=4,G=2]"):
        row = table[table.label == label].iloc[0]
        setting = study_module.Setting.of(row.policy, int(row.steps), row.selection, int(row.num_candidates),
                                          int(row.group), None if pd.isna(row.param) else float(row.param))
        again = study_module.run_setting(ebt, test, setting)
        assert (row.forward_passes, row.backward_passes) == (again.forward_passes, again.backward_passes), label
        np.testing.assert_allclose(row.wql, aggregate([score_window(s, w.future, w.past, 24)
                                                       for s, w in zip(again.samples, test)])["wql"], rtol=1e-6)
    fixed = table[(table.policy == "fixed") & (table.selection == "verified")]
    for _, r in fixed.iterrows():
        m, g, k = r.num_candidates, r.group, r.steps
        assert r.forward_per_window == (k + 1) * m * g if k > 0 else m * g
        assert r.backward_per_window == k * m * g
    # the adaptive policies spend fewer passes than the fixed budget they stop inside
    top = table[table.policy == "top_energy"].iloc[0]
    budget = fixed[fixed.steps == 3].iloc[0]
    assert top.backward_passes == pytest.approx(0.5 * budget.backward_passes)


def test_report_has_every_part(finished):
    """study.md holds the sweep, references, step 0 beside the validation choice, the adaptive policies, the cost of
    candidates, out of distribution and uncertainty; the plots exist; the selective curve at 0 is the full WQL."""
    app, out = finished
    text = (out / "study.md").read_text()
    for heading in ("## Sweep", "## References", "## Step 0 beside", "## Adaptive policies", "## Cost of candidates",
                    "## Out of distribution", "## Energy as uncertainty"):
        assert heading in text
    assert {p.name for p in (out / "plots").iterdir()} == {"etth1_four__compute.png", "etth1_four__selective.png"}
    unc = pd.read_csv(out / "study_uncertainty.csv").iloc[0]
    for signal in study_module.SIGNALS:
        assert unc[f"{signal}_wql@0"] == pytest.approx(unc.wql, rel=1e-12)
    ood = pd.read_csv(out / "study_ood.csv")
    assert set(ood.split) == {"in_distribution", "level_shift_3sd"}
    table = pd.read_csv(out / "study.csv")
    assert {"verifier", "fixed+uphill", "group", "candidates", "energy_change", "top_energy"} <= set(table.policy)
    assert table.val_wql.notna().all() and table.wql.notna().all()


def test_selective_wql_and_auroc_on_known_windows():
    """Withholding the highest-signal windows drops exactly those; AUROC is 1 for a perfect flag, 0 reversed."""
    rng = np.random.default_rng(0)
    futures = [np.full(4, 10.0) for _ in range(5)]
    errors = [0.1, 0.5, 3.0, 0.2, 2.0]  # windows 2 and 4 are the bad ones
    scores = [score_window(np.full((3, 4), 10.0 + e), f, rng.normal(10, 1, 30), 1) for e, f in zip(errors, futures)]
    signal = np.array(errors)
    curve = selective_wql(scores, signal, [0.0, 0.2, 0.4])
    assert curve[0.0] == pytest.approx(aggregate(scores)["wql"])
    assert curve[0.2] == pytest.approx(aggregate([scores[i] for i in (0, 1, 3, 4)])["wql"])
    assert curve[0.4] == pytest.approx(aggregate([scores[i] for i in (0, 1, 3)])["wql"])
    bad = signal >= 2.0
    assert auroc(signal, bad) == 1.0 and auroc(-signal, bad) == 0.0
    assert auroc(np.array([1.0, 2.0, 3.0, 4.0]), np.array([True, False, True, False])) == pytest.approx(0.25)


def test_an_interrupted_study_resumes_and_gives_the_same_table(etth1_file, finished, tmp_path, monkeypatch):
    """A run stopped after a few cells leaves them on disk; the rerun computes only the rest, and its table
    equals the uninterrupted run's (wall time aside)."""
    _, full = finished
    app = _app(etth1_file, tmp_path)
    real, calls = study_module.sweep_cell, []

    def stops_after_five(*args, **kwargs):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(study_module, "sweep_cell", stops_after_five)
    with pytest.raises(KeyboardInterrupt):
        study_module.run_study(app)
    cells = list((tmp_path / "etth1_four" / "cells").glob("*.json"))
    shared_cells = [c for c in cells if "__fixed_steps" in c.name]  # one per step count, thinking shared by selections
    assert len(shared_cells) == 3 and len(cells) == 3 + 5 and not (tmp_path / "etth1_four" / "study.csv").exists()
    counted = []
    monkeypatch.setattr(study_module, "sweep_cell", lambda *a, **k: counted.append(1) or real(*a, **k))
    out = study_module.run_study(app)
    table = pd.read_csv(out / "study.csv")
    own = ~((table.policy == "fixed") & table.selection.isin(study_module.SHARED_SELECTIONS))
    assert len(counted) == int(own.sum()) - 5
    timing = [c for c in pd.read_csv(out / "study.csv").columns if "wall_seconds" in c]
    pd.testing.assert_frame_equal(pd.read_csv(out / "study.csv").drop(columns=timing),
                                  pd.read_csv(full / "study.csv").drop(columns=timing))


def test_study_command_on_a_file_and_its_errors(etth1_file, tmp_path, capsys):
    """`ebt-forecast study input=... horizon=... freq=h` prints the report; bad input names what is wrong, exit 2."""
    code = main(["study", f"input={etth1_file}", "horizon=24", "freq=h", f"runtime.output_dir={tmp_path}", *TINY,
                 "study.verifier=false", "study.ood=false"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "# Study: etth1_four" in out.out and (tmp_path / "etth1_four" / "study.csv").exists()
    code = main(["study", f"input={etth1_file}", "horizon=24", "target_col=load", f"runtime.output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "load" in err and "Traceback" not in err
    code = main(["study", f"input={tmp_path / 'missing.csv'}", "horizon=24", f"runtime.output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "missing.csv" in err
