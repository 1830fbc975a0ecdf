"""Fixtures of the fault-injection suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fault_harness import reap


@pytest.fixture(autouse=True)
def _no_orphans() -> Iterator[None]:
    """No `tradepulse` child outlives its test, whatever the test did before failing."""
    yield
    reap()
