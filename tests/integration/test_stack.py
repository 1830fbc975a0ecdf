"""`tradepulse.ops.stack` process handling, on the one engine that needs no Java (dynalite on
Node): fetch, start, reuse, status, stop by pid, and loud failures with the log's tail."""

from __future__ import annotations

import re
import shutil
import socket
import sys
from pathlib import Path

import boto3
import psutil
import pytest

from tradepulse.config import load_settings
from tradepulse.ops.stack import (
    MAVEN_DEPENDENCIES,
    NPM_PACKAGES,
    Stack,
    StackError,
    cache_dir,
    endpoints,
    kafka_cluster_id,
    parse_services,
)

# Read before `clean_env` drops TRADEPULSE_STACK_CACHE: the lifecycle test installs dynalite
# where `tradepulse stack up` would, once, instead of into every test's temporary directory.
CACHE = cache_dir()


def test_parse_services_keeps_canonical_order_and_rejects_unknown() -> None:
    assert parse_services(None) == ["kafka", "dynamodb", "sqs", "s3"]
    assert parse_services("s3, kafka") == ["kafka", "s3"]
    assert parse_services("all") == ["kafka", "dynamodb", "sqs", "s3"]
    with pytest.raises(ValueError, match="bogus"):
        parse_services("kafka,bogus")


def test_endpoints_follow_settings(clean_env: None) -> None:
    s = load_settings(kafka_bootstrap="127.0.0.1:29092", sqs_endpoint="http://localhost:29002/")
    eps = endpoints(s, ["kafka", "sqs"])
    assert (eps["kafka"].port, eps["kafka"].url) == (29092, "127.0.0.1:29092")
    assert (eps["sqs"].host, eps["sqs"].port, eps["sqs"].url) == (
        "localhost",
        29002,
        "http://localhost:29002",
    )


def test_cluster_id_is_22_char_urlsafe_base64() -> None:
    for _ in range(50):
        cid = kafka_cluster_id()
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cid)


def test_pom_names_the_pinned_coordinates(tmp_path: Path, clean_env: None) -> None:
    stack = Stack(load_settings(), cache=tmp_path, state=tmp_path / "run")
    for service, coords in MAVEN_DEPENDENCIES.items():
        pom = stack._pom(service)
        for coord in coords:
            g, a, v = coord.split(":")
            assert f"<groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}" in pom
        assert not stack.fetched(service)


def test_refuses_remote_endpoints(tmp_path: Path, clean_env: None) -> None:
    s = load_settings(dynamodb_endpoint="https://dynamodb.us-east-1.amazonaws.com")
    with pytest.raises(StackError, match="not on this machine"):
        Stack(s, cache=tmp_path, state=tmp_path / "run").up(["dynamodb"])


def test_npm_fetch_is_stamped_with_the_pinned_package(tmp_path: Path, clean_env: None) -> None:
    stack = Stack(load_settings(), cache=tmp_path, state=tmp_path / "run")
    assert NPM_PACKAGES["dynamodb"].startswith("dynalite@")
    assert not stack.fetched("dynamodb")
    cli = stack.dynalite_cli()
    cli.parent.mkdir(parents=True)
    cli.write_text("")
    stamp = tmp_path / "dynamodb" / ".complete"
    stamp.write_text("dynalite@0.0.1")  # an older pin: must be fetched again
    assert not stack.fetched("dynamodb")
    stamp.write_text(NPM_PACKAGES["dynamodb"])
    assert stack.fetched("dynamodb")


def test_dynalite_lifecycle_start_reuse_stop(tmp_path: Path, port: int, clean_env: None) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("the dynamodb service needs Node.js and npm on PATH")
    s = load_settings(dynamodb_endpoint=f"http://127.0.0.1:{port}")
    stack = Stack(s, cache=CACHE, state=tmp_path / "run")
    try:
        first = stack.up(["dynamodb"])[0]
        assert first.started and first.state == "healthy" and first.pid
        assert stack.fetched("dynamodb")
        again = stack.up(["dynamodb"])[0]
        assert not again.started and again.pid == first.pid
        st = stack.status(["dynamodb"])[0]
        assert st.healthy and st.pid == first.pid
        assert stack.log_path("dynamodb").exists()
        # A real server, on loopback only: a table round-trips an item.
        client = boto3.client(
            "dynamodb",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        client.create_table(
            TableName="probe",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        client.put_item(TableName="probe", Item={"pk": {"S": "a"}, "v": {"N": "1"}})
        got = client.get_item(TableName="probe", Key={"pk": {"S": "a"}}, ConsistentRead=True)
        assert got["Item"]["v"] == {"N": "1"}
        client.close()
        listening = {
            c.laddr.ip
            for c in psutil.Process(first.pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening == {"127.0.0.1"}
    finally:
        assert stack.down(["dynamodb"]) == ["dynamodb"]
    assert stack.status(["dynamodb"])[0].state == "stopped"
    assert stack.down(["dynamodb"]) == []


def test_port_taken_by_a_stranger_fails_clearly(tmp_path: Path, port: int, clean_env: None) -> None:
    s = load_settings(sqs_endpoint=f"http://127.0.0.1:{port}")
    stack = Stack(s, cache=tmp_path, state=tmp_path / "run")
    (tmp_path / "sqs" / "lib").mkdir(parents=True)
    (tmp_path / "sqs" / "lib" / ".complete").write_text(stack._pom_digest("sqs"))
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(StackError, match=f"port {port} is taken"):
            stack.up(["sqs"], timeout_s=3)


def test_crash_at_start_reports_the_log_tail(
    tmp_path: Path, port: int, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = load_settings(dynamodb_endpoint=f"http://127.0.0.1:{port}")
    stack = Stack(s, cache=tmp_path, state=tmp_path / "run")
    monkeypatch.setattr(stack, "fetch", lambda _svc: None)
    monkeypatch.setattr(
        stack,
        "command",
        lambda _svc: [
            sys.executable,
            "-c",
            "print('boom: no such table space'); raise SystemExit(3)",
        ],
    )
    (tmp_path / "run" / "dynamodb").mkdir(parents=True)
    with pytest.raises(StackError, match=r"exited during start-up(?s:.*)boom: no such table space"):
        stack.up(["dynamodb"], timeout_s=10)
