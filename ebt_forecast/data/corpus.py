"""The real pretraining corpus: an index of its data sets, sampling by data set, a bounded cache.

A corpus is a folder of Parquet files in long form (`item_id` str, `timestamp`, `target` float;
NaN rows are gaps inside a series), one file per source and frequency, e.g.
`../shared/data/corpus/M4/M4_yearly.parquet`. One file is one *data set*, named by its path
without the suffix ("M4/M4_yearly").

    index_corpus(root)            -> [DataSet]: series and observed points per file (two columns read)
    dataset_weights(points, ...)  -> (D,) sampling probabilities, sqrt-tempered and capped
    CorpusSampler(root).sample_series(rng) -> CorpusSeries: a data set by weight, then a series
                                     uniformly within it; files load lazily into an LRU cache
                                     bounded in bytes (`ParquetCache`)
    assert_disjoint(root, eval_roots) raises DataError naming every corpus series that shares an
                                     item id or a run of values with the evaluation suite

Sampling by data set, not by point: the corpus is unbalanced (two hourly files hold half its
points), so drawing points would train mostly on air quality and power load.

Files are read with pyarrow, not polars: polars' thread pool deadlocks in a forked DataLoader
worker, pyarrow's restarts after fork.
"""
from __future__ import annotations

import gzip
import math
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from numpy.lib.stride_tricks import sliding_window_view

from ebt_forecast.errors import ConfigError, DataError

COLUMNS = ("item_id", "timestamp", "target")
DEFAULT_CACHE_BYTES = 256 * 2**20  # the whole real corpus takes ~31 MiB decoded: it fits


@dataclass(frozen=True)
class DataSet:
    """One Parquet file of the corpus and its size."""

    name: str  # path under the root without ".parquet", e.g. "M4/M4_yearly"
    path: Path
    n_series: int
    n_points: int  # observed (finite) target values


@dataclass
class SeriesTable:
    """One decoded file: series i is values[offsets[i]:offsets[i + 1]] (float32, NaN = gap)."""

    item_ids: list[str]
    offsets: np.ndarray  # (n_series + 1,) int64
    values: np.ndarray  # (n_rows,) float32 (float64 for the disjointness check), read-only

    def series(self, i: int) -> np.ndarray:
        """Values of the i-th series (a read-only view)."""
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    @property
    def nbytes(self) -> int:
        """Memory held by this table: the arrays plus the id strings."""
        ids = sum(sys.getsizeof(s) for s in self.item_ids) + 8 * len(self.item_ids)
        return int(self.values.nbytes + self.offsets.nbytes + ids)


@dataclass
class CorpusSeries:
    """One sampled corpus series."""

    dataset: str
    item_id: str
    values: np.ndarray  # (n,) float32 read-only, NaN = gap


def _check_schema(path: Path) -> None:
    """DataError naming the file and column when a corpus file lacks a long-form column."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read Parquet metadata: {exc}") from None
    for col in COLUMNS:
        if col not in schema.names:
            raise DataError(f"{path}: missing column {col!r} (corpus files are long form {list(COLUMNS)})")
    kind = schema.field("target").type
    if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
        raise DataError(f"{path}: column 'target' has type {kind}, expected a number")


def _read(path: Path, columns: Sequence[str]) -> tuple[pa.Table, np.ndarray, list[str]]:
    """Columns of one file, each row's series code (int64) and the ids the codes index."""
    # Reading item_id as a dictionary is ~25x faster than materialising millions of strings.
    table = pq.read_table(path, columns=list(columns), read_dictionary=["item_id"]).unify_dictionaries()
    ids = table["item_id"].combine_chunks()
    if isinstance(ids, pa.ChunkedArray):  # a file with no rows
        ids = pa.array([], pa.dictionary(pa.int32(), pa.string()))
    codes = ids.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return table, codes, ids.dictionary.to_pylist()


def corpus_files(root: str | Path) -> list[Path]:
    """The corpus' Parquet files, sorted; DataError naming the folder if there are none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"corpus folder not found: {root}")
    paths = sorted(root.rglob("*.parquet"))
    if not paths:
        raise DataError(f"corpus folder {root} holds no .parquet file")
    return paths


def index_corpus(root: str | Path) -> list[DataSet]:
    """Every `*.parquet` under root (sorted) with its series count and observed points."""
    root = Path(root)
    out = []
    for path in corpus_files(root):
        _check_schema(path)
        table, codes, ids = _read(path, ["item_id", "target"])  # two columns of one file at a time
        n_series = int(np.count_nonzero(np.bincount(codes, minlength=len(ids))))
        n_points = pc.sum(pc.is_finite(pc.cast(table["target"], pa.float64()))).as_py() or 0
        out.append(DataSet(path.relative_to(root).with_suffix("").as_posix(), path, n_series, int(n_points)))
    return out


def dataset_weights(points: Sequence[int], temperature: float = 0.5, max_share: float = 0.1) -> np.ndarray:
    """Probabilities proportional to points**temperature, none above max_share (excess spread pro rata).

    temperature 1 samples by point, 0 uniformly by data set; 0.5 (default) lets a file with 100x the
    points come up 10x as often. The cap is raised to 1/D when D data sets cannot all fit under it.
    """
    if not 0.0 <= temperature <= 1.0:
        raise ConfigError(f"corpus temperature must be in [0, 1], got {temperature}")
    if not 0.0 < max_share <= 1.0:
        raise ConfigError(f"corpus max_share must be in (0, 1], got {max_share}")
    pts = np.asarray(points, dtype=np.float64)
    raw = np.where(pts > 0, pts ** temperature, 0.0)
    if raw.sum() <= 0:
        raise DataError("corpus has no observed points to sample")
    cap = max(max_share, 1.0 / np.count_nonzero(raw))
    capped = np.zeros(len(raw), dtype=bool)
    while True:  # water-filling: fix the data sets over the cap, rescale the rest, repeat
        rest = 1.0 - cap * capped.sum()
        w = np.where(capped, cap, raw * rest / raw[~capped].sum())
        over = ~capped & (w > cap * (1 + 1e-12))
        if not over.any():
            return w
        capped |= over


def explicit_weights(names: Sequence[str], weights: Mapping[str, float]) -> np.ndarray:
    """Probabilities from {data set name: weight}; data sets not named get 0."""
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ConfigError(f"corpus weights: unknown data set {unknown[0]!r}; known: {list(names)}")
    bad = {k: v for k, v in weights.items() if not np.isfinite(v) or v < 0}
    if bad:
        key = next(iter(bad))
        raise ConfigError(f"corpus weights: {key!r} = {bad[key]} (weights must be finite and >= 0)")
    w = np.array([float(weights.get(n, 0.0)) for n in names])
    if w.sum() <= 0:
        raise ConfigError("corpus weights: all zero")
    return w / w.sum()


def load_series_table(path: str | Path, dtype: type = np.float32) -> SeriesTable:
    """Decode one corpus file into per-series arrays in time order (series in the file's id order)."""
    path = Path(path)
    _check_schema(path)
    table, codes, ids = _read(path, COLUMNS)
    stamps = pc.cast(table["timestamp"], pa.int64()).to_numpy(zero_copy_only=False)
    values = pc.cast(table["target"], pa.float64()).fill_null(float("nan")).to_numpy(zero_copy_only=False)
    grouped = np.all(np.diff(codes) >= 0) and np.all(np.diff(stamps)[np.diff(codes) == 0] > 0)
    if not grouped:  # rows out of order: group by series, then time (files written by the corpus tools are grouped)
        order = np.lexsort((stamps, codes))
        codes, values = codes[order], values[order]
    counts = np.bincount(codes, minlength=len(ids))
    present = np.flatnonzero(counts)
    values = values.astype(dtype)
    values.flags.writeable = False  # tables are shared through the cache: callers must not edit them
    return SeriesTable([ids[i] for i in present], np.r_[0, np.cumsum(counts[present])].astype(np.int64), values)


class ParquetCache:
    """Decoded corpus files, least recently used evicted first, never more than max_bytes held.

    A file larger than the whole budget is decoded for the caller and not kept.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ConfigError(f"corpus cache_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._tables: OrderedDict[Path, SeriesTable] = OrderedDict()
        self.nbytes = 0
        self.loads = 0  # files decoded so far (misses)

    def __len__(self) -> int:
        return len(self._tables)

    @property
    def paths(self) -> list[Path]:
        """Cached files, least recently used first."""
        return list(self._tables)

    def get(self, path: Path) -> SeriesTable:
        """The decoded file at path, from the cache or loaded now."""
        if path in self._tables:
            self._tables.move_to_end(path)
            return self._tables[path]
        table = load_series_table(path)
        self.loads += 1
        size = table.nbytes
        if size > self.max_bytes:
            return table
        while self._tables and self.nbytes + size > self.max_bytes:
            _, old = self._tables.popitem(last=False)
            self.nbytes -= old.nbytes
        self._tables[path] = table
        self.nbytes += size
        return table


class CorpusSampler:
    """Draw corpus series: a data set by weight, then one of its series uniformly.

    weights: None for `dataset_weights(points, temperature, max_share)`, or {data set name: weight}.
    Randomness comes only from the Generator passed to each call, so a seeded caller gets the same
    draws whatever the cache holds. The cache starts empty, so each DataLoader worker fills its own copy.
    """

    def __init__(self, root: str | Path, weights: Mapping[str, float] | None = None,
                 temperature: float = 0.5, max_share: float = 0.1,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, series_fraction: float = 1.0,
                 subset_seed: int = 0) -> None:
        if not 0 < series_fraction <= 1:
            raise ConfigError(f"corpus: series_fraction must be in (0, 1], got {series_fraction}")
        self.root = Path(root)
        self.datasets = index_corpus(self.root)
        names = [d.name for d in self.datasets]
        self.weights = (dataset_weights([d.n_points for d in self.datasets], temperature, max_share)
                        if weights is None else explicit_weights(names, weights))
        self.cache = ParquetCache(cache_bytes)
        self.series_fraction, self.subset_seed = float(series_fraction), int(subset_seed)
        self._subsets: dict[int, np.ndarray] = {}

    def series_subset(self, dataset: int, count: int) -> np.ndarray:
        """Indices of the series of data set `dataset` (of `count`) that may be drawn: a fixed, seeded
        `series_fraction` of them (at least one), the same in every worker; all when the fraction is 1."""
        if dataset not in self._subsets:
            keep = max(1, math.ceil(self.series_fraction * count))
            order = np.random.default_rng([self.subset_seed, dataset]).permutation(count)
            self._subsets[dataset] = np.sort(order[:keep])
        return self._subsets[dataset]

    def sample_dataset(self, rng: np.random.Generator) -> int:
        """Index into `datasets` of one data set drawn by weight."""
        return int(rng.choice(len(self.datasets), p=self.weights))

    def sample_series(self, rng: np.random.Generator, min_length: int = 1, tries: int = 8) -> CorpusSeries:
        """One series (data set by weight, series uniform), redrawn up to `tries` times if under min_length."""
        for _ in range(max(tries, 1)):
            k = self.sample_dataset(rng)
            d = self.datasets[k]
            table = self.cache.get(d.path)
            if self.series_fraction < 1:  # a data budget: only the data set's fixed subset of series
                subset = self.series_subset(k, len(table.item_ids))
                i = int(subset[rng.integers(len(subset))])
            else:
                i = int(rng.integers(len(table.item_ids)))
            found = CorpusSeries(d.name, table.item_ids[i], table.series(i))
            if len(found.values) >= min_length:
                break
        return found


# ---- disjointness from the evaluation suite -------------------------------------------------

_PART_ORDER = {"train": 0, "val": 1, "valid": 1, "test": 2}


def _split_part(stem: str) -> tuple[str, int]:
    """'Hourly-train' -> ('Hourly', 0): files that hold parts of one series set share a base name."""
    for sep in ("-", "_"):
        base, _, part = stem.rpartition(sep)
        if base and part.lower() in _PART_ORDER:
            return base, _PART_ORDER[part.lower()]
    return stem, 0


def _read_eval_file(path: Path) -> dict[str, np.ndarray]:
    """id -> values of one evaluation file: long Parquet, header-less text, M4 ragged or wide CSV."""
    name = path.name.lower()
    try:
        if name.endswith(".parquet"):
            table = load_series_table(path, dtype=np.float64)
            return {i: table.series(k) for k, i in enumerate(table.item_ids)}
        if name.endswith((".txt", ".txt.gz")):  # LSTNet style: one column per series, no header
            frame = pd.read_csv(path, header=None)
            frame.columns = [str(c) for c in frame.columns]
        else:
            frame = pd.read_csv(path)
            if len(frame.columns) and str(frame.columns[0]) == "V1":  # M4: one ragged row per series
                frame = frame.set_index("V1").apply(pd.to_numeric, errors="coerce").T
    except (OSError, EOFError, gzip.BadGzipFile, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: cannot read evaluation file: {exc}") from None
    out = {}
    for col in frame.columns:
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)
        if np.isfinite(values).any():  # non-numeric columns (dates) hold none
            obs = np.flatnonzero(np.isfinite(values))
            out[str(col)] = values[obs[0]:obs[-1] + 1]
    return out


def read_eval_series(root: str | Path) -> dict[str, np.ndarray]:
    """'<root name>/<file base>/<id>' -> values for every series of one evaluation data folder.

    Files named <base>-train / <base>-test (M4) are parts of one set: a series is its parts joined
    in train, val, test order.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"evaluation data folder not found: {root}")
    parts: dict[str, list[tuple[int, np.ndarray]]] = {}
    suffixes = (".csv", ".csv.gz", ".txt", ".txt.gz", ".parquet")
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes)):
        stem = path.name[: -len(next(s for s in suffixes[::-1] if path.name.lower().endswith(s)))]
        base, order = _split_part(stem)
        for item, values in _read_eval_file(path).items():
            parts.setdefault(f"{root.name}/{base}/{item}", []).append((order, values))
    if not parts:
        raise DataError(f"evaluation data folder {root} holds no readable series")
    return {key: np.concatenate([v for _, v in sorted(p, key=lambda t: t[0])]) for key, p in parts.items()}


def _codes(values: np.ndarray, digits: int) -> np.ndarray:
    """Finite values rounded to `digits` significant digits, each packed into one int64."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    nonzero = x != 0
    exp = np.floor(np.log10(np.abs(np.where(nonzero, x, 1.0)))).astype(np.int64)
    mant = np.rint(x / 10.0 ** (exp - digits + 1)).astype(np.int64)
    carry = np.abs(mant) >= 10 ** digits  # 9.9996 -> 10.00: renormalise
    mant, exp = np.where(carry, mant // 10, mant), np.where(carry, exp + 1, exp)
    return np.where(nonzero, mant * 2048 + (exp + 1024), 0)


def _window_hashes(codes: np.ndarray, window: int) -> np.ndarray:
    """(n - window + 1,) uint64 hash of every run of `window` codes (a fixed random linear hash)."""
    mult = np.random.default_rng(20240501).integers(1, 2**63, size=window, dtype=np.uint64) | np.uint64(1)
    if len(codes) < window:
        return np.zeros(0, dtype=np.uint64)
    return sliding_window_view(codes.astype(np.uint64), window) @ mult  # wraps mod 2**64 on purpose


@dataclass
class DisjointnessReport:
    """What assert_disjoint checked."""

    corpus_series: int
    eval_series: int
    eval_windows: int  # fingerprinted evaluation runs, summed over the resolutions
    seconds: float


def _eval_fingerprints(series: dict[str, np.ndarray], window: int, digits: int,
                       min_distinct: int) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Sorted hashes of every informative run of the evaluation series, each one's owner, owner keys,
    and a (2**24,) table marking the hashes' top 24 bits."""
    hashes, owners, keys = [], [], []
    for key, values in series.items():
        codes = _codes(values, digits)
        if len(codes) < window:  # too short to fingerprint: checked by id only
            continue
        runs = np.sort(sliding_window_view(codes, window), axis=1)
        informative = 1 + np.count_nonzero(np.diff(runs, axis=1), axis=1) >= min_distinct
        h = _window_hashes(codes, window)[informative]
        hashes.append(h)
        owners.append(np.full(len(h), len(keys)))
        keys.append(key)
    h = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    o = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    order = np.argsort(h)
    prefixes = np.zeros(1 << 24, dtype=bool)
    prefixes[h >> np.uint64(40)] = True
    return h[order], o[order], keys, prefixes


def assert_disjoint(corpus_root: str | Path, eval_roots: Sequence[str | Path], window: int = 64,
                    digits: Sequence[int] = (3, 4), min_distinct: int = 8, max_listed: int = 10) -> DisjointnessReport:
    """Raise DataError naming every corpus series that overlaps an evaluation series.

    By item id: a corpus id whose last component is an evaluation series' id and whose other
    components name its data set (e.g. 'x/ETTh1/OT' for ett/ETTh1/OT, 'M4/H7' for m4/Hourly/H7).
    By values: any run of `window` consecutive finite values equal, at `d` significant digits for
    some d in `digits`, to a run of an evaluation series, at any offset in either series. Runs with
    fewer than `min_distinct` distinct values (flat or intermittent stretches) are not fingerprinted.
    Two resolutions because a copy stored at a different precision straddles rounding boundaries:
    a copy rounded to 4 decimals misses at 3 significant digits (ties) and is caught at 4, one
    rounded to 2 decimals the other way round (both tried on the real suite).
    """
    started = time.perf_counter()
    series: dict[str, np.ndarray] = {}
    for eval_root in eval_roots:
        series.update(read_eval_series(eval_root))
    by_last: dict[str, list[tuple[str, set[str]]]] = {}  # eval id (lower case) -> (key, data set tokens)
    for key in series:
        folder, base, item = key.split("/", 2)
        by_last.setdefault(item.lower(), []).append((key, {folder.lower(), base.lower(), f"{folder}_{base}".lower()}))
    prints = {d: _eval_fingerprints(series, window, d, min_distinct) for d in digits}

    found: dict[tuple[str, str], str] = {}  # (corpus id, eval key) -> how it matched
    n_corpus = 0
    for path in corpus_files(corpus_root):
        table = load_series_table(path, dtype=np.float64)  # one file at a time: memory stays at one file
        name = path.relative_to(corpus_root).with_suffix("").as_posix()
        n_corpus += len(table.item_ids)
        for cid in table.item_ids:
            parts = cid.lower().split("/")
            for key, tokens in by_last.get(parts[-1], []):
                if tokens & set(parts[:-1]):
                    found.setdefault((cid, key), f"item id, file {name}")
        series_of = np.repeat(np.arange(len(table.item_ids)), np.diff(table.offsets))[np.isfinite(table.values)]
        for d, (eval_hash, eval_owner, keys, prefixes) in prints.items():
            codes = _codes(table.values, d)
            if len(codes) < window or not len(eval_hash):
                continue
            h = _window_hashes(codes, window)
            # Binary search of millions of hashes is the slow part: a 16M-bit prefix table lets
            # only ~3% of the runs through to it.
            starts = np.flatnonzero(prefixes[h >> np.uint64(40)])
            pos = np.minimum(np.searchsorted(eval_hash, h[starts]), len(eval_hash) - 1)
            hit = eval_hash[pos] == h[starts]
            starts, pos = starts[hit], pos[hit]
            inside = series_of[starts] == series_of[starts + window - 1]  # runs within one corpus series only
            for start, at in zip(starts[inside], pos[inside]):
                cid, key = table.item_ids[series_of[start]], keys[eval_owner[at]]
                found.setdefault((cid, key), f"{window} values equal to {d} significant digits, file {name}")
    if found:
        lines = [f"  corpus series {cid!r} matches evaluation series {key!r} by {how}"
                 for (cid, key), how in list(found.items())[:max_listed]]
        more = f"\n  ... {len(found) - max_listed} more" if len(found) > max_listed else ""
        raise DataError(f"pretraining corpus {corpus_root} overlaps the evaluation suite "
                        f"({len(found)} match(es)); remove these series:\n" + "\n".join(lines) + more)
    n_windows = sum(len(p[0]) for p in prints.values())
    return DisjointnessReport(n_corpus, len(series), n_windows, time.perf_counter() - started)
