"""
The store jobs of the firmware library (L{dashd.app.library}), one
implementation for SQLite and PostgreSQL through L{dashd.store.calls_sql.Db}.
Schema: ``migrations/0010_firmware_and_jobs.sql`` and
``migrations_pg/0008_firmware_and_jobs.sql``.

An image is stored in chunks (at most L{CHUNK_BYTES} each), so that no job
holds more than one chunk in memory: the record first (not complete), its
chunks one job each, then it is marked complete. Only complete images are
found, listed and sent.
"""

from __future__ import annotations

from typing import Any

from dashd.domain.errors import Busy, Conflict
from dashd.store.calls_sql import Db

CHUNK_BYTES = 65536

_COLUMNS = "id, account_id, key_id, name, kind, size, sha256, manifest, created"


def _image(db: Db, row: Any) -> dict[str, Any]:
    return {"id": row[0], "account_id": row[1], "key_id": row[2], "name": row[3],
            "kind": row[4], "size": row[5], "sha256": row[6],
            "manifest": db.load(row[7]) if row[7] is not None else None, "created": row[8]}


def begin(db: Db, image: dict[str, Any], per_account: int) -> None:
    """Store the record of an image being uploaded (not complete).
    @raise Busy: the account has C{per_account} images already."""
    if db.pg:
        db.execute("SELECT pg_advisory_xact_lock(hashtext(?))", ("firmware " + image["account_id"],))
    (count,) = db.one("SELECT count(*) FROM firmware WHERE account_id = ?",
                      (image["account_id"],))
    if count >= per_account:
        raise Busy("this account has %d firmware images, the most it may keep "
                   "(firmware.max_images_per_account); delete one first" % count,
                   retry_after=60)
    db.execute("INSERT INTO firmware (id, account_id, key_id, name, kind, size, sha256, manifest,"
               " created, complete) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
               (image["id"], image["account_id"], image["key_id"], image["name"], image["kind"],
                image["size"], image["sha256"],
                db.json(image["manifest"]) if image.get("manifest") is not None else None,
                image["created"]))


def put_chunk(db: Db, firmware_id: str, n: int, data: bytes) -> None:
    db.execute("INSERT INTO firmware_chunks (firmware_id, n, data) VALUES (?, ?, ?)",
               (firmware_id, n, data))


def complete(db: Db, firmware_id: str) -> dict[str, Any] | None:
    db.execute("UPDATE firmware SET complete = 1 WHERE id = ?", (firmware_id,))
    return get(db, firmware_id)


def get(db: Db, firmware_id: str) -> dict[str, Any] | None:
    row = db.one("SELECT %s FROM firmware WHERE id = ? AND complete = 1" % _COLUMNS,
                 (firmware_id,))
    return _image(db, row) if row else None


def list_for(db: Db, account_id: str | None) -> list[dict[str, Any]]:
    if account_id is None:
        rows = db.all("SELECT %s FROM firmware WHERE complete = 1 ORDER BY created DESC, id"
                      % _COLUMNS)
    else:
        rows = db.all("SELECT %s FROM firmware WHERE complete = 1 AND account_id = ?"
                      " ORDER BY created DESC, id" % _COLUMNS, (account_id,))
    return [_image(db, r) for r in rows]


def chunk(db: Db, firmware_id: str, n: int) -> bytes | None:
    row = db.one("SELECT data FROM firmware_chunks WHERE firmware_id = ? AND n = ?",
                 (firmware_id, n))
    return bytes(row[0]) if row else None


_LIVE_JOBS = "('scheduled', 'running', 'paused')"


def delete(db: Db, firmware_id: str) -> bool:
    """Delete the image (and its chunks), unless a job that has not ended
    sends it.
    @raise Conflict: one does (the message names it)."""
    row = db.one("SELECT id, state FROM jobs WHERE firmware_id = ? AND state IN %s LIMIT 1%s"
                 % (_LIVE_JOBS, db.lock), (firmware_id,))
    if row is not None:
        raise Conflict("firmware %s is used by job %s (%s): cancel the job, or wait until it "
                       "has ended, before deleting it" % (firmware_id, row[0], row[1]))
    db.execute("DELETE FROM firmware_chunks WHERE firmware_id = ?", (firmware_id,))
    cur = db.execute("DELETE FROM firmware WHERE id = ?", (firmware_id,))
    return int(cur.rowcount) > 0


def drop_incomplete(db: Db, before: float) -> int:
    """Delete images whose upload began before C{before} and never
    completed (cut off by a restart)."""
    ids = [r[0] for r in db.all("SELECT id FROM firmware WHERE complete = 0 AND created < ?",
                                (before,))]
    for firmware_id in ids:
        db.execute("DELETE FROM firmware_chunks WHERE firmware_id = ?", (firmware_id,))
        db.execute("DELETE FROM firmware WHERE id = ?", (firmware_id,))
    return len(ids)
