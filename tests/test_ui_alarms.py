"""
The dashboard's alarms in a real browser: the count always in view, the
Alarms page (filters, acknowledge with a note, clear), a device's active
alarms on its page and in the list, the rule editor's preview of matched
devices, and webhooks with "Send test event" and the last deliveries.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from playwright.sync_api import Page, expect

from browser import UI
from support import Client, connect_device, eventually
from test_ui import accessible, dialog, open_device, row, sign_in


async def _active(admin: Client, device_id: str) -> Any:
    found = (await admin.get("/api/v2/alarms?state=active&device=" + device_id)).body
    return found[0] if found else None


@pytest_twisted.ensureDeferred
async def test_alarms_in_view_acknowledged_and_cleared(server, admin: Client, ui: UI):
    device_id, token = await admin.register("ui-freezer")
    rule = (await admin.post("/api/v2/alarm-rules", {
        "name": "ui freezer warm", "where": 'name = "ui-freezer"', "severity": "critical",
        "condition": {"kind": "threshold", "key": "temp", "above": -10, "clear": -15}})).body
    sim = await connect_device(server, token)
    try:
        await ui.run(sign_in, admin.key)

        def no_alarm_yet(page: Page) -> None:
            expect(page.locator("#alarm-count")).to_be_visible()
            expect(row(page, device_id)).to_be_visible()
            expect(row(page, device_id).locator(".alarm-badge")).to_have_count(0)

        await ui.run(no_alarm_yet)
        await sim.report({"temp": -2})
        alarm = await eventually(lambda: _active(admin, device_id))

        def raised(page: Page) -> None:
            # The count in the top bar and the badge in the list, live.
            expect(page.locator("#alarm-count")).to_contain_text("active alarm")
            expect(page.locator("#alarm-count")).to_have_class("alarm-count critical")
            expect(row(page, device_id).locator(".alarm-badge")).to_have_text("1 alarm")
            accessible(page)
            open_device(page, device_id, "ui-freezer")
            alarms = page.get_by_role("region", name="Active alarms")
            expect(alarms).to_contain_text("temp is -2, above -10")
            # The Alarms page, filtered by this device.
            page.locator("#alarm-count").click()
            expect(page.get_by_role("heading", level=1, name="Alarms")).to_be_visible()
            page.get_by_label("Device").fill(device_id)
            line = page.locator("tr[data-alarm-id='%s']" % alarm["id"])
            expect(line).to_contain_text("ui freezer warm")
            expect(page.locator("table.alarms tbody tr")).to_have_count(1)
            page.get_by_label("Severity").select_option("minor")
            expect(page.get_by_text("No alarms match.")).to_be_visible()
            page.get_by_label("Severity").select_option("critical")
            expect(line).to_be_visible()
            accessible(page)
            line.get_by_role("button", name="Acknowledge").click()
            dialog(page).get_by_label("Note").fill("door left open")
            dialog(page).get_by_role("button", name="Acknowledge").click()
            expect(line).to_contain_text("door left open")
            expect(line.get_by_role("button", name="Acknowledge")).to_have_count(0)

        await ui.run(raised)
        await ui.shot("alarms")
        got = (await admin.get("/api/v2/alarms/" + alarm["id"])).body
        assert got["note"] == "door left open" and got["acknowledged"]

        def cleared(page: Page) -> None:
            line = page.locator("tr[data-alarm-id='%s']" % alarm["id"])
            line.get_by_role("button", name="Clear").click()
            # Cleared alarms leave the "Active" view.
            expect(line).to_have_count(0)
            page.get_by_label("State").select_option("cleared")
            expect(page.locator("tr[data-alarm-id='%s']" % alarm["id"])).to_contain_text("cleared")

        await ui.run(cleared)
        got = (await admin.get("/api/v2/alarms/" + alarm["id"])).body
        assert got["state"] == "cleared"
    finally:
        await sim.stop()
        await admin.delete("/api/v2/alarm-rules/" + rule["id"])


@pytest_twisted.ensureDeferred
async def test_rule_editor_previews_matched_devices(server, admin: Client, ui: UI):
    for name in ("ui-rule-a", "ui-rule-b", "ui-other"):
        await admin.register(name)
    await ui.run(sign_in, admin.key)

    def edit(page: Page) -> None:
        page.goto("/#/alarms")
        expect(page.get_by_role("heading", level=1, name="Alarms")).to_be_visible()
        page.get_by_role("button", name="New rule").click()
        box = dialog(page)
        box.get_by_label("Name").fill("ui rule")
        box.get_by_label("Devices").fill('name matches "ui-rule-*"')
        expect(box.locator(".preview")).to_contain_text("2 devices match now")
        expect(box.locator(".preview")).to_contain_text("ui-rule-a")
        box.get_by_label("Devices").fill("name ==")
        expect(box.locator(".preview")).to_contain_text("where: at position")
        box.get_by_label("Devices").fill('name = "ui-other"')
        expect(box.locator(".preview")).to_contain_text("1 device match now")
        box.get_by_label("Condition").select_option("offline")
        box.get_by_label("Offline for more than (seconds)").fill("-5")
        box.get_by_role("button", name="Save rule").click()
        expect(box.get_by_role("alert")).to_contain_text("condition.seconds")
        box.get_by_label("Offline for more than (seconds)").fill("600")
        box.get_by_role("button", name="Save rule").click()
        expect(page.get_by_role("dialog")).to_have_count(0)
        expect(page.locator("li.rule")).to_contain_text(["ui rule"])
        expect(page.locator("li.rule", has_text="ui rule")).to_contain_text(
            "offline for more than 600 s")
        accessible(page)

    ui.allow(400, "/api/v2/devices")
    ui.allow(400, "/api/v2/alarm-rules")
    await ui.run(edit)
    rules = (await admin.get("/api/v2/alarm-rules")).body
    [made] = [r for r in rules if r["name"] == "ui rule"]
    assert made["where"] == 'name = "ui-other"' and made["condition"]["seconds"] == 600
    await admin.delete("/api/v2/alarm-rules/" + made["id"])


@pytest_twisted.ensureDeferred
async def test_webhooks_page_sends_a_test_event(own_server, browser_thread, request):
    from twisted.internet import reactor
    from twisted.web import server as web_server

    from browser import artifact_name
    from test_alarms_e2e import Receiver, verify

    recv = Receiver()
    port = reactor.listenTCP(0, web_server.Site(recv), interface="127.0.0.1")
    own_server.configure({"webhooks": {"allow_http": True,
                                       "allowed_networks": ["127.0.0.0/8"]}})
    own_server.start()
    page_ui = UI(browser_thread, own_server.url, artifact_name(request.node.nodeid))
    page_ui.open()
    url = "http://127.0.0.1:%d/ui-hook" % port.getHost().port
    secret: list[str] = []
    try:
        admin = Client(own_server, own_server.admin_key)
        await page_ui.run(sign_in, admin.key)

        def make(page: Page) -> None:
            page.get_by_role("link", name="Webhooks").click()
            expect(page.get_by_role("heading", level=1, name="Webhooks")).to_be_visible()
            expect(page.get_by_text("No webhooks yet.")).to_be_visible()
            page.get_by_label("URL").fill(url)
            page.get_by_label("Name").fill("ops pager")
            page.get_by_label("device.offline").check()
            page.get_by_role("button", name="Make webhook").click()
            box = dialog(page)
            expect(box).to_contain_text("Webhook made")
            secret.append(box.get_by_role("textbox", name="Signing secret").input_value())
            box.get_by_role("button", name="Done").click()
            card = page.get_by_role("region", name="Webhook ops pager")
            expect(card).to_contain_text("alarm.raised, alarm.cleared, device.offline")
            expect(card).to_contain_text("Nothing sent yet.")
            accessible(page)
            card.get_by_role("button", name="Send test event").click()
            expect(card).to_contain_text("1 delivered")
            expect(card.locator("table.deliveries")).to_contain_text("200")
            expect(card.locator("table.deliveries")).to_contain_text("test")

        await page_ui.run(make)
        await page_ui.shot("webhooks")
        [delivery] = recv.got("/ui-hook")
        verify(secret[0], delivery)
        assert delivery["json"]["kind"] == "test"
    finally:
        page_ui.close()
        await port.stopListening()
    problems = page_ui.unexplained()
    assert not problems, "the page went wrong:\n" + "\n".join(problems)
