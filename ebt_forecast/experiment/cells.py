"""Cells: named computations keyed by the configuration they depend on, resumable, written atomically.

Contract: `Cells(folder).run(name, depends, compute)` returns `compute()`'s JSON-able result. The result is kept at
`<folder>/<name>__<key>.json` with `key = cell_key(depends)`: a hash of the declared dependencies (dataclasses,
dicts, lists, scalars) and the package version, so a changed setting, or a new release, recomputes the cell and
nothing else. `ledger` lists every cell the run touched (name, key, reused or computed, seconds): tables print it
so a reader knows which numbers are new.

`Cells.run_all(jobs, workers, threads)` runs many cells, yielding their results in order; with `workers > 1` the
unfinished ones are computed at once in spawned processes of `threads` torch threads each (a job's function and
arguments must pickle), each worker writing its own cell, so a run cut short keeps every cell that finished.
"""
from __future__ import annotations

import json
import multiprocessing
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ebt_forecast import __version__
from ebt_forecast.io import atomic_write_json
from ebt_forecast.tasks.base import config_key


def cell_key(depends: Any) -> str:
    """The key of a cell: a hash of its declared dependencies and the package version."""
    return config_key(__version__, depends)


def safe_name(name: str) -> str:
    """A cell or artifact name as a file name: letters, digits, `-`, `_`, `.`, `=` and `,`; the rest become `_`."""
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", name).strip("_") or "cell"


@dataclass
class CellRecord:
    """What the run did with one cell."""

    name: str
    key: str
    reused: bool
    seconds: float  # time to compute it (0 when reused)


@dataclass
class Cells:
    """A folder of cells. `resume=False` recomputes every cell; `compute=False` only reads the finished ones."""

    folder: Path
    resume: bool = True
    compute: bool = True
    ledger: list[CellRecord] = field(default_factory=list)

    def path(self, name: str, depends: Any) -> Path:
        """Where the cell of this name and these dependencies is kept."""
        return Path(self.folder) / f"{safe_name(name)}__{cell_key(depends)}.json"

    def run(self, name: str, depends: Any, compute: Callable[[], Any]) -> Any:
        """The cell's result: read back when a cell of the same key is finished, else computed and written.
        With `compute=False` a missing cell gives None."""
        path, key = self.path(name, depends), cell_key(depends)
        if self.resume and path.exists():
            self.ledger.append(CellRecord(name, key, True, 0.0))
            return json.loads(path.read_text())["result"]
        if not self.compute:
            return None
        start = time.perf_counter()
        result = compute()
        seconds = time.perf_counter() - start
        atomic_write_json(path, {"name": name, "key": key, "version": __version__, "seconds": seconds,
                                 "depends": json.loads(json.dumps(_plain(depends), default=str)), "result": result})
        self.ledger.append(CellRecord(name, key, False, seconds))
        return result

    def run_all(self, jobs: Sequence[CellJob], workers: int = 1, threads: int = 1) -> Iterator[Any]:
        """Each job's cell result, in the jobs' order. With `workers > 1` the cells not finished yet are computed
        in that many spawned processes (`threads` torch threads each) while earlier results are yielded; an error
        in one cell cancels the ones not started and is raised when its turn comes."""
        pending = [i for i, job in enumerate(jobs)
                   if self.compute and not (self.resume and self.path(job.name, job.depends).exists())]
        if workers <= 1 or len(pending) <= 1:
            for job in jobs:
                yield self.run(job.name, job.depends, job.compute)
            return
        context = multiprocessing.get_context("spawn")  # fork is unsafe once torch's thread pool has started
        with ProcessPoolExecutor(min(workers, len(pending)), mp_context=context, initializer=_set_threads,
                                 initargs=(threads,)) as pool:
            futures: dict[int, Future] = {i: pool.submit(_run_in_worker, Path(self.folder), jobs[i]) for i in pending}
            try:
                for i, job in enumerate(jobs):
                    if i not in futures:  # finished before: read back here
                        yield self.run(job.name, job.depends, job.compute)
                        continue
                    result, seconds = futures[i].result()
                    self.ledger.append(CellRecord(job.name, cell_key(job.depends), False, seconds))
                    yield result
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    def reused(self, name: str) -> bool:
        """Whether the last run of the cell `name` read it back."""
        return next(r.reused for r in reversed(self.ledger) if r.name == name)

    def summary(self) -> str:
        """One line: how many cells were reused and how many computed (and in how long)."""
        done = [r for r in self.ledger if not r.reused]
        return (f"{len(self.ledger)} cells: {len(self.ledger) - len(done)} reused, {len(done)} computed "
                f"({sum(r.seconds for r in done):.1f} s)")


@dataclass
class CellJob:
    """One cell of `Cells.run_all`: its name, what it depends on, and `function(*args)` computing its result."""

    name: str
    depends: Any
    function: Callable[..., Any]
    args: tuple = ()

    def compute(self) -> Any:
        """The cell's result, computed here."""
        return self.function(*self.args)


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _run_in_worker(folder: Path, job: CellJob) -> tuple[Any, float]:
    """In a worker process: compute and write the cell (the parent reads the result, not the file)."""
    cells = Cells(folder, resume=False)
    result = cells.run(job.name, job.depends, job.compute)
    return result, cells.ledger[-1].seconds


def _plain(value: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
