"""`tradepulse.ops.stack` process handling, on the one engine that needs no Java (moto server):
start, reuse, status, stop by pid, and loud failures with the log's tail."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

import pytest

from tradepulse.config import load_settings
from tradepulse.ops.stack import (
    MAVEN_DEPENDENCIES,
    Stack,
    StackError,
    endpoints,
    kafka_cluster_id,
    parse_services,
)


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


def test_moto_lifecycle_start_reuse_stop(tmp_path: Path, port: int, clean_env: None) -> None:
    pytest.importorskip("moto.server", reason="needs moto[server]")
    s = load_settings(dynamodb_endpoint=f"http://127.0.0.1:{port}")
    stack = Stack(s, cache=tmp_path, state=tmp_path / "run")
    try:
        first = stack.up(["dynamodb"])[0]
        assert first.started and first.state == "healthy" and first.pid
        again = stack.up(["dynamodb"])[0]
        assert not again.started and again.pid == first.pid
        st = stack.status(["dynamodb"])[0]
        assert st.healthy and st.pid == first.pid
        assert stack.log_path("dynamodb").exists()
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
    monkeypatch.setattr(stack, "_check_moto", lambda: None)
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
