"""Shared test setup: import path, single-threaded torch, marker registration."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The machine is shared with long benchmark runs: never use more than one thread.
torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: slow end-to-end tests (deselect with -m 'not integration')")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with the most integration tests run first. `make test` deals whole files to one worker
    per core (xdist --dist loadfile --no-loadscope-reorder); a slow file dealt last would leave the
    other workers idle until it ends. The sort is stable: each file's tests keep their order."""
    slow = Counter(item.path for item in items if item.get_closest_marker("integration"))
    items.sort(key=lambda item: -slow[item.path])


@pytest.fixture(autouse=True)
def _single_thread():
    torch.set_num_threads(1)
    yield
