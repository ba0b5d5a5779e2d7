"""Tasks: one sub-package per use of the EBT. Each registers its config node and commands on import."""
from __future__ import annotations

import importlib
import pkgutil

from ebt_forecast.tasks.base import TaskSpec, registered_tasks


def discover_tasks() -> dict[str, TaskSpec]:
    """Import every sub-package of `ebt_forecast.tasks` (each registers itself); return the registry."""
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg:
            importlib.import_module(f"{__name__}.{info.name}")
    return registered_tasks()
