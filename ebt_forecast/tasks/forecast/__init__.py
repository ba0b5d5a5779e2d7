"""Forecasting task: the patch EBT, its module, the forecaster, GluonTS's API and the commands."""
from ebt_forecast.tasks.base import Command, TaskSpec, register_task
from ebt_forecast.tasks.forecast.config import ForecastAppConfig, ForecasterConfig, ForecastTaskConfig
from ebt_forecast.tasks.forecast.estimator import EBTEstimator, EBTPredictor
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster, ThoughtForecast
from ebt_forecast.tasks.forecast.pretrain import load_pretrained


def _benchmark(app: ForecastAppConfig) -> int:
    from ebt_forecast.tasks.forecast.benchmark import run_benchmark_command

    return run_benchmark_command(app)


def _forecast(app: ForecastAppConfig) -> int:
    from ebt_forecast.tasks.forecast.cli_forecast import run_forecast_command

    return run_forecast_command(app)


def _pretrain(app: ForecastAppConfig) -> int:
    from ebt_forecast.tasks.forecast.pretrain import run_pretrain_command

    return run_pretrain_command(app)


def _study(app: ForecastAppConfig) -> int:
    from ebt_forecast.tasks.forecast.study import run_study_command

    return run_study_command(app)


register_task(TaskSpec(
    name="forecast", config=ForecastTaskConfig, app_config=ForecastAppConfig,
    commands={
        "benchmark": Command("run the forecasting benchmark (suite=default|shared) and write tables and plots", _benchmark),
        "forecast": Command("fit on every series in input=PATH and forecast horizon=H steps: output=OUT.csv", _forecast),
        "study": Command("compute-vs-accuracy study: thinking steps, candidates, stopping policies, energy as "
                         "uncertainty, out of distribution (shared suite, or input=PATH horizon=H)", _study),
        "pretrain": Command("pretrain one zero-shot patch EBT (context 512, horizon 64) on the corpus, KernelSynth and "
                            "TSMixup; resumable; writes weights.pt and model.json (experiment=pretrain_1m|pretrain_5m)",
                            _pretrain),
    }))

__all__ = ["EBTEstimator", "EBTForecaster", "EBTPredictor", "ForecastTaskConfig", "ForecasterConfig", "ThoughtForecast",
           "load_pretrained"]
