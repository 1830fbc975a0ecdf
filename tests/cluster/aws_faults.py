"""Loopback HTTP proxies in front of the local DynamoDB, S3 and SQS servers that answer a share
of the calls with the services' own throttling and 5xx errors: the AWS faults of issue 9.

`AwsFaultProxy(service, upstream_url)` forwards HTTP/1.1 requests (keep-alive, Content-Length or
chunked bodies, `Expect: 100-continue`) to the real server and, per request, may instead:

* reject it with one of the service's retryable errors — the request never reaches the
  server, as when the service's front end throttles or fails it:

  - DynamoDB (JSON 1.0): 400 ``ThrottlingException``, 400
    ``ProvisionedThroughputExceededException``, 500 ``InternalServerError`` (``__type``
    body, ``x-amz-crc32`` header, which botocore checks);
  - S3 (REST-XML): 503 ``SlowDown``, 500 ``InternalError`` (``<Error>`` body; none on HEAD);
  - SQS: botocore speaks SQS's JSON protocol (``awsQueryCompatible``), so 400
    ``RequestThrottled`` and 503 ``ServiceUnavailable`` come as a ``__type`` body plus the
    ``x-amzn-query-error: Code;Sender|Receiver`` header botocore reads the code from;

* or, for the batch calls, process only part of the batch and report the rest the way the
  service does (`partial`): DynamoDB ``BatchWriteItem`` → ``UnprocessedItems``,
  ``BatchGetItem`` → ``UnprocessedKeys``, SQS ``SendMessageBatch`` → ``Failed`` entries.

`rate` and `partial_rate` are fractions drawn from a seeded generator; `codes` limits which
errors are drawn (an outage: ``rate=1.0, codes=("InternalError",)``) and `operations` which
calls get them (DynamoDB throttling the single-item writes of hot keys:
``operations=("PutItem", "UpdateItem")``; S3 calls are named like "GET object", "PUT bucket");
`pass_first` lets that many targeted calls through before the faults begin.
Every proxy counts what it did per error code and how many requests were SDK retries (the
``amz-sdk-request: attempt=N`` header that botocore and the AWS C++ SDK under pyarrow send), so
a test can check that faults were injected and retried. The proxies of an `AwsFaults` group
share one event-loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

import orjson

_ATTEMPT = re.compile(r"attempt=(\d+)")


@dataclass(frozen=True)
class Fault:
    status: int
    code: str
    message: str
    sender: bool = False  # SQS's query-error type: Sender (client) or Receiver (server)


FAULTS: dict[str, tuple[Fault, ...]] = {
    "dynamodb": (
        Fault(
            400,
            "ThrottlingException",
            "Throughput exceeds the current capacity of your table or index. DynamoDB is "
            "automatically scaling your table or index so please try again shortly.",
        ),
        Fault(
            400,
            "ProvisionedThroughputExceededException",
            "The level of configured provisioned throughput for the table was exceeded. "
            "Consider increasing your provisioning level with the UpdateTable API.",
        ),
        Fault(500, "InternalServerError", "Internal server error"),
    ),
    "s3": (
        Fault(503, "SlowDown", "Please reduce your request rate."),
        Fault(500, "InternalError", "We encountered an internal error. Please try again."),
    ),
    "sqs": (
        Fault(400, "RequestThrottled", "The request was denied due to request throttling.", True),
        Fault(
            503,
            "ServiceUnavailable",
            "The request has failed due to a temporary failure of the server.",
        ),
    ),
}

_REASONS = {
    200: "OK",
    100: "Continue",
    400: "Bad Request",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass
class ProxyStats:
    requests: int = 0
    forwarded: int = 0
    retries: int = 0  # requests an SDK marked as a retry (attempt > 1)
    faults: Counter[str] = field(default_factory=Counter)  # error code → responses
    by_operation: Counter[str] = field(default_factory=Counter)  # operation → faults
    partial: int = 0  # batch calls answered in part
    withheld: int = 0  # batch entries reported unprocessed / failed

    @property
    def injected(self) -> int:
        return sum(self.faults.values())

    def copy(self) -> ProxyStats:
        return ProxyStats(
            self.requests,
            self.forwarded,
            self.retries,
            Counter(self.faults),
            Counter(self.by_operation),
            self.partial,
            self.withheld,
        )

    def describe(self) -> str:
        codes = ", ".join(f"{c} {n}" for c, n in sorted(self.faults.items())) or "none"
        return (
            f"{self.requests:,} requests, {self.injected:,} rejected ({codes}), "
            f"{self.partial} batches answered in part ({self.withheld} entries), "
            f"{self.retries:,} SDK retries seen"
        )


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes  # as received (chunked framing kept)
    chunked: bool

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def head_bytes(self, drop: tuple[str, ...] = ()) -> bytes:
        lines = [f"{self.method} {self.target} {self.version}"]
        lines += [f"{k}: {v}" for k, v in self.headers if k.lower() not in drop]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Closed(Exception):
    """The peer closed the connection between two requests."""


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]]:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise _Closed from None
        raise
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers.append((k.strip(), v.strip()))
    return lines[0], headers


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


async def _read_body(
    reader: asyncio.StreamReader, headers: list[tuple[str, str]], *, to_eof: bool
) -> tuple[bytes, bool]:
    """The body as framed on the wire (chunked framing kept), and whether it was chunked."""
    te = (_get(headers, "transfer-encoding") or "").lower()
    if "chunked" in te:
        parts = []
        while True:
            line = await reader.readuntil(b"\r\n")
            parts.append(line)
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while True:  # trailers, up to the empty line
                    trailer = await reader.readuntil(b"\r\n")
                    parts.append(trailer)
                    if trailer == b"\r\n":
                        return b"".join(parts), True
            parts.append(await reader.readexactly(size + 2))
    length = _get(headers, "content-length")
    if length is not None:
        return await reader.readexactly(int(length)), False
    if to_eof:
        return await reader.read(), False
    return b"", False


class AwsFaultProxy:
    """One service's fault-injecting reverse proxy (module docstring). Configure it from any
    thread with `configure`; read `stats` (a copy) at any time."""

    def __init__(self, service: str, upstream_url: str, *, seed: int = 0) -> None:
        if service not in FAULTS:
            raise ValueError(f"unknown service {service!r}")
        self.service = service
        up = urlsplit(upstream_url)
        self.upstream = (up.hostname or "127.0.0.1", up.port or 80)
        self.port = 0
        self.rate = 0.0
        self.partial_rate = 0.0
        self.codes: tuple[str, ...] | None = None
        self.operations: tuple[str, ...] | None = None
        self._pass_left = 0
        self._rng = random.Random(seed)
        self._stats = ProxyStats()
        self._lock = threading.Lock()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stats(self) -> ProxyStats:
        with self._lock:
            return self._stats.copy()

    def configure(
        self,
        rate: float = 0.0,
        partial_rate: float = 0.0,
        codes: tuple[str, ...] | None = None,
        operations: tuple[str, ...] | None = None,
        pass_first: int = 0,
    ) -> None:
        known = {f.code for f in FAULTS[self.service]}
        if codes is not None and not set(codes) <= known:
            raise ValueError(f"{self.service} faults are {sorted(known)}, not {codes}")
        with self._lock:
            self.rate, self.partial_rate = rate, partial_rate
            self.codes, self.operations = codes, operations
            self._pass_left = pass_first

    # -- serving ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    line, headers = await _read_head(reader)
                except _Closed:
                    return
                method, target, version = line.split(" ", 2)
                if (_get(headers, "expect") or "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await writer.drain()
                body, chunked = await _read_body(reader, headers, to_eof=False)
                req = _Request(method, target, version, headers, body, chunked)
                response, upstream, keep = await self._handle(req, upstream)
                writer.write(response)
                await writer.drain()
                closing = (req.header("connection") or "").lower() == "close"
                if closing or not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, OSError):
            return
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
            if upstream is not None:
                upstream[1].transport.abort()

    async def _handle(
        self,
        req: _Request,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
    ) -> tuple[bytes, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, bool]:
        operation = self._operation(req)
        with self._lock:
            self._stats.requests += 1
            m = _ATTEMPT.search(req.header("amz-sdk-request") or "")
            if m and int(m.group(1)) > 1:
                self._stats.retries += 1
            fault: Fault | None = None
            choices = [
                f for f in FAULTS[self.service] if self.codes is None or f.code in self.codes
            ]
            targeted = self.operations is None or operation in self.operations
            if targeted and self._pass_left > 0:
                self._pass_left -= 1
                targeted = False
            if choices and targeted and self._rng.random() < self.rate:
                fault = self._rng.choice(choices)
                self._stats.faults[fault.code] += 1
                self._stats.by_operation[operation] += 1
            partial = (
                fault is None
                and operation in _PARTIAL
                and not req.chunked
                and self._rng.random() < self.partial_rate
            )
            seed = self._rng.random()
        if fault is not None:
            return self._error(req, fault), upstream, True
        edit: _Edit | None = None
        if partial:
            edit = _PARTIAL[operation](orjson.loads(req.body), random.Random(seed))
            if edit is None:
                partial = False
            else:
                req = _with_body(req, orjson.dumps(edit.request))
        head, body, upstream, keep = await self._forward(req, upstream)
        with self._lock:
            self._stats.forwarded += 1
        if edit is not None:
            status = int(head.split(b" ", 2)[1])
            if status == 200 and b"content-encoding" not in head.lower():
                new_body = orjson.dumps(edit.merge(orjson.loads(body)))
                head = _reframe(head, new_body, self.service)
                body = new_body
                with self._lock:
                    self._stats.partial += 1
                    self._stats.withheld += edit.withheld
        return head + body, upstream, keep

    def _operation(self, req: _Request) -> str:
        target = req.header("x-amz-target")
        if target:
            return target.rsplit(".", 1)[-1]
        key = urlsplit(req.target).path.strip("/").partition("/")[2]
        return f"{req.method} {'object' if key else 'bucket'}"

    def _error(self, req: _Request, fault: Fault) -> bytes:
        request_id = uuid.uuid4().hex.upper()[:22]
        headers = [("Date", formatdate(usegmt=True))]
        if self.service == "s3":
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{fault.code}</Code><Message>{fault.message}</Message>"
                f"<RequestId>{request_id}</RequestId><HostId>{uuid.uuid4().hex}</HostId></Error>"
            ).encode()
            headers += [
                ("x-amz-request-id", request_id),
                ("x-amz-id-2", uuid.uuid4().hex),
                ("Content-Type", "application/xml"),
            ]
            if req.method == "HEAD":  # S3 answers HEAD errors with the status alone
                body = b""
        else:
            prefix = {
                "dynamodb": "com.amazonaws.dynamodb.v20120810",
                "sqs": "com.amazonaws.sqs",
            }[self.service]
            body = orjson.dumps({"__type": f"{prefix}#{fault.code}", "message": fault.message})
            headers += [
                ("x-amzn-RequestId", request_id),
                ("Content-Type", "application/x-amz-json-1.0"),
            ]
            if self.service == "dynamodb":
                headers.append(("x-amz-crc32", str(zlib.crc32(body))))
            else:
                kind = "Sender" if fault.sender else "Receiver"
                headers.append(("x-amzn-query-error", f"{fault.code};{kind}"))
        headers.append(("Content-Length", str(len(body))))
        status = f"HTTP/1.1 {fault.status} {_REASONS.get(fault.status, 'Error')}"
        head = "\r\n".join([status, *(f"{k}: {v}" for k, v in headers)]) + "\r\n\r\n"
        return head.encode("latin-1") + body

    async def _forward(
        self,
        req: _Request,
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
    ) -> tuple[bytes, bytes, tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, bool]:
        """Send `req` upstream (reusing the connection; a fresh one if the server had closed
        it while idle) and read the response: (head, body as framed, connection, keep-alive)."""
        data = req.head_bytes(drop=("expect",)) + req.body
        for fresh in (upstream is None, True):
            if fresh:
                if upstream is not None:
                    upstream[1].transport.abort()
                upstream = await asyncio.open_connection(*self.upstream)
            assert upstream is not None
            up_r, up_w = upstream
            try:
                up_w.write(data)
                await up_w.drain()
                while True:
                    line, headers = await _read_head(up_r)
                    status = int(line.split(" ", 2)[1])
                    if status >= 200:
                        break
                break
            except (_Closed, ConnectionError, asyncio.IncompleteReadError):
                if fresh:
                    raise
                continue
        no_body = req.method == "HEAD" or status in (204, 304)
        framed = (
            _get(headers, "content-length") is not None
            or "chunked" in (_get(headers, "transfer-encoding") or "").lower()
        )
        body = b""
        if not no_body:
            body, _ = await _read_body(up_r, headers, to_eof=not framed)
        keep = (
            (no_body or framed)
            and (_get(headers, "connection") or "").lower() != "close"
            and not line.startswith("HTTP/1.0")
        )
        if not keep:
            up_w.transport.abort()
            upstream = None
        head = ("\r\n".join([line, *(f"{k}: {v}" for k, v in headers)]) + "\r\n\r\n").encode(
            "latin-1"
        )
        if not keep and not framed and not no_body:
            # Read to EOF upstream: tell the client the length instead, and keep it open.
            head = _reframe(head, body, self.service, crc=False)
            keep = True
        return head, body, upstream, keep


# -- partial batch answers ----------------------------------------------------------------------


@dataclass
class _Edit:
    request: dict[str, Any]
    withheld: int
    unprocessed: dict[str, Any]
    kind: str  # the response member that reports what was withheld

    def merge(self, response: dict[str, Any]) -> dict[str, Any]:
        if self.kind == "Failed":
            response["Failed"] = [*response.get("Failed", []), *self.unprocessed["Failed"]]
            return response
        got = dict(response.get(self.kind) or {})
        for table, part in self.unprocessed.items():
            if self.kind == "UnprocessedKeys":
                have = got.get(table)
                got[table] = (
                    part if have is None else {**part, "Keys": [*have["Keys"], *part["Keys"]]}
                )
            else:
                got[table] = [*got.get(table, []), *part]
        response[self.kind] = got
        return response


def _split(items: list[Any], rng: random.Random) -> tuple[list[Any], list[Any]] | None:
    """Keep at least one item and withhold at least one (a batch of one is not split)."""
    if len(items) < 2:
        return None
    n = rng.randint(1, len(items) - 1)
    withheld = set(rng.sample(range(len(items)), n))
    keep = [x for i, x in enumerate(items) if i not in withheld]
    held = [x for i, x in enumerate(items) if i in withheld]
    return keep, held


def _batch_write(body: dict[str, Any], rng: random.Random) -> _Edit | None:
    items = body.get("RequestItems") or {}
    flat = [(t, r) for t, reqs in items.items() for r in reqs]
    split = _split(flat, rng)
    if split is None:
        return None
    keep, held = split
    request: dict[str, list[Any]] = {}
    for t, r in keep:
        request.setdefault(t, []).append(r)
    unprocessed: dict[str, list[Any]] = {}
    for t, r in held:
        unprocessed.setdefault(t, []).append(r)
    return _Edit({**body, "RequestItems": request}, len(held), unprocessed, "UnprocessedItems")


def _batch_get(body: dict[str, Any], rng: random.Random) -> _Edit | None:
    items = body.get("RequestItems") or {}
    flat = [(t, k) for t, spec in items.items() for k in spec.get("Keys", [])]
    split = _split(flat, rng)
    if split is None:
        return None
    keep, held = split
    request: dict[str, Any] = {}
    for t, k in keep:
        request.setdefault(t, {**items[t], "Keys": []})["Keys"].append(k)
    unprocessed: dict[str, Any] = {}
    for t, k in held:
        unprocessed.setdefault(t, {**items[t], "Keys": []})["Keys"].append(k)
    return _Edit({**body, "RequestItems": request}, len(held), unprocessed, "UnprocessedKeys")


def _send_batch(body: dict[str, Any], rng: random.Random) -> _Edit | None:
    split = _split(list(body.get("Entries") or []), rng)
    if split is None:
        return None
    keep, held = split
    failed = [
        {
            "Id": e["Id"],
            "SenderFault": False,
            "Code": "InternalError",
            "Message": "The request processing has failed because of an unknown error.",
        }
        for e in held
    ]
    return _Edit({**body, "Entries": keep}, len(held), {"Failed": failed}, "Failed")


_PARTIAL = {
    "BatchWriteItem": _batch_write,
    "BatchGetItem": _batch_get,
    "SendMessageBatch": _send_batch,
}


def _with_body(req: _Request, body: bytes) -> _Request:
    headers = [(k, v) for k, v in req.headers if k.lower() != "content-length"]
    headers.append(("Content-Length", str(len(body))))
    return _Request(req.method, req.target, req.version, headers, body, False)


def _reframe(head: bytes, body: bytes, service: str, *, crc: bool = True) -> bytes:
    """A response head for `body` sent with a Content-Length (and DynamoDB's CRC32 of it)."""
    lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    drop = {"content-length", "transfer-encoding", "connection"}
    if crc and service == "dynamodb":
        drop.add("x-amz-crc32")
    kept = [lines[0], *(ln for ln in lines[1:] if ln.split(":", 1)[0].strip().lower() not in drop)]
    kept.append(f"Content-Length: {len(body)}")
    if crc and service == "dynamodb":
        kept.append(f"x-amz-crc32: {zlib.crc32(body)}")
    return ("\r\n".join(kept) + "\r\n\r\n").encode("latin-1")


# -- a group of proxies on one loop thread -------------------------------------------------------


class AwsFaults:
    """The three proxies, served from one background event loop:

    with AwsFaults({"dynamodb": url, "s3": url, "sqs": url}) as faults:
        faults["s3"].configure(rate=0.25)
        env = faults.env()   # TRADEPULSE_*_ENDPOINT pointing at the proxies
    """

    def __init__(self, upstreams: Mapping[str, str], *, seed: int = 9) -> None:
        self.proxies = {
            svc: AwsFaultProxy(svc, url, seed=seed + i)
            for i, (svc, url) in enumerate(upstreams.items())
        }
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="aws-faults")

    def __getitem__(self, service: str) -> AwsFaultProxy:
        return self.proxies[service]

    def __iter__(self) -> Iterator[AwsFaultProxy]:
        return iter(self.proxies.values())

    def __enter__(self) -> AwsFaults:
        self._thread.start()
        for p in self.proxies.values():
            asyncio.run_coroutine_threadsafe(p.start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.proxies.values():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(p.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def env(self) -> dict[str, str]:
        return {f"TRADEPULSE_{svc.upper()}_ENDPOINT": p.url for svc, p in self.proxies.items()}

    def configure_all(self, rate: float = 0.0, partial_rate: float = 0.0) -> None:
        for p in self.proxies.values():
            p.configure(rate, partial_rate)

    def describe(self) -> str:
        return "\n".join(f"  {svc:<8} {p.stats.describe()}" for svc, p in self.proxies.items())


def wait_for_faults(proxy: AwsFaultProxy, at_least: int, timeout_s: float) -> None:
    """Until `proxy` has rejected `at_least` more requests than now."""
    start = proxy.stats.injected
    deadline = time.monotonic() + timeout_s
    while proxy.stats.injected - start < at_least:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{proxy.service}: fewer than {at_least} faults injected in {timeout_s:.0f} s"
            )
        time.sleep(0.2)
