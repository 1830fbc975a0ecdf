"""`tradepulse stack`: the real engines of the cluster backend, fetched and run on loopback.

  kafka     Apache Kafka, KRaft single node (broker + controller), jars from Maven Central
  sqs       ElasticMQ, jars from Maven Central
  s3        s3proxy (filesystem backend), jars from Maven Central
  dynamodb  dynalite (MIT), a standalone DynamoDB server on LevelDB, from npm, run with Node.
            DynamoDB Local is not fetched: its licence is the vendor's own terms, not an open
            source one. moto's server, used before, is a mock library: about half dynalite's
            write rate here and an RSS that grows to gigabytes over a test session. dynalite
            lacks UpdateTimeToLive (the hot store copes, see store/hot/dynamodb.py) and
            transactions (unused). TRADEPULSE_DYNAMODB_ENGINE=moto still runs moto's server.

Jars land in a cache outside the repository (TRADEPULSE_STACK_CACHE, default
~/.cache/tradepulse/stack), fetched once by Maven's dependency plugin into a private local
repository there, so deleting the cache really starts from nothing; npm installs dynalite there
the same way, once. Runtime state (pid files, logs, Kafka's log dirs, s3proxy's objects) lives
under TRADEPULSE_STACK_DIR (default <cache>/run). Every engine runs in its own session/process
group with a pid file and is stopped by that pid only. Ports come from Settings; the Kafka
controller listens on the broker port + 1.

ElasticMQ and dynalite (like moto) keep their data in memory: restarting them empties queues
and tables.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import httpx
import psutil

from tradepulse.config import Settings

SERVICES: tuple[str, ...] = ("kafka", "dynamodb", "sqs", "s3")
LOOPBACK = "127.0.0.1"

KAFKA_VERSION = "4.1.2"
LOG4J_VERSION = "2.26.1"
# Kafka's POM drags in slf4j-api 1.7, which cannot see the slf4j2 binding: Kafka would log nothing.
SLF4J_VERSION = "2.0.17"
ELASTICMQ_VERSION = "1.7.1"
S3PROXY_VERSION = "4.1.0"
# s3proxy 4.1.0 uses Jackson 3, which needs jackson-annotations 2.22, but Maven's nearest-wins
# picks 2.18 from jclouds and the server dies with ClassNotFoundException at start.
JACKSON_ANNOTATIONS_VERSION = "2.22"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.7.1"
DYNALITE_VERSION = "4.0.0"
NPM_PACKAGES: dict[str, str] = {"dynamodb": f"dynalite@{DYNALITE_VERSION}"}
DYNAMODB_ENGINES = ("dynalite", "moto")
# dynalite's own cli.js, except for one thing: dynalite 4.0.0 rethrows a request's error from
# inside its handler, so a client that dies mid-request (a SIGKILLed processor: ECONNRESET,
# "aborted") takes the whole server down with an uncaught exception. That request never
# reached its end, or its client is gone, so dropping the error loses nothing. Tables become
# ACTIVE at once (the 500 ms default only slows every set-up); no `path`: in memory. The host
# is always given: without one dynalite listens on every interface.
DYNALITE_LAUNCHER = """'use strict'
const [dir, host, port] = process.argv.slice(2)
const opts = { createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 }
const server = require(dir + '/index.js')(opts)
server.prependListener('request', (req) => {
  const emit = req.emit
  req.emit = function (event, ...args) {
    if (event === 'error' && args[0] && args[0].code === 'ECONNRESET') return false
    return emit.call(this, event, ...args)
  }
})
server.listen(Number(port), host, () => {
  console.log('Dynalite listening at: http://%s:%s', host, port)
})
"""

MAVEN_DEPENDENCIES: dict[str, tuple[str, ...]] = {
    "kafka": (
        f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}",
        f"org.apache.logging.log4j:log4j-slf4j2-impl:{LOG4J_VERSION}",
        f"org.apache.logging.log4j:log4j-core:{LOG4J_VERSION}",
        f"org.slf4j:slf4j-api:{SLF4J_VERSION}",
    ),
    "sqs": (f"org.elasticmq:elasticmq-server_2.13:{ELASTICMQ_VERSION}",),
    "s3": (
        f"org.gaul:s3proxy:{S3PROXY_VERSION}",
        f"com.fasterxml.jackson.core:jackson-annotations:{JACKSON_ANNOTATIONS_VERSION}",
    ),
}

START_TIMEOUT_S: dict[str, float] = {"kafka": 120.0, "dynamodb": 30.0, "sqs": 60.0, "s3": 60.0}
# Kafka's controlled shutdown flushes logs and the metadata snapshot; give it time before KILL.
STOP_GRACE_S: dict[str, float] = {"kafka": 30.0, "dynamodb": 5.0, "sqs": 10.0, "s3": 10.0}

Echo = Callable[[str], None]
State = Literal["healthy", "unhealthy", "stopped", "external"]


class StackError(RuntimeError):
    """A service could not be fetched, configured or started; the message says why."""


def cache_dir() -> Path:
    env = os.environ.get("TRADEPULSE_STACK_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tradepulse" / "stack"


def dynamodb_engine() -> str:
    """The server behind the `dynamodb` service: dynalite, or moto when asked for by name."""
    name = os.environ.get("TRADEPULSE_DYNAMODB_ENGINE", "dynalite").strip().lower() or "dynalite"
    if name not in DYNAMODB_ENGINES:
        raise StackError(
            f"TRADEPULSE_DYNAMODB_ENGINE={name!r}; known: {', '.join(DYNAMODB_ENGINES)}"
        )
    return name


def state_dir() -> Path:
    env = os.environ.get("TRADEPULSE_STACK_DIR")
    return Path(env).expanduser() if env else cache_dir() / "run"


def parse_services(text: str | Iterable[str] | None) -> list[str]:
    """`kafka,sqs` → ["kafka", "sqs"] in canonical order; None/"all" → every service."""
    if text is None:
        return list(SERVICES)
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = {p.strip().lower() for p in parts if p.strip()}
    if not names or names == {"all"}:
        return list(SERVICES)
    unknown = sorted(names - set(SERVICES))
    if unknown:
        raise ValueError(f"unknown service(s) {', '.join(unknown)}; known: {', '.join(SERVICES)}")
    return [s for s in SERVICES if s in names]


def _host_port(address: str, what: str) -> tuple[str, int]:
    if "://" in address:
        parts = urlsplit(address)
        host = parts.hostname
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    else:
        host, _, port_s = address.split(",")[0].strip().rpartition(":")
        port = int(port_s) if port_s.isdigit() else None
    if not host or port is None:
        raise StackError(f"{what} {address!r} has no host:port")
    return host, port


def _is_loopback(host: str) -> bool:
    return host in {"127.0.0.1", "localhost", "::1"}


def _port_open(port: int, host: str = LOOPBACK, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def kafka_cluster_id() -> str:
    """22-character URL-safe base64 of a random UUID, as Kafka's own tools make them."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):  # the storage tool would parse it as an option
            return cid


@dataclass(frozen=True)
class Endpoint:
    service: str
    host: str
    port: int
    url: str  # what clients use: host:port for Kafka, http://host:port for the others

    @property
    def local(self) -> bool:
        return _is_loopback(self.host)


def endpoints(settings: Settings, services: Sequence[str] = SERVICES) -> dict[str, Endpoint]:
    out: dict[str, Endpoint] = {}
    for svc in services:
        if svc == "kafka":
            host, port = _host_port(settings.kafka_bootstrap, "kafka_bootstrap")
            out[svc] = Endpoint(svc, host, port, f"{host}:{port}")
            continue
        url = {
            "dynamodb": settings.dynamodb_endpoint,
            "sqs": settings.sqs_endpoint,
            "s3": settings.s3_endpoint,
        }[svc]
        if not url:
            raise StackError(f"{svc}_endpoint is not set (that means real AWS): nothing to run")
        host, port = _host_port(url, f"{svc}_endpoint")
        out[svc] = Endpoint(svc, host, port, url.rstrip("/"))
    return out


@dataclass
class ServiceStatus:
    service: str
    endpoint: str
    state: State
    pid: int | None = None
    detail: str = ""
    started: bool = False  # True when this call started it (not reused)
    rss_mb: float | None = None

    @property
    def healthy(self) -> bool:
        return self.state in {"healthy", "external"}

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "healthy": self.healthy}


@dataclass
class _Pid:
    pid: int
    create_time: float
    port: int
    argv: list[str] = field(default_factory=list)


def probe(service: str, ep: Endpoint, timeout_s: float = 3.0) -> tuple[bool, str]:
    """One probe: Kafka answers a metadata request, the HTTP servers answer any request."""
    if service == "kafka":
        if ep.local and not _port_open(ep.port, ep.host):
            return False, "port closed"
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": ep.url, "socket.timeout.ms": 2000})
        try:
            md = admin.list_topics(timeout=timeout_s)
        except Exception as exc:
            return False, f"metadata request failed: {exc}"
        if not md.brokers:
            return False, "no brokers in metadata"
        return True, f"{len(md.brokers)} broker(s), {len(md.topics)} topic(s)"
    # A request without a valid signature still gets an HTTP answer from a live server; only a
    # connection error or a 5xx means it is not serving.
    probe = {
        "dynamodb": ("POST", "/", {"X-Amz-Target": "DynamoDB_20120810.ListTables"}, b"{}"),
        "sqs": ("GET", "/?Action=ListQueues", {}, b""),
        "s3": ("GET", "/", {}, b""),
    }[service]
    method, path, headers, body = probe
    headers = {**headers, "Content-Type": "application/x-amz-json-1.0"} if body else headers
    try:
        resp = httpx.request(
            method, ep.url + path, headers=headers, content=body or None, timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    if resp.status_code >= 500:
        return False, f"HTTP {resp.status_code}"
    return True, f"HTTP {resp.status_code}"


def _tail(path: Path, n: int) -> list[str]:
    if not path.exists():
        return []
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 256 * 1024))
        lines = fh.read().decode("utf-8", "replace").splitlines()
    return lines[-n:] if n > 0 else []


class Stack:
    """Fetch, start, probe and stop the local engines. Safe to call repeatedly."""

    def __init__(
        self,
        settings: Settings,
        *,
        cache: Path | None = None,
        state: Path | None = None,
        echo: Echo | None = None,
        java: str | None = None,
        mvn: str | None = None,
        node: str | None = None,
        npm: str | None = None,
        dynamodb_engine: str | None = None,
    ) -> None:
        self.settings = settings
        self.cache = (cache or cache_dir()).resolve()
        self.state = (state or state_dir()).resolve()
        self.echo: Echo = echo or (lambda _line: None)
        self._java = java
        self._mvn = mvn
        self._node = node
        self._npm = npm
        self._engine = dynamodb_engine

    # -- paths ------------------------------------------------------------------------------
    def service_dir(self, service: str) -> Path:
        return self.state / service

    def log_path(self, service: str) -> Path:
        return self.service_dir(service) / f"{service}.log"

    def _pid_path(self, service: str) -> Path:
        return self.service_dir(service) / "pid.json"

    def lib_dir(self, service: str) -> Path:
        return self.cache / service / "lib"

    def endpoints(self, services: Sequence[str] = SERVICES) -> dict[str, Endpoint]:
        return endpoints(self.settings, services)

    # -- tools --------------------------------------------------------------------------------
    def _tool(self, name: str, given: str | None) -> str:
        found = given or shutil.which(name)
        if not found:
            raise StackError(
                f"`{name}` not found on PATH: the stack needs Java 17+ and Maven (Kafka, SQS, "
                "S3) and Node.js 18+ with npm (DynamoDB)"
            )
        return found

    def _dynamodb_engine(self) -> str:
        return self._engine or dynamodb_engine()

    # -- fetch ----------------------------------------------------------------------------------
    def _pom(self, service: str) -> str:
        deps = []
        for coord in MAVEN_DEPENDENCIES[service]:
            g, a, v = coord.split(":")
            deps.append(
                f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
                f"<version>{v}</version></dependency>"
            )
        return (
            '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
            "  <modelVersion>4.0.0</modelVersion>\n"
            f"  <groupId>tradepulse.stack</groupId><artifactId>{service}</artifactId>\n"
            "  <version>1</version><packaging>pom</packaging>\n"
            "  <dependencies>\n" + "\n".join(deps) + "\n  </dependencies>\n</project>\n"
        )

    def fetched(self, service: str) -> bool:
        if service in NPM_PACKAGES:
            if self._dynamodb_engine() != "dynalite":
                return True
            stamp = self.cache / service / ".complete"
            return (
                stamp.exists()
                and stamp.read_text() == NPM_PACKAGES[service]
                and self.dynalite_cli().exists()
            )
        if service not in MAVEN_DEPENDENCIES:
            return True
        stamp = self.lib_dir(service) / ".complete"
        return stamp.exists() and stamp.read_text() == self._pom_digest(service)

    def dynalite_cli(self) -> Path:
        return self.cache / "dynamodb" / "node_modules" / "dynalite" / "cli.js"

    def _pom_digest(self, service: str) -> str:
        return hashlib.sha256(self._pom(service).encode()).hexdigest()

    def fetch(self, service: str) -> None:
        """Download the service's artifacts once; a complete cache (same coordinates) is reused."""
        if service == "dynamodb" and self._dynamodb_engine() == "moto":
            self._check_moto()
            return
        if self.fetched(service):
            return
        if service in NPM_PACKAGES:
            self._fetch_npm(service)
            return
        mvn = self._tool("mvn", self._mvn)
        base = self.cache / service
        lib = self.lib_dir(service)
        base.mkdir(parents=True, exist_ok=True)
        pom = base / "pom.xml"
        pom.write_text(self._pom(service))
        if lib.exists():
            shutil.rmtree(lib)  # half-copied or stale versions would both end up on the classpath
        coords = ", ".join(MAVEN_DEPENDENCIES[service])
        self.echo(f"{service}: fetching {coords} from Maven Central ...")
        t0 = time.monotonic()
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            f"-Dmaven.repo.local={self.cache / 'm2'}",
            f"{DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={lib}",
            "-DincludeScope=runtime",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
            raise StackError(
                f"{service}: Maven could not fetch {coords} (exit {proc.returncode}):\n"
                + "\n".join(out)
            )
        jars = list(lib.glob("*.jar"))
        size = sum(j.stat().st_size for j in jars) / 1e6
        (lib / ".complete").write_text(self._pom_digest(service))
        self.echo(
            f"{service}: fetched {len(jars)} jars, {size:.0f} MB in {time.monotonic() - t0:.1f} s"
        )

    def _fetch_npm(self, service: str) -> None:
        npm = self._tool("npm", self._npm)
        spec = NPM_PACKAGES[service]
        base = self.cache / service
        base.mkdir(parents=True, exist_ok=True)
        (base / ".complete").unlink(missing_ok=True)
        # A half-written tree from an interrupted install must not be mistaken for a good one.
        shutil.rmtree(base / "node_modules", ignore_errors=True)
        (base / "package-lock.json").unlink(missing_ok=True)
        # A package.json of our own keeps npm from walking up to some unrelated project.
        (base / "package.json").write_text(
            json.dumps({"name": f"tradepulse-stack-{service}", "private": True}) + "\n"
        )
        self.echo(f"{service}: fetching {spec} from npm ...")
        t0 = time.monotonic()
        # --ignore-scripts: the only install script is classic-level's native build fallback,
        # and it ships prebuilt binaries; the in-memory store (memory-level) is plain JS anyway.
        cmd = [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", spec]
        proc = subprocess.run(cmd, cwd=base, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not self.dynalite_cli().exists():
            out = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
            raise StackError(
                f"{service}: npm could not install {spec} (exit {proc.returncode}):\n"
                + "\n".join(out)
            )
        (base / ".complete").write_text(spec)
        self.echo(f"{service}: fetched {spec} in {time.monotonic() - t0:.1f} s")

    def _check_moto(self) -> None:
        # find_spec, not import: importing moto.server loads every mocked service (seconds).
        missing = [
            m for m in ("moto", "flask", "flask_cors") if importlib.util.find_spec(m) is None
        ]
        if missing:
            raise StackError(
                "dynamodb runs on moto's server, which is not installed "
                f"(missing {', '.join(missing)}): pip install 'moto[server]>=5.1'"
            )

    # -- configuration ------------------------------------------------------------------------
    def kafka_controller_port(self) -> int:
        return self.endpoints(["kafka"])["kafka"].port + 1

    def _write_kafka_config(self, ep: Endpoint) -> Path:
        d = self.service_dir("kafka")
        ctl = self.kafka_controller_port()
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{LOOPBACK}:{ctl}",
            "listeners": f"PLAINTEXT://{LOOPBACK}:{ep.port},CONTROLLER://{LOOPBACK}:{ctl}",
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{ep.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(d / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            # One broker: every internal topic must accept replication factor 1, or
            # transactions and consumer groups hang waiting for replicas that never come.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "48",
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        path = d / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = d / "log4j2.properties"
        log4j.write_text(
            "status = warn\n"
            "appender.out.type = Console\n"
            "appender.out.name = STDOUT\n"
            "appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.out.ref = STDOUT\n"
            "logger.state.name = state.change.logger\n"
            "logger.state.level = WARN\n"
            "logger.config.name = org.apache.kafka.common.config.AbstractConfig\n"
            "logger.config.level = WARN\n"
        )
        return path

    def _format_kafka(self, java: str, props: Path) -> None:
        """Format the KRaft storage once; a change of ports means a fresh log (dev data only)."""
        d = self.service_dir("kafka")
        marker = d / "formatted.json"
        ep = self.endpoints(["kafka"])["kafka"]
        want = {"port": ep.port, "controller_port": self.kafka_controller_port()}
        if marker.exists():
            have = json.loads(marker.read_text())
            if {k: have.get(k) for k in want} == want and (d / "data" / "meta.properties").exists():
                return
            self.echo("kafka: ports changed since the storage was formatted; wiping its log dirs")
            shutil.rmtree(d / "data", ignore_errors=True)
        cid = kafka_cluster_id()
        self.echo(f"kafka: formatting KRaft storage (cluster id {cid})")
        cmd = [
            java,
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={d / 'log4j2.properties'}",
            "-cp",
            str(self.lib_dir("kafka") / "*"),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cid,
            "-c",
            str(props),
            "--standalone",
            "--ignore-formatted",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-20:]
            raise StackError("kafka: storage format failed:\n" + "\n".join(tail))
        marker.write_text(json.dumps({**want, "cluster_id": cid}))

    def _write_elasticmq_config(self, ep: Endpoint) -> Path:
        path = self.service_dir("sqs") / "elasticmq.conf"
        # ElasticMQ binds every interface unless told otherwise; queue URLs use node-address.
        path.write_text(
            'include classpath("application.conf")\n'
            f"node-address {{ protocol = http, host = {LOOPBACK}, port = {ep.port}, "
            'context-path = "" }\n'
            f'rest-sqs {{ enabled = true, bind-port = {ep.port}, bind-hostname = "{LOOPBACK}", '
            "sqs-limits = strict }\n"
            "rest-stats { enabled = false }\n"
        )
        return path

    def _write_s3proxy_config(self, ep: Endpoint) -> Path:
        d = self.service_dir("s3")
        data = d / "data"
        # With the filesystem provider a bucket is a directory: the configured one exists from
        # the first start without a CreateBucket call.
        (data / self.settings.s3_bucket).mkdir(parents=True, exist_ok=True)
        path = d / "s3proxy.properties"
        path.write_text(
            f"s3proxy.endpoint=http://{LOOPBACK}:{ep.port}\n"
            "s3proxy.authorization=none\n"
            "jclouds.provider=filesystem\n"
            f"jclouds.filesystem.basedir={data}\n"
        )
        # Without a logback config s3proxy logs every Jetty event at DEBUG.
        (d / "logback.xml").write_text(
            "<configuration>\n"
            '  <appender name="OUT" class="ch.qos.logback.core.ConsoleAppender">\n'
            "    <encoder><pattern>%d{HH:mm:ss.SSS} %-5level %logger{20} - %msg%n</pattern>"
            "</encoder>\n"
            "  </appender>\n"
            '  <root level="INFO"><appender-ref ref="OUT"/></root>\n'
            "</configuration>\n"
        )
        return path

    def command(self, service: str) -> list[str]:
        """The argv that runs the service in the foreground (configs written as a side effect)."""
        ep = self.endpoints([service])[service]
        self.service_dir(service).mkdir(parents=True, exist_ok=True)
        if service == "dynamodb":
            if self._dynamodb_engine() == "moto":
                return [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(ep.port)]
            launcher = self.service_dir(service) / "dynalite.js"
            launcher.write_text(DYNALITE_LAUNCHER)
            return [
                self._tool("node", self._node),
                str(launcher),
                str(self.dynalite_cli().parent),
                LOOPBACK,
                str(ep.port),
            ]
        java = self._tool("java", self._java)
        cp = str(self.lib_dir(service) / "*")
        small = ["-Xms32m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]
        if service == "kafka":
            props = self._write_kafka_config(ep)
            self._format_kafka(java, props)
            log4j = self.service_dir("kafka") / "log4j2.properties"
            return [
                java,
                "-Xms256m",
                "-Xmx768m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={log4j}",
                "-cp",
                cp,
                "kafka.Kafka",
                str(props),
            ]
        if service == "sqs":
            conf = self._write_elasticmq_config(ep)
            return [java, *small, f"-Dconfig.file={conf}", "-cp", cp, "org.elasticmq.server.Main"]
        if service == "s3":
            props = self._write_s3proxy_config(ep)
            logback = self.service_dir("s3") / "logback.xml"
            return [
                java,
                *small,
                f"-Dlogback.configurationFile={logback}",
                "-cp",
                cp,
                "org.gaul.s3proxy.Main",
                "--properties",
                str(props),
            ]
        raise StackError(f"unknown service {service!r}")

    # -- processes --------------------------------------------------------------------------
    def _read_pid(self, service: str) -> _Pid | None:
        path = self._pid_path(service)
        try:
            raw = json.loads(path.read_text())
            return _Pid(int(raw["pid"]), float(raw["create_time"]), int(raw["port"]), raw["argv"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _live(self, service: str) -> _Pid | None:
        """The recorded process if it still runs; the create time guards against pid reuse."""
        rec = self._read_pid(service)
        if rec is None:
            return None
        try:
            proc = psutil.Process(rec.pid)
            if abs(proc.create_time() - rec.create_time) > 1.0:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            return None
        return rec

    def pid(self, service: str) -> int | None:
        rec = self._live(service)
        return rec.pid if rec else None

    def _spawn(self, service: str) -> _Pid:
        argv = self.command(service)
        log = self.log_path(service)
        if log.exists() and log.stat().st_size:
            log.replace(log.with_suffix(".log.1"))  # keep one previous run for post-mortems
        ep = self.endpoints([service])[service]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.service_dir(service),
                start_new_session=True,  # own process group: stop it without touching ours
                close_fds=True,
            )
        rec = _Pid(proc.pid, psutil.Process(proc.pid).create_time(), ep.port, argv)
        record = {"pid": rec.pid, "create_time": rec.create_time, "port": rec.port, "argv": argv}
        self._pid_path(service).write_text(json.dumps(record))
        return rec

    def _wait_healthy(self, service: str, rec: _Pid, timeout_s: float) -> str:
        ep = self.endpoints([service])[service]
        deadline = time.monotonic() + timeout_s
        detail = "not started"
        while time.monotonic() < deadline:
            if self._live(service) is None:
                self._pid_path(service).unlink(missing_ok=True)
                raise StackError(self._failure(service, "exited during start-up"))
            ok, detail = probe(service, ep, timeout_s=3.0)
            if ok:
                return detail
            time.sleep(0.5)
        self._kill(service, rec)
        raise StackError(
            self._failure(service, f"not healthy after {timeout_s:.0f} s ({detail}); stopped it")
        )

    def _failure(self, service: str, what: str) -> str:
        tail = "\n".join("    " + line for line in _tail(self.log_path(service), 30))
        return f"{service}: {what}. Last lines of {self.log_path(service)}:\n{tail}"

    def _kill(self, service: str, rec: _Pid) -> None:
        grace = STOP_GRACE_S.get(service, 10.0)
        try:
            proc = psutil.Process(rec.pid)
        except psutil.Error:
            self._pid_path(service).unlink(missing_ok=True)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(rec.pid, signal.SIGTERM)  # pgid == pid: started with start_new_session
        try:
            proc.wait(grace)
        except psutil.TimeoutExpired:
            self.echo(f"{service}: still running {grace:.0f} s after SIGTERM; sending SIGKILL")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(rec.pid, signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                proc.wait(10)
        except psutil.Error:
            pass
        self._pid_path(service).unlink(missing_ok=True)

    # -- public operations ------------------------------------------------------------------
    def status(self, services: Sequence[str] = SERVICES) -> list[ServiceStatus]:
        out = []
        for svc, ep in self.endpoints(services).items():
            rec = self._live(svc)
            ok, detail = probe(svc, ep)
            if rec is not None:
                state: State = "healthy" if ok else "unhealthy"
            else:
                state = "external" if ok else "stopped"
                if ok:
                    detail = f"not started by `tradepulse stack` ({detail})"
            out.append(
                ServiceStatus(
                    svc,
                    ep.url,
                    state,
                    rec.pid if rec else None,
                    detail,
                    rss_mb=_rss_mb(rec.pid) if rec else None,
                )
            )
        return out

    def up(
        self, services: Sequence[str] = SERVICES, *, timeout_s: float | None = None
    ) -> list[ServiceStatus]:
        """Fetch what is missing, start what is not running, wait until all answer."""
        eps = self.endpoints(services)
        for svc, ep in eps.items():
            if not ep.local:
                raise StackError(
                    f"{svc} endpoint {ep.url} is not on this machine; `stack` only runs local "
                    "servers (point the settings at 127.0.0.1, or do not use `stack` for it)"
                )
        for svc in services:
            self.fetch(svc)
        results: dict[str, ServiceStatus] = {}
        starting: dict[str, _Pid] = {}
        for svc, ep in eps.items():
            rec = self._live(svc)
            if rec is not None:
                ok, detail = probe(svc, ep)
                if ok:
                    results[svc] = ServiceStatus(svc, ep.url, "healthy", rec.pid, detail)
                    continue
                # Ours but not answering yet (another `up` may be starting it): wait below.
                starting[svc] = rec
                continue
            if _port_open(ep.port, ep.host):
                ok, detail = probe(svc, ep)
                if ok:
                    results[svc] = ServiceStatus(
                        svc,
                        ep.url,
                        "external",
                        None,
                        f"already served by another process ({detail})",
                    )
                    continue
                raise StackError(
                    f"{svc}: port {ep.port} is taken by a process that is not a healthy {svc} "
                    "server; free it or change the endpoint in the settings"
                )
            if svc == "kafka" and _port_open(self.kafka_controller_port()):
                raise StackError(
                    f"kafka: controller port {self.kafka_controller_port()} (broker port + 1) "
                    "is taken by another process"
                )
            self.echo(f"{svc}: starting on {ep.url}")
            starting[svc] = self._spawn(svc)
            results[svc] = ServiceStatus(svc, ep.url, "unhealthy", starting[svc].pid)
        errors = []
        for svc, rec in starting.items():
            t0 = time.monotonic()
            timeout = timeout_s if timeout_s is not None else START_TIMEOUT_S[svc]
            try:
                detail = self._wait_healthy(svc, rec, timeout)
            except StackError as exc:
                errors.append(str(exc))
                continue
            self.echo(f"{svc}: healthy after {time.monotonic() - t0:.1f} s")
            results[svc] = ServiceStatus(
                svc, eps[svc].url, "healthy", rec.pid, detail, started=True
            )
        if errors:
            raise StackError("\n".join(errors))
        for st in results.values():
            if st.pid is not None:
                st.rss_mb = _rss_mb(st.pid)
        return [results[s] for s in services]

    def down(self, services: Sequence[str] = SERVICES, *, purge: bool = False) -> list[str]:
        """Stop the services this tool started (by pid); return the names stopped."""
        stopped = []
        for svc in reversed(list(services)):  # the log last: clients of it go first
            rec = self._live(svc)
            if rec is None:
                self._pid_path(svc).unlink(missing_ok=True)
            else:
                self.echo(f"{svc}: stopping pid {rec.pid}")
                self._kill(svc, rec)
                stopped.append(svc)
            if purge:
                for sub in ("data", "formatted.json"):
                    p = self.service_dir(svc) / sub
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
        return stopped

    def tail(self, service: str, n: int = 50) -> list[str]:
        return _tail(self.log_path(service), n)


def _rss_mb(pid: int) -> float | None:
    try:
        return round(float(psutil.Process(pid).memory_info().rss) / 1e6, 1)
    except psutil.Error:
        return None


def ensure_stack(
    settings: Settings, services: Sequence[str] = SERVICES, *, echo: Echo | None = None
) -> dict[str, str]:
    """Start (or reuse) the local stack; return {service: endpoint} for clients."""
    statuses = Stack(settings, echo=echo).up(services)
    return {st.service: st.endpoint for st in statuses}


def stop_stack(
    settings: Settings | None = None,
    services: Sequence[str] = SERVICES,
    *,
    purge: bool = False,
    echo: Echo | None = None,
) -> list[str]:
    """Stop what `ensure_stack` / `tradepulse stack up` started; return the names stopped."""
    return Stack(settings or Settings(), echo=echo).down(services, purge=purge)


def stack_status(settings: Settings, services: Sequence[str] = SERVICES) -> list[ServiceStatus]:
    return Stack(settings).status(services)


def format_status(statuses: Iterable[ServiceStatus]) -> str:
    """One aligned line per service: name, endpoint, pid, state, RSS, detail."""
    lines = []
    for st in statuses:
        pid = str(st.pid) if st.pid else "-"
        rss = f"{st.rss_mb:.0f} MB" if st.rss_mb is not None else "-"
        lines.append(
            f"{st.service:<9} {st.endpoint:<24} pid {pid:<8} {st.state:<9} {rss:>7}  {st.detail}"
        )
    return "\n".join(lines)
