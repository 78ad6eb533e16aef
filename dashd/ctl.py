"""
``dashctl``: dashd's administration command.

    dashctl config                     the effective configuration
    dashctl keys list|create|revoke    API keys
    dashctl devices list|register|delete|rotate-token
    dashctl sessions list|revoke       the dashboard's sign-in sessions
    dashctl data range                 stored data of a time range (buckets)
    dashctl backup FILE                an online copy of the store
    dashctl restore FILE               put a copy back (dashd stopped)

The configuration (for ``data_dir``) comes from ``--config FILE``, else
``$DASHD_CONFIG``, else ``/etc/dashd/dashd.toml`` if it exists; run it as
the user dashd runs as (``sudo -u dashd dashctl ...``): it refuses to touch
a data directory that belongs to someone else, since files it created there
(the store's ``-wal`` and ``-shm``) would lock dashd out.

Keys and devices: while dashd runs, dashctl asks it to act, over the
control socket in the data directory (L{dashd.ops.control}), so every
command has the effects the REST API's has: a revoked key opens nothing
from that moment and its notification streams are closed, a rotated or
deleted device's connection is cut, on every node of a cluster; changes
are in the audit log, by ``dashctl``. With dashd stopped, dashctl does the
same on the store itself, holding the data directory's lock meanwhile (so
dashd cannot start under it); nothing is connected then, so nothing more
is needed. In a cluster (``cluster.redis_url``) with no node running on
this machine, ``keys revoke``, ``devices delete`` and ``devices
rotate-token`` are refused: other nodes may hold the streams and
connections they must cut; run dashctl where a node runs.

``backup`` uses SQLite's online backup API: a consistent snapshot, taken
while dashd goes on writing. ``restore`` needs dashd stopped (it takes the
data directory's lock, which a running dashd holds) and keeps the store it
replaces beside it. On PostgreSQL they are pg_dump's and pg_restore's.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import socket
import sqlite3
import sys
import time
from typing import Any

from dashd import config as configuration
from dashd.ops.datadir import CONTROL_SOCKET, DATABASE_FILE, DataDirInUse, DataDirLock

# Twisted and the rest of dashd are imported by the commands that use them,
# so that dashctl starts quickly.

DEFAULT_CONFIG = "/etc/dashd/dashd.toml"
# Seconds dashctl waits for a running dashd's answer.
CONTROL_TIMEOUT = 60.0


class Failed(Exception):
    """What went wrong, for the user; dashctl exits with 1."""


# Configuration and the data directory


def load_config(args: argparse.Namespace) -> tuple[configuration.Config, str | None]:
    path = args.config or os.environ.get("DASHD_CONFIG")
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    overrides = {"data_dir": args.data_dir} if args.data_dir else {}
    try:
        return configuration.load(path, overrides), path
    except configuration.ConfigError as e:
        raise Failed(str(e))


def _owner(path: str) -> str:
    uid = os.stat(path).st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_data_dir(data_dir: str, need_store: bool = True) -> str:
    """The store's path, once the data directory proves usable by us."""
    if not os.path.isdir(data_dir):
        raise Failed("no data directory at %s (dashd creates it on its first start; "
                     "is data_dir right? see dashctl config)" % os.path.abspath(data_dir))
    check_owner(data_dir)
    path = os.path.join(data_dir, DATABASE_FILE)
    if need_store and not os.path.exists(path):
        raise Failed("no store at %s (dashd creates it on its first start)" % path)
    return path


def check_owner(data_dir: str) -> None:
    if os.stat(data_dir).st_uid != os.geteuid():
        raise Failed(
            "%s belongs to user %s: run dashctl as that user (sudo -u %s dashctl ...), "
            "so that dashd can still use every file dashctl creates there"
            % (data_dir, _owner(data_dir), _owner(data_dir))
        )


def latest_schema() -> int:
    from dashd.store.sqlite import migrations

    return max(number for number, _ in migrations())


def schema_version(path: str) -> int:
    try:
        conn = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10)
        try:
            return conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise Failed("%s is not a readable SQLite database: %s" % (path, e))


def check_schema(path: str) -> None:
    version, latest = schema_version(path), latest_schema()
    if version < latest:
        raise Failed(
            "the store's schema is version %d, this dashctl's is %d: start the new dashd "
            "once (it migrates the store on start), then retry" % (version, latest)
        )
    if version > latest:
        raise Failed(
            "the store was written by a newer dashd (schema %d, this dashctl knows %d): "
            "use that version's dashctl" % (version, latest)
        )


# Output


def _when(t: float | None) -> str:
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()
             for r in [header] + rows]
    return "\n".join(lines)


# Keys and devices: through dashd, or on its stopped store


def console_request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The console command (L{dashd.app.console}) the arguments ask for."""
    command = "%s %s" % (args.area, args.action)
    given = {name: getattr(args, name, None)
             for name in ("account", "name", "expires_in", "key_id", "device_id", "shared_with",
                          "job_id", "state", "alarm_id", "severity", "device", "note",
                          "session_id", "key", "start", "end", "bucket", "limit", "force")}
    return command, {k: v for k, v in given.items() if v is not None}


# What the console's argument names are on the command line.
OPTIONS = {"name": "--name", "expires_in": "--expires-in", "shared_with": "--shared-with",
           "account": "--account", "state": "--state", "severity": "--severity",
           "device": "--device", "note": "--note",
           "from": "--from", "to": "--to", "bucket": "--bucket", "limit": "--limit",
           "key": "--key"}


def refusal(error: dict[str, Any]) -> str:
    """A refusal's message, naming the option it is about as it is typed."""
    message = str(error.get("message", "failed"))
    option = OPTIONS.get(str(error.get("field")))
    if option is not None and message.startswith(str(error["field"]) + " "):
        message = option + message[len(error["field"]):]
    return message


def ask_dashd(path: str, command: str, arguments: dict[str, Any]) -> dict[str, Any] | None:
    """The running dashd's answer, or None if none listens at C{path}."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(CONTROL_TIMEOUT)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except OSError as e:
            raise Failed("cannot reach dashd's control socket %s: %s" % (path, e))
        sock.sendall(json.dumps({"command": command, "args": arguments}).encode() + b"\n")
        received = b""
        while not received.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise Failed("dashd closed its control socket without an answer (is it "
                             "stopping?)")
            received += chunk
    except socket.timeout:
        raise Failed("dashd did not answer on its control socket within %g s" % CONTROL_TIMEOUT)
    finally:
        sock.close()
    answer = json.loads(received)
    if not isinstance(answer, dict):
        raise Failed("dashd's control socket answered %r" % received[:100])
    return answer


def run_console_command(config: configuration.Config, store_path: str | None,
                        args: argparse.Namespace, out: Any) -> None:
    """C{store_path}: the SQLite store, or None for PostgreSQL's."""
    from dashd.app import console

    data_dir = config["data_dir"]
    command, arguments = console_request(args)
    socket_path = os.path.join(data_dir, CONTROL_SOCKET)
    answer = ask_dashd(socket_path, command, arguments)
    if answer is None:
        lock = DataDirLock(data_dir) if os.path.isdir(data_dir) else None
        if lock is not None:
            try:
                lock.acquire()
            except DataDirInUse as e:
                raise Failed("%s, which does not answer on its control socket %s (is it "
                             "starting or stopping?)" % (e, socket_path))
        try:
            if config["cluster.redis_url"] and command in console.LIVE_EFFECTS:
                raise Failed(
                    "no dashd runs on this machine, and this store is shared by a cluster: "
                    "other nodes may hold what '%s' must cut; run dashctl where a node runs"
                    % command)
            answer = run_on_store(store_path, config, command, arguments)
        finally:
            if lock is not None:
                lock.release()
    if "error" in answer:
        raise Failed(refusal(answer["error"]))
    result = answer["result"]
    if args.json:
        out.write(json.dumps(result, indent=2) + "\n")
    else:
        out.write(TEXT[command](result))


def _keys_text(keys: list[dict[str, Any]]) -> str:
    rows = [[k["id"], k["name"] or "-", k["kind"], _when(k["created"]), _when(k["expires"])]
            for k in keys]
    return _table(rows, ["ID", "NAME", "KIND", "CREATED", "EXPIRES"]) + "\n"


def _devices_text(devices: list[dict[str, Any]]) -> str:
    rows = [[d["id"], d["name"], d["account_id"], _when(d["last_seen"]),
             str(d["info"].get("fw_version", "-"))] for d in devices]
    return _table(rows, ["ID", "NAME", "ACCOUNT", "LAST SEEN", "FIRMWARE"]) + "\n"


def _job_text(job: dict[str, Any]) -> str:
    progress = job["progress"]
    counts = ", ".join("%s %d" % (state, n) for state, n in progress.items()
                       if n and state != "total")
    reason = job.get("reason") or {}
    return "job %s (%s): %s, %d devices%s%s\n" % (
        job["id"], job["name"], job["state"], progress["total"],
        ": " + counts if counts else "",
        " (%s)" % reason["message"] if reason.get("message") else "")


def _jobs_text(jobs: list[dict[str, Any]]) -> str:
    rows = [[j["id"], j["name"], j["state"], j["action"]["type"], str(j["progress"]["total"]),
             str(j["progress"]["succeeded"]),
             str(j["progress"]["failed"] + j["progress"]["timed_out"]), _when(j["created"])]
            for j in jobs]
    return _table(rows, ["ID", "NAME", "STATE", "ACTION", "DEVICES", "SUCCEEDED", "FAILED",
                         "CREATED"]) + "\n"


def _executions_text(executions: list[dict[str, Any]]) -> str:
    rows = [[e["device_id"], e["state"], str(e["attempts"]),
             e.get("reason") or (e.get("error") or {}).get("message") or ""]
            for e in executions]
    return _table(rows, ["DEVICE", "STATE", "ATTEMPTS", "WHY"]) + "\n"


def _alarms_text(alarms: list[dict[str, Any]]) -> str:
    rows = [[a["id"], a["severity"], a["state"] + (" acked" if a["acknowledged"] else ""),
             a["device_id"], _when(a["raised"]), a["message"][:60]] for a in alarms]
    return _table(rows, ["ID", "SEVERITY", "STATE", "DEVICE", "RAISED", "MESSAGE"]) + "\n"


def _sessions_text(sessions: list[dict[str, Any]]) -> str:
    rows = [[s["id"], s["key_id"], s["key_name"] or "-", s["account_id"], _when(s["created"]),
             _when(s["expires"])] for s in sessions]
    return _table(rows, ["ID", "KEY", "KEY NAME", "ACCOUNT", "SIGNED IN", "EXPIRES"]) + "\n"


def _ended_text(sessions: list[dict[str, Any]]) -> str:
    if not sessions:
        return "no session ended (the key had none)\n"
    return "".join("ended session %s of key %s: its browser is signed out\n"
                   % (s["id"], s["key_id"]) for s in sessions)


def _number_text(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "%.6g" % v
    return json.dumps(v)


def _range_text(answer: dict[str, Any]) -> str:
    series = answer["series"]
    head = "from %s to %s" % (_when(answer["from"]), _when(answer["to"]))
    if answer["bucket"] is not None:
        rows = [[s["device_id"], s["key"], _when(t), str(n), _number_text(lo),
                 _number_text(hi), _number_text(avg)]
                for s in series
                for t, n, lo, hi, avg in zip(s["t"], s["count"], s["min"], s["max"], s["avg"])]
        text = "%s, in buckets of %d s: %d series\n" % (head, answer["bucket"], len(series))
        if rows:
            text += _table(rows, ["DEVICE", "KEY", "BUCKET", "COUNT", "MIN", "MAX", "AVG"]) + "\n"
        return text
    points = sorted(((t, s["device_id"], s["key"], v) for s in series
                     for t, v in zip(s["t"], s["value"])), key=lambda p: p[0])
    text = "%s: %d points\n" % (head, len(points))
    if points:
        rows = [[d, k, _when(t), json.dumps(v)] for t, d, k, v in points]
        text += _table(rows, ["DEVICE", "KEY", "TIME", "VALUE"]) + "\n"
    if answer.get("next") is not None:
        text += "more: --from %r\n" % answer["next"]
    return text


TEXT = {
    "sessions list": _sessions_text,
    "sessions revoke": _ended_text,
    "data range": _range_text,
    "jobs list": _jobs_text,
    "jobs show": _job_text,
    "jobs executions": _executions_text,
    "jobs pause": _job_text,
    "jobs resume": _job_text,
    "jobs cancel": _job_text,
    "jobs retry": _job_text,
    "jobs delete": lambda j: "deleted job %s\n" % j["id"],
    "alarms list": _alarms_text,
    "alarms acknowledge": lambda a: "acknowledged alarm %s (%s)\n" % (a["id"], a["message"]),
    "alarms clear": lambda a: "cleared alarm %s (%s)\n" % (a["id"], a["message"]),
    "keys list": _keys_text,
    "keys create": lambda k: ("created API key %s (account %s); its secret, shown this once:"
                              "\n%s\n" % (k["id"], k["account_id"], k["key"])),
    "keys revoke": lambda r: "revoked API key %s; it opens nothing from now on\n" % r["id"],
    "devices list": _devices_text,
    "devices register": lambda d: ("registered device %s (%s); its token, shown this once:"
                                   "\n%s\n" % (d["id"], d["name"], d["token"])),
    "devices delete": lambda d: "deleted device %s\n" % d["id"],
    "devices rotate-token": lambda d: (
        "new token for device %s, shown this once (the old one opens nothing from now on, "
        "and a connection made with it is closed):\n%s\n" % (d["id"], d["token"])),
}


def open_store(path: str | None, config: configuration.Config, reactor: Any) -> Any:
    """The SQLite store at C{path}, or (C{path} None) the PostgreSQL store
    of C{store.url}, which dashctl never migrates."""
    if path is not None:
        from dashd.store.sqlite import SQLiteStore

        return SQLiteStore(path, reactor)
    from dashd.store.postgres import PostgresStore

    return PostgresStore(config["store.url"], reactor, pool_size=2,
                         timeout=config["store.timeout"], migrate=False)


def check_postgres_schema(config: configuration.Config) -> None:
    from dashd.store import StoreError
    from dashd.store.postgres import migrations, redact, schema_version

    url = config["store.url"]
    try:
        version = schema_version(url, config["store.timeout"])
    except StoreError as e:
        raise Failed(str(e))
    latest = max(number for number, _ in migrations())
    if version == 0:
        raise Failed("no dashd store in %s (dashd creates it on its first start)" % redact(url))
    if version < latest:
        raise Failed(
            "the store's schema is version %d, this dashctl's is %d: start the new dashd "
            "once (it migrates the store on start), then retry" % (version, latest)
        )
    if version > latest:
        raise Failed(
            "the store was written by a newer dashd (schema %d, this dashctl knows %d): "
            "use that version's dashctl" % (version, latest)
        )


def run_on_store(path: str | None, config: configuration.Config, command: str,
                 arguments: dict[str, Any]) -> dict[str, Any]:
    """Run a console command on the store itself (no dashd runs here): the
    application over it, with nothing connected. Answer as dashd's control
    socket does."""
    from twisted.internet import task
    from twisted.internet.defer import ensureDeferred

    if path is None:
        check_postgres_schema(config)
    else:
        check_schema(path)
    answers: list[dict[str, Any]] = []

    async def main(reactor: Any) -> None:
        from dashd.app import console
        from dashd.app.application import build_application
        from dashd.app.auth import Authenticator
        from dashd.app.fleet import Fleet
        from dashd.channel.hub import LocalHub
        from dashd.channel.router import LocalRouter
        from dashd.domain.errors import DomainError, to_wire

        store = open_store(path, config, reactor)
        store.start()
        try:
            fleet = Fleet(store, LocalRouter(), LocalHub(), reactor, config)
            app = build_application(fleet, Authenticator(store, reactor))
            try:
                done = await console.run(app, command, arguments)
            except DomainError as e:
                answers.append({"error": to_wire(e)})
            else:
                answers.append({"result": done.result})
        finally:
            await store.stop()

    try:
        task.react(lambda reactor: ensureDeferred(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise Failed("the command failed")
    if not answers:
        raise Failed("the command failed")
    return answers[0]


# Backup and restore (plain sqlite3: no reactor needed)


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(source: sqlite3.Connection, target_path: str) -> None:
    """A consistent copy of C{source} in C{target_path}, one self-contained
    file (no -wal), checked and on disk."""
    fd = os.open(target_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    target = sqlite3.connect(target_path, isolation_level=None)
    try:
        source.backup(target)  # one step: a snapshot of one read transaction
        target.execute("PRAGMA journal_mode = DELETE")
        problem = target.execute("PRAGMA integrity_check").fetchone()[0]
        if problem != "ok":
            raise Failed("the copy does not pass SQLite's integrity check: %s" % problem)
    finally:
        target.close()
    with open(target_path, "rb+") as f:
        os.fsync(f.fileno())


def _counts(conn: sqlite3.Connection) -> tuple[int, int]:
    devices = conn.execute("SELECT count(*) FROM devices").fetchone()[0]
    keys = conn.execute("SELECT count(*) FROM api_keys").fetchone()[0]
    return devices, keys


def backup(path: str, destination: str, out: Any, as_json: bool = False) -> None:
    destination = os.path.abspath(destination)
    if os.path.exists(destination):
        raise Failed("%s exists already: choose a new file name" % destination)
    if not os.path.isdir(os.path.dirname(destination)):
        raise Failed("no directory %s to write the backup in" % os.path.dirname(destination))
    tmp = "%s.tmp-%d" % (destination, os.getpid())
    source = sqlite3.connect(path, timeout=10)
    try:
        source.execute("PRAGMA busy_timeout = 10000")
        _copy(source, tmp)
        check = sqlite3.connect("file:%s?mode=ro" % tmp, uri=True)
        try:
            devices, keys = _counts(check)
            version = check.execute("PRAGMA user_version").fetchone()[0]
        finally:
            check.close()
        os.rename(tmp, destination)
        _fsync_dir(destination)
    except (sqlite3.Error, OSError) as e:
        raise Failed("backup failed: %s" % e)
    finally:
        source.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
    if as_json:
        out.write(json.dumps({"file": destination, "devices": devices, "keys": keys,
                              "schema": version}, indent=2) + "\n")
        return
    out.write("backed up %d device(s) and %d key(s) to %s (schema version %d)\n"
              % (devices, keys, destination, version))


def check_backup(source: str) -> tuple[int, int, int]:
    """(schema version, devices, keys) of a backup dashd can use."""
    if not os.path.isfile(source):
        raise Failed("no such file: %s" % source)
    try:
        conn = sqlite3.connect("file:%s?mode=ro" % os.path.abspath(source), uri=True)
        try:
            problem = conn.execute("PRAGMA integrity_check").fetchone()[0]
            if problem != "ok":
                raise Failed("%s does not pass SQLite's integrity check: %s" % (source, problem))
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if version < 1 or not {"devices", "api_keys", "accounts"} <= tables:
                raise Failed("%s is an SQLite database but not a dashd store" % source)
            if version > latest_schema():
                raise Failed("%s was written by a newer dashd (schema %d, this one knows %d)"
                             % (source, version, latest_schema()))
            devices, keys = _counts(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise Failed("%s is not a dashd store: %s" % (source, e))
    return version, devices, keys


def restore(data_dir: str, source: str, out: Any, as_json: bool = False) -> None:
    version, devices, keys = check_backup(source)
    path = os.path.join(data_dir, DATABASE_FILE)
    lock = DataDirLock(data_dir)
    try:
        lock.acquire()
    except DataDirInUse as e:
        raise Failed("%s: stop dashd first (systemctl stop dashd), then restore" % e)
    try:
        tmp = "%s.restore-%d" % (path, os.getpid())
        previous = None
        try:
            src = sqlite3.connect("file:%s?mode=ro" % os.path.abspath(source), uri=True)
            try:
                _copy(src, tmp)
            finally:
                src.close()
            if os.path.exists(path):
                previous = "%s.before-restore-%s" % (path, time.strftime("%Y%m%dT%H%M%S"))
                current = sqlite3.connect(path, isolation_level=None)
                try:
                    _copy(current, previous)
                    # Fold the write-ahead log into the file and end it, so
                    # no -wal of the old store is left to meet the new one.
                    current.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    current.close()
            for suffix in ("-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.unlink(path + suffix)
            os.rename(tmp, path)
            _fsync_dir(path)
        except (sqlite3.Error, OSError) as e:
            raise Failed("restore failed, the store is unchanged: %s" % e)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    finally:
        lock.release()
    if as_json:
        out.write(json.dumps({"file": os.path.abspath(source), "devices": devices, "keys": keys,
                              "schema": version, "previous": previous,
                              "migrates_to": max(version, latest_schema())}, indent=2) + "\n")
        return
    out.write("restored %d device(s) and %d key(s) from %s (schema version %d)\n"
              % (devices, keys, source, version))
    if previous:
        out.write("the store it replaced is kept as %s\n" % previous)
    if version < latest_schema():
        out.write("dashd migrates it to schema version %d when it starts\n" % latest_schema())


# Command line

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def seconds_arg(text: str) -> float:
    """A duration: seconds, or a number and a unit (90s, 15m, 1h, 7d, 1w)."""
    text = text.strip()
    try:
        if text and text[-1] in UNITS:
            return float(text[:-1]) * UNITS[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number of seconds, nor one such as 15m, "
                                         "1h or 7d" % text)


def time_arg(text: str) -> float:
    """A time: seconds since the epoch, a local ISO date and time, or a
    duration before now (negative: -1h), as the data API takes it."""
    import datetime

    text = text.strip()
    if text.startswith("-"):
        return -seconds_arg(text[1:])
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            "%r is not a time: give seconds since the epoch, a date and time such as "
            "2026-11-29T08:00, or a time before now such as -1h" % text)



def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dashctl",
        description="Administer a dashd: keys, devices, sessions, data, backups, "
                    "configuration. Works on dashd's data directory; run it as the user "
                    "dashd runs as.",
    )
    p.add_argument("--config", "-c", help="dashd's configuration file [default: "
                   "$DASHD_CONFIG, else %s if it exists]" % DEFAULT_CONFIG)
    p.add_argument("--data-dir", "-d", help="dashd's data directory (overrides the file)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub = p.add_subparsers(dest="area", required=True, metavar="COMMAND")

    sub.add_parser("config", help="print the effective configuration (TOML)")

    keys = sub.add_parser("keys", help="API keys").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    k = keys.add_parser("list", help="the account's keys (never their secrets)")
    k.add_argument("--account", help="account ID [default: the first account]")
    k = keys.add_parser("create", help="create an admin key; prints its secret once")
    k.add_argument("--name", help="a name to recognise it by")
    k.add_argument("--expires-in", type=float, metavar="DAYS", help="expire after DAYS days")
    k.add_argument("--account", help="account ID [default: the first account]")
    k = keys.add_parser("revoke", help="revoke a key")
    k.add_argument("key_id", help="the key's ID (the part of the key before the dot)")

    devices = sub.add_parser("devices", help="devices").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    d = devices.add_parser("list", help="every device")
    d.add_argument("--account", help="only this account's devices")
    d = devices.add_parser("register", help="register a device; prints its token once")
    d.add_argument("--name", help="its name [default: its ID]")
    d.add_argument("--shared-with", help="comma-separated account IDs to share it with")
    d.add_argument("--account", help="account ID [default: the first account]")
    d = devices.add_parser("delete", help="delete a device")
    d.add_argument("device_id")
    d = devices.add_parser("rotate-token", help="give a device a new token; prints it once")
    d.add_argument("device_id")

    jobs = sub.add_parser("jobs", help="fleet jobs (of a running dashd)").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    jobs.add_parser("list", help="every job, newest first")
    for action, what in (("show", "a job and its progress"),
                         ("executions", "a job's devices and how each went"),
                         ("pause", "stop sending (what was sent goes on)"),
                         ("resume", "send again after a pause"),
                         ("cancel", "end a job: what was not sent is cancelled, what was "
                                    "sent finishes and is recorded"),
                         ("retry", "queue a job's failed and timed-out devices again"),
                         ("delete", "delete a job that has ended")):
        j = jobs.add_parser(action, help=what)
        j.add_argument("job_id")
        if action == "executions":
            j.add_argument("--state", help="only these states (comma-separated)")
        if action == "cancel":
            j.add_argument("--force", action="store_true", default=None,
                           help="cancel the devices in progress too: what they report "
                                "later is ignored, firmware transfers under way are stopped")

    alarms = sub.add_parser("alarms", help="alarms").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    a = alarms.add_parser("list", help="alarms, newest first (500 at most)")
    a.add_argument("--state", choices=["active", "cleared"], help="only active or cleared")
    a.add_argument("--severity", help="only these severities, comma-separated")
    a.add_argument("--device", help="only this device's")
    a.add_argument("--account", help="only this account's")
    a = alarms.add_parser("acknowledge", help="acknowledge an alarm")
    a.add_argument("alarm_id")
    a.add_argument("--note", help="what is being done about it")
    a = alarms.add_parser("clear", help="clear an alarm by hand")
    a.add_argument("alarm_id")

    sessions = sub.add_parser("sessions", help="the dashboard's sign-in sessions (\"keep me "
                              "signed in\")").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    s = sessions.add_parser("list", help="sessions that have not ended, newest first (never "
                            "their secrets)")
    s.add_argument("--key", dest="key_id", help="only this API key's")
    s.add_argument("--account", help="only this account's")
    s = sessions.add_parser("revoke", help="end a session (its browser is signed out), or "
                            "every session of a key")
    s.add_argument("session_id", nargs="?", help="the session's ID, as sessions list shows it")
    s.add_argument("--key", dest="key_id", help="end every session of this API key")

    data = sub.add_parser("data", help="stored data").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    r = data.add_parser("range", help="the stored data of a time range: in buckets with each "
                        "one's count, min, max and average (--bucket), or the raw points")
    r.add_argument("--device", help="device IDs, comma-separated [default: every device, "
                   "at most 50]")
    r.add_argument("--key", help="keys, comma-separated dotted paths (env covers env.temp) "
                   "[default: all]")
    r.add_argument("--from", dest="start", type=time_arg, metavar="TIME",
                   help="where the range starts: seconds since the epoch, a local date and time "
                        "(2026-11-29T08:00), or a time before now (-90s, -15m, -1h, -7d) "
                        "[default: -1h]")
    r.add_argument("--to", dest="end", type=time_arg, metavar="TIME",
                   help="where it ends, as --from [default: now]")
    r.add_argument("--bucket", type=seconds_arg, metavar="SECONDS",
                   help="bucket width: seconds, or 30s, 5m, 1h, 1d [default: raw points]")
    r.add_argument("--limit", type=int, help="raw points, at most (1 to 5000) [default: 1000]")

    b = sub.add_parser("backup", help="copy the store to FILE while dashd runs")
    b.add_argument("file")
    r = sub.add_parser("restore", help="replace the store with a backup (dashd stopped)")
    r.add_argument("file")
    return p


def _joined(argv: list[str]) -> list[str]:
    """C{--from -1h} as C{--from=-1h}: argparse takes a value that starts
    with a dash and is not a plain number for an option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--from", "--to") and arg.startswith("-"):
            out[-1] = "%s=%s" % (out[-1], arg)
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None, out: Any = None) -> int:
    out = out or sys.stdout
    args = parser().parse_args(_joined(sys.argv[1:] if argv is None else argv))
    try:
        config, source = load_config(args)
        if args.area == "config":
            out.write(configuration.dump(config, source))
            return 0
        data_dir = config["data_dir"]
        if config["store.url"]:
            # The store is on PostgreSQL (cluster mode).
            if args.area in ("backup", "restore"):
                raise Failed("backup and restore copy the SQLite store; this dashd's store is "
                             "on PostgreSQL (store.url): use pg_dump and pg_restore")
            if os.path.isdir(data_dir):
                check_owner(data_dir)
            run_console_command(config, None, args, out)
            return 0
        path = check_data_dir(data_dir, need_store=args.area != "restore")
        if args.area == "backup":
            backup(path, args.file, out, args.json)
        elif args.area == "restore":
            restore(data_dir, args.file, out, args.json)
        else:
            run_console_command(config, path, args, out)
    except Failed as e:
        print("dashctl: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
