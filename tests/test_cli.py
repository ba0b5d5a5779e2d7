"""The `ebt-forecast` command line: forecast on a real file, clean errors (exit code 2, a message that
names the file / column / series / key, no traceback, no output), and a resumable quick benchmark."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ebt_forecast.cli import main
from ebt_forecast.metrics import QUANTILE_LEVELS

REPO = Path(__file__).resolve().parents[1]
HORIZON = 24
# small and fast: every forecast/benchmark call here uses one thread and a tiny model
FAST = ["pretrained=null", "runtime.threads=1", "trainer.max_steps=20", "trainer.batch_size=16", "trainer.progress_bar=false",
        "model.dim=32", "model.depth=1", "task.val_windows=4", "task.verifier.pool_windows=8", "task.verifier.steps=5"]
EXPECTED_COLUMNS = ["item_id", "timestamp", "mean", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m ebt_forecast ARGS` in a fresh process."""
    return subprocess.run([sys.executable, "-m", "ebt_forecast", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """main(ARGS) in this process: exit code, stdout, stderr."""
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def etth1_long(shared_data) -> pd.DataFrame:
    """Two ETTh1 columns, the last 1500 hourly rows, in long form (item_id, timestamp, target)."""
    wide = pd.read_csv(shared_data / "ett" / "ETTh1.csv").tail(1500)
    long = wide.melt(id_vars="date", value_vars=["OT", "HUFL"], var_name="item_id", value_name="target")
    return long.rename(columns={"date": "timestamp"})[["item_id", "timestamp", "target"]].reset_index(drop=True)


@pytest.fixture
def etth1_csv(etth1_long, tmp_path) -> Path:
    path = tmp_path / "etth1.csv"
    etth1_long.to_csv(path, index=False)
    return path


def check_forecast_file(path: Path, source: pd.DataFrame, id_col: str = "item_id", time_col: str = "timestamp"):
    """Header, one row per series and future step, hourly continuation, ordered finite quantiles."""
    header = path.read_text().splitlines()[0]
    assert header.split(",") == EXPECTED_COLUMNS
    assert EXPECTED_COLUMNS[3:] == [f"{q:g}" for q in QUANTILE_LEVELS]
    out = pd.read_csv(path, dtype={"item_id": str})
    ids = sorted(source[id_col].astype(str).unique())
    assert len(out) == len(ids) * HORIZON
    assert sorted(out["item_id"].unique()) == ids
    for item in ids:
        rows = out[out["item_id"] == item]
        assert len(rows) == HORIZON
        last = pd.to_datetime(source.loc[source[id_col].astype(str) == item, time_col]).max()
        expected = pd.date_range(last + pd.Timedelta(hours=1), periods=HORIZON, freq="h")
        assert list(pd.to_datetime(rows["timestamp"])) == list(expected)
    values = out[EXPECTED_COLUMNS[2:]].to_numpy(dtype=float)
    assert np.isfinite(values).all()
    quantiles = out[EXPECTED_COLUMNS[3:]].to_numpy(dtype=float)
    assert (np.diff(quantiles, axis=1) >= 0).all()
    assert (quantiles[:, -1] > quantiles[:, 0]).any()  # a spread, not a point forecast
    return out


# ---------------------------------------------------------------- forecast


def test_forecast_on_etth1_writes_tidy_quantiles(etth1_csv, etth1_long, tmp_path):
    out_csv = tmp_path / "OUT.csv"
    proc = run_cli("forecast", f"input={etth1_csv}", f"horizon={HORIZON}", "freq=h", f"output={out_csv}", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"wrote {out_csv}" in proc.stdout
    out = check_forecast_file(out_csv, etth1_long)
    # forecasts live on each series' own scale: OT (~10-20) and HUFL (~5-15) are not swapped
    for item in ("OT", "HUFL"):
        level = etth1_long.loc[etth1_long["item_id"] == item, "target"].tail(24 * 7).mean()
        assert abs(out.loc[out["item_id"] == item, "0.5"].mean() - level) < 0.6 * abs(level) + 2
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


def test_forecast_with_the_verifier_above_fast_forecasters(etth1_csv, etth1_long, tmp_path, capsys):
    """Trained on the file (pretrained=null), the EBT verifies among its proposal, seasonal naive, AutoETS and AutoTheta;
    task.verifier.enabled=false gives the EBT alone, a different forecast."""
    out_csv = tmp_path / "OUT.csv"
    code, out, err = run_main(capsys, "forecast", f"input={etth1_csv}", f"horizon={HORIZON}", "freq=h",
                              f"output={out_csv}", *FAST, "task.verifier.enabled=true")
    assert code == 0, err
    frame = check_forecast_file(out_csv, etth1_long)
    plain_csv = tmp_path / "PLAIN.csv"
    assert run_main(capsys, "forecast", f"input={etth1_csv}", f"horizon={HORIZON}", "freq=h",
                    f"output={plain_csv}", *FAST, "task.verifier.enabled=false")[0] == 0
    assert not np.allclose(frame["0.5"], pd.read_csv(plain_csv)["0.5"])  # the sources changed the forecast
    code, _, err = run_main(capsys, "forecast", f"input={etth1_csv}", f"horizon={HORIZON}", f"output={out_csv}",
                            "task.verifier.fast_sources=[prophet]")
    assert code == 2 and "task.verifier.fast_sources" in err


def test_forecast_with_custom_column_names_and_inferred_freq(etth1_long, tmp_path, capsys):
    src = etth1_long.rename(columns={"item_id": "sensor", "timestamp": "when", "target": "load"})
    src = src[["when", "load", "sensor"]]  # column order does not matter either
    path = tmp_path / "custom.csv"
    src.to_csv(path, index=False)
    out_csv = tmp_path / "custom_out.csv"
    code, out, err = run_main(capsys, "forecast", f"input={path}", f"horizon={HORIZON}", f"output={out_csv}",
                              "id_col=sensor", "time_col=when", "target_col=load", *FAST)
    assert code == 0, err
    check_forecast_file(out_csv, src, id_col="sensor", time_col="when")


def test_forecast_series_with_gaps_missing_values_and_different_ends(tmp_path, capsys):
    """Missing rows are filled with NaN, missing targets are masked, each series continues from its own
    end; an early-stopping thinking policy works through the command too."""
    rng = np.random.default_rng(0)
    frames = []
    for item, n, start in [("a", 300, "2022-03-01 00:00"), ("b", 200, "2022-03-02 05:00")]:
        t = pd.date_range(start, periods=n, freq="h")
        y = 20 + 5 * np.sin(2 * np.pi * np.arange(n) / 24) + rng.normal(0, 1, n)
        frame = pd.DataFrame({"item_id": item, "timestamp": t, "target": y})
        frame.loc[rng.random(n) < 0.05, "target"] = np.nan  # empty target cells
        frames.append(frame.drop(index=range(50, 60)))  # ten missing rows
    src = pd.concat(frames, ignore_index=True)
    path = tmp_path / "gaps.csv"
    src.to_csv(path, index=False)
    assert src["target"].isna().any() and ",\n" in path.read_text()  # empty cells in the file
    out_csv = tmp_path / "gaps_out.csv"
    code, _, err = run_main(capsys, "forecast", f"input={path}", f"horizon={HORIZON}", f"output={out_csv}", "freq=h",
                            "think.stop_policy=energy_change", "think.stop_tolerance=1e9", "think.infer_steps=4",
                            *FAST)
    assert code == 0, err
    out = check_forecast_file(out_csv, src)
    assert 10 < out["0.5"].mean() < 30


# ---------------------------------------------------------------- bad input


def _lines(series: dict[str, list[tuple[str, object]]]) -> str:
    rows = ["item_id,timestamp,target"]
    for item, points in series.items():
        rows += [f"{item},{t},{v}" for t, v in points]
    return "\n".join(rows) + "\n"


def _hourly(n: int, start: str = "2021-01-01 00:00") -> list[str]:
    return [str(t) for t in pd.date_range(start, periods=n, freq="h")]


def _good_points(n: int = 60) -> list[tuple[str, object]]:
    return [(t, 10 + np.sin(i / 3)) for i, t in enumerate(_hourly(n))]


def _bad_files() -> dict[str, tuple[str, list[str], list[str]]]:
    """case -> (file text, extra args, strings the message must contain)."""
    stamps = _hourly(60)
    non_numeric = _good_points()
    non_numeric[17] = (stamps[17], "abc")
    duplicate = _good_points()
    duplicate[30] = (stamps[29], 1.0)
    unsorted = _good_points()
    unsorted[10], unsorted[11] = unsorted[11], unsorted[10]
    return {
        "unknown_column": (_lines({"A": _good_points()}), ["target_col=load"], ["'load'", "not found"]),
        "non_numeric_target": (_lines({"A": _good_points(), "B": non_numeric}), [],
                               ["'target'", "'B'", "'abc'", "non-numeric"]),
        "duplicate_timestamps": (_lines({"A": _good_points(), "C": duplicate}), [],
                                 ["'timestamp'", "'C'", "duplicate timestamp"]),
        "unsorted_timestamps": (_lines({"D": unsorted, "A": _good_points()}), [],
                                ["'timestamp'", "'D'", "not sorted"]),
        "freq_mismatch": (_lines({"A": _good_points()}), ["freq=D"], ["'A'", "freq='D'"]),
        "series_too_short": (_lines({"A": _good_points(), "short": _good_points(10)}), [],
                             ["'short'", "length 10", "min_length=25"]),
        "min_length_option": (_lines({"A": _good_points(), "B": _good_points(40)}), ["min_length=50"],
                              ["'B'", "length 40", "min_length=50"]),
        "empty_file": ("", [], ["file is empty"]),
        "header_only": ("item_id,timestamp,target\n", [], ["no data rows"]),
        "horizon_zero": (_lines({"A": _good_points()}), ["horizon=0"], ["horizon=0", "invalid"]),
    }


@pytest.mark.parametrize("case", list(_bad_files()))
def test_bad_input_exits_2_with_a_message_and_no_output(case, tmp_path, capsys):
    text, extra, needles = _bad_files()[case]
    path = tmp_path / f"{case}.csv"
    path.write_text(text)
    out_csv = tmp_path / "out.csv"
    args = ["forecast", f"input={path}", f"horizon={HORIZON}", f"output={out_csv}", *FAST, *extra]
    code, out, err = run_main(capsys, *args)
    assert code == 2, (out, err)
    assert err.startswith("ebt-forecast forecast: error: ")
    if case != "horizon_zero":
        assert str(path) in err  # names the file
    for needle in needles:
        assert needle in err, (needle, err)
    assert "Traceback" not in err
    assert not out_csv.exists()
    assert list(tmp_path.iterdir()) == [path]  # no output and no temp file either


def test_missing_input_file_and_arguments(tmp_path, capsys):
    out_csv = tmp_path / "out.csv"
    missing = tmp_path / "nope.csv"
    for args, needle in [
        ([f"input={missing}", "horizon=24", f"output={out_csv}"], f"{missing}: file not found"),
        (["horizon=24", f"output={out_csv}"], "needs input=PATH"),
        ([f"input={missing}", "horizon=24"], "needs output="),
    ]:
        code, _, err = run_main(capsys, "forecast", *args, "runtime.threads=1")
        assert code == 2
        assert needle in err
    assert not out_csv.exists()


def test_bad_input_in_a_fresh_process_has_no_traceback(tmp_path):
    """The real console path: exit status 2, one clean line on stderr."""
    path = tmp_path / "dup.csv"
    points = _good_points()
    points[5] = points[4]
    path.write_text(_lines({"meter-7": points}))
    out_csv = tmp_path / "out.csv"
    proc = run_cli("forecast", f"input={path}", "horizon=24", f"output={out_csv}", "runtime.threads=1")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"ebt-forecast forecast: error: {path}: column 'timestamp', series 'meter-7': duplicate timestamp" \
        in proc.stderr
    assert not out_csv.exists()


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize("override,needles", [
    ("model.nonsense=1", ["nonsense"]),
    ("trainer.max_steps=abc", ["max_steps", "abc"]),
    ("think.alpha=-1", ["think.alpha=-1", "> 0"]),
    ("think.infer_steps=-2", ["think.infer_steps=-2", ">= 0"]),
    ("task.num_candidates=0", ["task.num_candidates=0", ">= 1"]),
    ("think.stop_policy=bogus", ["think.stop_policy='bogus'", "fixed"]),
    ("task.selection=best", ["task.selection='best'", "verified"]),
    ("runtime.threads=0", ["runtime.threads=0"]),
    ("nonsense=1", ["nonsense"]),
])
@pytest.mark.parametrize("command", ["forecast", "benchmark"])
def test_config_errors_exit_2_and_name_the_key(override, needles, command, tmp_path, capsys):
    code, out, err = run_main(capsys, command, override, f"runtime.output_dir={tmp_path}")
    assert code == 2, (out, err)
    assert err.startswith(f"ebt-forecast {command}: ")
    for needle in needles:
        assert needle in err, (needle, err)
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # failed before doing any work


def test_unknown_benchmark_model_and_suite(tmp_path, capsys):
    code, _, err = run_main(capsys, "benchmark", "benchmark.models=[seasonal_naive,prophet]",
                            f"runtime.output_dir={tmp_path}", "runtime.threads=1")
    assert code == 2 and "'prophet'" in err
    code, _, err = run_main(capsys, "benchmark", "suite=huge", f"runtime.output_dir={tmp_path}", "runtime.threads=1")
    assert code == 2 and "suite='huge'" in err


# ---------------------------------------------------------------- commands


def test_unknown_command_exits_2(capsys):
    code, out, err = run_main(capsys, "train", "horizon=3")
    assert code == 2
    assert "unknown command 'train'" in err
    assert "usage: ebt-forecast" in err
    code, out, err = run_main(capsys)
    assert code == 2 and "usage: ebt-forecast" in out
    code, out, err = run_main(capsys, "--help")
    assert code == 0 and "forecast" in out and "benchmark" in out


def test_unknown_command_in_a_fresh_process():
    proc = run_cli("fly")
    assert proc.returncode == 2
    assert "unknown command 'fly'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_quick_benchmark_writes_results_and_resumes(tmp_path, capsys):
    args = ["benchmark", "experiment=quick", "trainer.max_steps=10",
            "benchmark.models=[seasonal_naive,transformer_pp,ebt]", f"runtime.output_dir={tmp_path}", *FAST[:1],
            "model.dim=32", "model.depth=1", "benchmark.verify_groups=[1,2]", "benchmark.candidate_counts=[1,4]"]
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    root = tmp_path / "default"
    results, markdown = root / "results.csv", root / "results.md"
    assert results.is_file() and markdown.is_file() and (root / "relative.csv").is_file()
    assert "# Benchmark: suite=default" in out
    plots = list((root / "plots").glob("*.png"))
    assert plots and all(p.stat().st_size > 1000 for p in plots)

    table = pd.read_csv(results)
    datasets = {"co2", "elec_equip", "elnino", "sunspots"}
    assert set(table["dataset"]) == datasets
    for model in ("seasonal_naive", "transformer_pp", "ebt"):
        assert set(table.loc[table["model"] == model, "dataset"]) == datasets
    assert table["model"].str.startswith("ebt[").any()  # the thinking settings' rows
    assert np.isfinite(table["wql"]).all() and (table["wql"] > 0).all()
    main_rows = table[~table["model"].str.startswith("ebt[")]
    assert (main_rows.loc[main_rows["model"] != "seasonal_naive", "train_steps"] == 10).all()
    # passes recorded per row are what the fixed policy spends: steps gradients per start, steps energies, and the
    # final energy only for a selection that reads it
    from ebt_forecast.think import ENERGY_FREE

    thought = table[table["model"].str.startswith("ebt[")]
    starts = thought["num_windows"] * thought["candidates"] * thought["verify_group"]
    reads_energy = ~thought["selection"].isin(ENERGY_FREE)
    assert (thought["forward_passes"] == starts * (thought["steps"] + reads_energy.astype(int))).all()
    assert (thought["backward_passes"] == starts * thought["steps"]).all()
    assert (thought["nonfinite"] == 0).all()

    cells = sorted((root / "cells").glob("*.json"))
    assert len(cells) == 4 * 3
    before = {p.name: p.stat().st_mtime_ns for p in cells}
    first = table.drop(columns=["reused", "cell_seconds"])
    assert not table["reused"].any()

    # the second run reuses every cell: no cell rewritten, the same numbers, and the table says so
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    assert {p.name: p.stat().st_mtime_ns for p in (root / "cells").glob("*.json")} == before
    again = pd.read_csv(results)
    assert again["reused"].all()
    pd.testing.assert_frame_equal(again.drop(columns=["reused", "cell_seconds"]), first)

    # a changed inference setting recomputes the EBT's cells only
    code, out, err = run_main(capsys, *args, "think.infer_steps=1")
    assert code == 0, err
    third = pd.read_csv(results)
    assert not third.loc[third["model"].str.startswith("ebt"), "reused"].any()
    assert third.loc[~third["model"].str.startswith("ebt"), "reused"].all()


def test_benchmark_cells_in_two_worker_processes_give_the_same_numbers(tmp_path, capsys):
    args = ["benchmark", "experiment=quick", "trainer.max_steps=10", "benchmark.models=[seasonal_naive,ebt]",
            *FAST[:1], "model.dim=32", "model.depth=1", "benchmark.verify_groups=[1]",
            "benchmark.candidate_counts=[1]", "benchmark.datasets=[co2,elnino]"]
    code, _, err = run_main(capsys, *args, f"runtime.output_dir={tmp_path / 'one'}", "runtime.threads=1")
    assert code == 0, err
    # two processes of one thread each: the run's share of the machine is runtime.threads
    code, _, err = run_main(capsys, *args, f"runtime.output_dir={tmp_path / 'two'}", "benchmark.workers=2",
                            "runtime.threads=2")
    assert code == 0, err
    one, two = (pd.read_csv(tmp_path / run / "default" / "results.csv") for run in ("one", "two"))
    assert len(one) > 4 and not two["reused"].any()
    assert len(list((tmp_path / "two" / "default" / "cells").glob("*.json"))) == 4
    # each cell seeds its own draws: the processes that computed them do not change a number
    timings = [c for c in one.columns if c.endswith("seconds")]
    pd.testing.assert_frame_equal(two.drop(columns=timings), one.drop(columns=timings))
    code, _, err = run_main(capsys, *args, f"runtime.output_dir={tmp_path / 'two'}", "benchmark.workers=0",
                            "runtime.threads=2")
    assert code == 2 and "benchmark.workers=0" in err
