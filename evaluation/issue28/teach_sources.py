"""Teach the pretrained EBT's energy to verify fast sources on corpus windows (issue 28), then export it.

    python evaluation/issue28/teach_sources.py --model ebt_1m --windows 2048 --steps 300 --out results/ebt_1m_sources
    python evaluation/issue28/zero_shot.py --ebt ebt_src=results/ebt_1m_sources --no-thinking --verifier

Windows come from the pretraining corpus only (data sets drawn by the pretraining weights, a series uniformly, a
random forecast start; context up to 512 points, horizon 2 seasons clipped to [8, 64]); the frequency of each data
set is read from its timestamps and sets the seasonality. On every window the starts of each of the 21 levels are
the EBT's proposal, the seasonal-naive path, and statsforecast AutoETS / AutoTheta fitted on that window's past
only (out of fold by construction: they never see its future). Only the energy's parts learn (backbone and
proposals frozen, `sources.teach_ranking`): a listwise ranking of the starts by their pinball loss against the
window's future. The proposals themselves come from a model pretrained on this corpus, so on these windows they are
partly in-sample: the ranking may trust them more than it should on new data (the zero-shot rows test that).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from gluonts.time_feature import get_seasonality

from ebt_forecast.data.corpus import CorpusSampler
from ebt_forecast.data.frames import period_freq, quiet_pandas
from ebt_forecast.data.types import ForecastDataset, TestWindow
from ebt_forecast.io import atomic_torch_save, atomic_write_json
from ebt_forecast.tasks.forecast.pretrained import PretrainedForecaster, pretrained_folder
from ebt_forecast.tasks.forecast.sources import fast_starts, ranking_tensors, teach_ranking

CACHE = Path("results/issue28_cache/corpus_sources")
SOURCES = ["autoets", "autotheta"]


def frequency(frame: pd.DataFrame) -> str | None:
    """The pandas frequency of a corpus file (from its longest series' first stamps), None if irregular."""
    longest = frame.groupby("item_id").size().idxmax()
    stamps = pd.DatetimeIndex(frame.loc[frame.item_id == longest, "timestamp"].iloc[:50])
    with quiet_pandas():
        return pd.infer_freq(stamps) if len(stamps) >= 3 else None


def corpus_windows(root: str, count: int, seed: int) -> list[tuple[ForecastDataset, list[TestWindow]]]:
    """`count` windows drawn across the corpus' data sets, grouped by data set (each with its frequency)."""
    sampler = CorpusSampler(root)
    rng = np.random.default_rng(seed)
    picks = Counter(sampler.sample_dataset(rng) for _ in range(count))
    out = []
    for index, n in sorted(picks.items()):
        d = sampler.datasets[index]
        frame = pd.read_parquet(d.path, columns=["item_id", "timestamp", "target"])
        try:
            freq = period_freq(frequency(frame))
        except Exception:  # irregular or sub-period stamps: no seasonality to give the sources
            continue
        with quiet_pandas():
            season = int(get_seasonality(freq))
        horizon = int(np.clip(2 * season, 8, 64))
        series = [g.to_numpy(np.float32) for _, g in frame.groupby("item_id", sort=False).target]
        series = [s for s in series if len(s) >= horizon + max(2 * season, 32)]
        windows = []
        for _ in range(n if series else 0):
            v = series[int(rng.integers(len(series)))]
            t = int(rng.integers(len(v) - horizon - max(2 * season, 32) + 1)) + max(2 * season, 32)
            past, future = v[max(0, t - 512):t], v[t:t + horizon]
            if np.isfinite(past).mean() > 0.9 and np.isfinite(future).all():
                windows.append(TestWindow(f"{d.name}/{len(windows)}", pd.Period("2000-01-01", freq), past, future))
        if windows:
            out.append((ForecastDataset(d.name.replace("/", "__"), freq, horizon, season, []), windows))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ebt_1m")
    parser.add_argument("--corpus", default="../shared/data/corpus")
    parser.add_argument("--windows", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/ebt_1m_sources")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    groups = corpus_windows(args.corpus, args.windows, args.seed)
    ebt = PretrainedForecaster(args.model)
    parts = []
    for dataset, windows in groups:
        ebt.fit(dataset)  # records the horizon and the season (the seasonal-naive start's period)
        extra = fast_starts(dataset, SOURCES, windows, CACHE)
        parts.append(ranking_tensors(ebt, windows, extra))
        print(f"{dataset.name}: {len(windows)} windows, H {dataset.horizon}, season {dataset.season_length}", flush=True)
    tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    sources_seconds = time.perf_counter() - start
    report = teach_ranking(ebt, tensors, steps=args.steps, batch_size=args.batch_size, lr=args.lr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    source = pretrained_folder(args.model)
    meta = json.loads((source / "model.json").read_text())
    meta["sources_taught"] = {"sources": ["ebt_proposal", "seasonal_naive", *SOURCES], "windows": len(tensors["context"]),
                              "datasets": len(groups), "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                              "seed": args.seed, "sources_seconds": sources_seconds, **report}
    atomic_torch_save({k: v.detach().cpu() for k, v in ebt.module.state_dict().items()}, out / "weights.pt")
    atomic_write_json(out / "model.json", meta)
    for extra_file in ("README.md",):
        if (source / extra_file).exists():
            shutil.copy2(source / extra_file, out / extra_file)
    print(json.dumps(meta["sources_taught"], indent=1))


if __name__ == "__main__":
    main()
