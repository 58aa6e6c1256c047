"""Shared test setup: import path, single-threaded torch, marker registration."""
from __future__ import annotations

import sys
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


@pytest.fixture(autouse=True)
def _single_thread():
    torch.set_num_threads(1)
    yield
