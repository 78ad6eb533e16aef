"""
What the end-to-end tests are made of: a real dashd process (``twistd -n
dashd``) on a real port with a real SQLite file, a REST client (treq),
notification subscribers and simulated devices over real WebSockets.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import treq
from treq.client import HTTPClient
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater

from dashd.simulator import SimulatedDevice

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

# Every secret the tests create; no dashd log may contain any of them.
SECRETS: set[str] = set()

# Settings that make the timing-based behaviour quick to observe.
FAST_CONFIG = {
    "device": {
        "ping_interval": 1.0,
        "ping_timeout": 1.0,
        "info_request_delay": 0.5,
        "max_frame_bytes": 4096,
        "max_message_bytes": 65536,
    },
    "rpc": {"default_timeout": 5.0, "max_timeout": 30.0},
    # The access log is off by default; on here, so that every test also
    # shows that no secret reaches it (DashdProcess.problems).
    "http": {"max_body_bytes": 65536, "access_log": True},
    "notify": {"max_backlog": 50},
    "ota": {
        "max_bytes": 262144,
        "chunk_bytes": 1024,
        "writes_in_flight": 4,
        "step_timeout": 2.0,
        "reboot_timeout": 4.0,
    },
    "logs": {"max_per_device": 50},
    # Tests make many requests and many deliberate failures from one
    # address; the limits have tests of their own with their own servers.
    "limits": {"requests_per_second": 0, "failed_auth_per_minute": 0},
    # Fleet jobs step often, and a dead node's jobs are taken over soon.
    "jobs": {"interval": 0.25, "lease_timeout": 3.0},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[%s]" % ", ".join(toml_value(v) for v in value)
    raise TypeError(value)


def write_toml(path: str, doc: dict[str, Any]) -> None:
    lines = []
    for key, value in doc.items():
        if not isinstance(value, dict):
            lines.append("%s = %s" % (key, toml_value(value)))
    for key, value in doc.items():
        if isinstance(value, dict):
            lines.append("\n[%s]" % key)
            lines.extend("%s = %s" % (k, toml_value(v)) for k, v in value.items())
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class DashdProcess:
    """``twistd -n dashd`` in a subprocess, with its own data directory.

    C{store_url}: a PostgreSQL database instead of SQLite. C{first}: whether
    this dashd is the first on its store, which creates the admin key (the
    other nodes of a cluster do not)."""

    def __init__(
        self,
        directory: str,
        config: dict[str, Any] | None = None,
        listen: list[str] | None = None,
        tls_ca: str | None = None,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
        command_prefix: list[str] | None = None,
        pass_fds: tuple[int, ...] = (),
        twistd_options: list[str] | None = None,
        store_url: str | None = None,
        first: bool = True,
    ) -> None:
        """
        @param listen: endpoints instead of plain TCP on a free port;
            C{{port}} in them is that port.
        @param tls_ca: the CA (PEM file) that signed the server's
            certificate when C{listen} is TLS: clients then use https/wss
            to C{host} and verify it.
        @param env, command_prefix, pass_fds, twistd_options: how the
            process is started (extra environment, a command that execs
            twistd, descriptors to hand over, options for twistd itself).
        """
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.store_url = store_url
        self.first = first
        self.data_dir = os.path.join(directory, "data")
        self.port = free_port()
        self.log_path = os.path.join(directory, "dashd.log")
        self.config_path = os.path.join(directory, "dashd.toml")
        self.tls_ca = tls_ca
        self.host = host
        self.env = env or {}
        self.command_prefix = command_prefix or []
        self.pass_fds = pass_fds
        self.twistd_options = twistd_options or []
        endpoints = [e.replace("{port}", str(self.port)) for e in listen] if listen else [
            "tcp:%d:interface=127.0.0.1" % self.port
        ]
        doc = merge(FAST_CONFIG, config or {})
        if store_url is not None:
            doc = merge(doc, {"store": {"url": store_url}})
        doc = merge({"listen": endpoints, "data_dir": self.data_dir}, doc)
        self.data_dir = doc["data_dir"]
        self.doc = doc
        write_toml(self.config_path, doc)
        self.proc: subprocess.Popen[bytes] | None = None

    def configure(self, config: dict[str, Any]) -> None:
        """Change the configuration (before the next start): an
        C{own_server} with settings of the test's own."""
        self.doc = merge(self.doc, config)
        write_toml(self.config_path, self.doc)

    @property
    def url(self) -> str:
        return "%s://%s:%d" % ("https" if self.tls_ca else "http", self.host, self.port)

    @property
    def device_url(self) -> str:
        return "%s://%s:%d/api/v2/rpc" % ("wss" if self.tls_ca else "ws", self.host, self.port)

    @property
    def notify_url(self) -> str:
        return "%s://%s:%d/api/v2/notify" % ("wss" if self.tls_ca else "ws", self.host, self.port)

    def tls_options(self, hostname: str | None = None) -> Any:
        """Client TLS options that trust only the test CA and check C{hostname}."""
        if not self.tls_ca:
            return None
        from twisted.internet import ssl

        with open(self.tls_ca, "rb") as f:
            ca = ssl.Certificate.loadPEM(f.read())
        return ssl.optionsForClientTLS(hostname or self.host, trustRoot=ca)

    @property
    def admin_key(self) -> str:
        with open(os.path.join(self.data_dir, "admin.key")) as f:
            key = f.read().strip()
        SECRETS.add(key)
        return key

    def spawn(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command_prefix
            + [TWISTD, "-n", "--pidfile="] + self.twistd_options
            + ["dashd", "--config", self.config_path],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            env=dict(os.environ, **self.env),
            pass_fds=self.pass_fds,
        )
        log.close()

    def _up(self) -> bool:
        if self.first and not os.path.exists(os.path.join(self.data_dir, "admin.key")):
            return False
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def start(self, timeout: float = 20) -> None:
        """Start and wait, blocking (for fixtures, before the reactor runs)."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while not self._up():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("dashd did not start:\n" + self.log())
            time.sleep(0.05)

    async def start_async(self, timeout: float = 20) -> None:
        """Start and wait without blocking the reactor."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while not self._up():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("dashd did not start:\n" + self.log())
            await deferLater(reactor, 0.05)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError("dashd exited with %s:\n%s" % (self.proc.returncode, self.log()))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def problems(self) -> list[str]:
        """What a healthy run never logs: tracebacks, and any test secret."""
        text = self.log()
        found = []
        for marker in ("Traceback (most recent call last)", "Unhandled Error", "Unhandled error"):
            if marker in text:
                found.append("dashd logged %r" % marker)
        for secret in SECRETS:
            if secret in text:
                found.append("dashd logged a secret (%s...)" % secret[:16])
        return found


def rss_bytes(server: DashdProcess) -> int:
    """The resident memory of the dashd process (Linux)."""
    assert server.proc is not None
    with open("/proc/%d/status" % server.proc.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for dashd")


def within(d: Any, seconds: float = 10) -> Deferred[Any]:
    """Wait for C{d} (a Deferred or coroutine), failing after C{seconds}."""
    if not isinstance(d, Deferred):
        d = ensureDeferred(d)
    return d.addTimeout(seconds, reactor)


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds)


async def eventually(check: Callable[[], Any], seconds: float = 10, interval: float = 0.05) -> Any:
    """Poll C{check} (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if isinstance(value, Deferred) or hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %gs" % seconds)
        await sleep(interval)


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any = None
    raw: bytes = b""

    @property
    def error(self) -> dict[str, Any]:
        assert isinstance(self.body, dict) and "error" in self.body, self
        return self.body["error"]


class Client:
    """A REST client for one dashd and one API key."""

    def __init__(self, server: DashdProcess, key: str | None) -> None:
        self.server = server
        self.key = key
        self.http: Any = treq
        if server.tls_ca:
            from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

            with open(server.tls_ca, "rb") as f:
                from twisted.internet import ssl

                ca = ssl.Certificate.loadPEM(f.read())
            policy = BrowserLikePolicyForHTTPS(trustRoot=ca)
            self.http = HTTPClient(Agent(reactor, contextFactory=policy))

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        key: Any = "default",
    ) -> Reply:
        hdrs = dict(headers or {})
        key = self.key if key == "default" else key
        if key is not None and "Authorization" not in hdrs:
            hdrs["Authorization"] = "Bearer " + key
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        response = await within(
            self.http.request(
                method,
                self.server.url + path,
                data=data,
                headers={k: [v] for k, v in hdrs.items()},
                **({"persistent": False} if self.http is treq else {}),
            ),
            30,
        )
        content = await within(response.content(), 30)
        try:
            parsed = json.loads(content) if content else None
        except ValueError:
            parsed = None
        return Reply(response.code, parsed, response.headers, content)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.request("POST", path, body=body, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.request("DELETE", path, **kw)

    async def upload(
        self, path: str, filename: str, content_type: str = "application/octet-stream",
        field: str = "file",
    ) -> Reply:
        """POST a file as multipart/form-data (like curl -F file=@FILE)."""
        with open(filename, "rb") as f:
            response = await within(
                treq.post(
                    self.server.url + path,
                    files={field: (os.path.basename(filename), content_type, f)},
                    headers={"Authorization": ["Bearer " + (self.key or "")]},
                    persistent=False,
                ),
                30,
            )
            content = await within(response.content(), 30)
        try:
            parsed = json.loads(content) if content else None
        except ValueError:
            parsed = None
        return Reply(response.code, parsed, response.headers, content)

    async def register(self, name: str | None = None) -> tuple[str, str]:
        reply = await self.post("/api/v2/devices", {"name": name} if name else {})
        assert reply.status == 200, reply
        SECRETS.add(reply.body["token"])
        return reply.body["id"], reply.body["token"]

    async def device(self, device_id: str) -> dict[str, Any]:
        reply = await self.get("/api/v2/devices/" + device_id)
        assert reply.status == 200, reply
        return reply.body


async def connect_device(server: DashdProcess, token: str, **options: Any) -> SimulatedDevice:
    options.setdefault("reconnect_delay", (0.2, 1.0))
    options.setdefault("tls_options", server.tls_options())
    device = SimulatedDevice(server.device_url, token, reactor, **options).start()
    await within(device.wait_open(), 10)
    return device


async def device_online(client: Client, device_id: str, online: bool = True) -> dict[str, Any]:
    async def check() -> Any:
        view = await client.device(device_id)
        return view if view["online"] == online else None

    return await eventually(check)


class _SubscriberProtocol(WebSocketClientProtocol):
    subscriber: Subscriber

    def onOpen(self) -> None:
        self.subscriber.proto = self
        self.subscriber.opened.callback(self.subscriber)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.subscriber._received(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.subscriber.close_code = code
        self.subscriber.close_reason = reason
        if not self.subscriber.opened.called:
            self.subscriber.opened.errback(ConnectionError(reason))
        self.subscriber.closed.callback((code, reason))


class _SubscriberFactory(WebSocketClientFactory):
    protocol = _SubscriberProtocol

    def __init__(self, subscriber: Subscriber, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subscriber = subscriber

    def buildProtocol(self, addr: Any) -> Any:
        proto = super().buildProtocol(addr)
        proto.subscriber = self.subscriber
        return proto


@dataclass
class Subscriber:
    """
    A client of /api/v2/notify that records every event it receives.

    C{received} holds them all, in order, whether or not a test waited for
    them: C{next} moves a cursor through it and skips what does not match,
    but skipped events stay there, so that a test can say what a subscriber
    never got (L{matching}, L{never}). Events from one dashd reach a
    subscriber in the order they were published: once an event published
    later has arrived (L{next}), everything published before it has too.
    """

    received: list[dict[str, Any]] = field(default_factory=list)
    opened: Deferred = field(default_factory=Deferred)
    closed: Deferred = field(default_factory=Deferred)
    proto: Any = None
    close_code: int | None = None
    close_reason: str | None = None
    # Where next() goes on from, in received.
    cursor: int = 0
    _waiting: list[Deferred] = field(default_factory=list)

    def _received(self, event: dict[str, Any]) -> None:
        self.received.append(event)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    async def next(
        self, match: Callable[[dict[str, Any]], bool] = lambda e: True, seconds: float = 10
    ) -> dict[str, Any]:
        """The next event after the cursor that C{match}es; the cursor moves
        past it (the events skipped stay in C{received})."""
        deadline = time.monotonic() + seconds
        while True:
            while self.cursor < len(self.received):
                event = self.received[self.cursor]
                self.cursor += 1
                if match(event):
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no matching event within %gs; received: %s"
                                     % (seconds, _summary(self.received)))
            arrival: Deferred = Deferred()
            self._waiting.append(arrival)
            try:
                await within(arrival, left)
            except Exception:
                if arrival in self._waiting:
                    self._waiting.remove(arrival)

    def matching(self, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Every event received so far that C{match}es."""
        return [e for e in self.received if match(e)]

    def never(self, match: Callable[[dict[str, Any]], bool], what: str = "") -> None:
        """Fail if any event received so far C{match}es. Only as good as
        what came before it: first wait (L{next}) for an event that was
        published after the ones that must not come."""
        found = self.matching(match)
        assert not found, "received %s%s" % (what + ": " if what else "", _summary(found))

    def close(self) -> None:
        if self.proto is not None:
            self.proto.sendClose(1000)


def _summary(events: list[dict[str, Any]], limit: int = 20) -> str:
    shown = ["%s %s" % (e.get("name"), e.get("id")) for e in events[-limit:]]
    more = len(events) - len(shown)
    return "[%s%s]" % ("... %d more, " % more if more > 0 else "", ", ".join(shown))


async def subscribe(server: DashdProcess, key: str, query: bool = False,
                    ticket: str | None = None) -> Subscriber:
    """A subscriber with C{key} in the Authorization header, in the URL
    (C{query}), or with a C{ticket} (from POST /api/v2/notify/ticket)."""
    sub = Subscriber()
    url = server.notify_url
    headers = {}
    if ticket is not None:
        url += "?ticket=" + ticket
    elif query:
        url += "?access_token=" + key
    else:
        headers["Authorization"] = "Bearer " + key
    factory = _SubscriberFactory(sub, url, headers=headers, reactor=reactor)
    connectWS(factory)
    await within(sub.opened, 10)
    return sub


async def raw_handshake(
    server: DashdProcess, path: str = "/api/v2/rpc", headers: dict[str, str] | None = None
) -> Reply:
    """A WebSocket opening handshake by hand, to see how dashd refuses it."""
    hdrs = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    hdrs.update(headers or {})
    return await Client(server, None).request("GET", path, headers=hdrs, key=None)
