"""
The fleet's log (issue 19 item 8) in Chromium against a real dashd with
simulated devices: stored and live lines of every device, filters by device
(asked of dashd), kind and words, pausing that holds lines back and shows
them on resuming (the device page's log too), what a restricted key is
told, and phone width. Screenshots go to test-artifacts/ui/.
"""

from __future__ import annotations

import time

import pytest_twisted
from playwright.sync_api import Page, expect

from browser import UI
from support import Client, connect_device, device_online, within
from test_ui import (
    accessible, new_key, no_horizontal_overflow, open_device, section, sign_in,
)


def fleet_log(page: Page):
    return page.get_by_role("log", name="Fleet log")


async def _two(admin: Client, server, suffix: str):
    a_id, a_token = await admin.register("logs-pump" + suffix)
    b_id, b_token = await admin.register("logs-valve" + suffix)
    a = await connect_device(server, a_token)
    b = await connect_device(server, b_token)
    await device_online(admin, a_id)
    await device_online(admin, b_id)
    await within(a.call("Dash.Log", {"fd": 1, "data": "pump primed%s\n" % suffix, "t": 1.0, "seq": 1}))
    await within(b.call("Dash.Log", {"fd": 2, "data": "valve stuck%s\n" % suffix, "t": 2.0, "seq": 1}))
    b.notify("Pressure", {"bar": 2.5})
    return (a_id, a), (b_id, b)


@pytest_twisted.ensureDeferred
async def test_fleet_log_filters_search_and_pause(server, admin: Client, ui: UI):
    (a_id, a), (b_id, b) = await _two(admin, server, "")
    await ui.run(sign_in, admin.key)

    def stored(page: Page) -> None:
        page.get_by_role("link", name="Logs", exact=True).click()
        expect(page.get_by_role("heading", level=1, name="Logs")).to_be_visible()
        log = fleet_log(page)
        expect(log).to_contain_text("logs-pump log pump primed (#1, device time 1)")
        expect(log.locator(".log-stderr")).to_contain_text("logs-valve stderr valve stuck")
        expect(log).to_contain_text('logs-valve notification Pressure {"bar":2.5}')
        # A line's device links to that device's log.
        link = log.get_by_role("link", name="logs-pump").first
        expect(link).to_have_attribute("href", "#/devices/%s/log" % a_id)
        accessible(page)

    await ui.run(stored)
    await ui.shot("fleet-log")

    def filters(page: Page) -> None:
        log = fleet_log(page)
        page.get_by_role("checkbox", name="Log lines").uncheck()
        expect(log.get_by_text("pump primed")).to_be_hidden()
        expect(log.get_by_text("valve stuck")).to_be_visible()  # stderr is its own kind
        expect(page.get_by_role("status").filter(has_text="lines match the filters")).to_be_visible()
        page.get_by_role("checkbox", name="Log lines").check()
        page.get_by_label("Search").fill("VALVE stuck")
        expect(log.get_by_text("valve stuck")).to_be_visible()
        expect(log.get_by_text("pump primed")).to_be_hidden()
        page.get_by_label("Search").fill("")
        # One device: asked of dashd.
        page.get_by_label("Device").select_option(label="logs-pump")
        expect(log.get_by_text("pump primed")).to_be_visible()
        expect(log.get_by_text("valve stuck")).to_have_count(0)

    await ui.run(filters)
    await within(b.call("Dash.Log", {"fd": 1, "data": "valve only\n", "t": time.time(), "seq": 2}))
    await ui.run(lambda page: page.get_by_label("Device").select_option(label="All devices"))
    await ui.run(lambda page: expect(fleet_log(page)).to_contain_text("valve only"))
    await ui.run(lambda page: page.get_by_role("button", name="Pause").click())
    await within(a.call("Dash.Log", {"fd": 1, "data": "while paused\n", "t": time.time(), "seq": 2}))

    def resume(page: Page) -> None:
        button = page.get_by_role("button", name="Resume (1 new)")
        expect(button).to_have_attribute("aria-pressed", "true")
        assert "while paused" not in fleet_log(page).inner_text()
        button.click()
        expect(fleet_log(page)).to_contain_text("logs-pump log while paused")
        expect(page.get_by_role("button", name="Pause")).to_have_attribute("aria-pressed", "false")

    await ui.run(resume)
    await a.stop()
    await b.stop()


@pytest_twisted.ensureDeferred
async def test_the_device_log_keeps_lines_while_paused(server, admin: Client, ui: UI):
    device_id, token = await admin.register("logs-paused")
    sim = await connect_device(server, token)
    await device_online(admin, device_id)
    await ui.run(sign_in, admin.key)
    await ui.run(open_device, device_id, "logs-paused")
    await ui.run(lambda page: (expect(page.get_by_text("methods from RPC.List")).to_be_visible(),
                               section(page, "Device log").get_by_role("button", name="Pause").click()))
    for i in range(3):
        await within(sim.call("Dash.Log", {"fd": 1, "data": "held %d\n" % i, "t": 1.0, "seq": i}))

    def resume(page: Page) -> None:
        box = section(page, "Device log")
        button = box.get_by_role("button", name="Resume (3 new)")
        expect(button).to_be_visible()
        assert "held" not in page.get_by_role("log", name="Device log").inner_text()
        button.click()
        log = page.get_by_role("log", name="Device log")
        for i in range(3):
            expect(log).to_contain_text("held %d" % i)

    await ui.run(resume)
    await sim.stop()


@pytest_twisted.ensureDeferred
async def test_fleet_log_at_phone_width_and_for_restricted_keys(server, admin: Client,
                                                               phone: UI):
    (a_id, a), (b_id, b) = await _two(admin, server, "-p")
    await phone.run(sign_in, admin.key)

    def small(page: Page) -> None:
        page.goto("/#/logs")
        expect(fleet_log(page)).to_contain_text("pump primed-p")
        no_horizontal_overflow(page)
        accessible(page)

    await phone.run(small)
    await phone.shot("phone-fleet-log")
    restricted = await new_key(admin, kind="restricted", scope={"devices": {a_id: {"read": []}}})

    def refused(page: Page) -> None:
        page.get_by_role("button", name="Sign out").click()
        sign_in(page, restricted)
        expect(page.get_by_role("link", name="Logs", exact=True)).to_be_hidden()
        page.goto("/#/logs")
        expect(page.get_by_role("alert")).to_have_text("This restricted key may not read device logs.")
        accessible(page)

    await phone.run(refused)
    await a.stop()
    await b.stop()
