"""The real engines for `tests/cluster`: one stack per session, shared with `tradepulse stack up`.

Endpoints come from the settings, so TRADEPULSE_KAFKA_BOOTSTRAP, TRADEPULSE_DYNAMODB_ENDPOINT,
TRADEPULSE_SQS_ENDPOINT and TRADEPULSE_S3_ENDPOINT point the tests at servers someone else runs
(then nothing is started or stopped here; they must be healthy). On loopback endpoints the
fixture starts whatever is not running and, at the end, stops only what it started, so a stack
brought up by hand survives the test run. TRADEPULSE_STACK_KEEP=1 keeps what the fixture started.
These tests never skip: an engine that cannot start fails the session loudly.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tradepulse.config import Settings, load_settings
from tradepulse.ops.stack import SERVICES, Stack, StackError, endpoints, format_status, probe


def _echo(line: str) -> None:
    print(f"[stack] {line}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def cluster_settings() -> Iterator[Settings]:
    settings = load_settings(backend="cluster")
    eps = endpoints(settings, SERVICES)
    if not all(ep.local for ep in eps.values()):
        bad = []
        for svc, ep in eps.items():
            ok, detail = probe(svc, ep, timeout_s=10.0)
            if not ok:
                bad.append(f"{svc} at {ep.url}: {detail}")
        if bad:
            pytest.fail("cluster endpoints from the environment are not healthy: " + "; ".join(bad))
        yield settings
        return
    stack = Stack(settings, echo=_echo)
    try:
        statuses = stack.up(SERVICES)
    except StackError as exc:
        pytest.fail(f"could not start the local stack:\n{exc}", pytrace=False)
    _echo("\n" + format_status(statuses))
    started = [st.service for st in statuses if st.started]
    try:
        yield settings
    finally:
        if started and os.environ.get("TRADEPULSE_STACK_KEEP") != "1":
            stack.down(started)


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Per-test names, so reruns against a long-lived stack never see each other's leftovers."""
    run = uuid.uuid4().hex[:8]
    return lambda base: f"tp-test-{base}-{run}"


@pytest.fixture(scope="session")
def aws_kwargs(cluster_settings: Settings) -> Callable[[str], dict[str, Any]]:
    """boto3 client arguments per service; dummy credentials for the local servers only."""
    eps = endpoints(cluster_settings, SERVICES)

    def kwargs(service: str) -> dict[str, Any]:
        ep = eps[service]
        out: dict[str, Any] = {"endpoint_url": ep.url, "region_name": cluster_settings.aws_region}
        if ep.local:
            out |= {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
        return out

    return kwargs
