"""Data layer: loaders, validation, windowing and scaling."""
from ebt_forecast.data.errors import DataError
from ebt_forecast.data.types import ForecastTask, Series, TestWindow

__all__ = ["DataError", "ForecastTask", "Series", "TestWindow"]
