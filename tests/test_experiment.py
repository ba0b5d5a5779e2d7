"""The experiment layer: cells keyed by their dependencies and the package version, artifacts whole or absent."""
from __future__ import annotations

from dataclasses import dataclass

import os

import pytest
import torch

from ebt_forecast.experiment import Artifacts, CellJob, Cells, cell_key, train_or_load
from ebt_forecast.experiment import cells as cells_module


@dataclass
class Think:
    steps: int = 2


def test_a_cell_is_reused_until_a_dependency_or_the_version_changes(tmp_path, monkeypatch):
    calls = []

    def compute():
        calls.append(1)
        return [{"wql": 0.5 + len(calls)}]

    cells = Cells(tmp_path)
    first = cells.run("etth1__ebt", {"think": Think(2), "seed": 0}, compute)
    again = cells.run("etth1__ebt", {"think": Think(2), "seed": 0}, compute)
    assert first == again == [{"wql": 1.5}] and len(calls) == 1
    assert [r.reused for r in cells.ledger] == [False, True] and cells.reused("etth1__ebt")
    changed = cells.run("etth1__ebt", {"think": Think(4), "seed": 0}, compute)
    assert changed == [{"wql": 2.5}] and not cells.reused("etth1__ebt")
    monkeypatch.setattr(cells_module, "__version__", "9.9.9")
    assert cells.run("etth1__ebt", {"think": Think(2), "seed": 0}, compute) == [{"wql": 3.5}]
    assert cell_key({"a": 1}) != cell_key({"a": 2})
    assert "2 reused" not in cells.summary() and "1 reused, 3 computed" in cells.summary()


def test_a_failed_cell_writes_nothing_and_compute_false_only_reads(tmp_path):
    cells = Cells(tmp_path)

    def boom():
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cells.run("x", {"k": 1}, boom)
    assert list(tmp_path.iterdir()) == []
    assert Cells(tmp_path, compute=False).run("x", {"k": 1}, boom) is None
    assert Cells(tmp_path, resume=False).run("x", {"k": 1}, lambda: [1]) == [1]


def square_in_a_worker(x: int) -> dict:
    """A cell computed in a worker: its value, the process and its torch threads."""
    if x < 0:
        raise ValueError(f"negative {x}")
    return {"square": x * x, "pid": os.getpid(), "threads": torch.get_num_threads()}


def test_run_all_computes_cells_in_worker_processes_in_order_and_reuses_them(tmp_path):
    jobs = [CellJob(f"c{x}", {"x": x}, square_in_a_worker, (x,)) for x in range(5)]
    cells = Cells(tmp_path)
    Cells(tmp_path).run("c1", {"x": 1}, lambda: square_in_a_worker(1))  # finished before: read back, not sent
    results = list(cells.run_all(jobs, workers=2, threads=1))
    assert [r["square"] for r in results] == [0, 1, 4, 9, 16]
    assert results[1]["pid"] == os.getpid()  # the finished cell, read back
    workers = {r["pid"] for i, r in enumerate(results) if i != 1}
    assert os.getpid() not in workers and 1 <= len(workers) <= 2
    assert all(r["threads"] == 1 for i, r in enumerate(results) if i != 1)
    assert [r.reused for r in cells.ledger] == [False, True, False, False, False]
    again = Cells(tmp_path)
    assert list(again.run_all(jobs, workers=2, threads=1)) == results and all(r.reused for r in again.ledger)


def test_run_all_raises_a_workers_error_in_turn_and_keeps_the_finished_cells(tmp_path):
    jobs = [CellJob(f"c{x}", {"x": x}, square_in_a_worker, (x,)) for x in (2, -1, 3)]
    results = Cells(tmp_path).run_all(jobs, workers=2, threads=1)
    assert next(results)["square"] == 4
    with pytest.raises(ValueError, match="negative -1"):
        next(results)
    assert not Cells(tmp_path, compute=False).run("c-1", {"x": -1}, lambda: None)
    assert Cells(tmp_path, compute=False).run("c2", {"x": 2}, lambda: None)["square"] == 4


def test_an_interrupted_artifact_is_retried_and_a_finished_one_loaded(tmp_path):
    store = Artifacts(tmp_path)

    def broken(folder):
        (folder / "half.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.get("model", {"seed": 0}, broken, lambda folder: "loaded")
    assert not store.path("model", {"seed": 0}).exists()  # only a temporary folder was left

    def make(folder):
        (folder / "w.txt").write_text("weights")
        return "made"

    assert store.get("model", {"seed": 0}, make, lambda folder: (folder / "w.txt").read_text()) == "made"
    assert store.get("model", {"seed": 0}, make, lambda folder: (folder / "w.txt").read_text()) == "weights"
    assert [r.reused for r in store.ledger] == [False, True]


def test_train_or_load_keeps_the_trained_weights(tmp_path):
    store = Artifacts(tmp_path)
    torch.manual_seed(0)

    def train(module):
        with torch.no_grad():
            module.weight.fill_(3.0)
        return {"steps": 7}

    trained, meta = train_or_load(store, "linear", {"dim": 2}, torch.nn.Linear(2, 1), train)
    loaded, meta_again = train_or_load(store, "linear", {"dim": 2}, torch.nn.Linear(2, 1),
                                       lambda m: pytest.fail("must not train again"))
    assert meta == meta_again == {"steps": 7} and not loaded.training
    torch.testing.assert_close(loaded.state_dict(), trained.state_dict())
