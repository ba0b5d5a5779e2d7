"""The Hydra config folder, installed as the package `ebt_forecast.configs` (see pyproject.toml)."""
