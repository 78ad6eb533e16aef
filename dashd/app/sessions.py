"""
Dashboard sessions: "keep me signed in on this browser".

By default the dashboard keeps the API key in one tab's sessionStorage and
sends no cookie. A user may instead ask for a session: ``POST
/api/v2/session`` (with the key in the Authorization header) mints one and
answers with two cookies:

- ``dashd_session``: the session's secret. ``HttpOnly`` (no script reads
  it), ``SameSite=Strict`` (no other site's page sends it), ``Secure`` over
  HTTPS, ``Path=/api/v2``, for the session's lifetime.
- ``dashd_csrf``: its CSRF token, which the dashboard's scripts read and
  send back in the ``X-Dashd-CSRF`` header. A request that authenticates
  with the session cookie and lacks that header, or has another token, is
  refused (403): a page of another origin can make a browser send a
  cookie, but cannot read the token to put in a header.

Each request with the cookie acts as the key the session was minted from,
with that key's rights, rate and audit entries. A session ends when it
expires (``hours``, default L{DEFAULT_HOURS}, at most L{MAX_HOURS}, never
after the key expires), when the user signs out (``DELETE
/api/v2/session``), when its key is revoked (deleting the key deletes
its sessions), or when an operator ends it (``dashctl sessions
revoke``). Only hashes of the two secrets are stored, in the store's
``sessions`` table, so every node of a cluster knows every session.
"""

from __future__ import annotations

import secrets
import weakref
from typing import Any

from twisted.internet.interfaces import IReactorTime

from dashd.app.auth import Authenticator
from dashd.domain import tokens
from dashd.domain.errors import Forbidden, Invalid, NotFound, Unauthenticated
from dashd.domain.model import ApiKey
from dashd.store import IStore

DEFAULT_HOURS = 12
MAX_HOURS = 30 * 24
SESSION_PREFIX = "ss_"
CSRF_PREFIX = "cs_"
COOKIE = "dashd_session"
CSRF_COOKIE = "dashd_csrf"
CSRF_HEADER = "X-Dashd-CSRF"
# A session found is trusted this long on this node without asking the
# store again (as API keys are cached); signing out here ends it at once.
CACHE_SECONDS = 5.0
MAX_CACHED = 10000

ENDED = ("the session has ended (it expired, you signed out, or its API key was revoked "
         "or has expired): sign in again")


class SessionStats:
    """What the metrics say of sessions (dashd_sessions_*), for every dashd
    of the process."""

    created = 0
    ended = 0


# Every Sessions of the process, whose caches a revocation by dashctl
# (through the control socket) empties of the sessions it ends.
_LIVE: weakref.WeakSet[Sessions] = weakref.WeakSet()
# A session's ID as dashctl shows it: this many hex digits of its hash.
SHOWN_ID = 16
MAX_LISTED = 1000


def session_view(found: dict[str, Any]) -> dict[str, Any]:
    """A session as dashctl shows it: never its secrets, a prefix of the
    hash of its cookie as its ID."""
    return {"id": found["id_hash"][:SHOWN_ID], "key_id": found["key_id"],
            "key_name": found["key_name"], "account_id": found["account_id"],
            "created": found["created"], "expires": found["expires"]}


def forget(id_hashes: list[str]) -> None:
    """Drop ended sessions from the caches of this process (the other
    nodes of a cluster trust theirs up to L{CACHE_SECONDS})."""
    for sessions in list(_LIVE):
        for id_hash in id_hashes:
            sessions._cache.pop(id_hash, None)


async def listed(store: IStore, now: float, key_id: str | None = None,
                 account_id: str | None = None) -> list[dict[str, Any]]:
    """The sessions that have not ended (of one key or account), newest
    first, as L{session_view}s."""
    return [session_view(s) for s in await store.list_sessions(now, key_id, account_id,
                                                                MAX_LISTED)]


async def revoke(store: IStore, now: float, session_id: str | None = None,
                 key_id: str | None = None) -> list[dict[str, Any]]:
    """End one session (C{session_id}: its ID as L{session_view} shows it)
    or every session of C{key_id}; the ones ended, as L{session_view}s.
    @raise NotFound: no such session.
    @raise Invalid: neither or both given."""
    if (session_id is None) == (key_id is None):
        raise Invalid("name a session, or a key whose sessions all end (--key)", "session_id")
    found = await store.list_sessions(now, key_id, None, MAX_LISTED)
    if session_id is not None:
        if len(session_id) != SHOWN_ID:
            raise Invalid("a session's ID is %d hex digits, as dashctl sessions list shows it"
                          % SHOWN_ID, "session_id")
        found = [s for s in found if s["id_hash"][:SHOWN_ID] == session_id.lower()]
        if not found:
            raise NotFound("no such session: %s (it may have ended)" % session_id)
    ended = []
    for session in found:
        if await store.delete_session(session["id_hash"]):
            ended.append(session)
    forget([s["id_hash"] for s in ended])
    SessionStats.ended += len(ended)
    return [session_view(s) for s in ended]


class Sessions:
    def __init__(self, store: IStore, auth: Authenticator, clock: IReactorTime) -> None:
        self._store = store
        self._auth = auth
        self._clock = clock
        # id_hash -> (key_id, csrf_hash, expires, trusted until)
        self._cache: dict[str, tuple[str, str, float, float]] = {}
        _LIVE.add(self)

    async def create(self, by: ApiKey, hours: Any = DEFAULT_HOURS) -> dict[str, Any]:
        """A new session of C{by}: C{{"session", "csrf", "expires"}}
        (the two secrets, shown this once)."""
        if isinstance(hours, bool) or not isinstance(hours, (int, float)) or not (
                0 < hours <= MAX_HOURS):
            raise Invalid("hours must be a number of hours above 0 and at most %d" % MAX_HOURS,
                          "hours")
        if by.kind not in ("admin", "read-only", "restricted"):
            raise Forbidden("only API keys may sign in to the dashboard")
        now = self._clock.seconds()
        expires = now + hours * 3600.0
        if by.expires is not None:
            expires = min(expires, by.expires)
        session = SESSION_PREFIX + secrets.token_urlsafe(32)
        csrf = CSRF_PREFIX + secrets.token_urlsafe(24)
        if not await self._store.create_session(tokens.hash_secret(session),
                                                tokens.hash_secret(csrf), by.id, now, expires):
            raise Unauthenticated("API key %s no longer works" % by.id)
        SessionStats.created += 1
        return {"session": session, "csrf": csrf, "expires": expires}

    async def expires(self, session: str) -> float | None:
        """When the session ends (None: there is none)."""
        found = await self._found(session) if session.startswith(SESSION_PREFIX) else None
        return found[2] if found is not None else None

    async def _found(self, session: str) -> tuple[str, str, float] | None:
        id_hash = tokens.hash_secret(session)
        now = self._clock.seconds()
        cached = self._cache.get(id_hash)
        if cached is not None and cached[3] > now:
            return cached[:3]
        found = await self._store.get_session(id_hash)
        if found is None:
            self._cache.pop(id_hash, None)
            return None
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[id_hash] = found + (now + CACHE_SECONDS,)
        return found

    async def key(self, session: str, csrf: str | None, address: str | None = None) -> ApiKey:
        """The key a request with the session cookie acts as.
        @raise Unauthenticated: no such session, or it ended.
        @raise Forbidden: the CSRF header is missing or wrong."""
        found = None
        if session.startswith(SESSION_PREFIX) and len(session) < 100:
            found = await self._found(session)
        if found is None or found[2] <= self._clock.seconds():
            raise self._auth.refused(Unauthenticated(ENDED), address)
        key_id, csrf_hash, _ = found
        if not csrf:
            raise Forbidden("a request signed in with the session cookie must send its CSRF "
                            "token in the %s header" % CSRF_HEADER)
        if not tokens.matches(csrf, csrf_hash):
            raise Forbidden("the %s header does not match this session" % CSRF_HEADER)
        try:
            return await self._auth.api_key_by_id(key_id, address)
        except Unauthenticated:
            raise Unauthenticated(ENDED)

    async def end(self, session: str | None, csrf: str | None) -> bool:
        """End the session (signing out); False if there was none. The CSRF
        token must be the session's: no other site signs a user out."""
        if not session or not session.startswith(SESSION_PREFIX) or len(session) >= 100:
            return False
        id_hash = tokens.hash_secret(session)
        found = await self._store.get_session(id_hash)
        if found is None:
            self._cache.pop(id_hash, None)
            return False
        if not csrf or not tokens.matches(csrf, found[1]):
            raise Forbidden("signing out needs the session's CSRF token in the %s header"
                            % CSRF_HEADER)
        self._cache.pop(id_hash, None)
        ended = bool(await self._store.delete_session(id_hash))
        SessionStats.ended += ended
        return ended
