"""Hydra composition: the command's task supplies the root schema; configs/ selects and overrides.

Defaults live once, in the dataclasses (`tasks/base.py::AppConfig` and each task's extension of
it); the YAML files under configs/ only select or override. A wrong key or type is an error that
names the key.
"""
from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from ebt_forecast.tasks import discover_tasks
from ebt_forecast.tasks.base import AppConfig, TaskSpec, task_of_command

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def commands() -> dict[str, str]:
    """Every registered command and its line of help."""
    return {name: cmd.help for spec in discover_tasks().values() for name, cmd in spec.commands.items()}


def register_configs(spec: TaskSpec) -> None:
    """Register the task's root schema as `base_config`, and its node in the `task` group when no YAML selects it."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=spec.app_config)
    if not (CONFIG_DIR / "task" / f"{spec.name}.yaml").exists():
        cs.store(group="task", name=spec.name, node=spec.config)


def compose(command: str, overrides: list[str]) -> AppConfig:
    """Compose configs/ (or the task's schema alone when configs/ is absent) with overrides; type-check it."""
    from hydra import compose as hydra_compose
    from hydra import initialize, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    discover_tasks()
    spec = task_of_command(command)
    if spec is None:
        raise KeyError(command)
    register_configs(spec)
    GlobalHydra.instance().clear()
    if (CONFIG_DIR / "config.yaml").exists():
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose("config", overrides=[f"command={command}", f"task={spec.name}", *overrides])
    else:
        with initialize(config_path=None, version_base="1.3"):
            cfg = hydra_compose("base_config", overrides=[f"command={command}", *overrides])
    return OmegaConf.to_object(cfg)
