"""
Dashboard sessions over REST (L{dashd.app.sessions}):

- ``POST /api/v2/session {"hours"?}`` with ``Authorization: Bearer KEY``:
  mint a session of that key; answers ``{"expires", "csrf", "key_id"}`` and
  sets the ``dashd_session`` (HttpOnly) and ``dashd_csrf`` cookies, both
  SameSite=Strict.
- ``GET /api/v2/session``: the session the cookie names (``{"expires",
  "key_id"}``), with the CSRF header like any request signed in that way.
- ``DELETE /api/v2/session``: sign out: the session ends, the cookies are
  cleared.

Any request without an Authorization header (or ``access_token``) that
carries the session cookie acts as the session's key
(L{session_key}, called by L{dashd.api.base.ApiBase.authenticate}).
"""

from __future__ import annotations

from typing import Any

from dashd.api.base import ApiBase, app, object_body
from dashd.app import sessions as s
from dashd.app.sessions import Sessions
from dashd.domain.errors import Invalid, Unauthenticated
from dashd.domain.model import ApiKey

_COOKIE = s.COOKIE.encode("ascii")
_CSRF_COOKIE = s.CSRF_COOKIE.encode("ascii")


def sessions_of(api: Any) -> Sessions:
    sessions = getattr(api, "_dashd_sessions", None)
    if sessions is None:
        application = api.application
        sessions = Sessions(application.fleet.store, application.auth, application.clock)
        api._dashd_sessions = sessions
    return sessions


def _cookie(request: Any) -> str | None:
    value = request.getCookie(_COOKIE)
    return value.decode("latin-1") if value else None


def _csrf(request: Any) -> str | None:
    value = request.getHeader(s.CSRF_HEADER.lower().encode("ascii"))
    return value.decode("latin-1").strip() if value else None


def has_session_cookie(request: Any) -> bool:
    return bool(request.getCookie(_COOKIE))


async def session_key(api: Any, request: Any) -> ApiKey:
    """The key of the session the request's cookie names."""
    return await sessions_of(api).key(_cookie(request) or "", _csrf(request),
                                      api.client_address(request))


def _secure(request: Any) -> bool:
    if request.isSecure():
        return True
    # Behind a TLS-terminating proxy that says so. (A client that claims
    # it falsely over plain HTTP gets a cookie its browser will not send.)
    proto = request.getHeader(b"x-forwarded-proto")
    return proto is not None and proto.strip().lower() == b"https"


def _set_cookies(request: Any, session: str, csrf: str, max_age: int) -> None:
    secure = b"; Secure" if _secure(request) else b""
    request.addCookie(_COOKIE, session.encode("ascii"), path=b"/api/v2", max_age=str(max_age),
                      httpOnly=True, sameSite=b"strict", secure=bool(secure))
    request.addCookie(_CSRF_COOKIE, csrf.encode("ascii"), path=b"/", max_age=str(max_age),
                      sameSite=b"strict", secure=bool(secure))


class SessionRoutes(ApiBase):
    @app.route("/api/v2/session", methods=["POST"])
    async def create_session(self, request: Any) -> bytes:
        if request.getHeader(b"authorization") is None:
            raise Unauthenticated("a session is minted from an API key: send \"Authorization: "
                                  "Bearer KEY\"")
        key = await self.authenticate(request)
        body = object_body(request, {"hours"})
        hours = body.get("hours", s.DEFAULT_HOURS)
        if isinstance(hours, str):
            raise Invalid("hours must be a number", "hours")
        made = await sessions_of(self).create(key, hours)
        max_age = max(1, round(made["expires"] - self.application.clock.seconds()))
        _set_cookies(request, made["session"], made["csrf"], max_age)
        request.setHeader(b"cache-control", b"no-store")
        return self.json(request, {"key_id": key.id, "expires": made["expires"],
                                   "csrf": made["csrf"]})

    @app.route("/api/v2/session", methods=["GET"])
    async def get_session(self, request: Any) -> bytes:
        if not has_session_cookie(request) or request.getHeader(b"authorization") is not None:
            raise Unauthenticated("no session: this request carries no %s cookie" % s.COOKIE)
        key = await self.authenticate(request)
        expires = await sessions_of(self).expires(_cookie(request) or "")
        if expires is None:
            raise Unauthenticated(s.ENDED)
        request.setHeader(b"cache-control", b"no-store")
        return self.json(request, {"key_id": key.id, "expires": expires})

    @app.route("/api/v2/session", methods=["DELETE"])
    async def end_session(self, request: Any) -> bytes:
        ended = await sessions_of(self).end(_cookie(request), _csrf(request))
        # Cleared whatever the store said: the browser forgets them.
        secure = _secure(request)
        request.addCookie(_COOKIE, b"", path=b"/api/v2", max_age="0", httpOnly=True,
                          sameSite=b"strict", secure=secure)
        request.addCookie(_CSRF_COOKIE, b"", path=b"/", max_age="0", sameSite=b"strict",
                          secure=secure)
        return self.json(request, {"ended": ended})
