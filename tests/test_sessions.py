"""
Dashboard sessions ("keep me signed in on this browser", dashd.app.sessions)
over REST against a real dashd on each store: the cookies' attributes, a
request signed in by cookie needs its CSRF header, expiry, signing out, and
revocation of the key ending its sessions at once.
"""

from __future__ import annotations

import re
import time
from http.cookies import SimpleCookie

import pytest_twisted

from support import SECRETS, Client, eventually


def cookies(reply) -> dict:
    """name -> (value, attributes as the header says them)."""
    out = {}
    for header in reply.headers.getRawHeaders(b"set-cookie") or []:
        text = header.decode("latin-1")
        jar = SimpleCookie()
        jar.load(text)
        for name, morsel in jar.items():
            out[name] = (morsel.value, text)
    return out


async def mint(client: Client, **body):
    reply = await client.post("/api/v2/session", body)
    assert reply.status == 200, reply
    jar = cookies(reply)
    session, csrf = jar["dashd_session"][0], jar["dashd_csrf"][0]
    SECRETS.add(session)
    SECRETS.add(csrf)
    assert reply.body["csrf"] == csrf
    return reply, session, csrf


def browser(server, session: str, csrf: str | None) -> tuple[Client, dict]:
    headers = {"Cookie": "dashd_session=%s; dashd_csrf=%s" % (session, csrf or "")}
    if csrf is not None:
        headers["X-Dashd-CSRF"] = csrf
    return Client(server, None), headers


async def new_key(admin: Client, **body) -> tuple[str, str]:
    reply = await admin.post("/api/v2/keys", body)
    assert reply.status == 200, reply
    SECRETS.add(reply.body["key"])
    return reply.body["id"], reply.body["key"]


@pytest_twisted.ensureDeferred
async def test_a_session_is_an_httponly_strict_cookie_with_a_csrf_token(server, admin: Client):
    reply, session, csrf = await mint(admin)
    jar = cookies(reply)
    attributes = jar["dashd_session"][1].lower()
    assert "httponly" in attributes and "samesite=strict" in attributes
    assert "path=/api/v2" in attributes and "max-age=43200" in attributes
    # (plain HTTP here: no Secure, or the browser would never send it)
    assert "secure" not in attributes.replace("samesite", "")
    attributes = jar["dashd_csrf"][1].lower()
    assert "httponly" not in attributes and "samesite=strict" in attributes
    assert abs(reply.body["expires"] - (time.time() + 12 * 3600)) < 60
    assert reply.headers.getRawHeaders(b"cache-control") == [b"no-store"]

    me = (await admin.get("/api/v2/whoami")).body
    client, headers = browser(server, session, csrf)
    reply = await client.get("/api/v2/whoami", headers=headers)
    assert reply.status == 200, reply
    assert reply.body["id"] == me["id"]
    reply = await client.get("/api/v2/session", headers=headers)
    assert reply.status == 200 and reply.body["key_id"] == me["id"]
    # It acts as the key: a change is made, and audited as the key's.
    reply = await client.post("/api/v2/devices", {"name": "by-session"}, headers=headers)
    assert reply.status == 200, reply
    SECRETS.add(reply.body["token"])
    device_id = reply.body["id"]

    async def audited():
        audit = await admin.get("/api/v2/audit?start=-20&limit=20")
        assert audit.status == 200, audit
        # (written once the answer is sent: soon after)
        found = [e for e in audit.body["entries"] if e["path"] == "/api/v2/devices"
                 and e["detail"] == {"name": [None, "by-session"]}]
        return found[-1] if found else None

    entry = await eventually(audited)
    assert device_id
    assert entry["key_id"] == me["id"] and entry["method"] == "POST"

    # No CSRF header, or another token: refused, whatever the method.
    for token in (None, "cs_" + "x" * 32, csrf + "x"):
        client, headers = browser(server, session, token)
        if token is not None:
            headers["X-Dashd-CSRF"] = token
        for method, path in (("GET", "/api/v2/whoami"), ("POST", "/api/v2/devices")):
            reply = await client.request(method, path, body={} if method == "POST" else None,
                                         headers=headers)
            assert reply.status == 403, (token, method, reply)
            assert "X-Dashd-CSRF" in reply.error["message"]
    # A key in the Authorization header wins over the cookie.
    _, other = await new_key(admin, kind="read-only")
    client, headers = browser(server, session, None)
    reply = await Client(server, other).get("/api/v2/whoami", headers=headers)
    assert reply.status == 200 and reply.body["kind"] == "read-only"


@pytest_twisted.ensureDeferred
async def test_how_long_a_session_lasts_and_bad_requests(server, admin: Client):
    reply, _, _ = await mint(admin, hours=1)
    assert "max-age=3600" in cookies(reply)["dashd_session"][1].lower()
    # Never beyond the key's own expiry.
    _, short = await new_key(admin, kind="admin", expires=time.time() + 120)
    reply, _, _ = await mint(Client(server, short), hours=10)
    assert reply.body["expires"] < time.time() + 121
    for body, message in (({"hours": 0}, "hours must be a number of hours above 0"),
                          ({"hours": 721}, "at most 720"),
                          ({"hours": "5"}, "hours must be a number"),
                          ({"days": 1}, "days")):
        reply = await admin.post("/api/v2/session", body)
        assert reply.status == 400 and message in reply.error["message"], (body, reply)
    # A session is minted from a key, not from another session.
    _, session, csrf = await mint(admin)
    client, headers = browser(server, session, csrf)
    reply = await client.post("/api/v2/session", {}, headers=headers)
    assert reply.status == 401 and "Authorization" in reply.error["message"]
    reply = await client.get("/api/v2/whoami", headers={"Cookie": "dashd_session=ss_nosuch",
                                                        "X-Dashd-CSRF": csrf})
    assert reply.status == 401 and "the session has ended" in reply.error["message"]


@pytest_twisted.ensureDeferred
async def test_signing_out_and_revoking_the_key_end_it(server, admin: Client):
    _, session, csrf = await mint(admin)
    client, headers = browser(server, session, None)
    reply = await client.delete("/api/v2/session", headers=headers)
    assert reply.status == 403  # no one else signs you out
    client, headers = browser(server, session, csrf)
    reply = await client.delete("/api/v2/session", headers=headers)
    assert reply.status == 200 and reply.body == {"ended": True}
    cleared = cookies(reply)
    assert cleared["dashd_session"][0] == "" and "max-age=0" in cleared["dashd_session"][1].lower()
    reply = await client.get("/api/v2/whoami", headers=headers)
    assert reply.status == 401 and "the session has ended" in reply.error["message"]
    reply = await client.delete("/api/v2/session", headers=headers)
    assert reply.body == {"ended": False}
    metrics = (await admin.get("/metrics")).raw
    for name in (b"dashd_sessions_created_total", b"dashd_sessions_ended_total"):
        m = re.search(rb"^%s ([0-9.e+]+)$" % name, metrics, re.M)
        assert m and float(m.group(1)) >= 1, metrics

    # Revoking the key ends its sessions at once.
    key_id, secret = await new_key(admin, kind="admin")
    _, session, csrf = await mint(Client(server, secret))
    client, headers = browser(server, session, csrf)
    assert (await client.get("/api/v2/whoami", headers=headers)).status == 200
    assert (await admin.delete("/api/v2/keys/" + key_id)).status == 200
    reply = await client.get("/api/v2/whoami", headers=headers)
    assert reply.status == 401 and "the session has ended" in reply.error["message"]


@pytest_twisted.ensureDeferred
async def test_a_restricted_keys_session_has_its_rights(server, admin: Client):
    mine, _ = await admin.register("session-mine")
    other, _ = await admin.register("session-other")
    _, secret = await new_key(admin, kind="restricted",
                              scope={"devices": {mine: {"read": ["temp"]}}})
    _, session, csrf = await mint(Client(server, secret))
    client, headers = browser(server, session, csrf)
    reply = await client.get("/api/v2/devices", headers=headers)
    assert [d["id"] for d in reply.body] == [mine]
    reply = await client.get("/api/v2/devices/" + other, headers=headers)
    assert reply.status == 404
    reply = await client.post("/api/v2/devices", {"name": "x"}, headers=headers)
    assert reply.status == 403
