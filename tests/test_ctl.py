"""
dashctl, run as a command against the data directory of a real dashd,
while it runs (keys and devices through its control socket, backup) and
while it is stopped (keys and devices on the store itself, restore).
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import sqlite3
import subprocess
import sys
import time
from typing import Any

import pytest
import pytest_twisted

from support import (
    SECRETS,
    Client,
    DashdProcess,
    connect_device,
    device_online,
    eventually,
    raw_handshake,
    sleep,
    subscribe,
    within,
    write_toml,
)

DASHCTL = os.path.join(os.path.dirname(sys.executable), "dashctl")


def dashctl(server: DashdProcess | None, *args: str, config: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [DASHCTL]
    if server is not None:
        command += ["--config", server.config_path]
    elif config is not None:
        command += ["--config", config]
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **(env or {})))


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith("dashctl: error: ")
    return result.stderr


@pytest_twisted.ensureDeferred
async def test_keys_create_list_revoke_while_dashd_runs(server: DashdProcess, admin: Client):
    created = json.loads(ok(dashctl(server, "--json", "keys", "create", "--name", "ci")))
    SECRETS.add(created["key"])
    assert created["name"] == "ci" and created["kind"] == "admin"
    new = Client(server, created["key"])
    assert (await new.get("/api/v2/devices")).status == 200  # at once

    listed = json.loads(ok(dashctl(server, "--json", "keys", "list")))
    assert created["id"] in [k["id"] for k in listed]
    assert "key" not in listed[0] and created["key"] not in ok(dashctl(server, "keys", "list"))

    text = ok(dashctl(server, "keys", "revoke", created["id"]))
    assert "revoked API key %s" % created["id"] in text
    assert (await new.get("/api/v2/devices")).status == 401  # at once


def test_keys_bad_input(server: DashdProcess):
    assert "no such key: knope" in error(dashctl(server, "keys", "revoke", "knope"))
    assert "--expires-in must be a number of days greater than 0" in error(
        dashctl(server, "keys", "create", "--expires-in", "-1"))
    assert "no such account: anope" in error(dashctl(server, "keys", "list", "--account", "anope"))
    usage = dashctl(server, "keys", "frobnicate")
    assert usage.returncode == 2 and "invalid choice: 'frobnicate'" in usage.stderr
    # The account's last admin key stays.
    keys = json.loads(ok(dashctl(server, "--json", "keys", "list")))
    admins = [k for k in keys if k["kind"] == "admin"]
    for key in admins[1:]:
        ok(dashctl(server, "keys", "revoke", key["id"]))
    assert "last admin key" in error(dashctl(server, "keys", "revoke", admins[0]["id"]))


@pytest_twisted.ensureDeferred
async def test_devices_register_rotate_delete_while_dashd_runs(server: DashdProcess,
                                                               admin: Client):
    registered = json.loads(ok(dashctl(server, "--json", "devices", "register",
                                       "--name", "from-cli")))
    device_id, token = registered["id"], registered["token"]
    SECRETS.add(token)
    assert token.startswith(device_id + "-")
    listed = json.loads(ok(dashctl(server, "--json", "devices", "list")))
    assert {"id": device_id, "name": "from-cli"}.items() <= [
        d for d in listed if d["id"] == device_id][0].items()
    assert device_id in ok(dashctl(server, "devices", "list"))

    sim = await connect_device(server, token, reconnect=False)
    await device_online(admin, device_id)
    await sim.stop()

    rotated = json.loads(ok(dashctl(server, "--json", "devices", "rotate-token", device_id)))
    SECRETS.add(rotated["token"])
    old = await raw_handshake(server, headers={"Authorization": "Bearer " + token})
    assert (old.status, old.error["message"]) == (401, "unknown device token")
    sim = await connect_device(server, rotated["token"], reconnect=False)
    await device_online(admin, device_id)
    await sim.stop()

    assert "deleted device %s" % device_id in ok(dashctl(server, "devices", "delete", device_id))
    assert (await admin.get("/api/v2/devices/" + device_id)).status == 404


def test_devices_bad_input(server: DashdProcess):
    assert "no such device: dnope" in error(dashctl(server, "devices", "delete", "dnope"))
    assert "no such device: dnope" in error(dashctl(server, "devices", "rotate-token", "dnope"))
    assert "--name must be a non-empty string" in error(
        dashctl(server, "devices", "register", "--name", "   "))
    assert "--name must be at most 128 characters" in error(
        dashctl(server, "devices", "register", "--name", "x" * 129))


def test_config_prints_the_effective_configuration(server: DashdProcess, tmp_path):
    text = ok(dashctl(server, "--data-dir", "/srv/elsewhere", "config"))
    assert 'data_dir = "/srv/elsewhere"' in text
    assert "ping_interval = 1.0  # default: 30.0" in text  # from the test's file
    assert server.config_path in text.splitlines()[0]
    # $DASHD_CONFIG is the default file.
    text = ok(dashctl(None, "config", env={"DASHD_CONFIG": server.config_path}))
    assert 'data_dir = "%s"' % server.data_dir in text
    bad = tmp_path / "bad.toml"
    bad.write_text("[rpc]\nmax_timeout = -1\n")
    assert "rpc.max_timeout: -1 must be greater than 0" in error(
        dashctl(None, "config", config=str(bad)))


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)  # the SQLite store
def test_refuses_a_missing_or_foreign_data_dir(server: DashdProcess, tmp_path):
    assert "no data directory at %s" % (tmp_path / "none") in error(
        dashctl(server, "--data-dir", str(tmp_path / "none"), "devices", "list"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no store at" in error(dashctl(server, "--data-dir", str(empty), "keys", "list"))
    # A directory that belongs to another user, whoever runs the tests:
    # made and given away as root, else the root directory (root's).
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        os.chown(foreign, 65534, 65534)
    else:
        foreign = "/"
    uid = os.stat(foreign).st_uid
    try:
        owner = pwd.getpwuid(uid).pw_name
    except KeyError:
        owner = str(uid)
    message = error(dashctl(server, "--data-dir", str(foreign), "keys", "list"))
    assert "belongs to user %s: run dashctl as that user (sudo -u %s dashctl" % (owner, owner) \
        in message


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)  # the SQLite store
def test_refuses_a_store_of_another_schema(server: DashdProcess, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ok(dashctl(server, "backup", str(data / "dashd.sqlite3")))
    conn = sqlite3.connect(data / "dashd.sqlite3")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    assert "newer dashd (schema 99" in error(dashctl(server, "--data-dir", str(data),
                                                     "keys", "list"))


@pytest.mark.parametrize("own_server", ["sqlite"], indirect=True)  # the SQLite store
@pytest_twisted.ensureDeferred
async def test_backup_while_running_and_restore_while_stopped(own_server: DashdProcess,
                                                              tmp_path):
    await own_server.start_async()
    admin = Client(own_server, own_server.admin_key)
    kept_id, kept_token = await admin.register("kept")
    sim = await connect_device(own_server, kept_token)
    await device_online(admin, kept_id)
    await admin.post("/api/v2/devices/" + kept_id, {"shadow": {"tags": {"v": 1}}})

    backup = tmp_path / "backup.sqlite3"
    text = ok(dashctl(own_server, "backup", str(backup)))  # dashd runs, device online
    assert "backed up 1 device(s) and 1 key(s) to %s" % backup in text
    assert oct(os.stat(backup).st_mode & 0o777) == "0o600"
    assert not os.path.exists(str(backup) + "-wal")
    assert "exists already" in error(dashctl(own_server, "backup", str(backup)))
    as_json = tmp_path / "backup-json.sqlite3"
    printed = json.loads(ok(dashctl(own_server, "--json", "backup", str(as_json))))
    assert printed["file"] == str(as_json) and (printed["devices"], printed["keys"]) == (1, 1)
    assert isinstance(printed["schema"], int)

    late_id, _ = await admin.register("after the backup")
    await admin.post("/api/v2/devices/" + kept_id, {"shadow": {"tags": {"v": 2}}})
    assert "stop dashd first" in error(dashctl(own_server, "restore", str(backup)))

    await sim.stop()
    own_server.stop()
    not_a_store = tmp_path / "junk.sqlite3"
    not_a_store.write_bytes(b"this is not a database" * 100)
    assert "is not a dashd store" in error(dashctl(own_server, "restore", str(not_a_store)))
    assert "no such file" in error(dashctl(own_server, "restore", str(tmp_path / "none")))
    text = ok(dashctl(own_server, "restore", str(backup)))
    assert "restored 1 device(s) and 1 key(s)" in text
    previous = [f for f in os.listdir(own_server.data_dir) if ".before-restore-" in f]
    assert len(previous) == 1 and previous[0] in text

    await own_server.start_async()
    assert (await admin.get("/api/v2/devices/" + late_id)).status == 404
    view = await admin.device(kept_id)
    assert view["shadow"]["tags"] == {"v": 1}
    # The store it replaced is intact beside it.
    conn = sqlite3.connect(os.path.join(own_server.data_dir, previous[0]))
    names = {r[0] for r in conn.execute("SELECT name FROM devices")}
    conn.close()
    assert names == {"kept", "after the backup"}


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_on_postgresql_backup_is_pg_dump_s_and_schemas_are_checked(server: DashdProcess,
                                                                   tmp_path):
    import psycopg

    assert "use pg_dump and pg_restore" in error(dashctl(server, "backup", "/tmp/x"))
    assert "use pg_dump and pg_restore" in error(dashctl(server, "restore", "/tmp/x"))
    # A machine where no dashd runs on that store: dashctl works on the
    # store itself, and checks its schema first (a running dashd checked
    # its own when it started).
    elsewhere = tmp_path / "elsewhere.toml"
    write_toml(str(elsewhere), {"data_dir": str(tmp_path / "data"),
                                "store": {"url": server.store_url}})
    with psycopg.connect(server.store_url, autocommit=True) as conn:
        (version,) = conn.execute("SELECT version FROM dashd_schema").fetchone()
        conn.execute("UPDATE dashd_schema SET version = 99")
        try:
            assert "newer dashd (schema 99" in error(
                dashctl(None, "keys", "list", config=str(elsewhere)))
        finally:
            conn.execute("UPDATE dashd_schema SET version = %s", (version,))
    assert server.admin_key.split(".")[0] in ok(dashctl(None, "keys", "list",
                                                        config=str(elsewhere)))


# dashctl through the running dashd (its control socket), and on the store
# itself when dashd is stopped: the same use cases as the REST API.


@pytest_twisted.ensureDeferred
async def test_dashctl_revoke_respects_expiry(own_server: DashdProcess):
    """With one live admin key and one expired, the live one is the last
    that opens anything: dashctl refuses to revoke it, as the REST API does,
    whether dashd runs or not."""
    await own_server.start_async()
    admin = Client(own_server, own_server.admin_key)
    reply = await admin.post("/api/v2/keys", {"name": "brief", "expires": time.time() + 1.0})
    assert reply.status == 200, reply
    SECRETS.add(reply.body["key"])
    await sleep(1.2)
    live = own_server.admin_key.split(".")[0]
    assert (await admin.delete("/api/v2/keys/" + live)).status == 409
    message = error(dashctl(own_server, "keys", "revoke", live))
    assert "%s is the account's last admin key; create another first" % live in message
    own_server.stop()
    message = error(dashctl(own_server, "keys", "revoke", live))
    assert "%s is the account's last admin key; create another first" % live in message
    await own_server.start_async()
    assert (await admin.get("/api/v2/devices")).status == 200


@pytest_twisted.ensureDeferred
async def test_dashctl_revoke_closes_the_key_s_streams_at_once(server: DashdProcess,
                                                               admin: Client):
    created = json.loads(ok(dashctl(server, "--json", "keys", "create", "--name", "watcher")))
    SECRETS.add(created["key"])
    watcher = Client(server, created["key"])
    assert (await watcher.get("/api/v2/devices")).status == 200  # cached by dashd now
    subscriber = await subscribe(server, created["key"])
    text = ok(dashctl(server, "keys", "revoke", created["id"]))
    assert text == "revoked API key %s; it opens nothing from now on\n" % created["id"]
    assert await within(subscriber.closed, 5) == (4001, "API key revoked")
    reply = await watcher.get("/api/v2/devices")  # at once, not once the cache expires
    assert (reply.status, reply.error["message"]) == (401, "unknown API key")


@pytest_twisted.ensureDeferred
async def test_dashctl_rotate_and_delete_cut_the_device_s_connection(server: DashdProcess,
                                                                     admin: Client):
    device_id, token = await admin.register("to be cut")
    # Why each connection ended, as dashd says it (on a busy machine the
    # close frame itself may be lost to the closing handshake's timeout).
    watcher = await subscribe(server, server.admin_key)
    offline = lambda e: e["name"] == "offline" and e["id"] == device_id  # noqa: E731
    sim = await connect_device(server, token, reconnect=False)
    await device_online(admin, device_id)
    closed = sim.wait_closed()
    rotated = json.loads(ok(dashctl(server, "--json", "devices", "rotate-token", device_id)))
    SECRETS.add(rotated["token"])
    await within(closed, 5)
    assert (await watcher.next(offline))["data"] == {"reason": "device token rotated"}
    await device_online(admin, device_id, online=False)

    sim = await connect_device(server, rotated["token"], reconnect=False)
    await device_online(admin, device_id)
    closed = sim.wait_closed()
    ok(dashctl(server, "devices", "delete", device_id))
    await within(closed, 5)
    assert (await watcher.next(offline))["data"] == {"reason": "device deleted"}
    reply = await admin.get("/api/v2/devices/%s/rpc/Sys.GetInfo" % device_id)
    assert (reply.status, reply.error["message"]) == (404, "no such device: %s" % device_id)
    watcher.close()


@pytest_twisted.ensureDeferred
async def test_dashctl_changes_are_in_the_audit_log(server: DashdProcess, admin: Client):
    registered = json.loads(ok(dashctl(server, "--json", "devices", "register")))
    SECRETS.add(registered["token"])
    ok(dashctl(server, "devices", "delete", registered["id"]))

    async def mine() -> Any:
        # Audit entries are stored shortly after the answer (dashd.app.audit).
        entries = (await admin.get("/api/v2/audit?start=-50&limit=50")).body["entries"]
        found = [(e["key_id"], e["method"], e["path"], e["status"]) for e in entries
                 if e["device_id"] == registered["id"]]
        return found if len(found) >= 2 else None

    assert await eventually(mine) == [
        ("dashctl", "DASHCTL", "devices register %s" % registered["id"], 200),
        ("dashctl", "DASHCTL", "devices delete %s" % registered["id"], 200),
    ]


@pytest.mark.parametrize("own_server", ["sqlite"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_with_dashd_stopped_dashctl_works_on_the_store(own_server: DashdProcess):
    await own_server.start_async()
    own_server.stop()
    assert not os.path.exists(os.path.join(own_server.data_dir, "control.sock"))
    registered = json.loads(ok(dashctl(own_server, "--json", "devices", "register",
                                       "--name", "offline")))
    SECRETS.add(registered["token"])
    created = json.loads(ok(dashctl(own_server, "--json", "keys", "create")))
    SECRETS.add(created["key"])
    ok(dashctl(own_server, "keys", "revoke", created["id"]))
    await own_server.start_async()
    admin = Client(own_server, own_server.admin_key)
    assert (await admin.device(registered["id"]))["name"] == "offline"
    assert (await Client(own_server, created["key"]).get("/api/v2/devices")).status == 401


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
def test_control_socket_answers_bad_requests_and_carries_on(server: DashdProcess):
    path = os.path.join(server.data_dir, "control.sock")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"

    def ask(*lines: bytes) -> list[dict]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(path)
            sock.sendall(b"".join(lines))
            received = b""
            while received.count(b"\n") < len(lines):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        return [json.loads(line) for line in received.splitlines()]

    assert ask(b"{{{\n", b'["keys list"]\n', b'{"command": "keys frobnicate"}\n',
               b'{"command": "keys list", "args": 3}\n',
               b'{"command": "keys revoke", "args": {"key_id": "knope"}}\n') == [
        {"error": {"kind": "Invalid", "message":
                   "the request is not JSON: Expecting property name enclosed in double "
                   "quotes: line 1 column 2 (char 1)"}},
        {"error": {"kind": "Invalid",
                   "message": 'a request is {"command": NAME, "args": {...}}'}},
        {"error": {"kind": "Invalid", "message": "unknown command: keys frobnicate",
                   "field": "command"}},
        {"error": {"kind": "Invalid", "message": "the arguments must be a JSON object",
                   "field": "args"}},
        {"error": {"kind": "NotFound", "message": "no such key: knope"}},
    ]
    [too_long] = ask(b'{"command": "' + b"x" * 70000 + b'"}\n')
    assert too_long == {"error": {"kind": "Invalid", "message": "the request is over 65536 bytes"}}
    [listed] = ask(b'{"command": "keys list"}\n')
    assert server.admin_key.split(".")[0] in [k["id"] for k in listed["result"]]


# Sessions and data ranges (issue 19)


@pytest_twisted.ensureDeferred
async def test_sessions_list_and_revoke_while_dashd_runs(server: DashdProcess, admin: Client):
    from test_sessions import browser, mint, new_key

    key_id, key = await new_key(admin, name="ctl-sessions")
    owner = Client(server, key)
    _, first, first_csrf = await mint(owner)
    _, second, second_csrf = await mint(owner)
    listed = json.loads(ok(dashctl(server, "--json", "sessions", "list", "--key", key_id)))
    assert len(listed) == 2 and {s["key_id"] for s in listed} == {key_id}
    assert all(s["key_name"] == "ctl-sessions" and s["expires"] > time.time() for s in listed)
    text = ok(dashctl(server, "sessions", "list"))
    assert "SIGNED IN" in text and listed[0]["id"] in text
    # Never a secret, nor the hash dashd checks them against.
    for secret in (first, second, first_csrf, second_csrf):
        assert secret not in text and tokens_hash(secret) not in text
    client, headers = browser(server, first, first_csrf)
    assert (await client.get("/api/v2/whoami", headers=headers)).status == 200
    mine = [s for s in listed if s["id"] == tokens_hash(first)[:16]]
    assert len(mine) == 1
    text = ok(dashctl(server, "sessions", "revoke", mine[0]["id"]))
    assert text == "ended session %s of key %s: its browser is signed out\n" % (mine[0]["id"],
                                                                                 key_id)
    # At once (not when this node's cache of sessions would look again).
    assert (await client.get("/api/v2/whoami", headers=headers)).status == 401
    other, other_headers = browser(server, second, second_csrf)
    assert (await other.get("/api/v2/whoami", headers=other_headers)).status == 200
    assert "no such session: %s" % mine[0]["id"] in error(
        dashctl(server, "sessions", "revoke", mine[0]["id"]))
    assert "16 hex digits" in error(dashctl(server, "sessions", "revoke", "abc"))
    assert "name a session" in error(dashctl(server, "sessions", "revoke"))
    # Every session of a key.
    ended = json.loads(ok(dashctl(server, "--json", "sessions", "revoke", "--key", key_id)))
    assert [s["id"] for s in ended] == [tokens_hash(second)[:16]]
    assert (await other.get("/api/v2/whoami", headers=other_headers)).status == 401
    assert json.loads(ok(dashctl(server, "--json", "sessions", "list", "--key", key_id))) == []
    assert ok(dashctl(server, "sessions", "revoke", "--key", key_id)) == (
        "no session ended (the key had none)\n")

    async def audited() -> bool:
        entries = (await admin.get("/api/v2/audit?start=-50&limit=50")).body["entries"]
        return any(e["path"] == "sessions revoke " + mine[0]["id"] and e["key_id"] == "dashctl"
                   for e in entries)

    await eventually(audited)


def tokens_hash(secret: str) -> str:
    from dashd.domain import tokens

    return tokens.hash_secret(secret)


@pytest_twisted.ensureDeferred
async def test_data_range_in_buckets_and_raw_points(server: DashdProcess, admin: Client):
    device_id, token = await admin.register("ctl-ranges")
    reply = await admin.post("/api/v2/devices/" + device_id,
                             {"shadow": {"tags": {"save": ["temp", "env.hum"]}}})
    assert reply.status == 200, reply
    sim = await connect_device(server, token)
    await device_online(admin, device_id)
    for i in range(6):
        await within(sim.report({"temp": 20 + i, "env": {"hum": 40 + i}, "door": "open"}))
    await sim.stop()

    async def stored() -> bool:
        reply = await admin.get("/api/v2/devices/%s/data?limit=100" % device_id)
        return len(reply.body) == 12

    await eventually(stored)
    answer = json.loads(ok(dashctl(server, "--json", "data", "range", "--device", device_id,
                                   "--from", "-1h", "--bucket", "1h")))
    assert answer["bucket"] == 3600 and abs(answer["to"] - time.time()) < 30
    assert abs(answer["to"] - answer["from"] - 3600) < 1e-6
    series = {s["key"]: s for s in answer["series"]}
    assert sorted(series) == ["env.hum", "temp"]
    assert sum(series["temp"]["count"]) == 6
    assert min(series["temp"]["min"]) == 20 and max(series["temp"]["max"]) == 25
    # As GET /api/v2/data answers.
    reply = await admin.get("/api/v2/data?from=%r&to=%r&bucket=3600&device=%s"
                            % (answer["from"], answer["to"], device_id))
    assert reply.status == 200 and reply.body["series"] == answer["series"], reply
    text = ok(dashctl(server, "data", "range", "--device", device_id, "--key", "env",
                      "--bucket", "3600"))
    assert "in buckets of 3600 s: 1 series" in text
    assert "DEVICE" in text and "env.hum" in text and "temp" not in text.split("\n", 1)[1]
    # Raw points, time order, and where to go on.
    text = ok(dashctl(server, "data", "range", "--device", device_id, "--key", "temp",
                      "--limit", "4"))
    lines = text.splitlines()
    assert lines[0].endswith(": 4 points") and lines[1].split() == ["DEVICE", "KEY", "TIME",
                                                                      "VALUE"]
    assert [line.split()[-1] for line in lines[2:6]] == ["20", "21", "22", "23"]
    assert lines[6].startswith("more: --from ")
    rest = json.loads(ok(dashctl(server, "--json", "data", "range", "--device", device_id,
                                 "--key", "temp", "--from", lines[6].split()[-1])))
    assert [v for s in rest["series"] for v in s["value"]] == [24, 25]
    # Refusals name the option.
    assert "--bucket must be a whole number" in error(dashctl(
        server, "data", "range", "--device", device_id, "--bucket", "1.5"))
    assert "--from must be before to" in error(dashctl(
        server, "data", "range", "--device", device_id, "--from", "-1h", "--to", "-2h"))
    assert "no such device" in error(dashctl(server, "data", "range", "--device", "nosuch"))
    result = dashctl(server, "data", "range", "--from", "yesterday")
    assert result.returncode == 2 and "'yesterday' is not a time" in result.stderr
