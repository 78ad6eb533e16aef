"""
``dashctl``: dashd's administration command.

It works directly on the data directory (the SQLite store), or on the
PostgreSQL database of ``store.url`` (keys and devices; backup and restore
are then pg_dump's and pg_restore's), so it needs no API key and works
whether dashd runs or not:

    dashctl config                     the effective configuration
    dashctl keys list|create|revoke    API keys
    dashctl devices list|register|delete|rotate-token
    dashctl backup FILE                an online copy of the store
    dashctl restore FILE               put a copy back (dashd stopped)

The configuration (for ``data_dir``) comes from ``--config FILE``, else
``$DASHD_CONFIG``, else ``/etc/dashd/dashd.toml`` if it exists; run it as
the user dashd runs as (``sudo -u dashd dashctl ...``): it refuses to touch
a data directory that belongs to someone else, since files it created there
(the store's ``-wal`` and ``-shm``) would lock dashd out.

With dashd running: the store is in WAL mode, so dashctl reads without
blocking dashd and its writes wait (up to 5 s) for dashd's current
transaction; each command is one transaction. What dashd sees of them:

- a new key or device works at once;
- a revoked key stops working within 5 s (dashd caches valid keys that
  long); a notification stream already open with it stays open;
- a deleted device that is connected is disconnected (4004) the next time
  it writes to the store (heartbeat, shadow update), and cannot reconnect;
- a rotated token lets no new connection in; a connection made with the old
  token stays up until it ends. To cut it at once, restart dashd (every
  device reconnects; the old token is refused).

``backup`` uses SQLite's online backup API: a consistent snapshot, taken
while dashd goes on writing. ``restore`` needs dashd stopped (it takes the
data directory's lock, which a running dashd holds) and keeps the store it
replaces beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sqlite3
import sys
import time
from typing import Any

from dashd import config as configuration
from dashd.domain import tokens
from dashd.domain.model import ApiKey

# Twisted and the rest of dashd are imported by the commands that use them,
# so that dashctl starts quickly.

DEFAULT_CONFIG = "/etc/dashd/dashd.toml"
DATABASE_FILE = "dashd.sqlite3"  # as dashd.assembly names it


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
    if os.stat(data_dir).st_uid != os.geteuid():
        raise Failed(
            "%s belongs to user %s: run dashctl as that user (sudo -u %s dashctl ...), "
            "so that dashd can still use every file dashctl creates there"
            % (data_dir, _owner(data_dir), _owner(data_dir))
        )
    path = os.path.join(data_dir, DATABASE_FILE)
    if need_store and not os.path.exists(path):
        raise Failed("no store at %s (dashd creates it on its first start)" % path)
    return path


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


def _key_view(key: ApiKey) -> dict[str, Any]:
    return {"id": key.id, "name": key.name, "kind": key.kind, "account_id": key.account_id,
            "created": key.created, "expires": key.expires}


# Commands on the store (run on the reactor, through dashd's own store code)


async def _account(store: Any, wanted: str | None) -> str:
    accounts = await store.list_accounts()
    if wanted is None:
        if not accounts:
            raise Failed("the store holds no account yet (start dashd once)")
        return accounts[0].id
    if wanted not in [a.id for a in accounts]:
        raise Failed("no such account: %s (accounts: %s)"
                     % (wanted, ", ".join(a.id for a in accounts) or "none"))
    return wanted


async def keys_list(store: Any, args: argparse.Namespace, out: Any) -> None:
    account = await _account(store, args.account)
    keys = await store.list_keys(account)
    if args.json:
        out.write(json.dumps([_key_view(k) for k in keys], indent=2) + "\n")
        return
    rows = [[k.id, k.name or "-", k.kind, _when(k.created), _when(k.expires)] for k in keys]
    out.write(_table(rows, ["ID", "NAME", "KIND", "CREATED", "EXPIRES"]) + "\n")


async def keys_create(store: Any, args: argparse.Namespace, out: Any) -> None:
    name = args.name or ""
    expires = None
    if args.expires_in is not None:
        expires = time.time() + args.expires_in * 86400
    account = await _account(store, args.account)
    key_id = tokens.new_id("k")
    secret = tokens.new_api_key(key_id)
    key = ApiKey(id=key_id, account_id=account, name=name, kind="admin",
                 created=time.time(), expires=expires)
    key = await store.create_key(key, tokens.hash_secret(secret))
    if args.json:
        view = _key_view(key)
        view["key"] = secret
        out.write(json.dumps(view, indent=2) + "\n")
    else:
        out.write("created API key %s (account %s); its secret, shown this once:\n%s\n"
                  % (key.id, account, secret))


async def keys_revoke(store: Any, args: argparse.Namespace, out: Any) -> None:
    from dashd.store import LastAdminKey

    found = await store.key_credentials(args.key_id)
    if found is None:
        raise Failed("no such key: %s" % args.key_id)
    try:
        deleted = await store.delete_key(args.key_id, found[0].account_id)
    except LastAdminKey as e:
        raise Failed(str(e))
    if not deleted:
        raise Failed("no such key: %s" % args.key_id)
    out.write("revoked API key %s (a running dashd refuses it within 5 s)\n" % args.key_id)


def _fleet(store: Any, reactor: Any) -> Any:
    from dashd.app.fleet import Fleet
    from dashd.channel.hub import LocalHub
    from dashd.channel.router import LocalRouter

    # The fleet logic dashd runs, without connections: same IDs, same tokens.
    return Fleet(store, LocalRouter(), LocalHub(), reactor, configuration.Config())


async def devices_list(store: Any, args: argparse.Namespace, out: Any) -> None:
    accounts = [args.account] if args.account else [a.id for a in await store.list_accounts()]
    devices = []
    seen = set()
    for account in accounts:
        for device in await store.list_devices(account):
            if device.id not in seen:
                seen.add(device.id)
                devices.append(device)
    if args.json:
        out.write(json.dumps([
            {"id": d.id, "name": d.name, "account_id": d.account_id, "created": d.created,
             "last_seen": d.last_seen, "shared_with": list(d.shared_with), "info": d.info}
            for d in devices
        ], indent=2) + "\n")
        return
    rows = [[d.id, d.name, d.account_id, _when(d.last_seen), str(d.info.get("fw_version", "-"))]
            for d in devices]
    out.write(_table(rows, ["ID", "NAME", "ACCOUNT", "LAST SEEN", "FIRMWARE"]) + "\n")


async def devices_register(store: Any, args: argparse.Namespace, out: Any,
                           reactor: Any) -> None:
    from dashd.api.devices import shared_with_value
    from dashd.errors import BadRequest

    try:
        shared = shared_with_value(args.shared_with) if args.shared_with else ()
    except BadRequest as e:
        raise Failed(e.message.replace("shared_with", "--shared-with"))
    name = args.name
    account = await _account(store, args.account)
    device, token = await _fleet(store, reactor).register_device(account, name, shared)
    if args.json:
        out.write(json.dumps({"id": device.id, "name": device.name, "token": token},
                             indent=2) + "\n")
    else:
        out.write("registered device %s (%s); its token, shown this once:\n%s\n"
                  % (device.id, device.name, token))


async def devices_delete(store: Any, args: argparse.Namespace, out: Any, reactor: Any) -> None:
    if not await _fleet(store, reactor).delete_device(args.device_id):
        raise Failed("no such device: %s" % args.device_id)
    out.write("deleted device %s\n" % args.device_id)


async def devices_rotate(store: Any, args: argparse.Namespace, out: Any) -> None:
    token = tokens.new_device_token(args.device_id)
    if not await store.set_device_token(args.device_id, tokens.hash_secret(token)):
        raise Failed("no such device: %s" % args.device_id)
    if args.json:
        out.write(json.dumps({"id": args.device_id, "token": token}, indent=2) + "\n")
    else:
        out.write(
            "new token for device %s, shown this once (the old one no longer opens a "
            "connection; one open now stays up until it ends):\n%s\n" % (args.device_id, token)
        )


MAX_NAME_LENGTH = 128  # as the REST API's


def check_arguments(args: argparse.Namespace) -> None:
    """What can be refused before the store is opened (and Twisted loaded)."""
    if getattr(args, "name", None) is not None:
        args.name = args.name.strip()
        if not args.name:
            raise Failed("--name must be a non-empty string")
        if len(args.name) > MAX_NAME_LENGTH:
            raise Failed("--name must be at most %d characters" % MAX_NAME_LENGTH)
    if getattr(args, "expires_in", None) is not None and not args.expires_in > 0:
        raise Failed("--expires-in must be a number of days greater than 0")


STORE_COMMANDS = {
    ("keys", "list"): keys_list,
    ("keys", "create"): keys_create,
    ("keys", "revoke"): keys_revoke,
    ("devices", "list"): devices_list,
    ("devices", "register"): devices_register,
    ("devices", "delete"): devices_delete,
    ("devices", "rotate-token"): devices_rotate,
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


def run_store_command(path: str | None, args: argparse.Namespace, out: Any,
                      config: configuration.Config | None = None) -> None:
    from twisted.internet import task

    if path is None:
        assert config is not None
        check_postgres_schema(config)
    else:
        check_schema(path)
    failure: list[BaseException] = []

    async def main(reactor: Any) -> None:
        store = open_store(path, config, reactor)  # type: ignore[arg-type]
        store.start()
        try:
            command = STORE_COMMANDS[(args.area, args.action)]
            if command in (devices_register, devices_delete):
                await command(store, args, out, reactor)
            else:
                await command(store, args, out)
        except BaseException as e:  # reported after the reactor stopped
            failure.append(e)
        finally:
            await store.stop()

    def run(reactor: Any) -> Any:
        from twisted.internet.defer import ensureDeferred

        return ensureDeferred(main(reactor))

    try:
        task.react(run)
    except SystemExit as e:
        if e.code not in (0, None):
            raise Failed("the command failed")
    if failure:
        raise failure[0]


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


def backup(path: str, destination: str, out: Any) -> None:
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


def restore(data_dir: str, source: str, out: Any) -> None:
    from dashd.ops.lifecycle import DataDirInUse, DataDirLock

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
    out.write("restored %d device(s) and %d key(s) from %s (schema version %d)\n"
              % (devices, keys, source, version))
    if previous:
        out.write("the store it replaced is kept as %s\n" % previous)
    if version < latest_schema():
        out.write("dashd migrates it to schema version %d when it starts\n" % latest_schema())


# Command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dashctl",
        description="Administer a dashd: keys, devices, backups, configuration. Works on "
                    "dashd's data directory; run it as the user dashd runs as.",
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

    b = sub.add_parser("backup", help="copy the store to FILE while dashd runs")
    b.add_argument("file")
    r = sub.add_parser("restore", help="replace the store with a backup (dashd stopped)")
    r.add_argument("file")
    return p


def main(argv: list[str] | None = None, out: Any = None) -> int:
    out = out or sys.stdout
    args = parser().parse_args(argv)
    try:
        config, source = load_config(args)
        if args.area == "config":
            out.write(configuration.dump(config, source))
            return 0
        check_arguments(args)
        data_dir = config["data_dir"]
        if config["store.url"]:
            # The store is on PostgreSQL (cluster mode).
            if args.area in ("backup", "restore"):
                raise Failed("backup and restore copy the SQLite store; this dashd's store is "
                             "on PostgreSQL (store.url): use pg_dump and pg_restore")
            run_store_command(None, args, out, config)
            return 0
        path = check_data_dir(data_dir, need_store=args.area != "restore")
        if args.area == "backup":
            backup(path, args.file, out)
        elif args.area == "restore":
            restore(data_dir, args.file, out)
        else:
            run_store_command(path, args, out)
    except Failed as e:
        print("dashctl: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
