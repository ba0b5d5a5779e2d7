"""Trained torch modules as artifacts: train once (Lightning, resumable from its checkpoint), then load.

Contract: `train_or_load(store, name, depends, module, train)` returns `(module, meta)`. The first call runs
`train(module) -> meta` (a JSON-able dict: seconds, steps, ...) and keeps the weights (`weights.pt`, a state dict)
and `meta.json` in the artifact folder of (name, depends); later calls load the weights into `module` with
`weights_only=True`. The module comes back in eval mode.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from ebt_forecast.experiment.artifacts import Artifacts
from ebt_forecast.io import atomic_torch_save, atomic_write_json


def train_or_load(store: Artifacts, name: str, depends: Any, module: torch.nn.Module,
                  train: Callable[[torch.nn.Module], dict]) -> tuple[torch.nn.Module, dict]:
    """The trained module and its meta: loaded when (name, depends) was trained before, else trained and kept."""
    def make(folder: Path) -> tuple[torch.nn.Module, dict]:
        meta = train(module)
        atomic_torch_save(module.state_dict(), folder / "weights.pt")
        atomic_write_json(folder / "meta.json", meta)
        return module, meta

    def load(folder: Path) -> tuple[torch.nn.Module, dict]:
        module.load_state_dict(torch.load(folder / "weights.pt", weights_only=True))
        return module, json.loads((folder / "meta.json").read_text())

    trained, meta = store.get(name, depends, make, load)
    return trained.eval(), meta
