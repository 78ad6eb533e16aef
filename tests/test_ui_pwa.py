"""
The installable dashboard (issue 19 item 7) and stale states (item 9), in
Chromium against a real dashd: a web app manifest with icons that Chromium
finds installable, a service worker that opens the dashboard with the state
it last saw while dashd is down and says so, a banner when the live updates
are lost (the states shown may be stale), and the saved state forgotten on
signing out.
"""

from __future__ import annotations

import json
import re
import struct

import pytest
import pytest_twisted
from playwright.sync_api import Page, expect

from browser import UI
from support import Client, DashdProcess, connect_device, device_online
from test_ui import accessible, row, sign_in


@pytest_twisted.ensureDeferred
async def test_manifest_icons_and_service_worker_are_served(server):
    anonymous = Client(server, None)
    reply = await anonymous.get("/ui/manifest.webmanifest")
    assert reply.status == 200
    assert reply.headers.getRawHeaders(b"content-type") == [b"application/manifest+json"]
    manifest = json.loads(reply.raw)
    assert manifest["start_url"] == "/#/devices" and manifest["display"] == "standalone"
    sizes = set()
    for icon in manifest["icons"]:
        got = await anonymous.get(icon["src"])
        assert got.status == 200, icon
        assert got.headers.getRawHeaders(b"content-type") == [icon["type"].encode()], icon
        if icon["type"] == "image/png":
            width, height = struct.unpack(">II", got.raw[16:24])
            assert "%dx%d" % (width, height) == icon["sizes"], icon
            sizes.add((icon["sizes"], icon["purpose"]))
    assert {("192x192", "any"), ("512x512", "any"), ("512x512", "maskable")} <= sizes
    reply = await anonymous.get("/ui/sw.js")
    assert reply.status == 200
    assert reply.headers.getRawHeaders(b"service-worker-allowed") == [b"/"]
    assert reply.headers.getRawHeaders(b"content-security-policy")
    page = (await anonymous.get("/")).raw.decode()
    assert '<link rel="manifest" href="/ui/manifest.webmanifest">' in page


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_offline_the_last_state_is_shown_and_said(own_server: DashdProcess, own_ui: UI):
    await own_server.start_async()
    admin = Client(own_server, own_server.admin_key)
    device_id, token = await admin.register("pwa-greenhouse")
    sim = await connect_device(own_server, token)
    await device_online(admin, device_id)
    await own_ui.run(sign_in, admin.key)

    def installable(page: Page) -> None:
        page.evaluate("navigator.serviceWorker.ready.then(() => true)")
        page.wait_for_function("navigator.serviceWorker.controller !== null")
        # Loaded again under the worker: the state it answers is saved.
        page.reload()
        expect(row(page, device_id)).to_contain_text("Online")
        expect(page.locator("#live-state")).to_have_text("Live")
        cdp = page.context.new_cdp_session(page)
        manifest = cdp.send("Page.getAppManifest")
        assert manifest["url"].endswith("/ui/manifest.webmanifest") and manifest["errors"] == [], manifest
        # Nothing stands in the way but the test's own browser context, which
        # is incognito (no profile): an installed app needs one.
        errors = cdp.send("Page.getInstallabilityErrors")["installabilityErrors"]
        assert [e for e in errors if e["errorId"] != "in-incognito"] == [], errors
        cdp.detach()

    await own_ui.run(installable)

    for text in ("WebSocket connection to", "ERR_CONNECTION_REFUSED", "HTTP 503 for",
                 "FetchEvent", "Failed to fetch", "ERR_FAILED"):
        own_ui.allow_failure(text)
    own_server.stop()

    def stale(page: Page) -> None:
        expect(page.locator("#live-state")).to_have_text("Live updates lost: reconnecting…")
        # (Either from the lost stream, or from a request the worker then
        # answered with the state it saved: the page asks /whoami.)
        expect(page.locator(".offline-banner")).to_have_text(re.compile(
            r"^(dashd cannot be reached since .+: the states shown are as they were then and "
            r"may be stale|Offline: dashd cannot be reached\. This is the state last seen at "
            r".+; it may be stale)\.$"))
        accessible(page)

    await own_ui.run(stale)
    await own_ui.shot("stale-states")

    def offline(page: Page) -> None:
        # Opened while dashd is down: the page and the last state seen.
        page.reload()
        expect(page.get_by_role("heading", level=1, name="Devices")).to_be_visible()
        expect(row(page, device_id)).to_contain_text("pwa-greenhouse")
        expect(page.locator(".offline-banner")).to_contain_text(
            "Offline: dashd cannot be reached. This is the state last seen at ")
        accessible(page)

    await own_ui.run(offline)
    await own_ui.shot("offline-last-state")
    await own_server.start_async()
    await device_online(admin, device_id)

    def back(page: Page) -> None:
        expect(page.locator("#live-state")).to_have_text("Live", timeout=40_000)
        page.reload()
        expect(row(page, device_id)).to_contain_text("Online")
        expect(page.locator(".offline-banner")).to_be_hidden()
        assert page.evaluate("caches.has('dashd-state-v1')")
        # Signing out forgets the state saved for offline use.
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", level=1, name="Sign in")).to_be_visible()
        page.wait_for_function("caches.has('dashd-state-v1').then((has) => !has)")

    await own_ui.run(back)
    await sim.stop()
