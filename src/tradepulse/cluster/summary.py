"""Each cluster process leaves a one-line JSON summary of its run under `<data>/cluster/`, so
`tradepulse run --backend cluster` can report what its children did without parsing logs."""

from __future__ import annotations

import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import orjson

from tradepulse.config import Settings


def summary_path(settings: Settings, name: str) -> Path:
    return settings.data_dir / "cluster" / f"{name}.json"


def write_summary(settings: Settings, name: str, summary: Any) -> None:
    data = asdict(summary) if is_dataclass(summary) and not isinstance(summary, type) else summary
    path = summary_path(settings, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(data))
    os.replace(tmp, path)


def read_summary(settings: Settings, name: str) -> dict[str, Any] | None:
    try:
        data = orjson.loads(summary_path(settings, name).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None
