"""
The engines the tests run dashd on: SQLite (a file per dashd), and the
machine's PostgreSQL and Redis, each test getting its own database and its
own Redis namespace so that parallel runs on one machine never meet.

``DASHD_TEST_STORES`` lists the store backends the store and end-to-end
tests run on (default ``sqlite,postgresql``: both). ``DASHD_TEST_POSTGRES``
and ``DASHD_TEST_REDIS`` name the servers (default: this machine's). A test
that needs one of them fails, loudly, when it is not there: it never skips.

Private servers for fault tests (a PostgreSQL or a Redis the test stops and
starts) are here too: L{PrivatePostgres} and L{PrivateRedis}.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from urllib.parse import urlsplit, urlunsplit

POSTGRES_URL = os.environ.get("DASHD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("DASHD_TEST_REDIS", "redis://127.0.0.1:6379/0")
STORES = [s.strip() for s in os.environ.get("DASHD_TEST_STORES", "sqlite,postgresql").split(",")
          if s.strip()]

# Databases this test run created, dropped when it ends.
_CREATED: list[str] = []


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _admin_connection(url: str = POSTGRES_URL):  # type: ignore[no-untyped-def]
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        raise RuntimeError(
            "these tests need PostgreSQL at %s (DASHD_TEST_POSTGRES): %s" % (url, e)
        ) from None


def create_database(base_url: str = POSTGRES_URL) -> str:
    """A new, empty database with a unique name; its URL."""
    name = "dashd_test_%d_%s" % (os.getpid(), secrets.token_hex(4))
    with _admin_connection(base_url) as conn:
        conn.execute("CREATE DATABASE %s" % name)
    if base_url == POSTGRES_URL:
        _CREATED.append(name)
    return _with_database(base_url, name)


def drop_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    if urlsplit(url).netloc == urlsplit(POSTGRES_URL).netloc:
        admin = POSTGRES_URL
    else:
        admin = _with_database(url, "postgres")
    with _admin_connection(admin) as conn:
        conn.execute("DROP DATABASE IF EXISTS %s WITH (FORCE)" % name)
    if name in _CREATED:
        _CREATED.remove(name)


def drop_created_databases() -> None:
    for name in list(_CREATED):
        try:
            drop_database(_with_database(POSTGRES_URL, name))
        except Exception:
            pass


def redis_namespace() -> str:
    """A key and channel prefix of its own, for one test's cluster."""
    return "dashdtest-%d-%s" % (os.getpid(), secrets.token_hex(4))


def check_redis(url: str = REDIS_URL) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as e:
        raise RuntimeError("these tests need Redis at %s (DASHD_TEST_REDIS): %s" % (url, e)) \
            from None
    finally:
        client.close()


def clear_redis_namespace(namespace: str, url: str = REDIS_URL) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        keys = list(client.scan_iter(match=namespace + ":*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError("%s did not start on port %d" % (what, port))
        time.sleep(0.05)


class PrivateRedis:
    """A redis-server of the test's own, on a free port, to stop and start."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return "redis://127.0.0.1:%d/0" % self.port

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("these tests need redis-server on the PATH")
        log = open(os.path.join(self.directory, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.directory],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        _wait_port(self.port, 10, "redis-server")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/" + name))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError("these tests need the PostgreSQL server binaries (%s)" % name)
    return path


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb in a temporary
    directory, on a free port) that the test stops and starts. The server
    refuses to run as root, so it runs as the postgres user when the tests
    run as root."""

    def __init__(self, directory: str) -> None:
        # Not under pytest's temporary directories, which only root may
        # enter: the server runs as postgres.
        self.directory = tempfile.mkdtemp(prefix="dashd-test-pg-")
        self.data = os.path.join(self.directory, "data")
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return "postgresql://postgres@127.0.0.1:%d/postgres" % self.port

    def _run(self, *args: str) -> None:
        result = subprocess.run(self._as + list(args), capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError("%s failed: %s%s" % (args[0], result.stdout, result.stderr))

    def init(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        if self._as:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(_postgres_bin("initdb"), "-D", self.data, "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        self._run(
            _postgres_bin("pg_ctl"), "-D", self.data, "-l", os.path.join(self.directory, "log"),
            "-w", "-t", "30", "-o",
            "-p %d -c listen_addresses=127.0.0.1 -k %s -c fsync=off" % (self.port, self.directory),
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(_postgres_bin("pg_ctl"), "-D", self.data, "-m", mode, "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return os.path.exists(os.path.join(self.data, "postmaster.pid"))

    def remove(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
