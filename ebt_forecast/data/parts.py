"""Inputs of any size: a CSV / Parquet file or a folder of parts, planned into chunks of whole series.

Contract:
    input_parts(path) -> [Path]                    the file, or the folder's *.csv / *.parquet parts in name order
    plan_chunks(parts, id_col, ..., chunk_points) -> [Chunk]   one lazy pass (polars) counting each series' rows;
                                                   series grouped in order of first appearance until a chunk holds
                                                   chunk_points rows; a series is never split, even across parts
    read_chunk(chunk, ...) -> pandas frame         only the chunk's rows (a filtered scan of the parts it touches)

A part without the id / time / target columns, or one polars cannot parse, is a DataError naming the file.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import polars as pl

from ebt_forecast.errors import DataError

PART_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass
class Chunk:
    """Whole series of the input read and forecast together: their ids, rows and the parts holding them."""

    index: int
    item_ids: list[str]
    rows: int
    parts: list[str]


def input_parts(path: str | Path) -> list[Path]:
    """The input file, or every CSV / Parquet part of a folder (sorted by name); DataError if there is none."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in PART_SUFFIXES:
            raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .csv or .parquet)")
        return [path]
    if path.is_dir():
        parts = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in PART_SUFFIXES
                       and not p.name.startswith((".", "_")))
        if not parts:
            raise DataError(f"{path}: the folder holds no .csv or .parquet part")
        return parts
    raise DataError(f"{path}: file not found")


def inputs_key(parts: list[Path]) -> str:
    """A digest of the parts' names, sizes and modification times (a changed input invalidates a resumable run)."""
    h = hashlib.sha256()
    for p in parts:
        stat = p.stat()
        h.update(f"{p.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def scan_part(part: Path, id_col: str, time_col: str, target_col: str) -> pl.LazyFrame:
    """The part's id (as text), time and target columns, lazily; DataError naming the file and the missing column."""
    try:
        if part.suffix.lower() == ".csv":
            scan = pl.scan_csv(part, infer_schema_length=10_000)
        else:
            scan = pl.scan_parquet(part)
        columns = scan.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataError(f"{part}: cannot read the part: {str(err).splitlines()[0]}") from None
    for key, col in (("id_col", id_col), ("time_col", time_col), ("target_col", target_col)):
        if col not in columns:
            raise DataError(f"{part}: missing the column {col!r} ({key}; the part has {columns}): name it with {key}=")
    return scan.select(pl.col(id_col).cast(pl.Utf8).alias("item_id"), pl.col(time_col).alias("timestamp"),
                       pl.col(target_col).alias("target"))


def plan_chunks(parts: list[Path], id_col: str = "item_id", time_col: str = "timestamp", target_col: str = "target",
                chunk_points: int = 250_000) -> list[Chunk]:
    """Group the input's series into chunks of about `chunk_points` rows (a series longer than that is a chunk of
    its own); memory grows with the number of series, not with their length."""
    if chunk_points < 1:
        raise DataError(f"stream.chunk_points={chunk_points} is invalid: must be >= 1")
    counts = []
    for part in parts:
        try:
            c = scan_part(part, id_col, time_col, target_col).group_by("item_id", maintain_order=True).len().collect()
        except pl.exceptions.PolarsError as err:
            raise DataError(f"{part}: cannot read the part: {str(err).splitlines()[0]}") from None
        if len(c) == 0:
            raise DataError(f"{part}: no data rows")
        counts.append(c.with_columns(pl.lit(str(part)).alias("part")))
    table = pl.concat(counts)
    if table["item_id"].null_count():
        bad = table.filter(pl.col("item_id").is_null())["part"][0]
        raise DataError(f"{bad}: the id column {id_col!r} has empty values")
    per_series = table.group_by("item_id", maintain_order=True).agg(pl.col("len").sum(), pl.col("part"))
    chunks: list[Chunk] = []
    ids: list[str] = []
    touched: dict[str, None] = {}
    rows = 0
    for item, n, where in per_series.iter_rows():
        ids.append(item)
        touched.update(dict.fromkeys(where))
        rows += n
        if rows >= chunk_points:
            chunks.append(Chunk(len(chunks), ids, rows, [p for p in map(str, parts) if p in touched]))
            ids, touched, rows = [], {}, 0
    if ids:
        chunks.append(Chunk(len(chunks), ids, rows, [p for p in map(str, parts) if p in touched]))
    return chunks


def read_chunk(chunk: Chunk, id_col: str = "item_id", time_col: str = "timestamp",
               target_col: str = "target") -> pd.DataFrame:
    """The chunk's rows (item_id, timestamp, target) as a pandas frame, in the parts' order."""
    frames = []
    for part in chunk.parts:
        try:
            frames.append(scan_part(Path(part), id_col, time_col, target_col)
                          .filter(pl.col("item_id").is_in(chunk.item_ids)).collect())
        except pl.exceptions.PolarsError as err:
            raise DataError(f"{part}: cannot read the part: {str(err).splitlines()[0]}") from None
    try:
        frame = pl.concat(frames, how="vertical_relaxed")
    except pl.exceptions.PolarsError as err:
        raise DataError(f"parts {chunk.parts}: their columns disagree in type: {str(err).splitlines()[0]}") from None
    return frame.to_pandas()
