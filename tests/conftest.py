"""Shared fixtures: the shared data root and one torch thread (the test machine is shared)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by CLI subprocesses too

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Run every test on one torch thread; quiet Lightning's per-fit banner."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data root (../shared/data next to the repository); skip when it is absent."""
    if not (SHARED_DATA / "ett" / "ETTh1.csv").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
