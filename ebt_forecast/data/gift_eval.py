"""GIFT-Eval's protocol on the project's zero-shot suite (ETTh1, M4 Hourly, exchange_rate).

The rules (`src/gift_eval/data.py` of the GIFT-Eval repository, REFERENCE.md):

    horizon H       from the frequency: H 48, D / B 30, W 8, M 12 (M4 sets: H 48); medium = 10 H, long = 15 H
    test windows    min(max(1, ceil(0.1 * shortest series / H)), 20); M4 sets one window
    test part       the last windows x H points of every series, cut into non-overlapping windows
    multivariate    split per variate (ETTh1: 7 series)
    season (MASE)   gluonts get_seasonality(freq): H 24, B 5, D 1

`load_gift_config("etth1/H/long", root)` -> a ForecastDataset whose train series end where the test part
starts and whose test windows carry the full past before each window (GIFT-Eval's rolling evaluation).
`validation_split(dataset)` -> the same protocol one test span earlier, inside the training part: where settings
are chosen before any test number is read.
"""
from __future__ import annotations

import math
from pathlib import Path

from ebt_forecast.data.loaders import tail_task, etth1_series, exchange_rate_series, load_m4_hourly
from ebt_forecast.data.types import ForecastDataset
from ebt_forecast.errors import DataError

BASE_HORIZONS = {"H": 48, "D": 30, "B": 30, "W": 8, "M": 12}
TERMS = {"short": 1, "medium": 10, "long": 15}
# the configs of the zero-shot suite: GIFT-Eval runs ETTh1 at all three terms, M4 Hourly and exchange_rate short
GIFT_SUITE: tuple[str, ...] = ("m4_hourly/H/short", "etth1/H/short", "etth1/H/medium", "etth1/H/long",
                               "exchange_rate/B/short")


def gift_horizon(freq: str, term: str) -> int:
    """H of a frequency at a term (short / medium / long)."""
    if freq not in BASE_HORIZONS:
        raise DataError(f"GIFT-Eval: no horizon for frequency {freq!r}; known: {', '.join(BASE_HORIZONS)}")
    if term not in TERMS:
        raise DataError(f"GIFT-Eval: term {term!r} is invalid: must be one of {', '.join(TERMS)}")
    return BASE_HORIZONS[freq] * TERMS[term]


def gift_windows(shortest: int, horizon: int) -> int:
    """Test windows per series: min(max(1, ceil(0.1 * shortest / H)), 20)."""
    return min(max(1, math.ceil(0.1 * shortest / horizon)), 20)


def load_gift_config(config: str, root: str | Path) -> ForecastDataset:
    """One GIFT-Eval configuration of the suite, `name/freq/term` (GIFT_SUITE), read from `root`."""
    try:
        name, freq, term = config.split("/")
    except ValueError:
        raise DataError(f"GIFT-Eval config {config!r} is invalid: must be name/freq/term, one of "
                        f"{', '.join(GIFT_SUITE)}") from None
    if config not in GIFT_SUITE:
        raise DataError(f"GIFT-Eval config {config!r} is not in the suite: one of {', '.join(GIFT_SUITE)}")
    h = gift_horizon(freq, term)
    if name == "m4_hourly":
        dataset = load_m4_hourly(root, horizon=h)  # the official test: one window of 48
    else:  # every series whole, then GIFT-Eval's tail windows
        full, data_freq, season = (etth1_series(root), "h", 24) if name == "etth1" else (exchange_rate_series(root), "B", 5)
        dataset = tail_task(name, data_freq, h, season, full, gift_windows(min(len(s) for s in full), h))
    dataset.name = config
    return dataset


def validation_split(dataset: ForecastDataset) -> ForecastDataset:
    """The config one test span earlier: the training part's last windows x H points are its windows (as many per
    series as the test has), the points before them its training part; the test part is never read."""
    per_series = len(dataset.test_windows) // len(dataset.train)
    if per_series < 1 or per_series * len(dataset.train) != len(dataset.test_windows):
        raise DataError(f"{dataset.name}: {len(dataset.test_windows)} test windows over {len(dataset.train)} series: "
                        "a validation split needs the same number of windows per series")
    return tail_task(f"{dataset.name}:validation", dataset.freq, dataset.horizon, dataset.season_length,
                     dataset.train, per_series)
