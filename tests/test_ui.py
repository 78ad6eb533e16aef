"""
The web dashboard, in a real browser (Debian's headless Chromium, driven by
Playwright) against a real dashd with simulated devices: every page and
every action, live updates, what each kind of key is offered, errors the
user must see, phone width, keyboard use, labels and contrast.

Browser steps are plain functions of the page that run in the browser
thread (see browser.py); the test itself runs in the reactor, where the
simulated devices and the REST client live. Any console error, uncaught
exception, failed request or HTTP error the test did not declare fails it.
Screenshots go to test-artifacts/ui/.
"""

from __future__ import annotations

import json
import random
import re
import time
from typing import Any

import pytest
import pytest_twisted
from playwright.sync_api import Page, expect
from twisted.internet import task
from twisted.internet.defer import ensureDeferred

from browser import PHONE, UI, BrowserThread, open_ui
from support import (
    SECRETS,
    Client,
    DashdProcess,
    connect_device,
    device_online,
    eventually,
    within,
)
from test_ota import make_bin, make_zip, ota_state

# The page fixtures (browser_thread, ui, phone, own_ui) are conftest.py's.


# Steps (run in the browser thread)


def sign_in(page: Page, key: str, landing: str = "Devices") -> None:
    if page.url == "about:blank":
        page.goto("/")
    # Else it stays on the page (after sign_out): loading it anew would
    # abort the requests still under way, which fails the test.
    key_field = page.get_by_label("API key")
    expect(key_field).to_be_focused()
    key_field.fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1, name=landing)).to_be_visible()
    expect(page.locator("#live-state")).to_have_text("Live")


def sign_out(page: Page) -> None:
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", level=1, name="Sign in")).to_be_visible()


def row(page: Page, device_id: str) -> Any:
    return page.locator("tr[data-device-id='%s']" % device_id)


def open_device(page: Page, device_id: str, name: str, part: str = "all") -> None:
    """The device's page, at its part C{part} (all: the whole page)."""
    page.goto("/#/devices/%s/%s" % (device_id, part))
    expect(page.get_by_role("heading", level=1, name=name)).to_be_visible()


def section(page: Page, title: str) -> Any:
    return page.get_by_role("region", name=title)


def dialog(page: Page) -> Any:
    return page.get_by_role("dialog")


def clipboard(page: Page) -> str:
    return page.evaluate("navigator.clipboard.readText()")


def no_horizontal_overflow(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    inner = page.evaluate("window.innerWidth")
    assert width <= inner, "the page is %dpx wide in a %dpx window" % (width, inner)


# Accessibility checks, run on every page the tests visit.

LABELS_JS = """
() => {
  const bad = [];
  for (const el of document.querySelectorAll('input, select, textarea, button')) {
    if (el.type === 'hidden' || !el.getClientRects().length) continue;
    let name = el.getAttribute('aria-label') || '';
    if (!name && el.labels) name = [...el.labels].map((l) => l.textContent).join(' ');
    if (!name && el.tagName === 'BUTTON') name = el.textContent;
    if (!name.trim()) bad.push(el.outerHTML.slice(0, 120));
  }
  return bad;
}
"""

CONTRAST_JS = """
() => {
  const rgba = (c) => {
    const p = c.match(/[\\d.]+/g).map(Number);
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
  };
  const lum = ({r, g, b}) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = rgba(getComputedStyle(el).backgroundColor);
      if (c.a > 0.5) return c;
    }
    return {r: 255, g: 255, b: 255, a: 1};
  };
  const bad = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.textContent.trim();
    const el = node.parentElement;
    if (!text || !el || !el.getClientRects().length) continue;
    if (el.closest('.visually-hidden, [hidden], :disabled, noscript, option')) continue;
    const style = getComputedStyle(el);
    if (style.visibility === 'hidden') continue;
    const fg = lum(rgba(style.color));
    const bg = lum(background(el));
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) bad.push(`${text.slice(0, 40)}: ${ratio.toFixed(2)}`);
  }
  return bad;
}
"""


STRAY_JS = """
() => {
  const bad = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (/^(null|undefined|NaN|\\[object Object\\])+$/.test(node.textContent.trim())) bad.push(node.textContent);
  }
  return bad;
}
"""


def accessible(page: Page) -> None:
    """Labels on every control, one h1, landmarks, AA contrast, and no
    "null" or "undefined" shown where a value was missing."""
    stray = page.evaluate(STRAY_JS)
    assert not stray, "stray text on the page: %s" % stray
    unlabelled = page.evaluate(LABELS_JS)
    assert not unlabelled, "controls without a label: %s" % unlabelled
    low = page.evaluate(CONTRAST_JS)
    assert not low, "text below WCAG AA contrast: %s" % low
    assert page.locator("h1").count() == 1
    expect(page.get_by_role("main")).to_have_count(1)


# Helpers (reactor side)


async def new_key(admin: Client, **body: Any) -> str:
    reply = await admin.post("/api/v2/keys", body)
    assert reply.status == 200, reply
    SECRETS.add(reply.body["key"])
    return reply.body["key"]


async def new_account(admin: Client, name: str) -> tuple[str, str]:
    reply = await admin.post("/api/v2/accounts", {"name": name})
    assert reply.status == 200, reply
    key = reply.body["admin_key"]["key"]
    SECRETS.add(key)
    return reply.body["id"], key


# The server side of the UI


@pytest_twisted.ensureDeferred
async def test_page_and_assets_are_served_safely(server, admin: Client):
    anonymous = Client(server, None)
    reply = await anonymous.get("/", key=None)
    assert reply.status == 200
    html = reply.raw.decode()
    headers = reply.headers
    assert headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
    csp = headers.getRawHeaders("content-security-policy")[0]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers.getRawHeaders("x-content-type-options") == ["nosniff"]
    assert headers.getRawHeaders("referrer-policy") == ["no-referrer"]
    # No inline script, style or event handler: the CSP holds without
    # 'unsafe-inline'.
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert "src=" in tag, tag
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html)
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)
    assert "{{version}}" not in html and "dashd 0." in html

    # Every file the page references is served, with its type.
    for path, ctype in (("/ui/app.css", "text/css"), ("/ui/js/main.js", "text/javascript"),
                        ("/ui/icon.svg", "image/svg+xml")):
        reply = await anonymous.get(path, key=None)
        assert reply.status == 200, path
        assert reply.headers.getRawHeaders("content-type")[0].startswith(ctype)
        assert reply.headers.getRawHeaders("x-content-type-options") == ["nosniff"]
        etag = reply.headers.getRawHeaders("etag")[0]
        again = await anonymous.get(path, key=None, headers={"If-None-Match": etag})
        assert again.status == 304 and again.raw == b""

    # Nothing else is: not the Python package, not a path out of it.
    for path in ("/ui/__init__.py", "/ui/nope.js", "/ui/js/../../api/__init__.py",
                 "/ui/%2e%2e/api/ui.py", "/ui/index.html"):
        reply = await anonymous.get(path, key=None)
        assert reply.status == 404, path
        assert reply.error["message"].startswith("no such"), path

    # The API is unchanged beside it.
    assert (await admin.get("/api/v2/whoami")).status == 200
    assert (await anonymous.post("/", {})).status == 405


def test_assets_are_package_data():
    """A non-editable install ships every file the UI serves."""
    import tomllib
    from fnmatch import fnmatch
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    with open(root / "pyproject.toml", "rb") as f:
        globs = tomllib.load(f)["tool"]["setuptools"]["package-data"]["dashd.ui"]
    ui_dir = root / "dashd" / "ui"
    files = [p.relative_to(ui_dir).as_posix() for p in ui_dir.rglob("*")
             if p.is_file() and p.suffix in (".html", ".css", ".js", ".svg")]
    assert "index.html" in files and "js/main.js" in files
    for name in files:
        assert any(fnmatch(name, g) for g in globs), "%s is not in package-data" % name
    # And no JavaScript builds markup from strings.
    for name in files:
        text = (ui_dir / name).read_text()
        assert not re.search(r"\.(innerHTML|outerHTML)\b|insertAdjacentHTML|document\.write", text), name
        assert "eval(" not in text and "new Function" not in text, name


# Signing in and out


@pytest_twisted.ensureDeferred
async def test_sign_in_and_out(server, admin: Client, ui: UI):
    device_id, _ = await admin.register("signin-target")
    ui.allow(401, "/api/v2/whoami")

    def wrong_key(page: Page) -> None:
        # A deep link waits for the sign-in.
        page.goto("/#/devices/" + device_id)
        expect(page.get_by_role("heading", level=1, name="Sign in")).to_be_visible()
        accessible(page)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_text("Enter an API key.")).to_be_visible()
        key_field = page.get_by_label("API key")
        key_field.fill("k0000.not-a-key")
        key_field.press("Enter")
        expect(page.get_by_role("alert")).to_have_text(
            "Your API key is not accepted (401): unknown API key")
        expect(key_field).to_be_focused()
        expect(key_field).to_have_attribute("aria-invalid", "true")
        assert page.evaluate("sessionStorage.length") == 0

    await ui.run(wrong_key)
    await ui.shot("signin-error")

    def right_key(page: Page, key: str) -> None:
        key_field = page.get_by_label("API key")
        key_field.fill(key)
        key_field.press("Enter")
        expect(page.get_by_role("heading", level=1, name="signin-target")).to_be_visible()
        expect(page.locator("#who")).to_have_text("default: key admin (admin)")
        # Kept for the tab only: sessionStorage, no cookie, nothing else.
        assert page.evaluate("Object.values(sessionStorage)") == [key]
        assert page.evaluate("localStorage.length") == 0
        assert page.context.cookies() == []
        # A reload keeps the tab signed in. (First let the device page's
        # parts, its log and its queued calls, finish loading: a reload
        # cuts their requests off, which would fail the test.)
        page.wait_for_load_state("networkidle")
        page.reload()
        expect(page.get_by_role("heading", level=1, name="signin-target")).to_be_visible()
        page.get_by_role("link", name="Devices", exact=True).click()
        expect(page.get_by_role("heading", level=1, name="Devices")).to_be_visible()
        expect(page.get_by_role("link", name="Devices", exact=True)).to_have_attribute("aria-current", "page")
        # A new tab of the same browser is not signed in.
        other = page.context.new_page()
        other.goto("/")
        expect(other.get_by_role("heading", level=1, name="Sign in")).to_be_visible()
        other.close()
        sign_out(page)
        expect(page.get_by_text("You signed out.")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0
        expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
        page.goto("/#/devices")
        expect(page.get_by_role("heading", level=1, name="Sign in")).to_be_visible()

    await ui.run(right_key, admin.key)
    await ui.shot("signin")


@pytest_twisted.ensureDeferred
async def test_revoked_key_is_signed_out_at_once(server, admin: Client, ui: UI):
    key = await new_key(admin, name="short-lived")
    await ui.run(sign_in, key)
    key_id = key.split(".")[0]
    reply = await admin.delete("/api/v2/keys/" + key_id)
    assert reply.status == 200

    def signed_out(page: Page) -> None:
        expect(page.get_by_role("heading", level=1, name="Sign in")).to_be_visible()
        expect(page.get_by_text("You were signed out")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0

    await ui.run(signed_out)


# The device list


@pytest_twisted.ensureDeferred
async def test_device_list_is_live_searchable_and_filterable(server, admin: Client, ui: UI):
    on_id, on_token = await admin.register("list-porch-light")
    off_id, _ = await admin.register("list-cellar-pump")
    sim = await connect_device(server, on_token, fw_version="2.4.1")
    await device_online(admin, on_id)

    async def has_info() -> Any:
        return (await admin.device(on_id))["info"].get("arch")

    await eventually(has_info)
    await ui.run(sign_in, admin.key)

    def listed(page: Page) -> None:
        on, off = row(page, on_id), row(page, off_id)
        expect(on.get_by_role("link", name="list-porch-light")).to_be_visible()
        expect(on).to_contain_text(on_id)
        expect(on).to_contain_text("Online")
        expect(on).to_contain_text("2.4.1")
        expect(on).to_contain_text("esp32")
        expect(on).to_contain_text("now (connected)")
        expect(off).to_contain_text("Offline")
        expect(off).to_contain_text("never")
        accessible(page)
        # Search by name, ID, firmware; filter by state.
        search = page.get_by_label("Search")
        search.fill("porch")
        expect(on).to_be_visible()
        expect(off).to_be_hidden()
        search.fill(off_id)
        expect(on).to_be_hidden()
        expect(off).to_be_visible()
        search.fill("2.4.1")
        expect(on).to_be_visible()
        expect(off).to_be_hidden()
        search.fill("no-such-device-anywhere")
        expect(page.get_by_text("No device matches the search and filter.")).to_be_visible()
        search.fill("list-")
        page.get_by_label("Status").select_option("offline")
        expect(on).to_be_hidden()
        expect(off).to_be_visible()
        page.get_by_label("Status").select_option("online")
        expect(on).to_be_visible()
        expect(off).to_be_hidden()
        expect(page.locator(".count")).to_contain_text("Showing 1 of")
        expect(page.locator("#announcer")).to_contain_text("Showing 1 of")
        page.get_by_label("Status").select_option("all")
        search.fill("")

    await ui.run(listed)
    await ui.shot("devices")

    # The device drops off: the row says so without a reload.
    await sim.stop()

    def went_offline(page: Page) -> None:
        expect(row(page, on_id)).to_contain_text("Offline")
        expect(row(page, on_id)).to_contain_text("just now")
        expect(page.locator("#announcer")).to_have_text("list-porch-light is now offline")

    await ui.run(went_offline)
    sim.start()
    await within(sim.wait_open(), 10)

    def back_online(page: Page) -> None:
        expect(row(page, on_id)).to_contain_text("Online")
        expect(page.locator("#announcer")).to_have_text("list-porch-light is now online")

    await ui.run(back_online)

    # A device registered elsewhere shows up when it comes online.
    new_id, new_token = await admin.register("list-newcomer")
    newcomer = await connect_device(server, new_token)

    def appeared(page: Page) -> None:
        expect(row(page, new_id)).to_contain_text("Online")
        # The live stream did it: there was no navigation.
        assert page.evaluate("performance.getEntriesByType('navigation').length") == 1

    await ui.run(appeared)
    await sim.stop()
    await newcomer.stop()

    # Changes made elsewhere (the API, dashctl) show at once, offline or not:
    # registered, renamed, deleted.
    quiet_id, _ = await admin.register("list-registered-offline")
    await ui.run(lambda page: expect(row(page, quiet_id)).to_contain_text("Offline"))
    await admin.post("/api/v2/devices/" + off_id, {"name": "list-renamed-pump"})
    await ui.run(lambda page: expect(row(page, off_id).get_by_role(
        "link", name="list-renamed-pump")).to_be_visible())
    await admin.delete("/api/v2/devices/" + quiet_id)

    def deleted(page: Page) -> None:
        expect(page.locator("tr", has_text="list-registered-offline")).to_have_count(0)
        expect(page.locator("#announcer")).to_have_text("list-registered-offline was deleted")
        assert page.evaluate("performance.getEntriesByType('navigation').length") == 1

    await ui.run(deleted)


@pytest_twisted.ensureDeferred
async def test_add_device_shows_the_token_once(server, admin: Client, ui: UI):
    await ui.run(sign_in, admin.key)
    ui.allow(400, "/api/v2/devices")

    def bad_input(page: Page) -> None:
        page.get_by_role("button", name="Add device").click()
        expect(dialog(page)).to_be_visible()
        expect(page.get_by_label("Name (optional)")).to_be_focused()
        page.get_by_label("Name (optional)").fill("ui-added")
        page.get_by_label("Share with (optional)").fill("x" * 200)
        page.get_by_role("button", name="Register").click()
        # dashd's own reason, whatever its words.
        expect(dialog(page).get_by_role("alert")).to_contain_text("Rejected (400): shared_with")
        page.get_by_label("Share with (optional)").fill("")
        page.get_by_role("button", name="Register").click()
        expect(page.get_by_role("heading", name="Device registered")).to_be_visible()

    await ui.run(bad_input)
    await ui.shot("add-device-token")

    def read_token(page: Page) -> tuple[str, str]:
        token = page.get_by_label("Device token", exact=True).input_value()
        command = page.get_by_label("Provisioning command", exact=True).input_value()
        page.get_by_role("button", name="Copy Device token").click()
        expect(dialog(page).get_by_text("Copied.")).to_be_visible()
        copied_token = clipboard(page)
        page.get_by_role("button", name="Copy Provisioning command").click()
        copied_command = clipboard(page)
        assert (copied_token, copied_command) == (token, command)
        expect(dialog(page)).to_contain_text("shown only this once")
        return token, command

    token, command = await ui.run(read_token)
    SECRETS.add(token)
    device_id = token.split("-", 1)[0]
    assert command == (
        "mos config-set dash.enable=true dash.server=ws://127.0.0.1:%d/api/v2/rpc dash.token=%s"
        % (server.port, token)
    )

    def closed(page: Page) -> None:
        page.get_by_role("button", name="Done").click()
        expect(dialog(page)).to_have_count(0)
        # Focus goes back where it was; the token is gone from the page.
        expect(page.get_by_role("button", name="Add device")).to_be_focused()
        assert token not in page.content()
        expect(row(page, device_id)).to_contain_text("ui-added")
        expect(row(page, device_id)).to_contain_text("Offline")

    await ui.run(closed)
    # The token works: a device provisioned with it comes online, live.
    sim = await connect_device(server, token)
    await ui.run(lambda page: expect(row(page, device_id)).to_contain_text("Online"))
    await sim.stop()


@pytest_twisted.ensureDeferred
async def test_delete_device_from_the_list_and_the_page(server, admin: Client, ui: UI):
    first_id, first_token = await admin.register("delete-me-online")
    second_id, _ = await admin.register("delete-me-too")
    sim = await connect_device(server, first_token, reconnect=False)
    await device_online(admin, first_id)
    await ui.run(sign_in, admin.key)

    def cancel_then_delete(page: Page) -> None:
        target = row(page, first_id)
        target.get_by_role("button", name="Delete delete-me-online").click()
        expect(dialog(page)).to_contain_text("This cannot be undone")
        expect(dialog(page).get_by_role("button", name="Cancel")).to_be_focused()
        page.keyboard.press("Escape")
        expect(dialog(page)).to_have_count(0)
        expect(target).to_be_visible()
        target.get_by_role("button", name="Delete delete-me-online").click()
        dialog(page).get_by_role("button", name="Delete device").click()
        expect(target).to_have_count(0)
        expect(page.locator("#announcer")).to_have_text("Device delete-me-online deleted")

    await ui.run(cancel_then_delete)
    assert (await admin.get("/api/v2/devices/" + first_id)).status == 404
    await eventually(lambda: sim.close_code == 4004)

    def from_its_page(page: Page) -> None:
        open_device(page, second_id, "delete-me-too")
        section(page, "Token and deletion").get_by_role("button", name="Delete device").click()
        dialog(page).get_by_role("button", name="Delete device").click()
        expect(page.get_by_role("heading", level=1, name="Devices")).to_be_visible()
        expect(row(page, second_id)).to_have_count(0)

    await ui.run(from_its_page)
    assert (await admin.get("/api/v2/devices/" + second_id)).status == 404
    ui.allow(404, "/api/v2/devices/" + second_id)

    def stale_link(page: Page) -> None:
        page.goto("/#/devices/" + second_id)
        expect(page.get_by_role("heading", level=1)).to_have_text("Device not available")
        expect(page.get_by_role("alert")).to_have_text("Not found (404): no such device: " + second_id)
        page.get_by_role("link", name="← All devices").click()
        expect(page.get_by_role("heading", level=1, name="Devices")).to_be_visible()

    await ui.run(stale_link)


# The device page


@pytest_twisted.ensureDeferred
async def test_device_page_info_rename_and_new_token(server, admin: Client, ui: UI):
    device_id, token = await admin.register("info-old-name")
    # No reconnecting by itself: its close code must stay to be seen.
    sim = await connect_device(server, token, fw_version="3.1.4", reconnect=False)
    await device_online(admin, device_id)
    await ui.run(sign_in, admin.key)

    def info(page: Page) -> None:
        open_device(page, device_id, "info-old-name")
        box = section(page, "Info")
        expect(box).to_contain_text(device_id)
        expect(box).to_contain_text("(yours)")
        system = box.get_by_role("table", name="System info reported by the device")
        expect(system).to_contain_text("3.1.4")
        expect(system).to_contain_text("esp32")
        expect(page.locator(".page-head .badge")).to_have_text("Online")
        expect(section(page, "RPC console").get_by_text("methods from RPC.List")).to_be_visible()
        accessible(page)
        box.get_by_label("Name").fill("info-new-name")
        box.get_by_role("button", name="Rename").click()
        expect(box.get_by_text("Renamed to info-new-name.")).to_be_visible()
        expect(page.get_by_role("heading", level=1)).to_have_text("info-new-name")

    await ui.run(info)
    await ui.shot("device")
    assert (await admin.device(device_id))["name"] == "info-new-name"

    # The device goes offline and back: the page follows.
    await sim.stop()
    await ui.run(lambda page: expect(page.locator(".page-head .badge")).to_have_text("Offline"))
    sim.start()
    await within(sim.wait_open(), 10)
    await ui.run(lambda page: expect(page.locator(".page-head .badge")).to_have_text("Online"))

    def rotate(page: Page) -> str:
        section(page, "Token and deletion").get_by_role(
            "button", name="Give the device a new token").click()
        dialog(page).get_by_role("button", name="New token").click()
        expect(page.get_by_role("heading", name="New device token")).to_be_visible()
        new = page.get_by_label("Device token", exact=True).input_value()
        page.get_by_role("button", name="Done").click()
        return new

    new_token = await ui.run(rotate)
    SECRETS.add(new_token)
    assert new_token != token
    await eventually(lambda: sim.close_code == 4003)
    await sim.stop()
    fresh = await connect_device(server, new_token)
    await ui.run(lambda page: expect(page.locator(".page-head .badge")).to_have_text("Online"))
    await fresh.stop()


@pytest_twisted.ensureDeferred
async def test_shadow_editor(server, admin: Client, ui: UI):
    device_id, token = await admin.register("shadow-lamp")
    path = "/api/v2/devices/" + device_id
    await ui.run(sign_in, admin.key)

    def invalid_input(page: Page) -> None:
        open_device(page, device_id, "shadow-lamp")
        shadow = section(page, "Shadow")
        desired = shadow.get_by_label("Desired (JSON)")
        expect(desired).to_have_value("{}")
        accessible(page)
        for text, error in (
            ('{"led": on}', "Not valid JSON at line 1, column 9: expected a value, found 'o'."),
            ('{\n  "led": true,\n}', "Not valid JSON at line 3, column 1: expected a \"quoted\" key, found '}' (a comma too many?)."),
            ("{'led': 1}", "Not valid JSON at line 1, column 2: expected a \"quoted\" key, found a single quote (JSON strings need double quotes)."),
            ('{"led": {"on": null}}', "null is not allowed (at led.on): to delete a key, remove it from the text."),
            ("[1, 2]", 'This must be a JSON object: {"key": value, ...}.'),
        ):
            desired.fill(text)
            expect(desired).to_have_attribute("aria-invalid", "true")
            expect(shadow.locator(".field-error").first).to_have_text(error)
            shadow.get_by_role("button", name="Save desired").click()
            expect(shadow.get_by_role("alert")).to_have_text("Not saved: " + error)
            expect(desired).to_be_focused()

    await ui.run(invalid_input)
    await ui.shot("shadow-invalid-json")
    # Nothing was sent.
    assert (await admin.device(device_id))["shadow"]["version"] == 0

    def save(page: Page) -> None:
        shadow = section(page, "Shadow")
        desired = shadow.get_by_label("Desired (JSON)")
        desired.fill('{"led": true, "mode": "eco"}')
        expect(desired).to_have_attribute("aria-invalid", "false")
        shadow.get_by_role("button", name="Save desired").click()
        expect(shadow.get_by_text("Saved desired (now its version 1; the shadow's 1).")).to_be_visible()
        expect(shadow.get_by_label("Delta")).to_contain_text('"mode": "eco"')
        # Removing a key deletes it.
        desired.fill('{"led": true}')
        shadow.get_by_role("button", name="Save desired").click()
        expect(shadow.get_by_text("Saved desired (now its version 2; the shadow's 2).")).to_be_visible()
        shadow.get_by_role("button", name="Save desired").click()
        expect(shadow.get_by_text("Nothing to save: this is the stored desired.")).to_be_visible()
        tags = shadow.get_by_label("Tags (JSON)")
        tags.fill('{"site": "north", "save": ["temp"]}')
        shadow.get_by_role("button", name="Save tags").click()
        expect(shadow.get_by_text("Saved tags (now its version 1; the shadow's 3).")).to_be_visible()

    await ui.run(save)
    doc = (await admin.device(device_id))["shadow"]
    assert doc["state"]["desired"] == {"led": True}
    assert doc["tags"] == {"site": "north", "save": ["temp"]}

    # Someone else saves while this page edits: a 409, explained.
    def start_editing(page: Page) -> None:
        section(page, "Shadow").get_by_label("Desired (JSON)").fill('{"led": false}')

    await ui.run(start_editing)
    reply = await admin.post(path, {"shadow": {"state": {"desired": {"brightness": 80}}}})
    assert reply.status == 200
    ui.allow(409, path)

    def conflict(page: Page) -> None:
        shadow = section(page, "Shadow")
        expect(shadow.get_by_text("desired changed (now its version 3) while you were editing its version 2")).to_be_visible()
        shadow.get_by_role("button", name="Save desired").click()
        alert = shadow.get_by_role("alert")
        expect(alert).to_contain_text("Not saved: desired changed since you loaded it.")
        expect(alert).to_contain_text("You edited its version 2")
        expect(alert).to_contain_text("the shadow's desired is at version 3, not 2: it was changed meanwhile")
        load = shadow.get_by_role("button", name="Load the latest version")
        expect(load).to_be_focused()

    await ui.run(conflict)
    await ui.shot("shadow-conflict")
    assert (await admin.device(device_id))["shadow"]["state"]["desired"] == {"led": True, "brightness": 80}

    def reload_and_redo(page: Page) -> None:
        shadow = section(page, "Shadow")
        shadow.get_by_role("button", name="Load the latest version").click()
        desired = shadow.get_by_label("Desired (JSON)")
        expect(desired).to_have_value('{\n  "led": true,\n  "brightness": 80\n}')
        expect(shadow.get_by_text("Your unsaved text")).to_be_visible()
        desired.fill('{"led": false, "brightness": 80}')
        shadow.get_by_role("button", name="Save desired").click()
        expect(shadow.get_by_text("Saved desired (now its version 4; the shadow's 5).")).to_be_visible()
        expect(shadow.get_by_label("Delta")).to_contain_text('"brightness": 80')

    await ui.run(reload_and_redo)

    # The device connects, applies its delta and reports: all live.
    sim = await connect_device(server, token)

    def reported(page: Page) -> None:
        shadow = section(page, "Shadow")
        expect(shadow.get_by_label("Reported state")).to_contain_text('"brightness": 80')
        expect(shadow.get_by_text("None: the device reports everything that is desired.")).to_be_visible()

    await ui.run(reported)
    await ui.shot("shadow")
    await sim.stop()


@pytest_twisted.ensureDeferred
async def test_desired_saves_while_the_device_reports_every_second(server, admin: Client, ui: UI):
    """A device that reports all the time does not make a person's edit of
    desired stale: the save is conditioned on desired, not the whole
    shadow. And each reported key shows when it was last reported."""
    device_id, token = await admin.register("chatty")
    sim = await connect_device(server, token)
    await device_online(admin, device_id)
    reporting = task.LoopingCall(
        lambda: sim.report({"temp": round(random.uniform(18, 25), 2)}).addErrback(lambda f: None))
    reporting.start(0.3)
    try:
        await ui.run(sign_in, admin.key)
        await ui.run(open_device, device_id, "chatty")

        def edit_and_save(page: Page) -> None:
            shadow = section(page, "Shadow")
            expect(shadow.get_by_label("Reported state")).to_contain_text('"temp"')
            desired = shadow.get_by_label("Desired (JSON)")
            # Typed at a person's pace while reports keep coming.
            desired.click()
            desired.press("Control+a")
            desired.press_sequentially('{"fan": "auto", "setpoint": 22.5}', delay=60)
            shadow.get_by_role("button", name="Save desired").click()
            expect(shadow.get_by_text(re.compile(r"^Saved desired \(now its version 1; "))).to_be_visible()
            shadow.get_by_text("When each key was last reported").click()
            expect(shadow.locator(".report-times")).to_contain_text("temp")
            accessible(page)

        await ui.run(edit_and_save)
        await ui.shot("shadow-saved-while-reporting")
        doc = (await admin.device(device_id))["shadow"]
        assert doc["state"]["desired"] == {"fan": "auto", "setpoint": 22.5}
        assert doc["sections"]["reported"]["version"] > 3  # reported meanwhile
        assert doc["metadata"]["reported"]["temp"] > time.time() - 5
    finally:
        reporting.stop()
        await sim.stop()


MERGE_CASES = [
    ({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": 2}}),
    ({"a": {"x": 1}}, {"a": 5}),
    ({"a": 5}, {"a": {"x": 1}}),
    ({"a": [1, {"b": 2}]}, {"a": [1, {"b": 3}]}),
    ({"a": {"b": {"c": 1}}}, {"a": {}}),
    ({}, {"e": {}, "f": [None, 1]}),
    ({"toString": 1, "x": 1}, {"x": 1}),
    ({"__proto__": {"p": 1}}, {"__proto__": {"p": 2}, "constructor": 3}),
    ({"ü 🔥": "x", "n": 1.5}, {"ü 🔥": "y", "n": 1.5}),
    ({"a": True}, {"a": 1}),
]


@pytest_twisted.ensureDeferred
async def test_editor_patches_give_dashd_exactly_the_edited_document(server, admin: Client, ui: UI):
    """The shadow editor sends the difference as a merge patch: applied by
    dashd, it must give exactly what the user wrote, for awkward cases too."""
    device_id, _ = await admin.register("merge-cases")
    path = "/api/v2/devices/" + device_id
    await ui.run(sign_in, admin.key)

    def patch_for(page: Page, before: Any, after: Any) -> Any:
        return page.evaluate(
            """async ([before, after]) => {
                const {mergePatch} = await import('/ui/js/jsonedit.js');
                return JSON.stringify(mergePatch(JSON.parse(before), JSON.parse(after)));
            }""",
            [json.dumps(before), json.dumps(after)],
        )

    for before, after in MERGE_CASES:
        reply = await admin.post(path, {"shadow": {"state": {"desired": None}}})
        assert reply.status == 200
        reply = await admin.post(path, {"shadow": {"state": {"desired": before}}})
        assert reply.body["shadow"]["state"]["desired"] == before
        patch = json.loads(await ui.run(patch_for, before, after))
        reply = await admin.post(path, {"shadow": {"state": {"desired": patch}}})
        assert reply.status == 200, reply
        assert reply.body["shadow"]["state"]["desired"] == after, (before, after, patch)
        assert json.dumps(reply.body["shadow"]["state"]["desired"]) == json.dumps(after)


@pytest_twisted.ensureDeferred
async def test_rpc_console(server, admin: Client, ui: UI):
    device_id, token = await admin.register("rpc-board")
    sim = await connect_device(server, token)
    await device_online(admin, device_id)
    await ui.run(sign_in, admin.key)
    for status in (502, 504):
        ui.allow(status, "/rpc/")

    def console(page: Page) -> None:
        open_device(page, device_id, "rpc-board")
        box = section(page, "RPC console")
        expect(box.get_by_text("methods from RPC.List")).to_be_visible()
        methods = box.locator("datalist option").evaluate_all("els => els.map(e => e.value)")
        assert {"GPIO.Toggle", "Sim.Echo", "Sys.GetInfo"} <= set(methods), methods
        accessible(page)
        method = box.get_by_label("Method")
        params = box.get_by_label("Params (JSON)")
        outcome = box.locator(".rpc-outcome")
        # Call with params.
        method.fill("Sim.Echo")
        params.fill('{"hello": ["world", 1]}')
        box.get_by_role("button", name="Call").click()
        expect(outcome).to_contain_text("Sim.Echo answered in")
        expect(box.get_by_label("Result")).to_have_text('{\n  "hello": [\n    "world",\n    1\n  ]\n}')
        # Without params.
        method.fill("GPIO.Read")
        params.fill("")
        box.get_by_role("button", name="Call").click()
        expect(outcome).to_have_text("GPIO.Read failed. The device answered with error 400: pin is required")
        expect(box.get_by_label("Result")).to_be_hidden()
        # Bad params: nothing is sent.
        method.fill("GPIO.Toggle")
        params.fill('{"pin": 2')
        box.get_by_role("button", name="Call").click()
        expect(outcome).to_have_text(
            "Not called: Not valid JSON at line 1, column 10: expected ',' or '}' in an object, found the end of the text.")
        expect(params).to_be_focused()
        method.fill("Sim Echo")
        box.get_by_role("button", name="Call").click()
        expect(outcome).to_have_text("A method name has no spaces, slashes, ? or #.")
        method.fill("GPIO.Toggle")
        params.fill('{"pin": 2}')
        box.get_by_role("button", name="Call").click()
        expect(box.get_by_label("Result")).to_have_text('{\n  "value": 1\n}')
        # The device's own error, and a device too slow for the timeout.
        method.fill("Sim.Fail")
        params.fill('{"code": 42, "message": "flux capacitor"}')
        box.get_by_role("button", name="Call").click()
        expect(outcome).to_have_text("Sim.Fail failed. The device answered with error 42: flux capacitor")
        method.fill("Sim.Sleep")
        params.fill('{"seconds": 3}')
        box.get_by_label("Timeout (seconds)").fill("1")
        box.get_by_role("button", name="Call").click()
        expect(outcome).to_contain_text("Sim.Sleep failed. No answer in time (504):")
        expect(outcome).to_contain_text("did not answer Sim.Sleep within 1 s")

    await ui.run(console)
    await ui.shot("rpc-console")
    assert sim.pins == {2: 1}

    await sim.stop()
    ui.allow(503, "/rpc/")

    def offline(page: Page) -> None:
        box = section(page, "RPC console")
        expect(page.locator(".page-head .badge")).to_have_text("Offline")
        box.get_by_label("Method").fill("Sys.GetInfo")
        box.get_by_label("Params (JSON)").fill("")
        box.get_by_role("button", name="Call").click()
        expect(box.locator(".rpc-outcome")).to_have_text(
            "Sys.GetInfo failed. Unavailable (503): device %s is offline" % device_id)

    await ui.run(offline)


@pytest_twisted.ensureDeferred
async def test_live_log(server, admin: Client, ui: UI):
    device_id, token = await admin.register("log-sensor")
    sim = await connect_device(server, token)
    await device_online(admin, device_id)
    await ui.run(sign_in, admin.key)
    await ui.run(open_device, device_id, "log-sensor")
    # The stored log first (here: it connected), then events as they come.
    await ui.run(lambda page: (expect(page.locator("#live-state")).to_have_text("Live"),
                               expect(page.get_by_text("methods from RPC.List")).to_be_visible()))
    await sim.call("Dash.Log", {"fd": 1, "data": "booted in 312 ms\n", "t": 12.5, "seq": 1})
    await sim.call("Dash.Log", {"fd": 2, "data": "sensor 2 not found\n", "t": time.time(), "seq": 2})
    sim.notify("MyStat", {"temp": 21.5})

    def lines(page: Page) -> None:
        log = page.get_by_role("log", name="Device log")
        expect(log).to_contain_text("log booted in 312 ms (#1, device time 12.5)")
        expect(log.locator(".log-stderr")).to_contain_text("sensor 2 not found")
        expect(log).to_contain_text('notification MyStat {"temp":21.5}')
        accessible(page)
        section(page, "Device log").get_by_role("button", name="Pause").click()
        expect(section(page, "Device log").get_by_role("button", name="Resume")).to_have_attribute(
            "aria-pressed", "true")

    await ui.run(lines)
    await ui.shot("live-log")
    await sim.call("Dash.Log", {"fd": 1, "data": "while paused\n", "t": time.time(), "seq": 3})
    await sim.stop()

    def paused_then_resumed(page: Page) -> None:
        expect(page.locator(".page-head .badge")).to_have_text("Offline")
        log = page.get_by_role("log", name="Device log")
        assert "while paused" not in log.inner_text()
        section(page, "Device log").get_by_role("button", name="Resume").click()
        section(page, "Device log").get_by_role("button", name="Clear").click()
        expect(log.locator("li")).to_have_count(0)

    await ui.run(paused_then_resumed)
    sim.start()
    await within(sim.wait_open(), 10)
    await ui.run(lambda page: expect(page.get_by_role("log", name="Device log")).to_contain_text("connected"))
    await sim.stop()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_device_log_pages_back_through_the_stored_history(
    tmp_path, browser_thread: BrowserThread, request: Any
):
    """The stored log, newest page first, joined with the live tail; "Load
    older" goes back a page at a time, without gaps or repeats, while new
    lines keep coming."""
    keeper = DashdProcess(str(tmp_path), {"logs": {"max_per_device": 400}})
    await keeper.start_async()
    ui = open_ui(browser_thread, keeper.url, request.node.nodeid, None)
    try:
        admin = Client(keeper, keeper.admin_key)
        device_id, token = await admin.register("log-history")
        sim = await connect_device(keeper, token)
        await device_online(admin, device_id)
        for n in range(1, 231):
            await within(sim.call("Dash.Log", {"fd": 1 if n % 10 else 2, "data": "line %03d\n" % n,
                                               "t": time.time(), "seq": n}))
        sim.notify("Alarm", {"level": 2})

        async def all_stored() -> bool:
            reply = await admin.post("/api/v2/logs", {"device_id": device_id, "start": -1})
            return reply.body["events"][-1]["name"] == "rpc.out.Alarm"

        await eventually(all_stored)
        await ui.run(sign_in, admin.key)

        def texts(page: Page) -> list[str]:
            return page.get_by_role("log", name="Device log").locator(".log-text").all_inner_texts()

        def latest(page: Page) -> None:
            open_device(page, device_id, "log-history")
            box = section(page, "Device log")
            expect(box.get_by_text("The last 100 stored events are shown")).to_be_visible()
            log = page.get_by_role("log", name="Device log")
            expect(log.locator("li")).to_have_count(101)  # and the RPC.List call, live
            lines = texts(page)
            assert lines[0] == "line 132" and lines[98] == "line 230", lines[:3]
            assert lines[99] == 'Alarm {"level":2}' and lines[100] == "→ RPC.List", lines[-3:]
            expect(log.locator(".log-stderr").first).to_contain_text("line 140")
            accessible(page)

        await ui.run(latest)
        # New lines while the page is open: they count where "Load older"
        # starts from.
        for n in range(231, 236):
            await within(sim.call("Dash.Log", {"fd": 1, "data": "line %03d\n" % n, "t": time.time(), "seq": n}))

        def older(page: Page) -> None:
            box = section(page, "Device log")
            log = page.get_by_role("log", name="Device log")
            expect(log).to_contain_text("line 235")
            box.get_by_role("button", name="Load older").click()
            expect(box.get_by_text("Loaded 100 older events.")).to_be_visible()
            box.get_by_role("button", name="Load older").click()
            expect(box.get_by_text("Loaded 32 older events: every stored event is shown.")).to_be_visible()
            expect(box.get_by_role("button", name="Load older")).to_be_hidden()
            expect(log).to_be_focused()
            lines = texts(page)
            # The connection, every line once and in order, then the live ones.
            assert lines[0] == "connected", lines[:3]
            logged = [t for t in lines if t.startswith("line ")]
            assert logged == ["line %03d" % n for n in range(1, 236)], logged
            assert lines.count('Alarm {"level":2}') == 1
            expect(page.locator("#announcer")).to_have_text("Loaded 32 older events: every stored event is shown.")

        await ui.run(older)
        await ui.shot("device-log-history")
        await sim.stop()
    finally:
        ui.close()
        keeper.stop()
    problems = ui.unexplained() + keeper.problems()
    assert not problems, "\n".join(problems)


@pytest_twisted.ensureDeferred
async def test_names_and_data_are_shown_as_text(server, admin: Client, ui: UI):
    """Whatever a device or a user named is text on the page, never markup."""
    name = '<img src=x onerror="window.pwned=1">'
    device_id, token = await admin.register(name)
    sim = await connect_device(server, token)
    await device_online(admin, device_id)
    await sim.report({"<b>key</b>": "<script>window.pwned=2</script>"})
    await ui.run(sign_in, admin.key)

    def listed(page: Page) -> None:
        expect(row(page, device_id).get_by_role("link", name=name)).to_be_visible()
        assert row(page, device_id).locator("img").count() == 0
        open_device(page, device_id, name)
        expect(page.get_by_label("Reported state")).to_contain_text('"<b>key</b>": "<script>window.pwned=2</script>"')
        expect(page.get_by_text("methods from RPC.List")).to_be_visible()

    await ui.run(listed)
    await sim.call("Dash.Log", {"fd": 1, "data": "<img src=y onerror=\"window.pwned=3\">\n", "t": 1, "seq": 1})

    def logged(page: Page) -> None:
        log = page.get_by_role("log", name="Device log")
        expect(log).to_contain_text('<img src=y onerror="window.pwned=3">')
        assert log.locator("img").count() == 0
        assert page.locator("main img, main script, main b").count() == 0
        assert page.evaluate("window.pwned") is None

    await ui.run(logged)
    await ui.shot("device-markup-as-text")
    await sim.stop()


# Firmware updates


def firmware(page: Page) -> Any:
    return section(page, "Firmware update")


def pick_firmware(page: Page, path: str) -> None:
    firmware(page).get_by_label("Firmware file").set_input_files(path)


# Records every value the progress bar takes, from now on.
WATCH_PROGRESS_JS = """
() => {
  window.progressSeen = [];
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.target.tagName === 'PROGRESS') window.progressSeen.push(Number(r.target.getAttribute('value')));
    }
  }).observe(document.querySelector('main'), {subtree: true, attributes: true, attributeFilter: ['value']});
}
"""


@pytest_twisted.ensureDeferred
async def test_firmware_push_with_progress_then_commit(server, admin: Client, ui: UI, tmp_path):
    device_id, token = await admin.register("ota-push-lamp")
    # Flash writes take a moment, so that the bar has steps to show.
    sim = await connect_device(server, token, ota_write_delay=0.01)
    await device_online(admin, device_id)
    fw = make_zip(str(tmp_path / "lamp-2.0.zip"), build_id="20261201-ui-push", size=60_000)
    await ui.run(sign_in, admin.key)

    def upload(page: Page) -> None:
        open_device(page, device_id, "ota-push-lamp")
        box = firmware(page)
        expect(box.get_by_role("radio", name=re.compile("^Push"))).to_be_checked()
        accessible(page)
        page.evaluate(WATCH_PROGRESS_JS)
        pick_firmware(page, fw)
        box.get_by_role("button", name="Upload and update").click()
        expect(box.get_by_text("dashd took lamp-2.0.zip and started the update.")).to_be_visible()
        bar = box.get_by_role("progressbar", name="Update progress")
        # The device gets all of it and comes back with it.
        expect(bar).to_have_attribute("value", "100")
        expect(box.locator(".ota-percent")).to_have_text("100%")
        expect(box.get_by_text("Done, not committed yet.")).to_be_visible(timeout=20_000)
        expect(box).to_contain_text("The device runs fw_id 20261201-ui-push (version 2.0.0)")
        expect(box).to_contain_text("lamp-2.0.zip (Mongoose OS .zip")
        expect(box).to_contain_text("build 20261201-ui-push")
        # The device's side of the bar went up step by step to 100.
        seen = page.evaluate("window.progressSeen")
        device_side = seen[len(seen) - seen[::-1].index(0):] if 0 in seen else seen
        assert device_side == sorted(device_side) and device_side[-1] == 100, seen
        assert len(set(v for v in device_side if 0 < v < 100)) >= 5, seen
        accessible(page)

    await ui.run(upload)
    await ui.shot("firmware-uncommitted")
    assert sim.ota_committed is False

    def commit(page: Page) -> None:
        box = firmware(page)
        box.get_by_role("button", name="Commit the new firmware").click()
        expect(box.get_by_text("Committed: the device runs fw_id 20261201-ui-push (version 2.0.0).")).to_be_visible()
        expect(box.get_by_role("heading", name="Last update")).to_be_focused()
        expect(box.get_by_role("button", name="Commit the new firmware")).to_be_hidden()
        # The info and the log followed.
        expect(page.get_by_role("table", name="System info reported by the device")).to_contain_text("20261201-ui-push")
        log = page.get_by_role("log", name="Device log")
        expect(log).to_contain_text("firmware update lamp-2.0.zip: rebooting")
        expect(log).to_contain_text("firmware update lamp-2.0.zip: committed (fw_id 20261201-ui-push)")

    await ui.run(commit)
    await ui.shot("firmware-committed")
    assert sim.ota_committed is True
    assert (await admin.device(device_id))["ota"]["state"] == "committed"
    await sim.stop()


@pytest_twisted.ensureDeferred
async def test_firmware_pull_with_auto_commit(server, admin: Client, ui: UI, tmp_path):
    device_id, token = await admin.register("ota-pull-gate")
    sim = await connect_device(server, token)
    await device_online(admin, device_id)
    fw = make_zip(str(tmp_path / "gate.zip"), build_id="20261201-ui-pull", size=30_000)
    await ui.run(sign_in, admin.key)

    def upload(page: Page) -> None:
        open_device(page, device_id, "ota-pull-gate")
        box = firmware(page)
        timeout = box.get_by_label("Commit timeout in seconds (optional)")
        expect(timeout).to_be_hidden()
        box.get_by_role("radio", name=re.compile("^Pull")).check()
        box.get_by_label("Commit it as soon as the device is back with it").check()
        pick_firmware(page, fw)
        # A timeout dashd would refuse is not sent.
        timeout.fill("-5")
        box.get_by_role("button", name="Upload and update").click()
        expect(box.get_by_role("alert")).to_have_text(
            "The commit timeout must be a whole number of seconds from 0 to 2592000 (30 days).")
        expect(timeout).to_be_focused()
        timeout.fill("120")
        box.get_by_role("button", name="Upload and update").click()
        expect(box.get_by_text("Committed: the device runs fw_id 20261201-ui-pull")).to_be_visible(timeout=20_000)
        expect(box).to_contain_text("pulled by the device")
        expect(box).to_contain_text("committed automatically")
        expect(firmware(page).get_by_role("progressbar", name="Update progress")).to_have_attribute("value", "100")
        accessible(page)

    await ui.run(upload)
    await ui.shot("firmware-pull-committed")
    # The device downloaded it from its one-time link, which the page
    # never saw.
    params = sim.ota_update_params
    assert params["commit_timeout"] == 120
    secret = params["url"].rsplit("/", 1)[1]
    assert params["url"] == "%s/api/v2/firmware/%s" % (server.url, secret)
    SECRETS.add(secret)
    assert secret not in await ui.run(lambda page: page.content())
    assert sim.ota_committed is True
    await sim.stop()


@pytest_twisted.ensureDeferred
async def test_firmware_pull_is_not_offered_to_a_device_that_cannot_pull(server, admin: Client,
                                                                        ui: UI, tmp_path):
    device_id, token = await admin.register("ota-mdash")
    sim = await connect_device(server, token, dialect="mdash")
    await device_online(admin, device_id)
    fw = make_bin(str(tmp_path / "mdash.bin"), 20_000)
    await ui.run(sign_in, admin.key)

    def upload(page: Page) -> None:
        open_device(page, device_id, "ota-mdash")
        box = firmware(page)
        pull = box.get_by_role("radio", name=re.compile("^Pull"))
        # click, not check: the page may turn it off again before check()
        # looks at it (that is the point).
        pull.click()
        expect(box.get_by_text("This device has no OTA.Update (the mDash library): it cannot "
                               "download firmware itself, so dashd pushes it.")).to_be_visible()
        expect(pull).to_be_disabled()
        expect(box.get_by_role("radio", name=re.compile("^Push"))).to_be_checked()
        pick_firmware(page, fw)
        box.get_by_role("button", name="Upload and update").click()
        expect(box.get_by_text("Done, not committed yet.")).to_be_visible(timeout=20_000)
        expect(box).to_contain_text("pushed by dashd")
        accessible(page)

    await ui.run(upload)
    await ui.shot("firmware-mdash-push-only")
    assert "OTA.Update" not in [f.get("method") for f in sim.frames]
    await sim.stop()


@pytest_twisted.ensureDeferred
async def test_firmware_refusals_are_explained(server, admin: Client, ui: UI, tmp_path):
    device_id, token = await admin.register("ota-refusals")
    await ui.run(sign_in, admin.key)
    text = tmp_path / "notes.txt"
    text.write_text("not firmware")
    no_manifest = make_zip(str(tmp_path / "plain.zip"), build_id="x", size=1000, manifest=False)
    too_big = make_bin(str(tmp_path / "huge.bin"), 300_000)
    fw = make_bin(str(tmp_path / "app.bin"), 20_000)

    def offline(page: Page) -> None:
        open_device(page, device_id, "ota-refusals")
        box = firmware(page)
        expect(box.get_by_text("No firmware update of this device yet.")).to_have_count(0)
        box.get_by_role("button", name="Upload and update").click()
        expect(box.get_by_role("alert")).to_have_text("Choose a firmware file first.")
        expect(box.get_by_label("Firmware file")).to_be_focused()
        pick_firmware(page, fw)
        box.get_by_role("button", name="Upload and update").click()
        expect(box.get_by_role("alert")).to_have_text(
            "Not sent: the device is offline. dashd sends firmware only to a connected device; "
            "try again once it is online.")

    await ui.run(offline)
    # A device that takes its time with each write (within ota.step_timeout,
    # 2 s): an update of a large file runs for a while (25 s).
    sim = await connect_device(server, token, ota_write_delay=0.5)
    await device_online(admin, device_id)
    for status in (400, 413, 415, 409):
        ui.allow(status, "/api/v2/devices/%s/ota" % device_id)

    def bad_files(page: Page) -> None:
        box = firmware(page)
        expect(page.locator(".page-head .badge")).to_have_text("Online")
        send = box.get_by_role("button", name="Upload and update")
        for path, message in (
            (str(text), "Not started. Unsupported (415): unknown kind of firmware file 'notes.txt': "
                        "send a Mongoose OS .zip or a .bin image (by file name, ?filename=, or "
                        "Content-Type application/zip or application/octet-stream). Choose a "
                        "Mongoose OS .zip (from mos build) or a .bin image."),
            (no_manifest, "Not started. Rejected (400): the .zip holds no manifest.json: it is not a "
                          "Mongoose OS firmware (build one with mos build). Nothing was sent to the device."),
            (too_big, "Not started. Too large (413): the firmware file is 300000 bytes, more than the "
                      "limit of 262144. dashd takes firmware files up to its ota.max_bytes setting; "
                      "nothing was sent to the device."),
        ):
            pick_firmware(page, path)
            send.click()
            expect(box.get_by_role("alert")).to_contain_text(message)
            expect(box.get_by_label("Firmware file")).to_be_focused()
            expect(send).to_be_enabled()

    await ui.run(bad_files)
    await ui.shot("firmware-refused")
    assert not any(str(f.get("method", "")).startswith("OTA.") for f in sim.frames)

    # An update started elsewhere shows, live; a second one is refused.
    slow = make_bin(str(tmp_path / "slow.bin"), 200_000)
    reply = await admin.upload("/api/v2/devices/%s/ota" % device_id, slow)
    assert reply.status == 202, reply

    def conflict(page: Page) -> None:
        box = firmware(page)
        expect(box.get_by_role("heading", name="Update under way")).to_be_visible()
        expect(box.locator(".ota-phase")).to_have_text("dashd sends slow.bin to the device…")
        expect(box.locator(".ota-bytes")).to_contain_text(" of 195.3 KiB")
        pick_firmware(page, fw)
        box.get_by_role("button", name="Upload and update").click()
        alert = box.get_by_role("alert")
        expect(alert).to_contain_text(
            "Not started. Conflict (409): a firmware update of device %s is already running (uploading, " % device_id)
        expect(alert).to_contain_text("Wait for it to end (its progress is shown below), then try again.")

    await ui.run(conflict)
    await ui.shot("firmware-under-way")
    await sim.stop()
    await ota_state(admin, device_id, "failed")


@pytest_twisted.ensureDeferred
async def test_firmware_failure_is_shown_with_its_reason(server, admin: Client, ui: UI, tmp_path):
    device_id, token = await admin.register("ota-failing")
    sim = await connect_device(server, token, ota_fail="OTA.Write", ota_fail_after=5)
    await device_online(admin, device_id)
    fw = make_bin(str(tmp_path / "broken-flash.bin"), 20_000)
    await ui.run(sign_in, admin.key)

    def fails(page: Page) -> None:
        open_device(page, device_id, "ota-failing")
        pick_firmware(page, fw)
        firmware(page).get_by_role("button", name="Upload and update").click()
        alert = firmware(page).get_by_role("alert")
        expect(alert).to_have_text(
            "The update failed: the device refused OTA.Write: simulated failure of OTA.Write (code 500). "
            "The device stays usable; a new update may start at once.")
        bar = firmware(page).get_by_role("progressbar", name="Update progress")
        # It stopped where the device did: five writes of twenty.
        assert 0 < int(bar.get_attribute("value")) < 100
        expect(page.get_by_role("log", name="Device log")).to_contain_text(
            "update broken-flash.bin: failed (the device refused OTA.Write")
        accessible(page)

    await ui.run(fails)
    await ui.shot("firmware-failed")
    await sim.stop()


# Stored data


def stored(page: Page) -> Any:
    return section(page, "Stored data")


@pytest_twisted.ensureDeferred
async def test_stored_data_plots_and_table(server, admin: Client, ui: UI):
    device_id, token = await admin.register("data-greenhouse")
    sim = await connect_device(server, token)
    await device_online(admin, device_id)
    await sim.report({"temp": 19.5, "env": {"hum": 40}, "state": "idle"})
    await ui.run(sign_in, admin.key)
    # (The more precise first: the first that fits an error takes it.)
    ui.allow(400, "/api/v2/devices/%s/data" % device_id)
    ui.allow(400, "/api/v2/devices/" + device_id)

    def save_keys(page: Page) -> None:
        open_device(page, device_id, "data-greenhouse")
        box = stored(page)
        # Look before you read: nothing is saved yet, so nothing is stored.
        expect(box.get_by_text("No reported keys are saved")).to_be_visible()
        expect(box.get_by_text("No points are stored for this device.")).to_be_visible()
        accessible(page)
        key = box.get_by_label("Reported key to save")
        # The reported keys are offered.
        offered = box.locator("datalist option").evaluate_all("els => els.map(e => e.value)")
        assert {"temp", "env", "env.hum", "state"} <= set(offered), offered
        box.get_by_role("button", name="Save this key").click()
        expect(box.get_by_role("alert")).to_have_text("Enter the reported key to save.")
        # dashd checks the path and says what is wrong.
        key.fill("env..hum")
        box.get_by_role("button", name="Save this key").click()
        expect(box.get_by_role("alert")).to_have_text(
            "Not changed. Rejected (400): tags.save: 'env..hum' is not a dotted path such as \"env.temperature\"")
        expect(key).to_be_focused()
        for name in ("temp", "env.hum", "state"):
            key.fill(name)
            box.get_by_role("button", name="Save this key").click()
            expect(box.get_by_text("Saving %s: each time the device reports it" % name)).to_be_visible()
            expect(key).to_have_value("")
        saved = box.locator("ul.saved-keys li code").all_inner_texts()
        assert saved == ["temp", "env.hum", "state"], saved
        # The tags editor shows the same list.
        expect(section(page, "Shadow").get_by_label("Tags (JSON)")).to_have_value(
            '{\n  "save": [\n    "temp",\n    "env.hum",\n    "state"\n  ]\n}')

    await ui.run(save_keys)
    assert (await admin.device(device_id))["shadow"]["tags"] == {"save": ["temp", "env.hum", "state"]}

    # The device reports; the page follows.
    for temp, hum, state in ((20.0, 41, "heating"), (20.5, 43, "heating"), (21.25, 44, "idle"),
                             (21.0, 45, "idle"), (22.0, 44, "venting")):
        await within(sim.report({"temp": temp, "env": {"hum": hum}, "state": state}))

    def plots(page: Page) -> None:
        box = stored(page)
        expect(box.locator(".count")).to_contain_text("15 points of 3 keys")
        temp = box.get_by_role("img", name=re.compile("^Plot of temp"))
        expect(temp).to_be_visible()
        # What it shows is said in words too.
        label = temp.get_attribute("aria-label")
        assert label.startswith("Plot of temp. temp: 5 points from ") and label.endswith(
            "lowest 20, highest 22, last 22."), label
        # Drawn by the same charting as the charts over time (uPlot), not
        # a plot of its own.
        expect(temp.locator(".uplot canvas")).to_have_count(1)
        expect(page.locator("svg.plot")).to_have_count(0)
        expect(box.get_by_role("img", name=re.compile("^Plot of env.hum"))).to_be_visible()
        expect(box.locator("figcaption")).to_have_text(["env.hum — 5 points, last 44", "temp — 5 points, last 22"])
        # Values that are not numbers are listed, not plotted.
        others = box.get_by_role("table", name="Stored values that are not numbers")
        expect(others.locator("tbody tr")).to_have_count(5)
        expect(others).to_contain_text('"venting"')
        accessible(page)

    await ui.run(plots)
    await ui.shot("data-plots")

    def as_table(page: Page) -> None:
        box = stored(page)
        box.get_by_label("Table").check()
        table = box.get_by_role("table", name="Stored points, oldest first")
        expect(table.locator("tbody tr")).to_have_count(15)
        expect(table.locator("tbody tr").first).to_contain_text("temp")
        expect(table.locator("tbody tr").first).to_contain_text("20")
        expect(table.locator("tbody tr").last).to_contain_text('"venting"')
        accessible(page)

    await ui.run(as_table)
    await ui.shot("data-table")

    def queries(page: Page) -> None:
        box = stored(page)
        table = box.get_by_role("table", name="Stored points, oldest first")
        # A filter, a limit, a skip.
        box.get_by_label("Filter (optional)").fill("hum")
        box.get_by_role("button", name="Show points").click()
        expect(table.locator("tbody tr")).to_have_count(5)
        box.get_by_label("Filter (optional)").fill("")
        box.get_by_label("Points", exact=True).fill("4")
        box.get_by_label("Skip (optional)").fill("0")
        box.get_by_role("button", name="Show points").click()
        expect(table.locator("tbody tr")).to_have_count(4)
        expect(table.locator("tbody tr").first).to_contain_text("20")
        expect(box.locator(".count")).to_have_text(re.compile(r"^4 points of 3 keys, from .*\.$"))
        # Bad numbers are said, nothing is asked.
        box.get_by_label("Points", exact=True).fill("6000")
        box.get_by_role("button", name="Show points").click()
        expect(box.get_by_role("alert")).to_have_text("Points must be a whole number from 1 to 5000.")
        expect(box.get_by_label("Points", exact=True)).to_be_focused()
        box.get_by_label("Points", exact=True).fill("100")
        box.get_by_label("Skip (optional)").fill("1.5")
        box.get_by_role("button", name="Show points").click()
        expect(box.get_by_role("alert")).to_have_text("Skip must be a whole number (negative counts from the end).")
        # dashd's own refusal.
        box.get_by_label("Skip (optional)").fill("")
        box.get_by_label("Filter (optional)").fill("x" * 300)
        box.get_by_role("button", name="Show points").click()
        expect(box.get_by_role("alert")).to_have_text(
            "No points shown. Rejected (400): filter must be 1 to 256 characters")
        box.get_by_label("Filter (optional)").fill("")
        box.get_by_role("button", name="Show points").click()
        expect(table.locator("tbody tr")).to_have_count(15)
        box.get_by_label("Plots").check()
        # Stop saving a key.
        box.get_by_role("button", name="Stop saving state").click()
        expect(box.get_by_text("Stopped saving state.")).to_be_visible()

    await ui.run(queries)
    assert (await admin.device(device_id))["shadow"]["tags"] == {"save": ["temp", "env.hum"]}
    # Someone is typing a query when new points come.
    await ui.run(lambda page: stored(page).get_by_label("Points", exact=True).fill("9999"))
    await within(sim.report({"temp": 23.5, "state": "off"}))

    def followed(page: Page) -> None:
        box = stored(page)
        # The latest points are shown again (the query last sent): temp's
        # new one, no new state.
        expect(box.locator("figcaption").last).to_have_text("temp — 6 points, last 23.5")
        expect(box.get_by_role("table", name="Stored values that are not numbers").locator("tbody tr")).to_have_count(5)
        # What was being typed is left alone.
        expect(box.get_by_label("Points", exact=True)).to_have_value("9999")
        expect(box.get_by_label("Points", exact=True)).to_be_focused()
        expect(box.get_by_role("alert")).to_have_count(0)
        box.get_by_label("Points", exact=True).fill("200")

    await ui.run(followed)

    def at_phone_width(page: Page) -> None:
        page.set_viewport_size(PHONE)
        plot = stored(page).get_by_role("img", name=re.compile("^Plot of temp"))
        # Drawn again for the narrow width.
        expect(plot.locator(".uplot")).to_have_count(1)
        deadline = time.monotonic() + 5
        while plot.locator(".uplot").evaluate("e => e.getBoundingClientRect().width") > PHONE["width"]:
            assert time.monotonic() < deadline, "the plot was not drawn again at phone width"
            page.wait_for_timeout(50)
        no_horizontal_overflow(page)
        accessible(page)

    await ui.run(at_phone_width)
    await ui.shot("phone-data-plots")
    await sim.stop()


# Sharing and what each kind of key is offered


@pytest_twisted.ensureDeferred
async def test_sharing_with_another_account(server, admin: Client, ui: UI, tmp_path):
    device_id, token = await admin.register("shared-heater")
    account_b, key_b = await new_account(admin, "ui-partner")
    sim = await connect_device(server, token, ota_fail="OTA.Begin")
    await device_online(admin, device_id)
    # Its owner saves a key's values and tried a firmware update.
    await admin.post("/api/v2/devices/" + device_id, {"shadow": {"tags": {"save": ["power"]}}})
    for watts in (800, 1200):
        await within(sim.report({"power": watts}))
    reply = await admin.upload("/api/v2/devices/%s/ota" % device_id, make_bin(str(tmp_path / "h.bin"), 3000))
    assert reply.status == 202
    await ota_state(admin, device_id, "failed")
    await ui.run(sign_in, admin.key)
    ui.allow(400, "/api/v2/devices/" + device_id)

    def share(page: Page) -> None:
        open_device(page, device_id, "shared-heater")
        box = section(page, "Sharing")
        box.get_by_label("Shared with").fill("y" * 200)
        box.get_by_role("button", name="Save sharing").click()
        expect(box.get_by_role("alert")).to_contain_text("Rejected (400): shared_with")
        box.get_by_label("Shared with").fill(account_b)
        box.get_by_role("button", name="Save sharing").click()
        expect(box.get_by_text("Shared with %s." % account_b)).to_be_visible()
        sign_out(page)

    await ui.run(share)
    assert (await admin.device(device_id))["shared_with"] == account_b

    def as_partner(page: Page, key: str) -> None:
        sign_in(page, key)
        # An admin of another account: its own keys and audit log.
        expect(page.get_by_role("link", name="Audit log")).to_be_visible()
        expect(page.get_by_role("link", name="Accounts")).to_be_hidden()
        target = row(page, device_id)
        expect(target).to_contain_text("shared")
        expect(target.get_by_role("button")).to_have_count(0)
        open_device(page, device_id, "shared-heater")
        expect(section(page, "Info")).to_contain_text("(shared with you)")
        expect(section(page, "Info").get_by_role("button", name="Rename")).to_have_count(0)
        expect(section(page, "Token and deletion")).to_have_count(0)
        shadow = section(page, "Shadow")
        expect(shadow.get_by_label("Tags (JSON)")).to_have_count(0)
        expect(shadow.get_by_text("Only admins of the account that owns the device change its tags.")).to_be_visible()
        expect(section(page, "Sharing")).to_contain_text("only its admins change its sharing")
        # It may call methods and change desired.
        box = section(page, "RPC console")
        box.get_by_label("Method").fill("Sim.Echo")
        box.get_by_label("Params (JSON)").fill('{"from": "partner"}')
        box.get_by_role("button", name="Call").click()
        expect(box.get_by_label("Result")).to_contain_text('"from": "partner"')
        # It reads the stored data and the firmware status, changes neither.
        data = section(page, "Stored data")
        expect(data.locator("ul.saved-keys")).to_have_text("power")
        expect(data.get_by_role("button", name="Stop saving power")).to_have_count(0)
        expect(data.get_by_label("Reported key to save")).to_have_count(0)
        expect(data.get_by_role("img", name="Plot of power")).to_be_visible()
        expect(data.locator("figcaption")).to_have_text("power — 2 points, last 1200")
        ota = section(page, "Firmware update")
        expect(ota.get_by_text("Only admin keys of the account that owns the device update its firmware.")).to_be_visible()
        expect(ota.get_by_label("Firmware file")).to_have_count(0)
        expect(ota.get_by_role("alert")).to_contain_text("The update failed: the device refused OTA.Begin")
        expect(page.get_by_role("log", name="Device log")).to_contain_text("update h.bin: failed")
        accessible(page)

    await ui.run(as_partner, key_b)
    await ui.shot("device-shared")
    await sim.stop()


@pytest_twisted.ensureDeferred
async def test_read_only_key(server, admin: Client, ui: UI):
    device_id, _ = await admin.register("ro-visible")
    await admin.post("/api/v2/devices/" + device_id,
                     {"shadow": {"state": {"desired": {"fan": 1}}, "tags": {"t": 1}}})
    key = await new_key(admin, name="auditor", kind="read-only")
    await ui.run(sign_in, key)
    ui.allow(403, "/api/v2/keys")
    ui.allow(403, "/api/v2/audit")

    def offered_nothing(page: Page) -> None:
        expect(page.locator("#who")).to_have_text(re.compile(r": key auditor \(read-only\)$"))
        expect(page.get_by_role("link", name="API keys")).to_be_hidden()
        expect(page.get_by_role("link", name="Audit log")).to_be_hidden()
        expect(page.get_by_role("link", name="Accounts")).to_be_hidden()
        expect(page.get_by_role("button", name="Add device")).to_have_count(0)
        expect(row(page, device_id)).to_contain_text("ro-visible")
        expect(row(page, device_id).get_by_role("button")).to_have_count(0)
        accessible(page)
        open_device(page, device_id, "ro-visible")
        shadow = section(page, "Shadow")
        expect(shadow.get_by_role("textbox")).to_have_count(0)
        expect(shadow.get_by_label("Desired state")).to_contain_text('"fan": 1')
        expect(shadow.get_by_text("This key is read-only.")).to_be_visible()
        expect(section(page, "RPC console")).to_contain_text(
            "This key is read-only: it may not call methods on devices.")
        expect(section(page, "RPC console").get_by_role("button")).to_have_count(0)
        expect(section(page, "Token and deletion")).to_have_count(0)
        # It reads stored data, logs and firmware updates; it changes none.
        data = section(page, "Stored data")
        expect(data.get_by_text("No reported keys are saved: dashd stores nothing for this device.")).to_be_visible()
        expect(data.get_by_label("Reported key to save")).to_have_count(0)
        expect(data.get_by_text("No points are stored for this device.")).to_be_visible()
        ota = section(page, "Firmware update")
        expect(ota.get_by_text("This key is read-only: it sees firmware updates but may not start one.")).to_be_visible()
        expect(ota.get_by_text("No firmware update of this device yet.")).to_be_visible()
        expect(ota.get_by_role("button")).to_have_count(0)
        expect(section(page, "Device log").get_by_text("Nothing is stored for this device yet")).to_be_visible()
        accessible(page)
        # dashd itself refuses it the audit log, and the page says so.
        page.goto("/#/audit")
        expect(page.get_by_role("alert")).to_have_text(
            "Not allowed with this key (403): only admin keys may read the audit log; this key is read-only")
        # And the keys.
        page.goto("/#/keys")
        expect(page.get_by_role("alert")).to_have_text(
            "Not allowed with this key (403): only admin keys may manage keys; this key is read-only")
        expect(page.get_by_role("button", name="Create key")).to_have_count(0)

    await ui.run(offered_nothing)
    await ui.shot("read-only-keys-refused")


# The keys page, and a restricted key made there


@pytest_twisted.ensureDeferred
async def test_keys_page_and_restricted_key(server, admin: Client, ui: UI):
    device_id, token = await admin.register("customer-thermostat")
    other_id, _ = await admin.register("not-for-customers")
    await admin.post("/api/v2/devices/" + device_id,
                     {"shadow": {"state": {"desired": {"led": 0, "secret": 1}}}})
    sim = await connect_device(server, token)
    await device_online(admin, device_id)
    await sim.report({"temp": 19.5, "hidden": "x"})
    await ui.run(sign_in, admin.key)
    ui.allow(400, "/api/v2/keys")

    def create_keys(page: Page) -> str:
        page.get_by_role("link", name="API keys").click()
        expect(page.get_by_role("heading", level=1, name="API keys")).to_be_visible()
        expect(page.get_by_role("row").filter(has_text="this key")).to_contain_text("admin")
        accessible(page)
        # A key that would expire in the past is refused, with dashd's reason.
        page.get_by_label("Name (optional)").fill("expired-already")
        page.get_by_label("Expires (optional)").fill("2001-01-01T00:00")
        page.get_by_role("button", name="Create key").click()
        expect(page.get_by_role("alert")).to_have_text(
            "Not created. Rejected (400): expires must be a Unix time in the future")
        page.get_by_label("Expires (optional)").fill("")
        # A read-only key.
        page.get_by_label("Name (optional)").fill("ui-auditor")
        page.get_by_label("Read-only").check()
        page.get_by_role("button", name="Create key").click()
        expect(page.get_by_role("heading", name="API key created")).to_be_visible()
        secret = page.get_by_label("API key", exact=True).input_value()
        page.get_by_role("button", name="Copy API key").click()
        assert clipboard(page) == secret
        page.get_by_role("button", name="Done").click()
        assert secret not in page.content()
        expect(page.get_by_role("row").filter(has_text="ui-auditor")).to_contain_text("read-only")
        # A restricted key for one device.
        page.get_by_label("Name (optional)").fill("ui-customer")
        page.get_by_label("Restricted").check()
        scope = page.get_by_role("group", name="What the restricted key may use")
        scope.get_by_label("Device").select_option(device_id)
        scope.get_by_label("Shadow keys it may read").fill("led, temp")
        scope.get_by_label("Desired keys it may change").fill("led")
        scope.get_by_label("Methods it may call").fill("GPIO.*, RPC.List")
        page.get_by_role("button", name="Create key").click()
        expect(page.get_by_role("heading", name="API key created")).to_be_visible()
        customer = page.get_by_label("API key", exact=True).input_value()
        page.get_by_role("button", name="Done").click()
        customer_row = page.get_by_role("row").filter(has_text="ui-customer")
        expect(customer_row).to_contain_text("restricted")
        expect(customer_row).to_contain_text("customer-thermostat: read led, temp; write led; rpc GPIO.*, RPC.List")
        return secret + " " + customer

    keys = await ui.run(create_keys)
    await ui.shot("keys")
    auditor, customer = keys.split(" ")
    SECRETS.update((auditor, customer))
    who = await Client(server, customer).get("/api/v2/whoami")
    assert who.body["kind"] == "restricted"
    assert who.body["scope"] == {"devices": {device_id: {
        "read": ["led", "temp"], "write": ["led"], "rpc": ["GPIO.*", "RPC.List"]}}}

    def revoke(page: Page) -> None:
        auditor_row = page.get_by_role("row").filter(has_text="ui-auditor")
        auditor_row.get_by_role("button", name="Revoke ui-auditor").click()
        dialog(page).get_by_role("button", name="Revoke key").click()
        expect(page.get_by_text("Key ui-auditor revoked.")).to_be_visible()
        expect(auditor_row).to_have_count(0)
        sign_out(page)

    await ui.run(revoke)
    assert (await Client(server, auditor).get("/api/v2/whoami")).status == 401

    for status in (403,):
        ui.allow(status, "/api/v2/devices/" + device_id)

    def as_customer(page: Page, key: str) -> None:
        sign_in(page, key)
        expect(page.get_by_role("link", name="API keys")).to_be_hidden()
        expect(row(page, device_id)).to_contain_text("Online")
        expect(row(page, other_id)).to_have_count(0)
        accessible(page)
        expect(page.get_by_role("link", name="Audit log")).to_be_hidden()
        open_device(page, device_id, "customer-thermostat")
        # Stored data, logs and firmware updates are not a customer's (403).
        expect(section(page, "Device log")).to_have_count(0)
        expect(section(page, "Stored data")).to_have_count(0)
        expect(section(page, "Firmware update")).to_have_count(0)
        expect(section(page, "Sharing")).to_have_count(0)
        expect(page.get_by_role("table", name="System info reported by the device")).to_have_count(0)
        shadow = section(page, "Shadow")
        expect(shadow.get_by_label("Reported state")).to_contain_text('"temp": 19.5')
        expect(shadow.get_by_label("Reported state")).not_to_contain_text("hidden")
        expect(shadow.get_by_label("Tags (JSON)")).to_have_count(0)
        desired = shadow.get_by_label("Desired (JSON)")
        expect(desired).to_have_value('{\n  "led": 0\n}')
        expect(shadow.get_by_text("This key may change: led.")).to_be_visible()
        desired.fill('{"led": 1, "fan": 2}')
        shadow.get_by_role("button", name="Save desired").click()
        expect(shadow.get_by_role("alert")).to_have_text(
            "Not saved. Not allowed with this key (403): this key may not change desired.fan of device %s" % device_id)
        desired.fill('{"led": 1}')
        shadow.get_by_role("button", name="Save desired").click()
        expect(shadow.get_by_text("Saved desired")).to_be_visible()
        box = section(page, "RPC console")
        expect(box.get_by_text("methods from RPC.List")).to_be_visible()
        methods = box.locator("datalist option").evaluate_all("els => els.map(e => e.value)")
        assert methods == ["GPIO.Read", "GPIO.Toggle", "RPC.List"], methods
        box.get_by_label("Method").fill("GPIO.Toggle")
        box.get_by_label("Params (JSON)").fill('{"pin": 5}')
        box.get_by_role("button", name="Call").click()
        expect(box.get_by_label("Result")).to_have_text('{\n  "value": 1\n}')
        box.get_by_label("Method").fill("Sys.GetInfo")
        box.get_by_label("Params (JSON)").fill("")
        box.get_by_role("button", name="Call").click()
        expect(box.locator(".rpc-outcome")).to_have_text(
            "Sys.GetInfo failed. Not allowed with this key (403): this key may not call Sys.GetInfo on device %s" % device_id)
        accessible(page)

    await ui.run(as_customer, customer)
    await ui.shot("device-restricted")
    view = await admin.device(device_id)
    assert view["shadow"]["state"]["desired"] == {"led": 1, "secret": 1}
    assert sim.pins == {5: 1}
    await sim.stop()


@pytest_twisted.ensureDeferred
async def test_revoking_keys_of_an_account(server, admin: Client, ui: UI):
    """The last admin key cannot go (409, said so); revoking the key in use
    signs out."""
    _, key = await new_account(admin, "ui-solo")
    await ui.run(sign_in, key)
    ui.allow(409, "/api/v2/keys/")

    def last_key(page: Page) -> str:
        page.get_by_role("link", name="API keys").click()
        mine = page.get_by_role("row").filter(has_text="this key")
        mine.get_by_role("button").click()
        expect(dialog(page)).to_contain_text("You are signed in with this key: you will be signed out.")
        dialog(page).get_by_role("button", name="Revoke key").click()
        expect(page.get_by_role("alert")).to_contain_text("Not revoked. Conflict (409):")
        expect(page.get_by_role("alert")).to_contain_text("last admin key")
        page.get_by_label("Name (optional)").fill("second-admin")
        page.get_by_role("button", name="Create key").click()
        second = page.get_by_label("API key", exact=True).input_value()
        page.get_by_role("button", name="Done").click()
        expect(page.get_by_role("row").filter(has_text="second-admin")).to_be_visible()
        mine.get_by_role("button").click()
        dialog(page).get_by_role("button", name="Revoke key").click()
        expect(page.get_by_role("heading", level=1, name="Sign in")).to_be_visible()
        expect(page.get_by_text("You revoked the key you were signed in with.")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0
        return second

    second = await ui.run(last_key)
    SECRETS.add(second)
    assert (await Client(server, key).get("/api/v2/whoami")).status == 401
    assert (await Client(server, second).get("/api/v2/whoami")).status == 200


# Accounts and the audit log


@pytest_twisted.ensureDeferred
async def test_accounts_page_creates_an_account(server, admin: Client, ui: UI):
    await ui.run(sign_in, admin.key)
    operator = (await admin.get("/api/v2/whoami")).body["account_id"]

    def create(page: Page, operator: str) -> str:
        page.get_by_role("link", name="Accounts").click()
        expect(page.get_by_role("heading", level=1, name="Accounts")).to_be_visible()
        mine = page.locator("tr[data-account-id='%s']" % operator)
        expect(mine).to_contain_text("operator")
        expect(mine).to_contain_text("yours")
        accessible(page)
        page.get_by_role("button", name="Create account").click()
        expect(page.get_by_role("alert")).to_have_text("Enter a name for the account.")
        expect(page.get_by_label("Name")).to_be_focused()
        page.get_by_label("Name").fill("ui-tenant")
        page.get_by_role("button", name="Create account").click()
        expect(page.get_by_role("heading", name="Account created")).to_be_visible()
        account_id = page.get_by_label("Account ID", exact=True).input_value()
        key = page.get_by_label("Admin key", exact=True).input_value()
        page.get_by_role("button", name="Copy Admin key").click()
        expect(dialog(page).get_by_text("Copied.")).to_be_visible()
        assert clipboard(page) == key
        expect(dialog(page)).to_contain_text("shown only this once")
        return account_id + " " + key

    account_id, key = (await ui.run(create, operator)).split(" ")
    SECRETS.add(key)
    await ui.shot("account-created")

    def listed(page: Page, key: str) -> None:
        page.get_by_role("button", name="Done").click()
        expect(dialog(page)).to_have_count(0)
        assert key not in page.content()
        expect(page.locator("tr[data-account-id='%s']" % account_id)).to_contain_text("ui-tenant")
        expect(page.get_by_text("Created account ui-tenant (%s)." % account_id)).to_be_visible()
        expect(page.get_by_role("button", name="Create account")).to_be_focused()

    await ui.run(listed, key)
    await ui.shot("accounts")
    who = await Client(server, key).get("/api/v2/whoami")
    assert who.body["account_id"] == account_id and who.body["kind"] == "admin"
    assert who.body["operator"] is False
    ui.allow(403, "/api/v2/accounts")

    def as_tenant(page: Page, key: str) -> None:
        sign_out(page)
        sign_in(page, key)
        # Its admin sees its keys and its audit log, not the accounts.
        expect(page.get_by_role("link", name="API keys")).to_be_visible()
        expect(page.get_by_role("link", name="Audit log")).to_be_visible()
        expect(page.get_by_role("link", name="Accounts")).to_be_hidden()
        page.goto("/#/accounts")
        expect(page.get_by_role("alert")).to_have_text(
            "Not allowed with this key (403): only admin keys of the operator account may manage accounts")
        expect(page.get_by_role("button", name="Create account")).to_have_count(0)

    await ui.run(as_tenant, key)


@pytest_twisted.ensureDeferred
async def test_audit_page_lists_what_was_just_done(server, admin: Client, ui: UI):
    _, key = await new_account(admin, "ui-audited")
    tenant = Client(server, key)
    device_id, _ = await tenant.register("audit-boiler")
    # Enough entries for more than a page (50): renames, and one refused.
    for n in range(55):
        reply = await tenant.post("/api/v2/devices/" + device_id, {"name": "audit-boiler-%d" % n})
        assert reply.status == 200
    refused = await tenant.post("/api/v2/devices/" + device_id, {"shadow": {"version": 99, "tags": {}}})
    assert refused.status == 409

    async def written() -> bool:
        # Entries reach the store in batches (up to 250 ms): none may be there yet.
        entries = (await tenant.get("/api/v2/audit?start=-1")).body["entries"]
        return bool(entries) and entries[-1]["status"] == 409

    await eventually(written)
    await ui.run(sign_in, key)

    def first_page(page: Page) -> None:
        page.get_by_role("link", name="Audit log").click()
        expect(page.get_by_role("heading", level=1, name="Audit log")).to_be_visible()
        rows = page.get_by_role("table", name="Audit log of this account, newest first").locator("tbody tr")
        expect(rows).to_have_count(50)
        # Newest first: the refused change, with dashd's reason.
        expect(rows.first).to_contain_text("POST /api/v2/devices/" + device_id)
        expect(rows.first).to_contain_text("409: shadow version 99 is stale")
        expect(rows.first).to_contain_text("this key")
        expect(rows.first.get_by_role("link", name="audit-boiler-54")).to_be_visible()
        expect(rows.nth(1)).to_contain_text("200")
        expect(page.get_by_text("50 entries shown, newest first.")).to_be_visible()
        accessible(page)
        page.get_by_role("button", name="Load older").click()
        # 55 renames, the refusal and the registration: all of them.
        expect(rows).to_have_count(57)
        expect(rows.last).to_contain_text("POST /api/v2/devices")
        expect(rows.last).not_to_contain_text(device_id)
        expect(page.get_by_text("57 entries shown, newest first: every stored entry.")).to_be_visible()
        expect(page.get_by_role("button", name="Load older")).to_be_hidden()

    await ui.run(first_page)
    await ui.shot("audit")

    # What the page itself does is there too.
    def rename(page: Page) -> None:
        open_device(page, device_id, "audit-boiler-54")
        section(page, "Info").get_by_label("Name").fill("audit-boiler-renamed")
        section(page, "Info").get_by_role("button", name="Rename").click()
        expect(section(page, "Info").get_by_text("Renamed to audit-boiler-renamed.")).to_be_visible()

    await ui.run(rename)

    async def renamed() -> bool:
        reply = await tenant.get("/api/v2/audit?start=-1")
        return reply.body["entries"][-1]["status"] == 200

    await eventually(renamed)

    def newest(page: Page) -> None:
        page.get_by_role("link", name="Audit log").click()
        rows = page.get_by_role("table", name="Audit log of this account, newest first").locator("tbody tr")
        expect(rows.first.get_by_role("link", name="audit-boiler-renamed")).to_be_visible()
        expect(rows.first).to_contain_text("POST /api/v2/devices/%s" % device_id)
        # Reading the device's log (a POST) is no change: not listed.
        assert page.get_by_text("/api/v2/logs").count() == 0

    await ui.run(newest)
    reply = await tenant.post("/api/v2/devices/%s/rpc/Sys.GetInfo" % device_id)
    assert reply.status == 503

    async def called() -> bool:
        reply = await tenant.get("/api/v2/audit?start=-1")
        return reply.body["entries"][-1]["status"] == 503

    await eventually(called)

    def load_newer(page: Page) -> None:
        rows = page.get_by_role("table", name="Audit log of this account, newest first").locator("tbody tr")
        count = rows.count()
        page.get_by_role("button", name="Load newer").click()
        expect(rows).to_have_count(count + 1)
        expect(rows.first).to_contain_text("POST /api/v2/devices/%s/rpc/Sys.GetInfo" % device_id)
        expect(rows.first).to_contain_text("503: device %s is offline" % device_id)

    await ui.run(load_newer)


# Phone width, keyboard


@pytest_twisted.ensureDeferred
async def test_phone_width(server, admin: Client, phone: UI):
    device_id, token = await admin.register("phone-garden-valve")
    sim = await connect_device(server, token)
    await device_online(admin, device_id)
    await phone.run(sign_in, admin.key)

    def pages(page: Page) -> None:
        expect(row(page, device_id)).to_contain_text("Online")
        no_horizontal_overflow(page)
        accessible(page)

    await phone.run(pages)
    await phone.shot("phone-devices")
    await phone.run(open_device, device_id, "phone-garden-valve")
    await phone.run(lambda page: (expect(section(page, "RPC console")).to_contain_text("methods from RPC.List"),
                                  no_horizontal_overflow(page), accessible(page)))
    await phone.shot("phone-device")

    def keys(page: Page) -> None:
        page.get_by_role("link", name="API keys").click()
        expect(page.get_by_role("row").filter(has_text="this key")).to_be_visible()
        no_horizontal_overflow(page)
        accessible(page)

    await phone.run(keys)
    await phone.shot("phone-keys")

    def audit(page: Page) -> None:
        page.get_by_role("link", name="Audit log").click()
        rows = page.get_by_role("table", name="Audit log of this account, newest first").locator("tbody tr")
        expect(rows.first).to_be_visible()
        no_horizontal_overflow(page)
        accessible(page)

    await phone.run(audit)
    await phone.shot("phone-audit")

    def accounts(page: Page) -> None:
        page.get_by_role("link", name="Accounts").click()
        expect(page.get_by_role("row").filter(has_text="yours")).to_be_visible()
        no_horizontal_overflow(page)
        accessible(page)

    await phone.run(accounts)
    await phone.shot("phone-accounts")

    def add(page: Page) -> None:
        page.get_by_role("link", name="Devices", exact=True).click()
        page.get_by_role("button", name="Add device").click()
        page.get_by_role("button", name="Register").click()
        expect(page.get_by_role("heading", name="Device registered")).to_be_visible()
        no_horizontal_overflow(page)

    await phone.run(add)
    await phone.shot("phone-add-device")
    token2 = await phone.run(lambda page: page.get_by_label("Device token", exact=True).input_value())
    SECRETS.add(token2)
    await phone.run(lambda page: page.get_by_role("button", name="Done").click())
    await sim.stop()


@pytest_twisted.ensureDeferred
async def test_keyboard_only(server, admin: Client, ui: UI):
    device_id, _ = await admin.register("keyboard-kettle")

    def keyboard(page: Page, key: str) -> None:
        page.goto("/")
        # The key field has focus; Enter signs in.
        expect(page.get_by_label("API key")).to_be_focused()
        page.keyboard.type(key)
        page.keyboard.press("Enter")
        heading = page.get_by_role("heading", level=1, name="Devices")
        expect(heading).to_be_focused()
        # Tab leads to the search field, then on to the device's link.
        def tab_to(check: str, key: str = "Tab") -> None:
            # (The top bar has grown: the alarm count, Alarms, Webhooks.)
            for _ in range(15):
                page.keyboard.press(key)
                if page.evaluate(check):
                    return
            raise AssertionError("Tab never reached %s" % check)

        tab_to("document.activeElement.type === 'search'")
        page.keyboard.type("keyboard-kettle")
        tab_to("document.activeElement.textContent === 'keyboard-kettle'")
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", level=1, name="keyboard-kettle")).to_be_focused()
        # The skip link is the first stop of the page and jumps to the content.
        tab_to("document.activeElement.id === 'skip-link'", "Shift+Tab")
        expect(page.get_by_role("link", name="Skip to content")).to_be_visible()
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", level=1, name="keyboard-kettle")).to_be_focused()
        # Dialogs: focus inside, Escape closes, focus comes back.
        page.get_by_role("link", name="Devices", exact=True).focus()
        page.keyboard.press("Enter")
        add = page.get_by_role("button", name="Add device")
        add.focus()
        page.keyboard.press("Enter")
        expect(page.get_by_label("Name (optional)")).to_be_focused()
        page.keyboard.press("Escape")
        expect(dialog(page)).to_have_count(0)
        expect(add).to_be_focused()
        # Every control has a visible focus indicator.
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline == "solid", outline

    await ui.run(keyboard, admin.key)
    assert (await admin.get("/api/v2/devices/" + device_id)).status == 200


# dashd going away and coming back


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_dashd_restart_is_survived(own_server: DashdProcess, own_ui: UI):
    await own_server.start_async()
    admin = Client(own_server, own_server.admin_key)
    device_id, token = await admin.register("restart-survivor")
    sim = await connect_device(own_server, token)
    await device_online(admin, device_id)
    await own_ui.run(sign_in, admin.key)
    await own_ui.run(lambda page: expect(row(page, device_id)).to_contain_text("Online"))

    # While dashd is down the page keeps trying, and says so; the browser
    # logs the refused connections.
    # (A request that comes while it drains gets 503: a GET of the page's,
    # or the POST for a notification ticket of a reconnection.)
    for text in ("WebSocket connection to", "ERR_CONNECTION_REFUSED", "HTTP 503 for GET",
                 "HTTP 503 for POST %s/api/v2/notify/ticket" % own_server.url):
        own_ui.allow_failure(text)
    own_server.stop()
    await own_ui.run(lambda page: expect(page.locator("#live-state")).to_have_text(
        "Live updates lost: reconnecting…"))
    await own_ui.shot("reconnecting")
    await own_server.start_async()
    await device_online(admin, device_id)

    def back(page: Page) -> None:
        expect(page.locator("#live-state")).to_have_text("Live", timeout=40_000)
        expect(row(page, device_id)).to_contain_text("Online")
        # Still signed in, and live again: the device's drop shows.
        assert page.evaluate("sessionStorage.length") == 1

    await own_ui.run(back)
    await sim.stop()
    await own_ui.run(lambda page: expect(row(page, device_id)).to_contain_text("Offline"))


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_busy_device_says_when_to_try_again(tmp_path, browser_thread: BrowserThread, request: Any):
    """A device at its limit of calls in flight: the console shows dashd's
    429 and when to try again."""
    busy = DashdProcess(str(tmp_path), {"device": {"max_calls_in_flight": 1}})
    await busy.start_async()
    ui = open_ui(browser_thread, busy.url, request.node.nodeid, None)
    try:
        admin = Client(busy, busy.admin_key)
        device_id, token = await admin.register("busy-bee")
        sim = await connect_device(busy, token)
        await device_online(admin, device_id)
        await ui.run(sign_in, admin.key)
        await ui.run(open_device, device_id, "busy-bee")
        await ui.run(lambda page: expect(page.get_by_text("methods from RPC.List")).to_be_visible())
        slow = ensureDeferred(admin.post("/api/v2/devices/%s/rpc/Sim.Sleep" % device_id,
                                         {"seconds": 3}))
        await eventually(lambda: any(f.get("method") == "Sim.Sleep" for f in sim.frames))
        ui.allow(429, "/rpc/Sim.Echo")

        def busy_call(page: Page) -> None:
            box = section(page, "RPC console")
            box.get_by_label("Method").fill("Sim.Echo")
            box.get_by_role("button", name="Call").click()
            outcome = box.locator(".rpc-outcome")
            expect(outcome).to_contain_text(
                "Sim.Echo failed. Too many requests (429): device %s already has 1 calls in flight"
                % device_id)
            expect(outcome).to_contain_text(re.compile(r"Try again in \d+ s\.$"))

        await ui.run(busy_call)
        assert (await slow).status == 200
        await sim.stop()
    finally:
        ui.close()
        busy.stop()
    problems = ui.unexplained() + busy.problems()
    assert not problems, "\n".join(problems)


@pytest_twisted.ensureDeferred
async def test_device_query_selects_the_list(server, admin: Client, ui: UI):
    ids = {}
    for name, site in (("query-berlin-1", "berlin"), ("query-berlin-2", "berlin"),
                       ("query-paris", "paris")):
        device_id, token = await admin.register(name)
        reply = await admin.post("/api/v2/devices/" + device_id,
                                 {"shadow": {"tags": {"uiq": site}}})
        assert reply.status == 200
        ids[name] = (device_id, token)
    await ui.run(sign_in, admin.key)
    ui.allow(400, "/api/v2/devices")

    def query(page: Page) -> None:
        expect(row(page, ids["query-paris"][0])).to_be_visible()
        box = page.get_by_label("Device query")
        box.fill('shadow.tags.uiq = "berlin"')
        page.get_by_role("button", name="Apply query").click()
        expect(page.locator(".count")).to_have_text("2 devices matching the query, 0 online")
        expect(row(page, ids["query-berlin-1"][0])).to_be_visible()
        expect(row(page, ids["query-berlin-2"][0])).to_be_visible()
        expect(row(page, ids["query-paris"][0])).to_have_count(0)
        accessible(page)
        # A query that cannot be read: said where, and the list stays.
        box.fill('shadow.tags.uiq = "berlin" and colour = 1')
        page.get_by_role("button", name="Apply query").click()
        expect(page.locator("form.query .message")).to_contain_text(
            "The query was not applied. Rejected (400): where: at position 32: unknown field "
            "colour")
        expect(box).to_have_attribute("aria-invalid", "true")
        expect(box).to_be_focused()
        expect(page.locator(".count")).to_have_text("2 devices matching the query, 0 online")
        box.fill('shadow.tags.uiq exists and online')
        page.get_by_role("button", name="Apply query").click()
        expect(page.get_by_text("No device matches the query.")).to_be_visible()

    await ui.run(query)
    # A device that comes online joins the list that asks for online ones.
    sim = await connect_device(server, ids["query-paris"][1])
    try:
        def joined(page: Page) -> None:
            expect(row(page, ids["query-paris"][0])).to_contain_text("Online")
            expect(page.locator(".count")).to_have_text("1 device matching the query, 1 online")

        await ui.run(joined)
        await ui.shot("device-query")

        def cleared(page: Page) -> None:
            page.get_by_role("button", name="Clear query").click()
            expect(row(page, ids["query-berlin-1"][0])).to_be_visible()
            expect(page.locator(".count")).not_to_contain_text("matching the query")

        await ui.run(cleared)
    finally:
        await sim.stop()


@pytest_twisted.ensureDeferred
async def test_rpc_console_queues_until_the_device_is_back(server, admin: Client, ui: UI):
    device_id, token = await admin.register("queue-board")
    await ui.run(sign_in, admin.key)

    def queued(page: Page) -> None:
        open_device(page, device_id, "queue-board")
        calls = section(page, "Queued calls")
        expect(calls.get_by_text("No queued calls.")).to_be_visible()
        box = section(page, "RPC console")
        box.get_by_label("Method").fill("Sim.Echo")
        box.get_by_label("Params (JSON)").fill('{"x": 1}')
        box.get_by_label("Queue until the device is back").check()
        box.get_by_label("Expires after (hours)").fill("2")
        accessible(page)
        box.get_by_role("button", name="Call").click()
        expect(box.locator(".rpc-outcome")).to_contain_text(
            "Sim.Echo is queued: the device is offline, and the call goes out when it is back")
        expect(calls.locator("tr.call")).to_have_count(1)
        expect(calls.locator("tr.call").first).to_contain_text("Queued")

    await ui.run(queued)
    listed = (await admin.get("/api/v2/devices/%s/calls" % device_id)).body
    assert [(c["method"], c["params"], c["state"]) for c in listed] == [
        ("Sim.Echo", {"x": 1}, "queued")]
    assert 2 * 3600 - 60 < listed[0]["expires"] - listed[0]["created"] <= 2 * 3600
    # One more, queued elsewhere, shows up live; it is cancelled here.
    reply = await admin.post("/api/v2/devices/%s/calls" % device_id,
                             {"method": "GPIO.Toggle", "params": {"pin": 5}})
    assert reply.status == 202
    other = reply.body["id"]

    def cancel(page: Page) -> None:
        calls = section(page, "Queued calls")
        mine = calls.locator("tr[data-call-id='%s']" % other)
        expect(mine).to_contain_text("Queued")
        mine.get_by_role("button", name="Cancel GPIO.Toggle (%s)" % other).click()
        expect(mine).to_contain_text("Cancelled")

    await ui.run(cancel)
    await ui.shot("queued-calls")
    sim = await connect_device(server, token)
    try:
        def delivered(page: Page) -> None:
            calls = section(page, "Queued calls")
            first = calls.locator("tr[data-call-id='%s']" % listed[0]["id"])
            expect(first).to_contain_text("Succeeded")
            expect(first.locator("td.outcome")).to_have_text('{"x":1}')
            # Online, a queued call is answered at once.
            box = section(page, "RPC console")
            box.get_by_label("Params (JSON)").fill('{"y": 2}')
            box.get_by_role("button", name="Call").click()
            expect(box.locator(".rpc-outcome")).to_contain_text("Sim.Echo answered in")
            expect(box.get_by_label("Result")).to_have_text('{\n  "y": 2\n}')

        await ui.run(delivered)
        assert sim.pins == {}
        assert [f.get("params") for f in sim.frames if f.get("method") == "Sim.Echo"] == [
            {"x": 1}, {"y": 2}]
    finally:
        await sim.stop()
