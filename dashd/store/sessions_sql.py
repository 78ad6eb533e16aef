"""
The store jobs of dashboard sessions (L{dashd.app.sessions}), one
implementation for SQLite and PostgreSQL (each job a function of a
L{dashd.store.calls_sql.Db}). Schema: ``migrations/0011_ranges_and_sessions.sql``
and ``migrations_pg/0009_ranges_and_sessions.sql``. Only hashes of the
cookie and of its CSRF token are kept; a key's deletion (revocation)
deletes its sessions (ON DELETE CASCADE).
"""

from __future__ import annotations

from typing import Any

from dashd.store.calls_sql import Db


def create(db: Db, id_hash: str, csrf_hash: str, key_id: str, now: float,
           expires: float, prune: int) -> bool:
    """Store a session of key C{key_id} (False: the key is gone), and drop
    up to C{prune} sessions that have expired."""
    db.execute(
        "DELETE FROM sessions WHERE id_hash IN"
        " (SELECT id_hash FROM sessions WHERE expires <= ? LIMIT ?)", (now, prune))
    if db.one("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)) is None:
        return False
    db.execute("INSERT INTO sessions (id_hash, csrf_hash, key_id, created, expires)"
               " VALUES (?, ?, ?, ?, ?)", (id_hash, csrf_hash, key_id, now, expires))
    return True


def get(db: Db, id_hash: str) -> tuple[str, str, float] | None:
    """C{(key_id, csrf_hash, expires)} of a session, or None."""
    row: Any = db.one("SELECT key_id, csrf_hash, expires FROM sessions WHERE id_hash = ?",
                      (id_hash,))
    return (row[0], row[1], float(row[2])) if row else None


def delete(db: Db, id_hash: str) -> bool:
    return db.execute("DELETE FROM sessions WHERE id_hash = ?", (id_hash,)).rowcount == 1


def delete_for_key(db: Db, key_id: str) -> int:
    return db.execute("DELETE FROM sessions WHERE key_id = ?", (key_id,)).rowcount


def listed(db: Db, now: float, key_id: str | None, account_id: str | None,
           limit: int) -> list[dict[str, Any]]:
    """The sessions that have not expired, newest first (at most C{limit}),
    of one key or account if given: C{{"id_hash", "key_id", "key_name",
    "account_id", "created", "expires"}}."""
    where = ["s.expires > ?"]
    params: list[Any] = [now]
    if key_id is not None:
        where.append("s.key_id = ?")
        params.append(key_id)
    if account_id is not None:
        where.append("k.account_id = ?")
        params.append(account_id)
    rows = db.all(
        "SELECT s.id_hash, s.key_id, k.name, k.account_id, s.created, s.expires"
        " FROM sessions s JOIN api_keys k ON k.id = s.key_id WHERE %s"
        " ORDER BY s.created DESC, s.id_hash LIMIT ?" % " AND ".join(where), params + [limit])
    return [{"id_hash": r[0], "key_id": r[1], "key_name": r[2], "account_id": r[3],
             "created": float(r[4]), "expires": float(r[5])} for r in rows]
