"""Batch inference at any scale: `forecast` over a file or a folder of parts, in chunks of whole series, resumable,
on this process or a Dask cluster (`runtime.engine=local|dask`).

Contract:
    run_stream_forecast(app, predictor_factory) -> StreamSummary
        plan chunks (data/parts.py) -> one predictor, saved once into the work folder -> each chunk: read, forecast,
        write parts/part-NNNNN.parquet atomically -> assemble the output, atomically -> drop the work folder

The work folder `.<output name>.partial/` beside the output holds manifest.json (the input's and the settings'
digest), predictor/ (EBTPredictor.serialize) and the finished parts. A rerun after kill -9 finds it, checks the
digest, keeps the finished parts and forecasts only the rest: every chunk is forecast by the same saved predictor
with the same batches, so the output equals an uninterrupted run's. A changed input or setting starts afresh.

Engines: `local` runs the chunks in this process. `dask` maps the same chunk function over a Dask cluster's workers
(a local cluster of `runtime.workers` processes, or `runtime.address`); each worker process loads the predictor
once (cached) and reads its chunks from the (shared) input path, so only chunk descriptions and summaries travel.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from gluonts.time_feature import get_seasonality

from ebt_forecast.data.frames import frame_to_series, load_long_frame, quiet_pandas
from ebt_forecast.data.parts import Chunk, input_parts, inputs_key, plan_chunks, read_chunk
from ebt_forecast.data.types import ForecastDataset, TestWindow
from ebt_forecast.errors import ConfigError, DataError
from ebt_forecast.io import atomic_write_json
from ebt_forecast.tasks.forecast.estimator import EBTPredictor
from ebt_forecast.tasks.forecast.output import forecast_frame, save_predictor

ENGINES = ("local", "dask")
MANIFEST_FORMAT = "ebt_forecast.stream/1"


@dataclass
class ChunkJob:
    """Everything a worker needs for one chunk (small: it travels to the engine's workers)."""

    chunk: Chunk
    predictor_dir: str
    part_path: str
    freq: str
    horizon: int
    min_length: int
    id_col: str
    time_col: str
    target_col: str
    threads: int


@dataclass
class StreamSummary:
    """What one `forecast` call did: counts, time, memory, where the output is."""

    output: Path
    series: int
    points: int
    chunks: int
    resumed_chunks: int
    seconds: float
    peak_rss_mb: float  # the driver's peak resident memory
    worker_peak_rss_mb: float  # the largest worker's (engine=dask; the driver's own for engine=local)
    engine: str

    def line(self) -> str:
        rate = self.series / max(self.seconds, 1e-9)
        done = f" ({self.resumed_chunks} of {self.chunks} chunks kept from an interrupted run)" if self.resumed_chunks else ""
        return (f"forecast {self.series:,} series ({self.points:,} points) in {self.seconds:.1f} s: {rate:,.0f} series/s, "
                f"{self.points / max(self.seconds, 1e-9):,.0f} points/s; {self.chunks} chunks{done}; peak memory "
                f"{self.peak_rss_mb:,.0f} MB (workers {self.worker_peak_rss_mb:,.0f} MB); engine {self.engine}")


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@functools.lru_cache(maxsize=2)
def cached_predictor(folder: str) -> EBTPredictor:
    """The saved predictor, loaded once per process (every chunk a worker runs reuses it)."""
    return EBTPredictor.deserialize(Path(folder))


def forecast_chunk(job: ChunkJob) -> dict:
    """Read one chunk, forecast it with the saved predictor, write its Parquet part atomically; its counts."""
    start = time.perf_counter()
    torch.set_num_threads(job.threads)
    predictor = cached_predictor(job.predictor_dir)
    raw = read_chunk(job.chunk, job.id_col, job.time_col, job.target_col)
    name = ", ".join(job.chunk.parts)
    frame = load_long_frame(raw, freq=job.freq, min_length=job.min_length, source_name=name)
    series = frame_to_series(frame, job.freq)
    dataset = ForecastDataset(Path(job.chunk.parts[0]).stem, job.freq, job.horizon, 1, series)
    empty = np.full(job.horizon, np.nan, np.float32)
    out = predictor.forecaster.predict([TestWindow(s.item_id, s.start, s.target, empty) for s in series])
    result = forecast_frame(dataset, out.samples, out.levels)
    part = Path(job.part_path)
    tmp = part.with_name(f".{part.name}.tmp")
    result.to_parquet(tmp, index=False)
    os.replace(tmp, part)
    return {"index": job.chunk.index, "series": len(series), "points": int(sum(len(s) for s in series)),
            "seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}


# ------------------------------------------------------------------------------------------------
# engines: the same chunk function, here or on a cluster


def run_local(jobs: list[ChunkJob]) -> Iterator[dict]:
    """Each chunk in this process, in order."""
    for job in jobs:
        yield forecast_chunk(job)


def run_dask(jobs: list[ChunkJob], workers: int, address: str | None, tag: str) -> Iterator[dict]:
    """The chunks mapped over a Dask cluster (a local one of `workers` processes, or the scheduler at `address`);
    results as they complete. The cluster started here is closed at the end."""
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if address is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=40)
    client = Client(address or cluster)
    try:
        futures = client.map(forecast_chunk, jobs, key=[f"forecast-{tag}-{j.chunk.index}" for j in jobs])
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ------------------------------------------------------------------------------------------------
# the work folder: manifest, predictor, parts


def work_folder(output: Path) -> Path:
    return output.with_name(f".{output.name}.partial")


def settings_key(app, parts: list[Path]) -> str:
    """Digest of the input (names, sizes, times) and every setting the output depends on."""
    keys = {"inputs": inputs_key(parts), "horizon": app.horizon, "freq": app.freq, "min_length": app.min_length,
            "columns": [app.id_col, app.time_col, app.target_col], "chunk_points": app.stream.chunk_points,
            "fit_series": app.stream.fit_series, "pretrained": app.pretrained, "predictor": app.predictor,
            "forecaster": asdict(app.forecaster()), "seed": app.seed}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def assemble(parts: list[Path], output: Path) -> None:
    """The parts as the output, atomically: one CSV or Parquet file (by suffix, streamed part by part), or a
    folder of the parts (any other name)."""
    suffix = output.suffix.lower()
    tmp = output.with_name(f".{output.name}.tmp")
    if suffix == ".csv":
        with open(tmp, "w") as f:
            for i, part in enumerate(parts):
                pd.read_parquet(part).to_csv(f, index=False, header=i == 0)
    elif suffix in (".parquet", ".pq"):
        writer = None
        for part in parts:
            table = pq.read_table(part)
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
        writer.close()
    else:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for part in parts:
            os.link(part, tmp / part.name)  # the work folder goes after: the links keep the parts
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
    os.replace(tmp, output)


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="series", desc="forecast", disable=not enabled, smoothing=0.1, mininterval=0.5)


def run_stream_forecast(app, fit_predictor: Callable[[ForecastDataset], EBTPredictor]) -> StreamSummary:
    """Forecast every series of app.input into app.output in chunks; resumable; see the module docstring.

    `fit_predictor(dataset)` makes the predictor from the first chunk's first `stream.fit_series` series (the
    pretrained model records the horizon and chooses its thinking there); it runs once per output, not per chunk."""
    start = time.perf_counter()
    engine = app.runtime.engine
    if engine not in ENGINES:
        raise ConfigError(f"runtime.engine={engine!r} is invalid: must be one of {', '.join(ENGINES)}")
    if app.runtime.workers < 1:
        raise ConfigError(f"runtime.workers={app.runtime.workers!r} is invalid: must be >= 1")
    app.stream.validate()
    output = Path(app.output)
    parts = input_parts(app.input)
    work = work_folder(output)
    key = settings_key(app, parts)
    manifest_path = work / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if manifest is None or manifest.get("key") != key:
        shutil.rmtree(work, ignore_errors=True)
        manifest = None
    min_length = app.min_length or app.horizon + 1
    try:
        if manifest is None:
            chunks = plan_chunks(parts, app.id_col, app.time_col, app.target_col, app.stream.chunk_points)
            first = load_long_frame(read_chunk(chunks[0], app.id_col, app.time_col, app.target_col), freq=app.freq,
                                    min_length=min_length, source_name=", ".join(chunks[0].parts))
            freq = first.attrs["freq"]
            series = frame_to_series(first, freq)[:app.stream.fit_series]
            with quiet_pandas():
                season = int(get_seasonality(app.freq or freq))
            predictor = fit_predictor(ForecastDataset(Path(app.input).stem, freq, app.horizon, season, series))
            (work / "parts").mkdir(parents=True, exist_ok=True)
            save_predictor(predictor, work / "predictor")
            manifest = {"format": MANIFEST_FORMAT, "key": key, "freq": freq,
                        "chunks": [asdict(c) for c in chunks]}
            atomic_write_json(manifest_path, manifest)
        chunks = [Chunk(**c) for c in manifest["chunks"]]
        threads = app.runtime.threads if engine == "local" or app.runtime.address else \
            max(1, app.runtime.threads // app.runtime.workers)
        jobs = [ChunkJob(c, str(work / "predictor"), str(work / "parts" / f"part-{c.index:05d}.parquet"),
                         manifest["freq"], app.horizon, min_length, app.id_col, app.time_col, app.target_col, threads)
                for c in chunks]
        todo = [j for j in jobs if not Path(j.part_path).is_file()]
        kept = len(jobs) - len(todo)
        total_series = sum(len(c.item_ids) for c in chunks)
        bar = _progress(total_series, app.stream.progress)
        bar.update(total_series - sum(len(j.chunk.item_ids) for j in todo))
        worker_peak = 0.0
        results = run_local(todo) if engine == "local" else run_dask(todo, app.runtime.workers, app.runtime.address, key)
        for result in results:
            bar.update(result["series"])
            worker_peak = max(worker_peak, result["peak_rss_mb"])
        bar.close()
        assemble([Path(j.part_path) for j in jobs], output)
    except DataError:
        shutil.rmtree(work, ignore_errors=True)  # a bad input: nothing is left behind (a kill keeps the work)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return StreamSummary(output, total_series, sum(c.rows for c in chunks), len(chunks), kept,
                         time.perf_counter() - start, peak_rss_mb(), worker_peak or peak_rss_mb(), engine)
