"""The `forecast` command: forecast every series of a file with the pretrained EBT (zero-shot, or fine-tuned with
`finetune=N`; `pretrained=null` trains one from scratch) and write quantiles of the next H steps."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from gluonts.time_feature import get_seasonality

import polars as pl

from ebt_forecast.errors import ConfigError, DataError
from ebt_forecast.metrics import FORECAST_LEVELS
from ebt_forecast.tasks.forecast.joint import JointDataset, JointForecaster, joint_forecast_frame, joint_series
from ebt_forecast.data.parts import input_parts
from ebt_forecast.data.covariates import CovariateRoles, attach_covariates, covariate_slots, unassigned_columns
from ebt_forecast.data.frames import frame_to_series, load_long_frame, quiet_pandas, read_table
from ebt_forecast.data.types import ForecastDataset, TestWindow
from ebt_forecast.io import atomic_write_csv
from ebt_forecast.tasks.forecast.estimator import EBTPredictor
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster
from ebt_forecast.tasks.forecast.pretrained import PretrainedForecaster
from ebt_forecast.tasks.forecast.sources import VerifierForecaster
from ebt_forecast.tasks.forecast.output import forecast_frame, save_predictor
from ebt_forecast.tasks.forecast.scenarios import scenario_forecasts
from ebt_forecast.tasks.forecast.streaming import StreamSummary, run_stream_forecast


def covariate_roles(app) -> CovariateRoles:
    """The covariate roles the command names (past_covariates=, future_covariates=, static=)."""
    return CovariateRoles(list(app.past_covariates), list(app.future_covariates), list(app.static))


def user_frame(app, command: str = "forecast") -> tuple[pd.DataFrame, ForecastDataset]:
    """Validate input= / horizon= / freq= / the covariate roles and load the user's file: its long frame and a
    ForecastDataset (no test windows) whose series carry their covariates (known-future ones over the horizon from
    future_input=). Columns no role names are reported on stderr, not used."""
    if not app.input:
        raise DataError(f"{command} needs input=PATH (a CSV or Parquet file in long form)")
    if app.horizon <= 0:
        raise DataError(f"horizon={app.horizon} is invalid: must be a positive number of steps")
    roles = covariate_roles(app)
    if app.future_input and app.scenarios:
        raise DataError("future_input= gives one future of the covariates and scenarios= several: give one of them")
    if roles.future and not (app.future_input or app.scenarios):
        raise DataError(f"future_covariates={roles.future} need their values over the horizon: give future_input=FILE "
                        "(item_id, timestamp and those columns over the next horizon steps) or scenarios=FILE")
    min_length = app.min_length or app.horizon + 1
    targets = list(app.targets)
    frame = load_long_frame(app.input, id_col=app.id_col, time_col=app.time_col,
                            target_col=targets[0] if targets else app.target_col, freq=app.freq, min_length=min_length)
    freq = frame.attrs["freq"]
    series = frame_to_series(frame, freq)
    if targets:
        series = joint_series(frame, series, targets, str(app.input))
    ignored = [c for c in unassigned_columns(frame, roles) if c not in targets]
    if ignored:
        print(f"{command}: not using columns {ignored} of {app.input} (give them a role: past_covariates=[...], "
              "future_covariates=[...] or static=[...])", file=sys.stderr)
    future = read_table(app.future_input) if app.future_input else None
    series = attach_covariates(frame, series, roles, str(app.input), future=future,
                               future_name=str(app.future_input), horizon=app.horizon)
    with quiet_pandas():
        season = int(get_seasonality(app.freq or freq))
    return frame, ForecastDataset(Path(app.input).stem, freq, app.horizon, season, series)


def user_dataset(app, command: str = "forecast") -> ForecastDataset:
    """The user's file as a ForecastDataset (user_frame without the frame)."""
    return user_frame(app, command)[1]


def load_predictor(app) -> EBTPredictor:
    """The predictor saved in app.predictor; its horizon and frequency fill horizon= / freq= (a conflict is an error)."""
    predictor = EBTPredictor.deserialize(Path(app.predictor))
    adopt_predictor_horizon(app, predictor.prediction_length, predictor.freq)
    return predictor


def adopt_predictor_horizon(app, horizon: int, freq: str) -> None:
    """A saved predictor's horizon and frequency fill horizon= / freq= (a conflicting horizon is an error)."""
    if app.horizon and app.horizon != horizon:
        raise DataError(f"horizon={app.horizon} conflicts with the predictor in {app.predictor}, trained for "
                        f"horizon {horizon}: drop horizon= or train a new one")
    app.horizon, app.freq = horizon, app.freq or freq


def streams(app) -> bool:
    """Whether `forecast` streams the input in chunks (streaming.py): a pretrained model zero-shot or a saved
    predictor, nothing to save, and a long-form input (a wide single file, or training on the whole file, stays
    in memory)."""
    if app.save or (not app.predictor and (not app.pretrained or app.finetune)) or covariate_roles(app) or app.scenarios \
            or app.targets:
        return False  # covariates and scenarios are read in memory
    parts = input_parts(app.input)
    if len(parts) > 1:
        return True
    try:
        scan = pl.scan_csv(parts[0], n_rows=1) if parts[0].suffix.lower() == ".csv" else pl.scan_parquet(parts[0])
        return app.id_col in scan.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError):  # the in-memory reader names what is wrong
        return False


def run_forecast(app) -> Path | StreamSummary:
    """Validate the request; fit the EBT on every series of app.input (or load app.predictor), save it to
    app.save if asked, and write app.output atomically. Zero-shot and saved predictors stream (streaming.py)."""
    if not app.input:
        raise DataError("forecast needs input=PATH (a CSV or Parquet file in long form)")
    if not app.output and not app.save:
        raise DataError("forecast needs output=OUT.csv (or save=DIR to only train and save a predictor)")
    if app.predictor and app.save:
        raise DataError("predictor= loads a trained predictor and save= saves a new one: give one of them")
    if app.finetune and not app.pretrained:
        raise DataError(f"finetune={app.finetune} adapts a pretrained model, but pretrained=null: give pretrained= "
                        "(a packaged model or a `pretrain` run folder) or drop finetune=")
    if app.targets:
        return run_joint_forecast(app)
    if app.scenarios and not app.output:
        raise DataError("scenarios= writes a forecast per scenario: give output=OUT.csv")
    predictor = load_predictor(app) if app.predictor else None
    if app.output and streams(app) and not (predictor and predictor.covariate_slots):
        return run_streaming(app, predictor)
    frame, dataset = user_frame(app)
    if predictor is not None:
        check_predictor_covariates(predictor, dataset, app.predictor)
    if predictor is None:
        cfg = app.forecaster()
        if app.pretrained:  # zero-shot (or a short fine-tune): no training from scratch per call
            forecaster = PretrainedForecaster(app.pretrained, cfg, finetune_steps=app.finetune)
            forecaster = (VerifierForecaster(cfg, ebt=forecaster) if cfg.task.verifier.enabled else forecaster).fit(dataset)
        elif cfg.task.verifier.enabled:
            forecaster = VerifierForecaster(cfg).fit(dataset)
        else:
            forecaster = EBTForecaster(cfg, "ebt").fit(dataset)
        predictor = EBTPredictor(forecaster, dataset.horizon, dataset.freq)
        if app.save:
            save_predictor(predictor, Path(app.save))
    if not app.output:
        return Path(app.save)
    if app.scenarios:
        scenarios = read_table(app.scenarios)
        table = scenario_forecasts(predictor, frame, dataset, covariate_roles(app), scenarios, str(app.scenarios))
        return atomic_write_csv(table, app.output)
    windows = [TestWindow(s.item_id, s.start, s.target, np.full(app.horizon, np.nan, np.float32), s.covariates)
               for s in dataset.train]
    out = predictor.forecaster.predict(windows)
    return atomic_write_csv(forecast_frame(dataset, out.samples, out.levels), app.output)


def run_joint_forecast(app) -> Path:
    """`forecast targets=[a,b,...]`: one joint EBT trained on the file (covariates too) or loaded from
    predictor=DIR, saved to save=DIR if asked; quantiles per target."""
    if app.pretrained and not app.predictor:
        raise ConfigError(f"targets={list(app.targets)} forecasts the targets jointly with an EBT trained on the file "
                          "(the pretrained EBT is univariate): add pretrained=null")
    if app.scenarios:
        raise ConfigError("targets=[...] (a joint forecast) does not take scenarios= yet: give one future with "
                          "future_input=, or forecast one target at a time with target_col=")
    forecaster = JointForecaster.load(app.predictor) if app.predictor else None
    if forecaster is not None:
        if forecaster.targets != list(app.targets):
            raise DataError(f"the joint predictor in {app.predictor} forecasts targets {forecaster.targets}, not "
                            f"{list(app.targets)}: give targets={forecaster.targets}".replace("'", ""))
        adopt_predictor_horizon(app, forecaster.module.model.cfg.horizon, forecaster.freq)
    frame, single = user_frame(app)
    dataset = JointDataset(single.name, single.freq, single.horizon, single.season_length, list(app.targets),
                           single.train)
    if forecaster is None:
        forecaster = JointForecaster(app.forecaster()).fit(dataset)
        if app.save:
            forecaster.save(app.save)
    else:
        check_slots(forecaster.covariate_slots, covariate_slots(dataset.train), app.predictor)
    if not app.output:
        return Path(app.save)
    windows = [TestWindow(s.item_id, s.start, s.target, np.full((len(app.targets), app.horizon), np.nan, np.float32),
                          s.covariates) for s in dataset.train]
    samples = forecaster.predict(windows)
    levels = FORECAST_LEVELS if samples.shape[1] == len(FORECAST_LEVELS) else None
    return atomic_write_csv(joint_forecast_frame(dataset, samples, levels), app.output)


def check_predictor_covariates(predictor: EBTPredictor, dataset: ForecastDataset, folder: str) -> None:
    """The saved predictor's covariate slots must match the covariates the command names."""
    check_slots(predictor.covariate_slots, covariate_slots(dataset.train), folder)


def check_slots(saved: dict, command: dict, folder: str) -> None:
    """A saved predictor's covariate slots (`saved`) must match those of the command's covariates."""
    used = lambda slots: {k: v for k, v in slots.items() if v}  # noqa: E731
    have, given = used(saved), used(command)
    if have != given:
        raise DataError(f"the predictor in {folder} was trained with covariates {have or 'none'}, but the command "
                        f"gives {given or 'none'}: name the same past_covariates= / future_covariates= / static=")


def run_streaming(app, predictor: EBTPredictor | None) -> StreamSummary:
    """`forecast` in chunks: the saved predictor, or the pretrained model fitted (zero-shot) on the first chunk."""
    if app.horizon <= 0:
        raise DataError(f"horizon={app.horizon} is invalid: must be a positive number of steps")

    def fit_predictor(dataset: ForecastDataset) -> EBTPredictor:
        if predictor is not None:
            return predictor
        cfg = app.forecaster()
        forecaster = PretrainedForecaster(app.pretrained, cfg)
        forecaster = VerifierForecaster(cfg, ebt=forecaster) if cfg.task.verifier.enabled else forecaster
        return EBTPredictor(forecaster.fit(dataset), dataset.horizon, dataset.freq)

    return run_stream_forecast(app, fit_predictor)


def run_forecast_command(app) -> int:
    """`ebt-forecast forecast`: validate the config, forecast, say where the file is."""
    app.forecaster()  # fail at start on invalid model / think / trainer / task values
    if app.pretrained and not app.predictor:
        how = f"fine-tuned {app.finetune} steps" if app.finetune else "zero-shot"
        print(f"forecasting with the pretrained EBT {app.pretrained} ({how}; pretrained=null trains one on the file)")
    written = run_forecast(app)
    if app.save:
        print(f"saved the predictor to {app.save} (forecast more files with predictor={app.save})")
    if isinstance(written, StreamSummary):
        print(written.line())
        written = written.output
    if app.output:
        print(f"wrote {written}")
    return 0
