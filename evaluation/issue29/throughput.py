"""`forecast` at scale (issue 29): throughput and peak memory against the number of series, the series length, the
engine and the fast sources.

    python evaluation/issue29/throughput.py make --series 10000 100000      # inputs under results/issue29/
    python evaluation/issue29/throughput.py run --series 10000 --engine local --threads 2
    python evaluation/issue29/throughput.py run --series 10000 --engine dask --workers 2
    python evaluation/issue29/throughput.py run --series 1000 --sources       # with AutoETS / AutoTheta / naive
    python evaluation/issue29/throughput.py run --series 10000 --length 200   # fixed length 200 (context), H 24

Inputs are generated from the pretraining corpus (never the evaluation suite), seeded: each series is a window of
100-500 points (or exactly --length) of a corpus series drawn by data set weight, mixed with a second one
(TSMixup-style convex weights, both mean-scaled), written as Parquet parts of 10,000 series (hourly stamps).
Each run is one `ebt-forecast forecast` process (the pretrained ebt_1m, horizon 24; `task.selection=proposal`
unless --auto); its summary line (series/s, points/s, the driver's and workers' peak memory) and wall time go to
evaluation/issue29/throughput.csv (one row per run, appended).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path("results/issue29")
CSV = Path("evaluation/issue29/throughput.csv")
PART_SERIES = 10_000


def make(series: int, length: int | None, corpus: str, seed: int = 0) -> Path:
    """Parquet parts of `series` generated series (resampled and mixed corpus windows); skipped if present."""
    from ebt_forecast.data.corpus import CorpusSampler

    folder = ROOT / f"input_{series}_{length or 'mixed'}"
    if (folder / "_SUCCESS").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    sampler = CorpusSampler(corpus)
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-01-01")
    for k, first in enumerate(range(0, series, PART_SERIES)):
        ids, values, stamps = [], [], []
        for i in range(first, min(series, first + PART_SERIES)):
            n = length or int(rng.integers(100, 501))
            paths = []
            for _ in range(2):
                v = sampler.sample_series(rng, min_length=n).values
                v = v[-n:] if len(v) < n else v[(s := int(rng.integers(0, len(v) - n + 1))):s + n]
                v = np.nan_to_num(np.asarray(v, np.float64), nan=np.nanmean(v) if np.isfinite(v).any() else 0.0)
                v = np.pad(v, (n - len(v), 0), mode="edge")
                paths.append(v / max(np.abs(v).mean(), 1e-6))
            w = rng.dirichlet([1.5, 1.5])
            values.append((w[0] * paths[0] + w[1] * paths[1]) * 100)
            ids.append(np.full(n, f"s{i:07d}"))
            stamps.append(start + pd.to_timedelta(np.arange(n), "h"))
        pd.DataFrame({"item_id": np.concatenate(ids), "timestamp": np.concatenate(stamps),
                      "target": np.concatenate(values).astype(np.float32)}).to_parquet(folder / f"part-{k:04d}.parquet",
                                                                                        index=False)
        print(f"{folder}: part {k} written", flush=True)
    (folder / "_SUCCESS").write_text("")
    return folder


SUMMARY = re.compile(r"forecast ([\d,]+) series \(([\d,]+) points\) in ([\d.]+) s: ([\d,]+) series/s, ([\d,]+) points/s;"
                     r".*peak memory ([\d,]+) MB \(workers ([\d,]+) MB\)")


def run(series: int, length: int | None, engine: str, workers: int, threads: int, sources: bool, auto: bool,
        chunk_points: int) -> dict:
    """One `forecast` process over the generated input; its summary as a row of throughput.csv."""
    folder = ROOT / f"input_{series}_{length or 'mixed'}"
    out = ROOT / f"out_{series}_{length or 'mixed'}_{engine}{workers}.parquet"
    args = [sys.executable, "-m", "ebt_forecast", "forecast", f"input={folder}", "horizon=24", f"output={out}",
            f"runtime.engine={engine}", f"runtime.workers={workers}", f"runtime.threads={threads}",
            f"stream.chunk_points={chunk_points}", "stream.progress=false"]
    args += [] if auto else ["task.selection=proposal"]
    args += ["task.verifier.enabled=true", "task.verifier.steps=0"] if sources else []
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    m = SUMMARY.search(proc.stdout)
    n, points, seconds, _, _, peak, worker_peak = (float(x.replace(",", "")) for x in m.groups())
    row = {"date": time.strftime("%Y-%m-%d"), "series": int(n), "points": int(points), "length": length or "100-500",
           "engine": engine, "workers": workers if engine == "dask" else 1, "threads": threads,
           "selection": "auto" if auto else "proposal", "fast_sources": sources, "chunk_points": chunk_points,
           "seconds": seconds, "wall_seconds": round(wall, 1), "series_per_s": n / seconds,
           "points_per_s": points / seconds, "peak_rss_mb": peak, "worker_peak_rss_mb": worker_peak}
    frame = pd.concat([pd.read_csv(CSV), pd.DataFrame([row])]) if CSV.exists() else pd.DataFrame([row])
    frame.to_csv(CSV, index=False)
    out.unlink(missing_ok=True)
    print(row, flush=True)
    return row


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=["make", "run"])
    parser.add_argument("--series", type=int, nargs="+", default=[10_000])
    parser.add_argument("--length", type=int, default=None)
    parser.add_argument("--engine", default="local")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sources", action="store_true")
    parser.add_argument("--auto", action="store_true", help="the default thinking choice instead of the proposals")
    parser.add_argument("--chunk-points", type=int, default=250_000)
    parser.add_argument("--corpus", default="../shared/data/corpus")
    a = parser.parse_args()
    for n in a.series:
        if a.step == "make":
            make(n, a.length, a.corpus)
        else:
            make(n, a.length, a.corpus)
            run(n, a.length, a.engine, a.workers, a.threads, a.sources, a.auto, a.chunk_points)
