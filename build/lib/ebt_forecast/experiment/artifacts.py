"""Artifacts: trained models and other files, trained or loaded on the same keys as cells.

Contract: `Artifacts(folder).get(name, depends, make, load)` returns `load(dir)` when the folder
`<folder>/<name>__<key>/` is finished, else calls `make(tmp_dir)` (which writes the files and returns the object),
renames the temporary folder into place and returns what `make` returned. A folder is whole or absent: an
interrupted `make` leaves only a temporary folder, cleared by the next attempt. The key is `cells.cell_key(depends)`.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from ebt_forecast.experiment.cells import CellRecord, cell_key, safe_name

T = TypeVar("T")


@dataclass
class Artifacts:
    """A folder of trained models (or other files), one sub-folder per (name, key)."""

    folder: Path
    ledger: list[CellRecord] = field(default_factory=list)

    def path(self, name: str, depends: Any) -> Path:
        """The finished folder of this artifact."""
        return Path(self.folder) / f"{safe_name(name)}__{cell_key(depends)}"

    def reused(self, name: str) -> bool:
        """Whether the last `get` of `name` loaded a finished artifact."""
        return next(r.reused for r in reversed(self.ledger) if r.name == name)

    def get(self, name: str, depends: Any, make: Callable[[Path], T], load: Callable[[Path], T]) -> T:
        """Load the finished artifact, or make it in a temporary folder and move that into place."""
        final, key = self.path(name, depends), cell_key(depends)
        if final.is_dir():
            self.ledger.append(CellRecord(name, key, True, 0.0))
            return load(final)
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        start = time.perf_counter()
        made = make(tmp)
        tmp.replace(final)
        self.ledger.append(CellRecord(name, key, False, time.perf_counter() - start))
        return made
