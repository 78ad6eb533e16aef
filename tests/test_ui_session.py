"""
Signing in across tabs (issue 19 item 3), in Chromium against a real dashd:
by default the key stays in one tab (a new tab lands on Sign in); with
"Keep me signed in on this browser" a new tab, or a device's address pasted
into one, opens signed in, from an HttpOnly SameSite=Strict cookie (the key
itself is kept nowhere), and signing out in one tab ends it in all.
"""

from __future__ import annotations


import pytest_twisted
from playwright.sync_api import Page, expect

from browser import UI
from support import Client
from test_ui import accessible, no_horizontal_overflow, open_device, sign_out


def sign_in_form(page: Page, key: str, keep: bool) -> None:
    page.goto("/")
    page.get_by_label("API key").fill(key)
    box = page.get_by_role("checkbox", name="Keep me signed in on this browser")
    expect(box).not_to_be_checked()  # the safe default
    if keep:
        box.check()
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1, name="Devices")).to_be_visible()
    expect(page.locator("#live-state")).to_have_text("Live")


@pytest_twisted.ensureDeferred
async def test_kept_signed_in_across_tabs_until_signing_out(server, admin: Client, ui: UI):
    device_id, _ = await admin.register("tabs-heater")

    def keep(page: Page) -> None:
        sign_in_form(page, admin.key, keep=True)
        # The key is kept nowhere a script reads; the session cookie is HttpOnly.
        assert page.evaluate("sessionStorage.length + localStorage.length") == 0
        jar = {c["name"]: c for c in page.context.cookies()}
        assert jar["dashd_session"]["httpOnly"] and jar["dashd_session"]["sameSite"] == "Strict"
        assert jar["dashd_session"]["path"] == "/api/v2"
        assert not jar["dashd_csrf"]["httpOnly"] and jar["dashd_csrf"]["sameSite"] == "Strict"
        assert admin.key not in str(page.context.cookies())
        # A device's address in a new tab: the device, not Sign in.
        second = page.context.new_page()
        second.goto("/#/devices/" + device_id)
        expect(second.get_by_role("heading", level=1, name="tabs-heater")).to_be_visible()
        expect(second.locator("#live-state")).to_have_text("Live")
        accessible(second)
        # Signing out there ends the session in every tab.
        sign_out(second)
        assert "dashd_session" not in {c["name"] for c in page.context.cookies()}
        second.close()
        page.reload()
        expect(page.get_by_role("heading", level=1, name="Sign in")).to_be_visible()

    await ui.run(keep)
    await ui.shot("signed-out-everywhere")


@pytest_twisted.ensureDeferred
async def test_by_default_the_key_stays_in_its_tab(server, admin: Client, phone: UI):
    device_id, _ = await admin.register("tabs-fan")

    def one_tab(page: Page) -> None:
        sign_in_form(page, admin.key, keep=False)
        assert page.context.cookies() == []
        second = page.context.new_page()
        second.goto("/#/devices/" + device_id)
        expect(second.get_by_role("heading", level=1, name="Sign in")).to_be_visible()
        expect(second.get_by_role("checkbox", name="Keep me signed in on this browser")).to_be_visible()
        no_horizontal_overflow(second)
        accessible(second)
        second.close()
        open_device(page, device_id, "tabs-fan")

    await phone.run(one_tab)
    await phone.shot("phone-sign-in-one-tab")
