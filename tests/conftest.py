"""Shared fixtures: the data root (tests needing it skip with a reason when it is absent)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def data_root():
    """``../shared/data`` (or $MEDAD_DATA_ROOT); skips the test when it is absent."""
    from medad.config import data_root as _root

    root = _root(required=False)
    if root is None:
        pytest.skip("real data not found: set MEDAD_DATA_ROOT or place it at ../shared/data")
    return root


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # the CI machine has 2 cores; keep torch from oversubscribing them
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield
