"""Shared test fixtures. Tests are marked by folder (unit, integration, e2e, fault, cluster)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

_FOLDER_MARKS = {
    "unit": "unit",
    "integration": "integration",
    "e2e": "e2e",
    "fault": "fault",
    "cluster": "cluster",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for folder, mark in _FOLDER_MARKS.items():
            if folder in parts:
                item.add_marker(getattr(pytest.mark, mark))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Settings read the environment: keep a developer's TRADEPULSE_* / keys out of tests."""
    for key in list(os.environ):
        if key.startswith("TRADEPULSE_") or key in {"POLYGON_API_KEY", "FINNHUB_API_KEY"}:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)  # and away from any `.env` in the working tree
    yield
