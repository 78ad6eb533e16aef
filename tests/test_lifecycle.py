"""
dashd as a process: first start, restart, kill -9.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from support import (
    SECRETS,
    TWISTD,
    Client,
    DashdProcess,
    connect_device,
    device_online,
    eventually,
    within,
)


def test_first_start_creates_the_admin_key_once(tmp_path):
    server = DashdProcess(str(tmp_path))
    server.start()
    try:
        path = os.path.join(server.data_dir, "admin.key")
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o600
        with open(path) as f:
            content = f.read()
        assert content.count("\n") == 1 and content.endswith("\n")
        key = content.strip()
        SECRETS.add(key)
        assert len(key) > 40
        assert "created the first admin key" in server.log()
        assert path in server.log()
    finally:
        server.stop()
    server.start()
    try:
        with open(path) as f:
            assert f.read().strip() == key
        assert server.log().count("created the first admin key") == 1
    finally:
        server.stop()
    assert not server.problems()


def test_a_busy_port_stops_the_start(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "dashd", "--data-dir", str(tmp_path / "d"),
             "--listen", "tcp:%d:interface=127.0.0.1" % port],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "cannot start: cannot listen on 127.0.0.1:%d: [Errno 98] Address already in use" % port \
        in output
    assert "Traceback" not in output


@pytest.mark.parametrize("args, message", [
    (["--listen", "nonsense:1"], "nonsense"),
    (["--ping-interval", "-1"], "device.ping_interval: -1.0 must be 0 or more"),
    (["--config", "/no/such/file.toml"], "cannot read /no/such/file.toml"),
])
def test_bad_options_stop_the_start_with_a_message(tmp_path, args, message):
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "dashd", "--data-dir", str(tmp_path / "d")] + args,
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def _start_fails(tmp_path, args, config=None):
    command = [TWISTD, "-n", "--pidfile=", "dashd"]
    if config is not None:
        path = tmp_path / "dashd.toml"
        path.write_text(config)
        command += ["--config", str(path)]
    result = subprocess.run(command + args, capture_output=True, text=True, timeout=60,
                            cwd=str(tmp_path))
    assert result.returncode == 1
    return result.stdout + result.stderr


@pytest.mark.parametrize("args, config, message", [
    (["--listen", "tcpp:8080"], None,
     "cannot start: listen: 'tcpp:8080': Unknown endpoint type: 'tcpp'"),
    (["--listen", "ssl:0:privateKey=/no/key.pem:certKey=/no/cert.pem"], None,
     "cannot start: listen: 'ssl:0:privateKey=/no/key.pem:certKey=/no/cert.pem': "
     "cannot read /no/"),
    ([], "[rpc]\nmax_timeout = inf\n", "rpc.max_timeout: inf is not a finite number"),
    ([], "[rpc]\nmax_timeout = nan\n", "rpc.max_timeout: nan is not a finite number"),
    (["--ping-interval", "-1"], None, "cannot start: device.ping_interval: -1.0 must be 0 or more"),
])
def test_a_bad_configuration_is_one_line_naming_the_option(tmp_path, args, config, message):
    """No traceback, and none of twistd's usage text: the error alone."""
    output = _start_fails(tmp_path, ["--data-dir", str(tmp_path / "d")] + args, config)
    assert message in output
    assert "Traceback" not in output
    assert "Usage:" not in output and "--print-config" not in output
    assert len(output.strip().splitlines()) == 1, output
    assert not os.path.exists(tmp_path / "d")  # nothing was started


def test_an_uncreatable_data_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    output = _start_fails(tmp_path, ["--data-dir", str(blocker / "d"),
                                     "--listen", "tcp:0:interface=127.0.0.1"])
    assert "cannot start: data_dir: cannot create %s: Not a directory" % (blocker / "d") \
        in output
    assert "Traceback" not in output


def test_an_unreachable_postgresql_is_one_line_naming_store_url(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    output = _start_fails(tmp_path, ["--data-dir", str(tmp_path / "d"),
                                     "--listen", "tcp:0:interface=127.0.0.1"],
                          '[store]\nurl = "postgresql://dashd:secret@127.0.0.1:%d/dashd"\n'
                          'timeout = 1\n' % port)
    assert ("cannot start: store.url: cannot open the PostgreSQL store "
            "postgresql://dashd:***@127.0.0.1:%d/dashd: " % port) in output
    assert "Connection refused" in output
    assert "secret" not in output
    assert "Traceback" not in output


def test_bad_config_file_names_the_option(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[device]\nping_interval = "often"\n')
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "dashd", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "device.ping_interval: expected a number, got 'often'" in result.stdout + result.stderr


@pytest_twisted.ensureDeferred
async def test_restart_device_reconnects_with_its_shadow(own_server: DashdProcess):
    await own_server.start_async()
    admin = Client(own_server, own_server.admin_key)
    device_id, token = await admin.register()
    sim = await connect_device(own_server, token)
    try:
        await device_online(admin, device_id)
        await admin.post("/api/v2/devices/" + device_id,
                         {"shadow": {"state": {"desired": {"speed": 3}}, "tags": {"t": 1}}})
        await eventually(lambda: sim.reported.get("speed") == 3)
        before = await admin.device(device_id)

        closed = sim.wait_closed()
        own_server.stop()
        await within(closed)
        assert sim.close_code == 1001  # going away
        await own_server.start_async()

        await within(sim.wait_open(), 15)
        after = await device_online(admin, device_id)
        assert after["shadow"]["state"]["desired"] == {"speed": 3}
        assert after["shadow"]["state"]["reported"]["speed"] == 3
        assert after["shadow"]["tags"] == {"t": 1}
        assert after["shadow"]["version"] >= before["shadow"]["version"]
        reply = await admin.get("/api/v2/devices/%s/rpc/Sys.GetInfo" % device_id)
        assert reply.status == 200
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_kill_9_loses_nothing_acknowledged(own_server: DashdProcess):
    """Everything answered with a 200 (or a reply to the device) just before
    a SIGKILL is there after the restart."""
    await own_server.start_async()
    admin = Client(own_server, own_server.admin_key)
    device_id, token = await admin.register("survivor")
    sim = await connect_device(own_server, token, reconnect=False)
    await device_online(admin, device_id)

    # Many acknowledged writes in flight at once, REST and device side.
    rest = [
        Deferred.fromCoroutine(admin.post("/api/v2/devices/" + device_id,
                                          {"shadow": {"tags": {"k%d" % i: i}}}))
        for i in range(30)
    ]
    device_side = [
        sim.call("Dash.Shadow.Update", {"state": {"reported": {"r%d" % i: i}}})
        for i in range(30)
    ]
    replies = await within(gatherResults(rest), 20)
    assert all(r.status == 200 for r in replies)
    acks = await within(gatherResults(device_side), 20)
    assert all("version" in a for a in acks)
    created = await admin.post("/api/v2/keys", {"name": "late"})
    SECRETS.add(created.body["key"])
    own_server.kill9()

    await own_server.start_async()
    view = await admin.device(device_id)
    assert view["name"] == "survivor"
    assert all(view["shadow"]["tags"]["k%d" % i] == i for i in range(30))
    assert all(view["shadow"]["state"]["reported"]["r%d" % i] == i for i in range(30))
    assert view["shadow"]["version"] >= 60
    late = Client(own_server, created.body["key"])
    assert (await late.get("/api/v2/devices")).status == 200


def _schema_version(server: DashdProcess, version: int | None = None) -> int:
    """The schema version of the server's store (set first, if given)."""
    if server.store_url:
        import psycopg

        with psycopg.connect(server.store_url, autocommit=True) as conn:
            if version is not None:
                conn.execute("UPDATE dashd_schema SET version = %s", (version,))
            return conn.execute("SELECT version FROM dashd_schema").fetchone()[0]
    import sqlite3

    conn = sqlite3.connect(os.path.join(server.data_dir, "dashd.sqlite3"))
    try:
        if version is not None:
            conn.execute("PRAGMA user_version = %d" % version)
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def _store_content(server: DashdProcess) -> object:
    """What the store holds: the SQLite file's bytes; PostgreSQL's devices."""
    if server.store_url:
        import psycopg

        with psycopg.connect(server.store_url, autocommit=True) as conn:
            return conn.execute("SELECT * FROM devices ORDER BY id").fetchall()
    with open(os.path.join(server.data_dir, "dashd.sqlite3"), "rb") as f:
        return f.read()


@pytest_twisted.ensureDeferred
async def test_a_store_from_a_newer_dashd_is_not_touched(own_server: DashdProcess):
    """dashd refuses to start on a store whose schema is newer than the
    newest it knows (an older dashd cannot read a migrated store), says
    why, and leaves it as it was."""
    await own_server.start_async()
    admin = Client(own_server, own_server.admin_key)
    device_id, token = await admin.register("kept")
    sim = await connect_device(own_server, token, reconnect=False)
    await device_online(admin, device_id)
    await sim.stop()
    await device_online(admin, device_id, online=False)
    own_server.stop()
    known = _schema_version(own_server)
    _schema_version(own_server, 99)
    before = _store_content(own_server)

    own_server.spawn()
    await eventually(lambda: own_server.proc.poll() is not None, 20)
    assert own_server.proc.returncode == 1
    own_server.proc = None
    log = own_server.log()
    # One line naming the option that names the store.
    assert re.search(r"cannot start: (data_dir|store\.url): the store ", log)
    assert ("was written by a newer dashd (schema 99, this dashd knows %d): run that version, "
            "or restore a backup made for this one" % known) in log
    assert _schema_version(own_server) == 99
    assert _store_content(own_server) == before

    _schema_version(own_server, known)  # the version it is
    await own_server.start_async()
    assert (await admin.device(device_id))["name"] == "kept"
