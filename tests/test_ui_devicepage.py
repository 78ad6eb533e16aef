"""
The device page's section menu with deep links (#/devices/ID/rpc) and the
compact device list at phone width (issue 19 item 4), in Chromium against
a real dashd with simulated devices. Screenshots go to test-artifacts/ui/.
"""

from __future__ import annotations

import time

import pytest_twisted
from playwright.sync_api import Page, expect

from browser import UI
from support import Client, connect_device, device_online
from test_ui import PHONE, accessible, no_horizontal_overflow, row, section, sign_in

ALL = ["Info", "Shadow", "Charts", "Stored data", "RPC console", "Queued calls",
       "Firmware update", "Device log", "Sharing", "Token and deletion"]


def shown(page: Page) -> list[str]:
    return page.locator(".device-body > section:visible > h2").all_inner_texts()


def showing(page: Page, expected: list[str], seconds: float = 5.0) -> None:
    """The page shows the sections C{expected}, once it has followed the
    address it was given (a click changes the hash; the page follows on
    its hashchange event, a moment later)."""
    deadline = time.monotonic() + seconds
    while shown(page) != expected and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert shown(page) == expected


def menu(page: Page):
    return page.get_by_role("navigation", name="Parts of this device page")


@pytest_twisted.ensureDeferred
async def test_parts_of_the_device_page_have_their_own_addresses(server, admin: Client, ui: UI):
    device_id, token = await admin.register("menu-boiler")
    sim = await connect_device(server, token)
    await device_online(admin, device_id)
    await ui.run(sign_in, admin.key)

    def deep_link(page: Page) -> None:
        # Pasted into a new tab's address bar: that part alone.
        page.goto("/#/devices/%s/rpc" % device_id)
        expect(page.get_by_role("heading", level=1, name="menu-boiler")).to_be_visible()
        expect(section(page, "RPC console")).to_be_visible()
        showing(page, ["RPC console", "Queued calls"])
        expect(menu(page).get_by_role("link", name="RPC")).to_have_attribute("aria-current", "location")
        accessible(page)
        height = page.evaluate("document.documentElement.scrollHeight")
        assert height < 2000, height

    await ui.run(deep_link)
    await ui.shot("device-part-rpc")

    def choose(page: Page) -> None:
        # The sections are kept while hidden: nothing is loaded again.
        page.evaluate("document.querySelector('.device-body').dataset.mark = 'same page'")
        menu(page).get_by_role("link", name="Log").click()
        expect(page).to_have_url("%s/#/devices/%s/log" % (server.url, device_id))
        expect(section(page, "Device log")).to_be_visible()
        showing(page, ["Device log"])
        menu(page).get_by_role("link", name="Overview").click()
        showing(page, ["Info", "Shadow"])
        menu(page).get_by_role("link", name="Sharing and token").click()
        showing(page, ["Sharing", "Token and deletion"])
        menu(page).get_by_role("link", name="All").click()
        expect(page).to_have_url("%s/#/devices/%s/all" % (server.url, device_id))
        showing(page, ALL)
        # The browser's Back goes to the part before.
        page.go_back()
        showing(page, ["Sharing", "Token and deletion"])
        assert page.evaluate("document.querySelector('.device-body').dataset.mark") == "same page"
        # An address that names no part of the page: all of it, and why.
        page.goto("/#/devices/%s/nosuchpart" % device_id)
        expect(page.get_by_text('This page has no part called "nosuchpart": showing all of it.')).to_be_visible()
        showing(page, ALL)
        accessible(page)

    await ui.run(choose)

    def opens_on_the_overview(page: Page) -> None:
        # The device's own address (a click in the list, a link elsewhere)
        # opens on the first part, not the whole 4,600 px page.
        page.goto("/#/devices")
        row(page, device_id).get_by_role("link", name="menu-boiler").click()
        expect(page).to_have_url("%s/#/devices/%s" % (server.url, device_id))
        showing(page, ["Info", "Shadow"])
        expect(menu(page).get_by_role("link", name="Overview")).to_have_attribute("aria-current", "location")
        expect(menu(page).get_by_role("link", name="All")).not_to_have_attribute("aria-current", "location")
        # The menu's links in the order of the page, All last.
        links = menu(page).get_by_role("link").all_inner_texts()
        assert links == ["Overview", "Charts", "RPC", "Firmware", "Log", "Sharing and token", "All"], links
        accessible(page)

    await ui.run(opens_on_the_overview)
    await ui.shot("device-opens-on-overview")
    await sim.stop()


@pytest_twisted.ensureDeferred
async def test_phone_list_is_compact_and_parts_are_short(server, admin: Client, phone: UI):
    ids = [(await admin.register("compact-%02d" % i))[0] for i in range(8)]
    await phone.run(sign_in, admin.key)

    def compact(page: Page) -> None:
        expect(row(page, ids[0])).to_be_visible()
        heights = [row(page, d).evaluate("r => r.getBoundingClientRect().height") for d in ids]
        # At least six devices a screen (844 px): 1.5 before.
        assert max(heights) < PHONE["height"] / 6, heights
        expect(row(page, ids[0])).to_contain_text("compact-00")
        expect(row(page, ids[0])).to_contain_text(ids[0])
        expect(row(page, ids[0])).to_contain_text("Offline")
        no_horizontal_overflow(page)
        accessible(page)

    await phone.run(compact)
    await phone.shot("phone-devices-compact")

    def part(page: Page) -> None:
        page.goto("/#/devices/%s/rpc" % ids[0])
        expect(section(page, "RPC console")).to_be_visible()
        # The RPC console near the top, not 3,230 px down.
        top = section(page, "RPC console").evaluate("s => s.getBoundingClientRect().top + window.scrollY")
        assert top < 700, top
        no_horizontal_overflow(page)
        accessible(page)

    await phone.run(part)
    await phone.shot("phone-device-part-rpc")
