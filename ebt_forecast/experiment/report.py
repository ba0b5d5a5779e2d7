"""One reporter: result frames to CSV and markdown, written atomically (plots: `io.atomic_save_figure`)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from ebt_forecast.io import atomic_write_csv, atomic_write_text


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
