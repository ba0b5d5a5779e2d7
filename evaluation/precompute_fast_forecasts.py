"""Fill a benchmark's cache with the fast forecasters' level paths (seedless), so a long benchmark run
can start training while another process (one thread) fits AutoETS / AutoTheta.

    OMP_NUM_THREADS=1 .venv/bin/python evaluation/precompute_fast_forecasts.py \
        runtime.output_dir=results/benchmark experiment=shared data.root=../shared/data

It requests exactly the window sets the benchmark will (test windows, the EBT's validation windows and
the verifier's pool windows) through the same cached function, so the benchmark finds them on disk.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ebt_forecast.config import compose
from ebt_forecast.tasks.forecast.benchmark import load_suite
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster
from ebt_forecast.tasks.forecast.sources import fast_forecasts, pool_windows


def main(overrides: list[str]) -> None:
    """Compute every fast forecast the benchmark of `overrides` will ask for."""
    app = compose("benchmark", overrides)
    cache = Path(app.runtime.output_dir) / app.suite / "cache"
    for dataset in load_suite(app):
        # the verifier's EBT: its pool windows are reserved (never trained on) out of fold
        ebt = EBTForecaster(app.forecaster(), "ebt", reserve_windows=app.task.verifier.held_out_windows())
        sets = {"test": dataset.test_windows, "val": ebt.split(dataset)[1],
                "pool": pool_windows(ebt, dataset, app.task.verifier.pool_windows)}
        for name, windows in sets.items():
            for model in app.task.verifier.fast_sources:
                start = time.perf_counter()
                fast_forecasts(model, dataset, windows, cache)
                print(f"{dataset.name} {name} {model}: {len(windows)} windows, {time.perf_counter() - start:.0f} s",
                      flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
