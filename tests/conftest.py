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


def require_shared_data(root: Path = SHARED_DATA) -> Path:
    """`root` when it holds the shared data; otherwise skip, or fail when the environment says CI=true.

    CI runs on a clean clone with ../shared beside it: data missing there is a broken path, and a
    skip would hide it. Local users without the data still get a skip.
    """
    if (root / "ett" / "ETTh1.csv").is_file():
        return root
    reason = f"shared data not found at {root}"
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{reason} (CI=true: the shared data must be present, not skipped)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data root (../shared/data next to the repository): skip when absent, fail under CI=true."""
    return require_shared_data(SHARED_DATA)
