"""Hydra composition: the command's task supplies the root schema; configs/ selects and overrides.

Defaults live once, in the dataclasses (`tasks/base.py::AppConfig` and each task's extension of
it); the YAML files under configs/ only select or override. A wrong key or type is an error that
names the key. The one copy of configs/ sits at the repository's top level and is installed as the
package `ebt_forecast.configs` (pyproject.toml's package-dir), found with importlib.resources.
"""
from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from ebt_forecast.tasks import discover_tasks
from ebt_forecast.tasks.base import AppConfig, TaskSpec, task_of_command

CONFIG_PACKAGE = "ebt_forecast.configs"


from ebt_forecast.errors import ConfigDirError  # noqa: E402, F401  (raised below; importable from here as before)


@cache
def config_dir() -> Path:
    """The folder of the installed `ebt_forecast.configs` (top-level configs/); a loud error when it is missing."""
    try:
        folder = resources.files(CONFIG_PACKAGE)
    except ModuleNotFoundError as err:
        raise ConfigDirError(f"{CONFIG_PACKAGE} is not installed beside ebt_forecast "
                             f"({Path(__file__).parent}): reinstall the package (`pip install .` or `-e .`)") from err
    if not isinstance(folder, Path) or not (folder / "config.yaml").is_file():
        raise ConfigDirError(f"{CONFIG_PACKAGE} at {folder} has no config.yaml: reinstall the package")
    return folder


def commands() -> dict[str, str]:
    """Every registered command and its line of help."""
    return {name: cmd.help for spec in discover_tasks().values() for name, cmd in spec.commands.items()}


def register_configs(spec: TaskSpec) -> None:
    """Register the task's root schema as `base_config`, and its node in the `task` group when no YAML selects it."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=spec.app_config)
    if not (config_dir() / "task" / f"{spec.name}.yaml").exists():
        cs.store(group="task", name=spec.name, node=spec.config)


def compose(command: str, overrides: list[str]) -> AppConfig:
    """Compose configs/ with the overrides for the command; type-check it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    discover_tasks()
    spec = task_of_command(command)
    if spec is None:
        raise KeyError(command)
    register_configs(spec)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"command={command}", f"task={spec.name}", *overrides])
    return OmegaConf.to_object(cfg)
