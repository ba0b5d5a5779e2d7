"""Hydra structured configs: the schema behind `configs/` (a wrong key or type is an error naming it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore

from ebt_forecast.tasks.forecast.forecaster import (
    ForecasterConfig,
    ForecastTaskConfig,
    ModelSizeConfig,
    TrainerConfig,
)
from ebt_forecast.think import ThinkConfig


@dataclass
class DataConfig:
    """Where the shared data sets live (the default suite needs no files)."""

    root: str = "../shared/data"
    etth1_stride: int = 48  # test origins every this many hours in ETTh1's test span


@dataclass
class ExperimentConfig:
    """Which models and which thinking settings a benchmark runs."""

    name: str = "default"
    models: list[str] = field(default_factory=lambda: [
        "seasonal_naive", "transformer_pp", "transformer_pp+gaussian", "deepar", "ebt"])
    think_steps: list[int] = field(default_factory=lambda: [0, 1, 2, 4])  # EBT rows at these steps
    selections: list[str] = field(default_factory=lambda: ["refined", "verified"])
    candidate_counts: list[int] = field(default_factory=lambda: [1, 16])  # M level paths: the M=1 vs M=16 check
    verify_groups: list[int] = field(default_factory=lambda: [1, 2, 4])  # G starts per level for "verified"
    deepar_hidden_size: int = 40
    deepar_num_layers: int = 2
    plot_series: int = 3  # forecast fans per data set
    resume: bool = True  # skip (data set, model) cells already written


@dataclass
class RuntimeConfig:
    """Process settings."""

    threads: int = 2  # torch threads; two processes that each take both cores slow each other 15-40x
    output_dir: str = "results/${command}"


@dataclass
class AppConfig:
    """The whole command line: `ebt-forecast <command> key=value ...`."""

    command: str = "benchmark"
    # benchmark
    suite: str = "default"  # default (embedded statsmodels series), shared (ETTh1, M4 Hourly, exchange_rate) or one of those three
    # forecast
    input: Optional[str] = None
    horizon: int = 0
    freq: Optional[str] = None
    output: Optional[str] = None
    id_col: str = "item_id"
    time_col: str = "timestamp"
    target_col: str = "target"
    min_length: int = 0  # 0 = horizon + 1
    seed: int = 0
    model: ModelSizeConfig = field(default_factory=ModelSizeConfig)
    think: ThinkConfig = field(default_factory=ThinkConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    task: ForecastTaskConfig = field(default_factory=ForecastTaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def forecaster(self) -> ForecasterConfig:
        """The forecaster's part of the config, validated."""
        return ForecasterConfig(self.model, self.think, self.trainer, self.task, self.seed).validate()


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore (root and one per group)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=AppConfig)
    for group, node in [("model", ModelSizeConfig), ("think", ThinkConfig), ("trainer", TrainerConfig),
                        ("task", ForecastTaskConfig), ("data", DataConfig), ("experiment", ExperimentConfig)]:
        cs.store(group=group, name=f"{group}_schema", node=node)
