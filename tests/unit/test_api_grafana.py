"""The Grafana dashboard charts only metrics that exist, and charts every one of them."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from pathlib import Path

import pytest

import tradepulse
from tradepulse.ops.metrics import REGISTRY

# Modules register their metrics when imported; import them all so the check does not depend
# on which tests ran first.
for _mod in pkgutil.walk_packages(tradepulse.__path__, "tradepulse."):
    if not _mod.name.endswith("__main__"):
        importlib.import_module(_mod.name)

pytestmark = pytest.mark.unit

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "tradepulse.json"
SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def _base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_dashboard_queries_match_the_registry() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {_base(m) for e in exprs for m in re.findall(r"\btradepulse_[a-z0-9_]+", e)}
    # Metrics other modules add to the registry later are welcome but need not be charted here.
    core = {
        m.name
        for m in REGISTRY.collect()
        if m.name.startswith("tradepulse_") and "partial_join" not in m.name
    }
    assert used <= {_base(m.name) for m in REGISTRY.collect()}, used - core
    assert core <= used, core - used
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
