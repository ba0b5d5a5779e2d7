"""One reporter: result frames to CSV and markdown, and rows of plot panels, written atomically."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from ebt_forecast.io import atomic_save_figure, atomic_write_csv, atomic_write_text


def markdown_table(frame: pd.DataFrame, columns: Sequence[str] | None = None, floatfmt: str = ".4f") -> str:
    """A frame (optionally only the listed columns that exist) as a markdown table."""
    if columns is not None:
        frame = frame[[c for c in columns if c in frame.columns]]
    return frame.to_markdown(index=False, floatfmt=floatfmt)


def write_frame(frame: pd.DataFrame, folder: Path, stem: str) -> Path:
    """`<folder>/<stem>.csv`, atomically."""
    return atomic_write_csv(frame, Path(folder) / f"{stem}.csv")


def write_markdown(sections: Sequence[str], path: Path) -> Path:
    """Markdown sections joined by blank lines, atomically."""
    return atomic_write_text(path, "\n\n".join(s.strip("\n") for s in sections) + "\n")


def plot_panels(names: Sequence[str], draw: Callable[[Any, str], None], path: Path, *, size: float = 3.0,
                ylabel: str = "", titles: dict[str, str] | None = None, adjust: dict | None = None) -> Path:
    """A row of panels, one per name (titled by `titles` or the name), each drawn by `draw(ax, name)`; the first
    panel gets the y label and the legend; laid out tightly (or by `fig.subplots_adjust(**adjust)`); saved
    atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(size * len(names), size), squeeze=False)
    for ax, name in zip(axes[0], names):
        draw(ax, name)
        ax.set_title((titles or {}).get(name, name), fontsize=9)
    axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend(fontsize=7)
    if adjust:
        fig.subplots_adjust(**adjust)
    else:
        fig.tight_layout()
    return atomic_save_figure(fig, path)


def ranking_section(verify: pd.DataFrame, n_max: int, unit: str, error: str, labels: dict | None = None) -> list[str]:
    """Markdown lines: does the energy rank the N = n_max candidates of a `unit` (position, frame, window) by
    their `error`? The within-unit Spearman of energy against error and how often the lowest energy is the
    best, per set (`verify` rows with `set`, `candidates`, `spearman`, `pick_best`; `labels` renames sets)."""
    top = verify[verify["candidates"] == n_max]
    table = pd.DataFrame({"set": top["set"].map(labels) if labels else top["set"], "Spearman": top["spearman"],
                          "lowest energy = best": top["pick_best"]})
    return ["", f"Does the energy rank the N={n_max} candidates of a {unit} by their {error}? Mean within-{unit} "
            f"Spearman correlation of energy against {error} (1 = perfect), and how often the lowest energy is the "
            f"lowest {error} (chance {1 / n_max:.3f}):", "", markdown_table(table, floatfmt=".3f")]


SWEEPS = (("steps", "steps", "thinking steps"), ("verify", "candidates", "candidates N (lowest energy per {unit})"))


def plot_sweeps(rows: pd.DataFrame, names: Sequence[str], unit: str, paths: Sequence[Path],
                draw: Callable[[Any, pd.DataFrame, str, str], None], **panels: Any) -> None:
    """The two thinking sweeps of a sequence task, one figure each (`paths`, in `SWEEPS` order): a panel per set
    with that set's rows of the sweep (kind `steps` against steps, `verify` against candidates), drawn by
    `draw(ax, rows, column, name)`; `panels` go to `plot_panels`."""
    for (kind, column, xlabel), path in zip(SWEEPS, paths):
        def panel(ax, name: str, kind=kind, column=column, xlabel=xlabel) -> None:
            draw(ax, rows[(rows["kind"] == kind) & (rows["set"] == name)].sort_values(column), column, name)
            ax.set_xlabel(xlabel.format(unit=unit), fontsize=8)

        plot_panels(names, panel, path, **panels)
