"""The one experiment layer: every command is a grid of cells on it.

- `Cells` (cells.py): a cell is a named computation, the configuration parts it depends on and its JSON result;
  its key is derived from those parts plus the package version; results are written atomically; a rerun reuses a
  cell whose key matches, recomputes one whose dependencies changed, and its `ledger` says which. `run_all`
  computes many cells at once in worker processes (`CellJob`s: a function and its arguments).
- `Artifacts` (artifacts.py): trained models and other files (train or load) on the same keys, each a folder
  that is whole or absent.
- `train_or_load` / `fit_or_load` (models.py): a torch module trained once (Lightning, resumable) and kept as an
  artifact (weights + meta), then loaded.
- `report` (report.py): result frames to CSV, markdown and plots, written atomically.
"""
from ebt_forecast.experiment.artifacts import Artifacts
from ebt_forecast.experiment.cells import CellJob, CellRecord, Cells, cell_key
from ebt_forecast.experiment.models import fit_or_load, train_or_load
from ebt_forecast.experiment.report import (markdown_table, plot_panels, plot_sweeps, ranking_section, write_frame,
                                          write_markdown)

__all__ = ["Artifacts", "CellJob", "CellRecord", "Cells", "cell_key", "fit_or_load", "markdown_table", "plot_panels",
           "plot_sweeps", "ranking_section", "train_or_load", "write_frame", "write_markdown"]
