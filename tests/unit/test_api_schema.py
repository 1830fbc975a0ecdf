"""Fuzz the API against its own OpenAPI schema: no 5xx, every response matches the schema.

Bounded (a few dozen examples per operation) so it runs in seconds. /stream is excluded:
it never ends, and is covered by test_api_parts and the browser test.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from test_api_endpoints import seeded_reader

from tradepulse.api.app import create_app
from tradepulse.api.stream import Broadcaster
from tradepulse.config import Settings
from tradepulse.ops.health import HealthMonitor

pytestmark = pytest.mark.unit
# Keys on, so schemathesis also checks that requests without (or with a wrong) key are refused.
API_KEY = "fuzz-key"


def _app():  # type: ignore[no-untyped-def]
    cfg = Settings(
        tickers=["AAPL", "MSFT"],
        rate_limit_per_min=1_000_000,
        api_keys=[API_KEY],
        _env_file=None,  # type: ignore[call-arg]
    )
    reader = seeded_reader()
    return create_app(cfg, reader, HealthMonitor(), Broadcaster(), lambda sql: [])


schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.exclude(path="/stream").parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms_to_its_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(headers={"X-API-Key": API_KEY})
