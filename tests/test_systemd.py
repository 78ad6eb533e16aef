"""
dashd under systemd: the unit files pass systemd-analyze, a listening
socket handed over the way systemd does it (LISTEN_FDS, fd 3) serves,
READY/STOPPING/WATCHDOG reach $NOTIFY_SOCKET, and log events become journal
entries with structured fields.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from typing import Iterator

import pytest
import pytest_twisted
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from dashd.ops import journal, systemd
from support import TWISTD, Client, DashdProcess, connect_device, device_online, eventually

UNITS = os.path.join(os.path.dirname(__file__), "..", "systemd")
INSTALLED_TWISTD = "/opt/dashd/bin/twistd"


def read_unit(name: str) -> str:
    with open(os.path.join(UNITS, name)) as f:
        return f.read()


def verify(directory: str) -> tuple[int, str]:
    """systemd-analyze verify on the units in C{directory}: (code, complaints)."""
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "./dashd.service", "./dashd.socket"],
        cwd=directory, capture_output=True, text=True, timeout=60,
    )
    return result.returncode, (result.stdout + result.stderr).strip()


def units_in(directory: str, service_text: str | None = None) -> str:
    # The one change: ExecStart's twistd is this virtualenv's, since verify
    # checks that the command exists.
    text = read_unit("dashd.service") if service_text is None else service_text
    with open(os.path.join(directory, "dashd.service"), "w") as f:
        f.write(text.replace(INSTALLED_TWISTD, TWISTD))
    shutil.copy(os.path.join(UNITS, "dashd.socket"), directory)
    return directory


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="make test installs systemd-analyze"
)


@needs_systemd_analyze
def test_units_pass_systemd_analyze_verify(tmp_path):
    code, complaints = verify(units_in(str(tmp_path)))
    assert (code, complaints) == (0, "")


@needs_systemd_analyze
def test_verify_sees_a_broken_unit(tmp_path):
    """The check above can fail: systemd-analyze only warns (and exits 0)
    about a bad value, so its complaints are part of the check."""
    broken = read_unit("dashd.service").replace("Type=notify", "Type=notfy")
    code, complaints = verify(units_in(str(tmp_path), broken))
    assert "Failed to parse service type" in complaints


def service_settings() -> dict[str, list[str]]:
    """The [Service] section of dashd.service: each key's values, in order
    (a key may be given more than once)."""
    settings: dict[str, list[str]] = {}
    section = None
    for line in read_unit("dashd.service").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_service_unit_says_what_the_readme_says():
    """The settings the README promises ("What the unit does for you"), in
    the [Service] section (test_units_pass_systemd_analyze_verify shows
    systemd accepts each value)."""
    settings = {k: v[-1] for k, v in service_settings().items()}
    assert settings["Type"] == "notify"
    assert settings["ExecStart"].startswith(INSTALLED_TWISTD + " -n --pidfile= ")
    assert settings["ProtectSystem"] == "strict"
    assert settings["StateDirectory"] == "dashd"
    assert settings["User"] == "dashd"
    assert settings["UMask"] == "0077"
    assert settings["LimitNOFILE"] == "262144"
    assert settings["WatchdogSec"] == "60"
    assert settings["Restart"] == "on-failure"
    assert "name=dashd" in read_unit("dashd.socket")
    assert "FileDescriptorName=dashd" in read_unit("dashd.socket")


def test_the_units_watchdog_is_pinged_well_within_it():
    """systemd passes WatchdogSec as WATCHDOG_USEC; dashd pings at half of
    it (test_ready_watchdog_and_stopping_reach_notify_socket shows the pings)."""
    seconds = int(service_settings()["WatchdogSec"][-1])
    assert systemd.watchdog_interval({"WATCHDOG_USEC": str(seconds * 1_000_000)}) == seconds / 2


@pytest_twisted.ensureDeferred
async def test_under_the_units_umask_dashd_s_files_are_its_own(tmp_path):
    """With the unit's UMask, nothing dashd creates in its data directory
    (the store and its WAL, admin.key, the lock, the firmware directory) is
    open to its group or anyone else."""
    umask = service_settings()["UMask"][-1]
    server = DashdProcess(str(tmp_path), command_prefix=[
        "bash", "-c", 'umask %s && exec "$@"' % umask, "bash"])
    await server.start_async()
    try:
        admin = Client(server, server.admin_key)
        device_id, token = await admin.register()
        sim = await connect_device(server, token)
        await device_online(admin, device_id)
        await sim.stop()
        found = {}
        for directory, dirs, files in os.walk(server.data_dir):
            for name in dirs + files:
                path = os.path.join(directory, name)
                found[os.path.relpath(path, server.data_dir)] = os.stat(path).st_mode & 0o777
        assert {"dashd.sqlite3", "dashd.sqlite3-wal", "admin.key", "dashd.lock",
                "firmware"} <= set(found), found
        assert {name: oct(mode) for name, mode in found.items() if mode & 0o077} == {}
    finally:
        server.stop()
    assert not server.problems()


@needs_systemd_analyze
def test_service_exposure_is_low(tmp_path):
    units_in(str(tmp_path))
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "./dashd.service"],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=60,
    )
    m = re.search(r"Overall exposure level for dashd.service: ([0-9.]+)", result.stdout)
    assert m, result.stdout + result.stderr
    assert float(m.group(1)) <= 2.0, result.stdout  # systemd calls < 2 "OK"; 1.3 at writing


# Socket activation and notifications


def handed_over(sock: socket.socket) -> list[str]:
    """A command prefix that starts twistd the way systemd does with one
    socket: at descriptor 3, with LISTEN_FDS, LISTEN_PID (the pid of the
    process that execs twistd, so twistd's) and LISTEN_FDNAMES."""
    fd = sock.fileno()
    move = "" if fd == 3 else "3<&%d %d<&-" % (fd, fd)
    script = ('export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=dashd; exec "$@" %s' % move)
    return ["bash", "-c", script, "bash"]


@pytest.fixture
def activated(tmp_path) -> Iterator[DashdProcess]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    proc = DashdProcess(
        str(tmp_path),
        listen=["systemd:domain=INET:name=dashd"],
        command_prefix=handed_over(sock),
        pass_fds=(sock.fileno(),),
    )
    proc.port = sock.getsockname()[1]
    try:
        proc.spawn()
    finally:
        sock.close()  # dashd holds the only copy now
    yield proc
    if proc.proc is not None:
        proc.stop()
    problems = proc.problems()
    assert not problems, "%s\n--- dashd log ---\n%s" % (problems, proc.log()[-5000:])


@pytest_twisted.ensureDeferred
async def test_a_socket_handed_over_by_systemd_serves(activated: DashdProcess):
    await eventually(lambda: os.path.exists(os.path.join(activated.data_dir, "admin.key")))
    admin = Client(activated, activated.admin_key)
    device_id, token = await admin.register("activated")
    sim = await connect_device(activated, token)
    try:
        await device_online(admin, device_id)
        reply = await admin.get("/api/v2/devices/%s/rpc/Sys.GetInfo" % device_id)
        assert reply.status == 200 and reply.body["mac"] == sim.mac
    finally:
        await sim.stop()
    assert "serving on systemd:domain=INET:name=dashd" in activated.log()
    # twistd ends by re-raising the signal it stopped for; systemd counts
    # SIGTERM as a clean exit.
    assert activated.stop() == -signal.SIGTERM
    assert "Server Shut Down." in activated.log()


def notify_socket() -> tuple[socket.socket, str]:
    path = os.path.join(tempfile.mkdtemp(prefix="dashd-notify-"), "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    return sock, path


def received(sock: socket.socket, into: list[str]) -> list[str]:
    while True:
        try:
            into.append(sock.recv(4096).decode())
        except BlockingIOError:
            return into


@pytest_twisted.ensureDeferred
async def test_ready_watchdog_and_stopping_reach_notify_socket(tmp_path):
    sock, path = notify_socket()
    server = DashdProcess(str(tmp_path), env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    messages: list[str] = []
    try:
        server.spawn()
        ready = await eventually(
            lambda: [m for m in received(sock, messages) if "READY=1" in m.split("\n")], 20
        )
        # READY means serving: the port accepts and /readyz says so, now.
        assert "STATUS=serving on tcp:%d" % server.port in ready[0]
        admin = Client(server, server.admin_key)
        assert (await admin.get("/readyz", key=None)).status == 200
        # The watchdog is pinged every half WATCHDOG_USEC from the reactor.
        await eventually(lambda: received(sock, messages).count("WATCHDOG=1") >= 3, 10)
        assert not [m for m in messages if "STOPPING=1" in m]
        server.proc.send_signal(signal.SIGTERM)
        await eventually(lambda: [m for m in received(sock, messages) if "STOPPING=1" in m], 10)
        await eventually(lambda: server.proc.poll() is not None, 20)
        assert server.proc.returncode == -signal.SIGTERM
        server.proc = None
    finally:
        if server.proc is not None:
            server.stop()
        sock.close()
    assert not server.problems()


def test_notify_uses_the_abstract_namespace():
    name = "dashd-test-%d" % os.getpid()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert systemd.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"READY=1"


def test_notify_without_systemd_does_nothing():
    assert systemd.notify("READY=1", {}) is False
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/socket"}) is False
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 1.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None


# The journal


def parse_entry(data: bytes) -> dict[str, str]:
    """journald's native protocol, both field forms."""
    fields = {}
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            name, _, value = line.partition(b"=")
            data = rest
        else:
            name = line
            (size,) = struct.unpack("<Q", rest[:8])
            value = rest[8:8 + size]
            assert rest[8 + size:9 + size] == b"\n"
            data = rest[9 + size:]
        fields[name.decode()] = value.decode()
    return fields


def test_journal_entries_have_structured_fields(tmp_path):
    path = str(tmp_path / "journal")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(path)
        sink.settimeout(5)
        observer = journal.JournalObserver(path)
        observer({"log_format": "device {id} offline: {reason}", "log_level": LogLevel.warn,
                  "log_namespace": "dashd.channel.session", "id": "d0123", "reason": "ping timeout",
                  "log_time": 0.0})
        fields = parse_entry(sink.recv(65536))
        assert fields["MESSAGE"] == "device d0123 offline: ping timeout"
        assert fields["PRIORITY"] == "4"
        assert fields["SYSLOG_IDENTIFIER"] == "dashd"
        assert fields["DASHD_NAMESPACE"] == "dashd.channel.session"
        assert fields["DASHD_ID"] == "d0123" and fields["DASHD_REASON"] == "ping timeout"

        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        observer({"log_format": "handling {method}", "log_level": LogLevel.critical,
                  "log_namespace": "dashd.channel.session", "method": "X", "log_failure": failure})
        fields = parse_entry(sink.recv(65536))
        assert fields["PRIORITY"] == "2"
        assert fields["MESSAGE"].startswith("handling X\nTraceback")
        assert "ZeroDivisionError" in fields["MESSAGE"]


def test_journal_falls_back_to_text_when_journald_is_away(tmp_path):
    out = open(tmp_path / "out.txt", "w")
    observer = journal.JournalObserver(str(tmp_path / "nobody-listens"), out)
    observer({"log_format": "hello {who}", "who": "there", "log_level": LogLevel.info,
              "log_namespace": "t", "log_time": 0.0})
    out.close()
    assert "hello there" in (tmp_path / "out.txt").read_text()


def test_journal_observer_is_chosen_only_for_the_journal_stream(tmp_path):
    path = str(tmp_path / "journal")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(path)
        with open(tmp_path / "stream", "w") as stream:
            st = os.fstat(stream.fileno())
            env = {"JOURNAL_STREAM": "%d:%d" % (st.st_dev, st.st_ino)}
            assert isinstance(journal.observer(env, stream, path), journal.JournalObserver)
            other = {"JOURNAL_STREAM": "%d:%d" % (st.st_dev, st.st_ino + 1)}
            assert not isinstance(journal.observer(other, stream, path), journal.JournalObserver)
            assert not isinstance(journal.observer({}, stream, path), journal.JournalObserver)


@pytest_twisted.ensureDeferred
async def test_dashd_runs_with_the_units_logger(tmp_path):
    """The --logger of dashd.service loads; off the journal it writes text."""
    server = DashdProcess(str(tmp_path), twistd_options=["--logger=dashd.ops.journal.observer"])
    await server.start_async()
    try:
        admin = Client(server, server.admin_key)
        assert (await admin.get("/api/v2/devices")).status == 200
    finally:
        server.stop()
    assert "serving on tcp:" in server.log()
    assert "GET /api/v2/devices" in server.log()
    assert not server.problems()
