"""A scripted Finnhub on 127.0.0.1, serving from a thread so it works for a `tradepulse`
child process and for an in-process run alike (and a hanging reply blocks nobody else)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"[]"
    headers: dict[str, str] = field(default_factory=dict)
    hang_s: float = 0.0  # sleep before answering: longer than the client's timeout = timeout


@dataclass
class Seen:
    at: float  # monotonic
    ticker: str
    target: str
    headers: dict[str, str]


def article(ticker: str, ident: int, published_s: int) -> dict[str, Any]:
    return {
        "category": "company",
        "datetime": published_s,
        "headline": f"{ticker} beats estimates, shares jump ({ident})",
        "id": ident,
        "image": "",
        "related": ticker,
        "source": "Wire",
        "summary": f"{ticker} summary {ident}",
        "url": f"https://news.invalid/{ticker}/{ident}",
    }


class FakeFinnhub:
    """`GET /api/v1/company-news`: `script(n, ticker)` answers request number n (from 0).
    `served` maps the (ticker, id) of every valid article sent in a 200 JSON list to when it
    was first sent (monotonic)."""

    def __init__(self, script: Callable[[int, str], Reply]) -> None:
        self.script = script
        self.requests: list[Seen] = []
        self.served: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                ticker = parse_qs(parts.query).get("symbol", [""])[0]
                with fake._lock:
                    n = len(fake.requests)
                    fake.requests.append(
                        Seen(time.monotonic(), ticker, self.path, dict(self.headers.items()))
                    )
                reply = (
                    fake.script(n, ticker)
                    if parts.path == "/api/v1/company-news"
                    else Reply(404, b'{"error": "not found"}')
                )
                if reply.hang_s:
                    time.sleep(reply.hang_s)
                fake._note_served(reply, ticker)
                try:
                    self.send_response(reply.status)
                    for k, v in {"Content-Type": "application/json", **reply.headers}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): that is the point of a hang

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/v1"

    def _note_served(self, reply: Reply, ticker: str) -> None:
        if reply.status != 200:
            return
        try:
            items = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            return
        if not isinstance(items, list):
            return
        with self._lock:
            for it in items:
                if isinstance(it, dict) and it.get("headline") and isinstance(it.get("id"), int):
                    self.served.setdefault((ticker, str(it["id"])), time.monotonic())

    def __enter__(self) -> FakeFinnhub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
