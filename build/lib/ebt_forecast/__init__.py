"""ebt-forecast: Energy-Based Transformers that think their way to probabilistic forecasts."""

__version__ = "0.1.0"
