"""`forecast` at scale (issue 29): inputs as folders of parts, chunks of whole series, resume after kill -9 with the
same output, the Dask engine's 2-worker output equal to one process's, bad parts named, nothing half-written."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ebt_forecast.cli import main
from ebt_forecast.data.parts import input_parts, plan_chunks, read_chunk
from ebt_forecast.errors import DataError

REPO = Path(__file__).resolve().parents[1]
FAST = ["runtime.threads=1", "task.selection=proposal", "stream.progress=false", "horizon=24"]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def etth1_segments(shared_data) -> pd.DataFrame:
    """ETTh1's 7 columns cut into 300-point segments: 56 real hourly series of one long table."""
    wide = pd.read_csv(shared_data / "ett" / "ETTh1.csv").head(2400)
    frames = []
    for col in [c for c in wide.columns if c != "date"]:
        for k in range(8):
            seg = wide.iloc[k * 300:(k + 1) * 300]
            frames.append(pd.DataFrame({"item_id": f"{col}-{k}", "timestamp": seg["date"], "target": seg[col]}))
    return pd.concat(frames, ignore_index=True)


def write_parts(frame: pd.DataFrame, folder: Path, parts: int = 3) -> Path:
    """Rows dealt out to `parts` Parquet files by row blocks, so some series span two parts."""
    folder.mkdir(parents=True)
    for k, block in enumerate(np.array_split(np.arange(len(frame)), parts)):
        frame.iloc[block].to_parquet(folder / f"part-{k}.parquet", index=False)
    return folder


def test_plan_keeps_every_series_whole_across_parts(etth1_segments, tmp_path):
    folder = write_parts(etth1_segments, tmp_path / "in")
    chunks = plan_chunks(input_parts(folder), chunk_points=1000)
    ids = [i for c in chunks for i in c.item_ids]
    assert sorted(ids) == sorted(etth1_segments.item_id.unique())  # every series once, none split
    assert len(chunks) == 56 * 300 // 1200  # 4 series (1,200 rows) reach 1,000 rows
    spanning = [c for c in chunks if len(c.parts) > 1]
    assert spanning  # a series cut by the part boundary is read from both parts
    frame = read_chunk(spanning[0])
    assert frame.groupby("item_id").size().eq(300).all()


def test_folder_of_parts_equals_the_single_file(etth1_segments, tmp_path, capsys):
    single = tmp_path / "all.csv"
    etth1_segments.to_csv(single, index=False)
    folder = write_parts(etth1_segments, tmp_path / "in")
    one, many = tmp_path / "one.csv", tmp_path / "many.parquet"
    assert main(["forecast", f"input={single}", f"output={one}", *FAST]) == 0
    assert main(["forecast", f"input={folder}", f"output={many}", "stream.chunk_points=2000", *FAST]) == 0
    out = capsys.readouterr().out
    assert "forecast 56 series (16,800 points)" in out and "8 chunks" in out and "peak memory" in out
    a, b = pd.read_csv(one), pd.read_parquet(many)
    assert len(a) == 56 * 24 and list(a.item_id.unique()) == sorted(etth1_segments.item_id.unique())
    # chunks follow the input's order of first appearance, series inside a chunk by id
    assert list(b.item_id.unique()[:7]) == sorted(etth1_segments.item_id.unique()[:7])
    b_sorted = b.sort_values("item_id", kind="stable").reset_index(drop=True)
    assert (pd.to_datetime(a.timestamp) == b_sorted.timestamp).all()
    np.testing.assert_allclose(a["0.5"], b_sorted["0.5"], rtol=1e-4)  # chunked or not: the same forecasts
    last = pd.to_datetime(etth1_segments.groupby("item_id").timestamp.max())
    first_out = b.groupby("item_id").timestamp.min()
    assert (first_out == last.reindex(first_out.index) + pd.Timedelta("1h")).all()  # each series' own next hour
    # a folder output: the parts themselves
    folder_out = tmp_path / "out_parts"
    assert main(["forecast", f"input={folder}", f"output={folder_out}", "stream.chunk_points=2000", *FAST]) == 0
    parts = sorted(folder_out.glob("*.parquet"))
    assert len(parts) == 8  # 7 series (2,100 rows) reach 2,000
    pd.testing.assert_frame_equal(pd.concat(map(pd.read_parquet, parts), ignore_index=True), b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.csv", "in", "many.parquet", "one.csv", "out_parts"]


def test_kill_9_then_rerun_gives_the_uninterrupted_output(etth1_segments, tmp_path):
    """SIGKILL once some parts are written: the rerun keeps them, forecasts the rest, and the file is identical."""
    folder = write_parts(pd.concat([etth1_segments.assign(item_id=etth1_segments.item_id + f"-{r}") for r in range(6)]),
                         tmp_path / "in")
    args = [f"input={folder}", "stream.chunk_points=1200", *FAST]
    reference = tmp_path / "reference.csv"
    assert main(["forecast", *args, f"output={reference}"]) == 0
    out = tmp_path / "out.csv"
    work = tmp_path / ".out.csv.partial" / "parts"
    proc = subprocess.Popen([sys.executable, "-m", "ebt_forecast", "forecast", *args, f"output={out}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(list(work.glob("part-*.parquet"))) < 3:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = len(list(work.glob("part-*.parquet")))
    assert 3 <= finished < 84 and not out.exists()  # killed mid-run: parts, no output
    rerun = subprocess.run([sys.executable, "-m", "ebt_forecast", "forecast", *args, f"output={out}"], cwd=REPO,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "chunks kept from an interrupted run" in rerun.stdout
    assert out.read_bytes() == reference.read_bytes()
    assert not (tmp_path / ".out.csv.partial").exists()


def test_dask_engine_with_two_workers_equals_one_process(etth1_segments, tmp_path):
    folder = write_parts(etth1_segments, tmp_path / "in")
    local, dask = tmp_path / "local.parquet", tmp_path / "dask.parquet"
    args = [f"input={folder}", "stream.chunk_points=2000", *FAST]
    assert main(["forecast", *args, f"output={local}"]) == 0
    assert main(["forecast", *args, f"output={dask}", "runtime.engine=dask", "runtime.workers=2"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(local), pd.read_parquet(dask), check_exact=True)


def test_bad_parts_are_named_and_nothing_is_left(etth1_segments, tmp_path, capsys):
    folder = write_parts(etth1_segments, tmp_path / "in")
    etth1_segments.rename(columns={"target": "load"}).head(600).to_parquet(folder / "part-9.parquet")
    out = tmp_path / "out.csv"
    code = main(["forecast", f"input={folder}", f"output={out}", *FAST])
    err = capsys.readouterr().err
    assert code == 2 and f"{folder / 'part-9.parquet'}: missing the column 'target'" in err
    (folder / "part-9.parquet").write_bytes(b"PAR1 not a parquet file")
    code = main(["forecast", f"input={folder}", f"output={out}", *FAST])
    err = capsys.readouterr().err
    assert code == 2 and f"{folder / 'part-9.parquet'}: cannot read the part" in err
    (folder / "part-9.parquet").unlink()
    bad = etth1_segments.head(300).astype({"target": str})
    bad.loc[5, "target"] = "abc"
    bad.to_csv(folder / "part-9.csv", index=False)
    code = main(["forecast", f"input={folder}", f"output={out}", "stream.chunk_points=600", *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "part-9.csv" in err and "'abc'" in err and "non-numeric" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no work folder


def test_empty_folder_and_bad_engine_are_clear_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .csv or .parquet part"):
        input_parts(tmp_path / "empty")
    csv = tmp_path / "a.csv"
    pd.DataFrame({"item_id": "a", "timestamp": pd.date_range("2021", periods=60, freq="h"),
                  "target": np.arange(60.0)}).to_csv(csv, index=False)
    code = main(["forecast", f"input={csv}", f"output={tmp_path / 'o.csv'}", "runtime.engine=spark", *FAST])
    assert code == 2 and "runtime.engine='spark' is invalid" in capsys.readouterr().err
