"""Trained torch modules as artifacts: train once (Lightning, resumable from its checkpoint), then load.

Contract: `train_or_load(store, name, depends, module, train)` returns `(module, meta)`. The first call runs
`train(module) -> meta` (a JSON-able dict: seconds, steps, ...) and keeps the weights (`weights.pt`, a state dict)
and `meta.json` in the artifact folder of (name, depends); later calls load the weights into `module` with
`weights_only=True`. The module comes back in eval mode. `fit_or_load` is the same with the training written
once: `fit_module` on a data set, an interrupted run resuming from `<checkpoints>/<name>__<key>/`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import torch

from ebt_forecast.experiment.artifacts import Artifacts
from ebt_forecast.experiment.cells import cell_key, safe_name
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


def fit_or_load(store: Artifacts, name: str, depends: Any, module: torch.nn.Module, data: Callable[[], Any],
                trainer_cfg: Any, checkpoints: Path | str | None = None, seed: int | None = None,
                ) -> tuple[torch.nn.Module, dict]:
    """`train_or_load` with Lightning training by `fit_module` on `data()` (built only when training runs);
    `checkpoints` (default: trainer_cfg.checkpoint_dir, if set) holds one resumable folder per (name, key).
    meta: seconds, steps, parameters."""
    from ebt_forecast.tasks.base import fit_module

    key = cell_key(depends)
    root = checkpoints or trainer_cfg.checkpoint_dir
    if root:
        trainer_cfg = dataclasses.replace(trainer_cfg, checkpoint_dir=str(Path(root) / f"{safe_name(name)}__{key}"))

    def train(m: torch.nn.Module) -> dict:
        report = fit_module(m, data(), trainer_cfg, seed=seed, run_key=key)
        return {"seconds": report.seconds, "steps": report.steps, "parameters": sum(p.numel() for p in m.parameters())}

    return train_or_load(store, name, depends, module, train)
