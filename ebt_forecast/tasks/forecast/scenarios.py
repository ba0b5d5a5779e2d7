"""What-if forecasts: one forecast per scenario of known-future covariates, with the energy the EBT gives it.

A scenarios file has `item_id, timestamp, scenario` and the known-future covariates over the next H steps of every
series, once per scenario ("what happens if the set point is 21 instead of 19"). Each scenario's covariates replace
the horizon part of the known-future covariates; the history (and the past covariates) stay as they are. The
output stacks the scenarios' forecast frames with a `scenario` column and `energy`: the mean over the forecast's
level paths of their final energy under that scenario (the energy reads each candidate together with the future
covariates, so it scores how well the forecast fits the context under the scenario; lower is more compatible).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ebt_forecast.data.covariates import CovariateRoles, attach_covariates
from ebt_forecast.data.types import ForecastDataset, TestWindow
from ebt_forecast.errors import DataError
from ebt_forecast.tasks.forecast.output import forecast_frame


def scenario_names(scenarios: pd.DataFrame, name: str) -> list[str]:
    """The scenarios of a scenarios file, in order of first appearance."""
    if "scenario" not in scenarios.columns:
        raise DataError(f"{name}: column 'scenario' not found; available columns: {list(map(str, scenarios.columns))}")
    if scenarios["scenario"].isna().any():
        row = int(np.flatnonzero(scenarios["scenario"].isna().to_numpy())[0])
        raise DataError(f"{name}: missing scenario name at row {row}")
    return list(dict.fromkeys(scenarios["scenario"].astype(str)))


def scenario_forecasts(predictor, frame: pd.DataFrame, dataset: ForecastDataset, roles: CovariateRoles,
                       scenarios: pd.DataFrame, name: str) -> pd.DataFrame:
    """The forecast frame of every scenario (rows of `forecast_frame` plus `scenario` and `energy`)."""
    if not roles.future:
        raise DataError(f"{name}: scenarios vary known-future covariates, but future_covariates=[...] names none")
    labels = scenarios["scenario"].astype(str)
    parts = []
    for scenario in scenario_names(scenarios, name):
        rows = scenarios[labels == scenario]
        series = attach_covariates(frame, dataset.train, roles, dataset.name, future=rows,
                                   future_name=f"{name} (scenario {scenario!r})", horizon=dataset.horizon)
        windows = [TestWindow(s.item_id, s.start, s.target, np.full(dataset.horizon, np.nan, np.float32),
                              s.covariates) for s in series]
        out = predictor.forecaster.predict(windows, final_energy=True)
        part = forecast_frame(dataset, out.samples, out.levels)
        energy = np.nanmean(out.energies.reshape(len(series), -1), axis=1)
        part.insert(2, "scenario", scenario)
        part["energy"] = np.repeat(energy, dataset.horizon)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)
