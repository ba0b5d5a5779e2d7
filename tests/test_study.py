"""The compute-vs-accuracy study: pass accounting, selective forecasting, resuming, and the command on a real file."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ebt_forecast.cli import main
from ebt_forecast.config import compose
from ebt_forecast.data.types import TestWindow as Window  # not collected as a test class
from ebt_forecast.metrics import aggregate, auroc, score_window, score_windows, selective_wql
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
    """Passes counted by hand, not by rerunning: with K fixed steps, M level paths, G starts and N windows every
    start takes K gradient steps (N M G K backward and forward passes), and a selection that reads the final energy
    adds one more energy per start (N M G); energy-free ones (average, refined) do not. This holds for every
    fixed-budget row (fixed, fixed+uphill, candidates, group, verifier) on the test and the validation windows.
    top_energy thinks on round(f N) windows after reading every start's energy once; energy_change stops early
    inside its budget and reads each final energy once."""
    app, out = finished
    table = pd.read_csv(out / "study.csv")
    dataset = study_module.study_datasets(app)[0]
    n_test = len(dataset.test_windows)
    assert n_test == 4  # four series, the last horizon of each
    n_val = 4 * 2  # task.val_windows=6 over four series: ceil(6 / 4) = 2 windows from each
    ebt = trained_ebt(dataset, app, out / "cache")
    assert len(ebt.val_windows) == n_val
    energy_free = {"average", "refined", "median", "proposal"}
    fixed = table[table.policy.isin(["fixed", "fixed+uphill", "candidates", "group", "verifier"])]
    assert len(fixed) == 15 + 3 + 2 + 2 + 2 and set(fixed.selection) == {"verified", "weighted", "resample", "average", "refined"}
    for _, r in fixed.iterrows():
        starts, k = r.num_candidates * r.group, r.steps
        for prefix, n in (("", n_test), ("val_", n_val)):
            final = 0 if r.selection in energy_free else n * starts
            assert (r[f"{prefix}forward_passes"], r[f"{prefix}backward_passes"]) == (n * starts * k + final,
                                                                                     n * starts * k), (r.label, prefix)
    m, g, k = 21, 2, app.study.policy_steps
    top = table[table.policy == "top_energy"].iloc[0]
    thinking = round(top.param * n_test)
    assert (top.forward_passes, top.backward_passes) == (n_test * m * g + thinking * m * g * (k + 1), thinking * m * g * k)
    stop = table[table.policy == "energy_change"].iloc[0]
    assert stop.forward_passes == stop.backward_passes + n_test * m * g
    assert 0 < stop.backward_passes <= n_test * m * g * k


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


def test_the_shared_fixed_cell_equals_a_separate_run_of_each_setting(finished):
    """Fixed-steps settings that share their thinking (one run, read by several selections) give the rows a separate
    run of each setting gives: the same metrics and the same passes, on the validation and the test windows."""
    app, out = finished
    dataset = study_module.study_datasets(app)[0]
    ebt = trained_ebt(dataset, app, out / "cache")
    settings = [s for s in study_module.study_settings(app.study, 21, 2, 2)
                if s.policy == "fixed" and s.selection in study_module.SHARED_SELECTIONS]
    assert {s.selection for s in settings} == {"verified", "weighted", "resample", "average"}
    for steps in app.study.steps:
        group = [s for s in settings if s.steps == steps]
        for s, shared in zip(group, study_module.shared_fixed_cell(ebt, dataset, group)):
            alone = study_module.sweep_cell(ebt, dataset, s, [], out / "cache")
            assert shared["label"] == alone["label"] == s.label
            for prefix in ("", "val_"):
                for metric in study_module.METRICS:
                    assert shared[prefix + metric] == pytest.approx(alone[prefix + metric], rel=1e-6), (s.label, metric)
                for passes in ("forward_passes", "backward_passes"):
                    assert shared[prefix + passes] == alone[prefix + passes], (s.label, prefix + passes)


def test_uncertainty_cell_scores_each_signal_against_the_worst_windows(finished, monkeypatch):
    """The uncertainty cell on the trained EBT: its WQL is the served forecast's; the worst windows are the top
    worst_fraction by each window's own WQL; each signal's AUROC is sklearn's roc_auc_score of that signal for those
    windows; the step-0 energy signal is each window's mean over levels of the lowest start energy; the selective
    WQL drops the highest-signal windows; and an oracle signal (the error itself) lowers the WQL as it withholds."""
    from dataclasses import replace

    from sklearn.metrics import roc_auc_score

    app, out = finished
    dataset = study_module.study_datasets(app)[0]
    ebt = trained_ebt(dataset, app, out / "cache")
    study = replace(app.study, worst_fraction=0.5, withheld=[0.0, 0.25, 0.5])
    seen = []
    real_auroc = study_module.auroc
    monkeypatch.setattr(study_module, "auroc", lambda signal, positive: seen.append((signal, positive)) or
                        real_auroc(signal, positive))
    row = study_module.uncertainty_cell(ebt, dataset, study)
    windows = dataset.test_windows
    served = ebt.predict(windows)
    scores = [score_window(s, w.future, w.past, 24, served.levels) for s, w in zip(served.samples, windows)]
    errors = np.array([aggregate([s])["wql"] for s in scores])
    worst = errors >= np.sort(errors)[len(errors) // 2]  # the worse half of the four windows
    assert worst.sum() == 2 and row["windows"] == 4
    assert row["wql"] == pytest.approx(aggregate(scores)["wql"], rel=1e-9)
    assert len(seen) == len(study_module.SIGNALS)
    starts = ebt.predict(windows, steps=0, selection="verified")
    step0 = starts.energies.min(axis=-1).mean(axis=-1)  # (N, M, G) -> lowest start per level -> mean over levels
    for name, (signal, positive) in zip(study_module.SIGNALS, seen):
        np.testing.assert_array_equal(positive, worst)
        assert row[f"{name}_auroc"] == pytest.approx(roc_auc_score(worst, signal)), name
        for x in study.withheld:
            kept = np.argsort(-signal, kind="stable")[int(round(x * 4)):]
            assert row[f"{name}_wql@{x:g}"] == pytest.approx(aggregate([scores[i] for i in kept])["wql"]), (name, x)
    np.testing.assert_allclose(seen[study_module.SIGNALS.index("energy_step0")][0], step0, rtol=1e-6)
    oracle = selective_wql(scores, errors, [0.0, 0.25, 0.5])
    assert oracle[0.5] < oracle[0.25] < oracle[0.0]


def test_level_shift_ood_cell_forecasts_windows_moved_by_level_shift_sds(finished):
    """study.level_shift=3: the shifted split moves each window's past and future up by 3 standard deviations of its
    past; its rows are the EBT's scores on windows shifted that way here, by hand, and differ from in-distribution."""
    app, out = finished
    dataset = study_module.study_datasets(app)[0]
    ebt = trained_ebt(dataset, app, out / "cache")
    windows = dataset.test_windows
    moved = study_module.shifted(windows, app.study.level_shift)
    for w, m in zip(windows, moved):
        sd = np.nanstd(w.past.astype(np.float64))
        assert (m.item_id, m.start) == (w.item_id, w.start) and sd > 0
        np.testing.assert_allclose(m.past - w.past, 3.0 * sd, rtol=1e-4)
        np.testing.assert_allclose(m.future - w.future, 3.0 * sd, rtol=1e-4)
    ood = pd.read_csv(out / "study_ood.csv")
    for steps in app.study.steps:
        rows = ood[(ood.steps == steps) & (ood.selection == "verified")].set_index("split")
        by_hand = [Window(w.item_id, w.start, w.past + 3.0 * np.nanstd(w.past), w.future + 3.0 * np.nanstd(w.past))
                   for w in windows]
        shifted_wql = score_windows(ebt.predict(by_hand, steps=steps, selection="verified"), by_hand, 24)["wql"]
        plain_wql = score_windows(ebt.predict(windows, steps=steps, selection="verified"), windows, 24)["wql"]
        assert rows.loc["level_shift_3sd", "wql"] == pytest.approx(shifted_wql, rel=1e-4)
        assert rows.loc["in_distribution", "wql"] == pytest.approx(plain_wql, rel=1e-9)
        assert abs(shifted_wql - plain_wql) > 1e-3
