"""Forecasting frontend: the patch EBT, its Lightning module, the forecaster and GluonTS's API."""
from ebt_forecast.tasks.forecast.estimator import EBTEstimator, EBTPredictor
from ebt_forecast.tasks.forecast.forecaster import EBTForecaster, ForecasterConfig

__all__ = ["EBTEstimator", "EBTForecaster", "EBTPredictor", "ForecasterConfig"]
